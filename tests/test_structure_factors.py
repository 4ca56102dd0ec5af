"""Structure factors from MTZ, mmCIF and atomic models through gemmi (issue 16), and the two console
tools: nb-p1hkl (P1 ``h k l F`` text) and nb-mosflm-matrix (a MOSFLM A matrix).
"""
from __future__ import annotations

import io
import math

import numpy as np
import pytest

gemmi = pytest.importorskip("gemmi")

MODEL = """\
CRYST1   20.000   25.000   30.000  90.00  90.00  90.00 P 21 21 21    4
ATOM      1  N   GLY A   1       1.000   2.000   3.000  1.00 10.00           N
ATOM      2  CA  GLY A   1       2.400   2.300   3.100  1.00 12.00           C
ATOM      3  C   GLY A   1       3.000   3.700   3.400  1.00 14.00           C
ATOM      4  O   GLY A   1       2.300   4.700   3.600  0.50 15.00           O
HETATM    5 FE   FE  A   2       8.000   9.000  10.000  1.00 20.00          FE
END
"""
CELL = (20.0, 25.0, 30.0, 90.0, 90.0, 90.0)
RENDER = ("-cell 20 25 30 90 90 90 -N 4 -lambda 1 -distance 60 -detpixels 40 -pixel 0.2 "
          "-misset 10 20 30 -noprogress -nopgm").split()


def render(tmp_path, *args) -> np.ndarray:
    from nanobragg_torch.cli.main import run
    out = tmp_path / "float.bin"
    rc = run(RENDER + list(args) + ["-floatfile", str(out), "-nonoise", "-intfile", str(tmp_path / "i.img")],
             out=io.StringIO(), cwd=str(tmp_path))
    assert rc == 0
    return np.fromfile(out, dtype="<f4")


@pytest.fixture
def model(tmp_path):
    p = tmp_path / "model.pdb"
    p.write_text(MODEL)
    return p


def _gemmi_F(path, hkl):
    st = gemmi.read_structure(str(path))
    st.setup_cell_images()
    calc = gemmi.StructureFactorCalculatorX(st.cell)
    return np.array([abs(calc.calculate_sf_from_model(st[0], [int(x) for x in h])) for h in hkl])


def _p1_list(n=4, seed=3):
    """A full-sphere P1 list (both Friedel mates, F exact in float32 so MTZ stores it exactly)."""
    rng = np.random.default_rng(seed)
    r = np.arange(-n, n + 1)
    hkl = np.array(np.meshgrid(r, r, r, indexing="ij")).reshape(3, -1).T
    F = np.round(rng.uniform(10, 500, len(hkl)), 2).astype(np.float32).astype(np.float64)
    return hkl, F


def _write_text(path, hkl, F):
    path.write_text("".join("%d %d %d %r\n" % (h, k, l, float(f)) for (h, k, l), f in zip(hkl, F)))


def _write_mtz(path, hkl, F, sg="P 1", labels=("FC",)):
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = gemmi.find_spacegroup_by_name(sg)
    mtz.set_cell_for_all(gemmi.UnitCell(*CELL))
    mtz.add_dataset("sim")
    for label in labels:
        mtz.add_column(label, "F")
    cols = [F * (i + 1) for i in range(len(labels))]          # distinct values per column
    mtz.set_data(np.column_stack([hkl] + cols).astype(np.float32))
    mtz.write_to_file(str(path))


def test_model_F_agree_with_gemmi_and_F000_is_the_electron_count(model):
    from nanobragg_torch.io.structure import read_reflections
    hkl, F = read_reflections(str(model), model=True, d_min=2.45)
    assert len(hkl) == len({tuple(h) for h in hkl.tolist()})              # unique
    # P1 with Friedel mates: every listed reflection's mate is listed with the same F
    lookup = {tuple(h): f for h, f in zip(hkl.tolist(), F)}
    assert all(lookup[(-h, -k, -l)] == f for (h, k, l), f in lookup.items())
    zero = [i for i, h in enumerate(hkl.tolist()) if h == [0, 0, 0]]
    assert len(zero) == 1 and F[zero[0]] == pytest.approx(4 * (7 + 6 + 6 + 0.5 * 8 + 26))
    rest = np.array([i for i in range(len(hkl)) if i != zero[0]])
    np.testing.assert_allclose(F[rest], _gemmi_F(model, hkl[rest]), rtol=1e-10, atol=1e-9)
    # the resolution limit (2.45 A: no reflection sits on it): every reflection to it that P 21 21 21 does not extinguish, none beyond
    cell = gemmi.UnitCell(*CELL)
    ops = gemmi.find_spacegroup_by_name("P 21 21 21").operations()
    d = np.array([cell.calculate_d(list(map(int, h))) for h in hkl[rest]])
    assert d.min() >= 2.45
    r = np.arange(-12, 13)
    every = np.array(np.meshgrid(r, r, r, indexing="ij")).reshape(3, -1).T
    every = every[np.any(every != 0, axis=1)]
    d_all = np.array([cell.calculate_d(list(map(int, h))) for h in every])
    present = np.array([not ops.is_systematically_absent(list(map(int, h))) for h in every])
    assert ((d_all >= 2.45) & present).sum() == len(rest)


def test_asymmetric_unit_mtz_expands_to_the_p1_set(model, tmp_path):
    """An MTZ in P 21 21 21 holding only the asymmetric unit gives every P1 reflection."""
    from nanobragg_torch.io.model import model_amplitudes
    from nanobragg_torch.io.structure import read_reflections
    hkl, F, sg, _ = model_amplitudes(str(model), 3.0)
    keep = np.any(hkl != 0, axis=1)
    _write_mtz(tmp_path / "asu.mtz", hkl[keep], F[keep].astype(np.float32).astype(np.float64), "P 21 21 21")
    H, FF = read_reflections(str(tmp_path / "asu.mtz"))
    P, PF = read_reflections(str(model), model=True, d_min=3.0)
    p = {tuple(h): f for h, f in zip(P.tolist(), PF) if h != [0, 0, 0]}
    m = {tuple(h): f for h, f in zip(H.tolist(), FF)}
    assert set(m) == set(p)
    np.testing.assert_allclose([m[k] for k in p], [p[k] for k in p], rtol=1e-6)


def test_mtz_image_identical_to_text(tmp_path):
    hkl, F = _p1_list()
    _write_text(tmp_path / "p1.hkl", hkl, F)
    _write_mtz(tmp_path / "p1.mtz", hkl, F, labels=("FP", "FC"))
    text = render(tmp_path, "-hkl", "p1.hkl")
    # FC is the default column when there are several; FP holds F, FC 2F
    _write_text(tmp_path / "p1x2.hkl", hkl, 2 * F)
    assert np.array_equal(render(tmp_path, "-hkl", "p1.mtz"), render(tmp_path, "-hkl", "p1x2.hkl"))
    assert np.array_equal(render(tmp_path, "-hkl", "p1.mtz", "-mtz_column", "FP"), text)
    assert text.max() > 0


def test_mmcif_image_identical_to_text(tmp_path):
    hkl, F = _p1_list()
    _write_text(tmp_path / "p1.hkl", hkl, F)
    doc = gemmi.cif.Document()
    b = doc.add_new_block("sf")
    for k, v in zip(("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma"), CELL):
        b.set_pair("_cell." + k, "%g" % v)
    b.set_pair("_symmetry.space_group_name_H-M", gemmi.cif.quote("P 1"))
    loop = b.init_loop("_refln.", ["index_h", "index_k", "index_l", "F_meas_au"])
    for (h, k, l), f in zip(hkl, F):
        loop.add_row([str(h), str(k), str(l), repr(float(f))])
    doc.write_file(str(tmp_path / "p1-sf.cif"))
    assert np.array_equal(render(tmp_path, "-hkl", "p1-sf.cif"), render(tmp_path, "-hkl", "p1.hkl"))


def test_model_image_equals_its_exported_p1_text(model, tmp_path, capsys):
    from nanobragg_torch.tools import p1hkl
    assert p1hkl.main([str(model), "--model", "--dmin", "2.5", "-o", str(tmp_path / "m.hkl")]) == 0
    lines = (tmp_path / "m.hkl").read_text().splitlines()
    assert "0 0 0 196.0" in lines
    a = render(tmp_path, "-pdb", str(model), "-dmin", "2.5")
    b = render(tmp_path, "-hkl", "m.hkl", "-dmin", "2.5")
    assert np.array_equal(a, b) and a.max() > 0


def test_model_resolution_follows_the_detector(model, tmp_path):
    """Without -dmin the model's F reach past the detector corner (no reflection on it is missing)."""
    from nanobragg_torch.cli.flags import parse_flags
    from nanobragg_torch.cli.resolve import build_setup
    st = build_setup(parse_flags(RENDER + ["-pdb", str(model)]))
    # corner: 40 px * 0.2 mm = 8 mm half-diagonal 5.66 mm at 60 mm; the grid must hold every index there
    corner = math.atan(math.hypot(8, 8) / 60)
    d_corner = 1.0 / (2 * math.sin(corner / 2))
    hmax = np.array(st.hkl.hkl_max)
    assert np.all(hmax >= np.floor(np.array(CELL[:3]) / d_corner))


def test_p1hkl_tool_from_mtz_and_its_errors(tmp_path, capsys):
    from nanobragg_torch.tools import p1hkl
    hkl, F = _p1_list(2)
    _write_mtz(tmp_path / "a.mtz", hkl, F)
    assert p1hkl.main([str(tmp_path / "a.mtz"), "-o", str(tmp_path / "a.hkl")]) == 0
    rows = np.loadtxt(tmp_path / "a.hkl")
    assert len(rows) == len(hkl) and set(map(tuple, rows[:, :3].astype(int).tolist())) == set(map(tuple, hkl.tolist()))
    capsys.readouterr()
    for argv, names in (([str(tmp_path / "a.mtz"), "--column", "NOPE"], "NOPE"),
                        ([str(tmp_path / "missing.mtz")], "missing.mtz")):
        assert p1hkl.main(argv + ["-o", str(tmp_path / "x.hkl")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("nb-p1hkl: error: ") and names in err[0]
    assert not (tmp_path / "x.hkl").exists()


def test_mosflm_matrix_reproduces_cell_and_misset(tmp_path, capsys):
    from nanobragg_torch.io.mosflm import read_mosflm_matrix
    from nanobragg_torch.tools import mosflm_matrix
    cell = ["57", "68", "79", "80", "95", "100"]
    assert mosflm_matrix.main(["--cell", *cell, "--lambda", "1.2", "--misset", "10", "20", "30",
                               "-o", str(tmp_path / "A.mat")]) == 0
    base = ["-default_F", "100", "-N", "4", "-lambda", "1.2", "-distance", "80", "-detpixels", "40",
            "-pixel", "0.3", "-noprogress", "-nopgm", "-nonoise", "-intfile", str(tmp_path / "i.img")]
    from nanobragg_torch.cli.main import run
    for name, extra in (("mat", ["-mat", str(tmp_path / "A.mat")]),
                        ("cell", ["-cell", *cell, "-misset", "10", "20", "30"])):
        assert run(base + extra + ["-floatfile", str(tmp_path / f"{name}.bin")], out=io.StringIO(),
                   cwd=str(tmp_path)) == 0
    a, b = (np.fromfile(tmp_path / f"{n}.bin", dtype="<f4") for n in ("mat", "cell"))
    assert a.max() > 0 and np.allclose(a, b, rtol=1e-5, atol=1e-6 * a.max())
    # random: reproducible with a seed, a proper rotation of the cell
    for out in ("r1.mat", "r2.mat"):
        assert mosflm_matrix.main(["--cell", *cell, "--lambda", "1", "--random", "--seed", "5",
                                   "-o", str(tmp_path / out)]) == 0
    assert (tmp_path / "r1.mat").read_text() == (tmp_path / "r2.mat").read_text()
    U = np.array([[float(x) for x in line.split()] for line in
                  (tmp_path / "r1.mat").read_text().splitlines()[4:7]])
    assert np.allclose(U @ U.T, np.eye(3), atol=1e-9) and np.linalg.det(U) == pytest.approx(1.0)
    recip = read_mosflm_matrix(str(tmp_path / "r1.mat"), 1e-10)
    real = np.linalg.inv(recip).T
    assert np.allclose(np.linalg.norm(real, axis=1), [57, 68, 79], rtol=1e-8)
    capsys.readouterr()
    for argv in (["--cell", "57", "68", "-79", "90", "90", "90", "--lambda", "1"],
                 ["--cell", *cell, "--lambda", "0"],
                 ["--cell", "57", "68", "79", "90", "90", "190", "--lambda", "1"],
                 ["--cell", *cell, "--lambda", "1", "--seed", "3"]):
        assert mosflm_matrix.main(argv + ["-o", str(tmp_path / "bad.mat")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("nb-mosflm-matrix: error: ")
    assert not (tmp_path / "bad.mat").exists()


def test_python_api_readers_return_the_structure_factor_grid(model, tmp_path):
    from nanobragg_torch.io import HKLData, read_structure_factors
    hkl, F = _p1_list(2)
    _write_mtz(tmp_path / "a.mtz", hkl, F)
    _write_text(tmp_path / "a.hkl", hkl, F)
    g1, g2 = read_structure_factors(str(tmp_path / "a.mtz")), read_structure_factors(str(tmp_path / "a.hkl"))
    assert isinstance(g1, HKLData) and g1.hkl_min == g2.hkl_min and g1.hkl_max == g2.hkl_max
    assert np.array_equal(g1.grid, g2.grid)
    g3 = read_structure_factors(str(model), model=True, d_min=3.0)
    assert g3.grid[tuple(-np.array(g3.hkl_min))] == pytest.approx(196.0)      # F000 at (0, 0, 0)
