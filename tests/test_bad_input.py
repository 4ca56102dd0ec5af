"""Bad input fails safe (issue 6).

Every case below runs the ``nanoBragg`` program in-process (``main(argv)`` in
a fresh folder) and checks: the exit status, exactly one line on standard
error, ``nanoBragg: error: ...`` naming the flag or the file, no traceback,
and that the output files that were already there survived byte for byte
(no temporary files left behind either).

``python tests/test_bad_input.py`` runs the cases and rewrites
docs/bad_input.md from what the program actually printed;
``test_docs_table_is_current`` fails when the table is out of date.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Union

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad_input.md"

BASE = ("-cell 100 100 100 90 90 90 -default_F 100 -lambda 6.2 -N 2 -distance 100 -detpixels 8 "
        "-noprogress -nopgm").split()
OUTS = ["-floatfile", "old.bin", "-intfile", "old.img", "-noisefile", "old_noise.img"]
EXISTING = {"old.bin": b"previous float image\n", "old.img": b"previous SMV image\n",
            "old_noise.img": b"previous noise image\n"}


def _smv(nfast: int, nslow: int, pixel_mm: float = 0.1) -> Callable[[Path], None]:
    def make(p: Path):
        from nanobragg_torch.io.smv import write_smv
        header = [("HEADER_BYTES", "512"), ("DIM", "2"), ("BYTE_ORDER", "little_endian"),
                  ("TYPE", "unsigned_short"), ("SIZE1", str(nfast)), ("SIZE2", str(nslow)),
                  ("PIXEL_SIZE", "%g" % pixel_mm), ("DISTANCE", "100"), ("WAVELENGTH", "1")]
        write_smv(str(p), np.ones((nslow, nfast), dtype=np.uint16), header)
    return make


def _mtz(columns) -> Callable[[Path], None]:
    """An MTZ (P 21 21 21) with the given (label, type) data columns, written by gemmi."""
    def make(p: Path):
        import gemmi
        mtz = gemmi.Mtz(with_base=True)
        mtz.spacegroup = gemmi.find_spacegroup_by_name("P 21 21 21")
        mtz.set_cell_for_all(gemmi.UnitCell(100, 100, 100, 90, 90, 90))
        mtz.add_dataset("sim")
        for label, kind in columns:
            mtz.add_column(label, kind)
        rows = [[1, 2, 3] + [10.0] * len(columns), [2, 0, 1] + [20.0] * len(columns)]
        mtz.set_data(np.array(rows, dtype=np.float32))
        mtz.write_to_file(str(p))
    make.described = "an MTZ with columns " + ", ".join(f"{l} ({k})" for l, k in columns)
    return make


_PDB_CRYST1 = "CRYST1  100.000  100.000  100.000  90.00  90.00  90.00 {sg:<11s}\n"
_PDB_ATOM = "ATOM      1  CA  GLY A   1      10.000  20.000  30.000  1.00 20.00           C\n"
_CIF_NO_F = ("data_x\n_cell.length_a 100\n_cell.length_b 100\n_cell.length_c 100\n"
             "_cell.angle_alpha 90\n_cell.angle_beta 90\n_cell.angle_gamma 90\n"
             "_symmetry.space_group_name_H-M 'P 1'\n"
             "loop_\n_refln.index_h\n_refln.index_k\n_refln.index_l\n_refln.status\n"
             "1 2 3 o\n2 0 1 o\n")

FileSpec = Union[bytes, str, Callable[[Path], None]]


@dataclass
class Case:
    id: str
    what: str                       # the bad input, in words (for the table)
    args: List[str]                 # the flags of this case (after the base command line)
    rc: int                         # expected exit status
    names: str                      # text the message must contain (the flag or the file)
    files: Dict[str, FileSpec] = field(default_factory=dict)
    base: bool = True               # run after BASE + OUTS (else args alone, plus OUTS)


CASES = [
    Case("unknown_flag", "unknown flag", ["-detpixel_size", "8"], 2, "-detpixel_size"),
    Case("stray_argument", "value without a flag", ["8"], 2, "'8'"),
    Case("missing_value", "flag at the end without its value", ["-distance"], 2, "-distance"),
    Case("non_numeric", "non-numeric value", ["-distance", "far"], 2, "-distance"),
    Case("not_integer", "fractional pixel count", ["-detpixels", "8.5"], 2, "-detpixels"),
    Case("nan_value", "NaN given as a value", ["-distance", "nan"], 2, "-distance"),
    Case("flag_as_file", "a flag where a file name belongs", ["-hkl", "-default_F", "1"], 2, "-hkl"),
    Case("negative_pixels", "negative pixel count", ["-detpixels", "-8"], 2, "-detpixels"),
    Case("zero_pixels", "zero pixel count", ["-detpixels_f", "0"], 2, "-detpixels_f"),
    Case("zero_pixel_size", "zero pixel size", ["-pixel", "0"], 2, "-pixel"),
    Case("negative_pixel_size", "negative pixel size", ["-pixel", "-0.1"], 2, "-pixel"),
    Case("zero_detsize", "zero detector size", ["-detsize", "0"], 2, "-detsize"),
    Case("zero_wavelength", "zero wavelength", ["-lambda", "0"], 2, "-lambda"),
    Case("zero_energy", "zero photon energy", ["-energy", "0"], 2, "-energy"),
    Case("zero_distance", "zero detector distance", ["-distance", "0"], 2, "-distance"),
    Case("negative_N", "negative number of unit cells", ["-N", "-2"], 2, "-N"),
    Case("negative_fluence", "negative fluence", ["-fluence", "-1e24"], 2, "-fluence"),
    Case("kahn_out_of_range", "polarization factor outside -1..1", ["-polar", "2"], 2, "-polar"),
    Case("dispersion_200", "dispersion that reaches zero wavelength", ["-dispersion", "250"], 2,
         "-dispersion"),
    Case("roi_outside", "ROI beyond the detector", ["-roi", "0", "20", "0", "20"], 2, "-roi"),
    Case("roi_empty", "empty ROI", ["-roi", "5", "2", "0", "7"], 2, "-roi"),
    Case("cell_degenerate", "cell angles with zero volume", ["-cell", "100", "100", "100", "60", "60", "150"],
         2, "-cell"),
    Case("cell_zero_length", "zero cell edge", ["-cell", "100", "0", "100", "90", "90", "90"], 2, "-cell"),
    Case("no_cell", "neither -cell nor -mat", ["-default_F", "1", "-lambda", "1"], 2, "-cell", base=False),
    Case("no_structure_factors", "neither -hkl nor -default_F (and no Fdump.bin)",
         ["-cell", "100", "100", "100", "90", "90", "90", "-detpixels", "8"], 2, "-hkl", base=False),
    Case("zero_spindle", "zero spindle axis", ["-spindle_axis", "0", "0", "0"], 2, "-spindle_axis"),
    Case("parallel_axes", "parallel fast and slow detector axes",
         ["-fdet_vector", "0", "0", "1", "-sdet_vector", "0", "0", "2"], 2, "-fdet_vector"),
    Case("zero_twotheta_axis", "zero two-theta axis", ["-twotheta_axis", "0", "0", "0", "-twotheta", "5"], 2,
         "-twotheta_axis"),
    Case("bad_format", "unknown -format", ["-format", "tiff"], 2, "-format"),
    Case("bad_pngscale", "unknown -pngscale", ["-pngscale", "sqrt"], 2, "-pngscale"),
    Case("bad_dtype", "unknown -dtype", ["-dtype", "float16"], 2, "-dtype"),
    Case("bad_device", "unknown -device", ["-device", "gpu0"], 2, "-device"),
    Case("impractical_oversample", "geometry that auto-selects an impossible oversampling",
         ["-distance", "0.000001"], 2, "oversample"),
    # input files
    Case("hkl_missing", "missing HKL file", ["-hkl", "nosuch.hkl"], 2, "nosuch.hkl"),
    Case("hkl_columns", "HKL line with 3 columns", ["-hkl", "cols.hkl"], 2, "cols.hkl:2",
         {"cols.hkl": "1 2 3 100\n1 2 3\n"}),
    Case("hkl_non_numeric", "HKL line with a word", ["-hkl", "word.hkl"], 2, "word.hkl:1",
         {"word.hkl": "1 2 x 100\n"}),
    Case("hkl_fractional_index", "HKL Miller index that is not an integer", ["-hkl", "frac.hkl"], 2,
         "frac.hkl:1", {"frac.hkl": "1.5 2 3 100\n"}),
    Case("hkl_empty", "empty HKL file", ["-hkl", "empty.hkl"], 2, "empty.hkl", {"empty.hkl": ""}),
    Case("hkl_binary", "binary file given as HKL", ["-hkl", "binary.hkl"], 2, "binary.hkl",
         {"binary.hkl": bytes(range(256))}),
    Case("mat_missing", "missing matrix file", ["-mat", "nosuch.mat"], 2, "nosuch.mat"),
    Case("mat_shape", "matrix with 4 numbers per line", ["-mat", "wide.mat"], 2, "wide.mat:1",
         {"wide.mat": "0.01 0 0 0\n0 0.01 0 0\n0 0 0.01 0\n"}),
    Case("mat_short", "matrix with 2 lines", ["-mat", "short.mat"], 2, "short.mat",
         {"short.mat": "0.01 0 0\n0 0.01 0\n"}),
    Case("mat_singular", "matrix with zero determinant", ["-mat", "sing.mat"], 2, "sing.mat",
         {"sing.mat": "0.01 0.02 0.03\n0.02 0.04 0.06\n0.01 0.01 0.01\n"}),
    Case("mat_non_numeric", "matrix with a word", ["-mat", "word.mat"], 2, "word.mat:2",
         {"word.mat": "0.01 0 0\n0 abc 0\n0 0 0.01\n"}),
    Case("mask_size", "mask whose size differs from the detector", ["-mask", "mask16.img", "-detpixels", "8"],
         2, "-mask", {"mask16.img": _smv(16, 16)}),
    Case("mask_not_smv", "mask that is not an SMV image", ["-mask", "mask.txt"], 2, "mask.txt",
         {"mask.txt": "not an image\n" * 60}),
    Case("img_truncated", "truncated SMV header image", ["-img", "cut.img"], 2, "cut.img",
         {"cut.img": b"{\nHEADER_BYTES=512;\nDIM=2;\n"}),
    Case("sourcefile_missing", "missing source file", ["-sourcefile", "nosuch.txt"], 2, "-sourcefile nosuch.txt"),
    Case("sourcefile_lambda", "source with zero wavelength", ["-sourcefile", "src.txt"], 2, "src.txt",
         {"src.txt": "-10 0 0 1 1e-10\n-10 0 0 1 0\n"}),
    Case("sourcefile_words", "source file whose only line is words", ["-sourcefile", "words.txt"], 2,
         "words.txt:1", {"words.txt": "a b c\n"}),
    Case("stol_short_line", "stol table line without its F", ["-stol", "w.stol"], 2, "w.stol:3",
         {"w.stol": "# stol F\n0 2.57\n0.1\n"}),
    Case("dump_garbage", "corrupt Fdump.bin (no -hkl, no -default_F)",
         ["-cell", "100", "100", "100", "90", "90", "90", "-detpixels", "8", "-dump", "bad.bin"], 2, "bad.bin",
         {"bad.bin": b"garbage"}, base=False),
    # outputs
    Case("out_no_folder", "output in a folder that does not exist", ["-intfile", "nodir/x.img"], 1,
         "-intfile nodir/x.img"),
    Case("out_is_folder", "output name that is a folder", ["-floatfile", "adir"], 1, "-floatfile adir",
         {"adir/keep": "x"}),
    Case("out_under_file", "output under a plain file", ["-noisefile", "old.bin/n.img"], 1, "-noisefile"),
    Case("out_png_no_folder", "PNG preview in a missing folder", ["-pngfile", "nodir/p.png"], 1, "-pngfile"),
    Case("out_same_name", "two outputs with one name", ["-intfile", "same.img", "-noisefile", "same.img"], 2,
         "same.img"),
    Case("out_overwrites_input", "output that would overwrite an input", ["-hkl", "in.hkl", "-floatfile", "in.hkl"],
         2, "in.hkl", {"in.hkl": "0 0 0 100\n"}),
    Case("float_as_cbf", "float image named .cbf", ["-floatfile", "f.cbf"], 2, "-floatfile f.cbf"),
    # structure factors through gemmi (issue 16)
    Case("mtz_missing_column", "MTZ without the -mtz_column asked for", ["-hkl", "f.mtz", "-mtz_column", "FC"],
         2, "f.mtz", {"f.mtz": _mtz([("FP", "F")])}),
    Case("mtz_no_amplitudes", "MTZ with intensities only", ["-hkl", "i.mtz"], 2, "i.mtz",
         {"i.mtz": _mtz([("IMEAN", "J")])}),
    Case("mtz_column_not_F", "-mtz_column naming an intensity column", ["-hkl", "i.mtz", "-mtz_column", "IMEAN"],
         2, "i.mtz", {"i.mtz": _mtz([("IMEAN", "J")])}),
    Case("mtz_column_without_mtz", "-mtz_column with a text -hkl file", ["-hkl", "in.hkl", "-mtz_column", "FC"],
         2, "-mtz_column", {"in.hkl": "0 0 0 100\n"}),
    Case("mmcif_no_amplitudes", "mmCIF structure factors without amplitudes", ["-hkl", "sf.cif"], 2, "sf.cif",
         {"sf.cif": _CIF_NO_F}),
    Case("model_no_atoms", "-pdb model with no atoms", ["-pdb", "empty.pdb"], 2, "empty.pdb",
         {"empty.pdb": _PDB_CRYST1.format(sg="P 1") + "END\n"}),
    Case("model_unknown_space_group", "-pdb model with an unknown space group", ["-pdb", "sg.pdb"], 2,
         "space group", {"sg.pdb": _PDB_CRYST1.format(sg="P 9 9 9") + _PDB_ATOM + "END\n"}),
    Case("hkl_and_pdb", "-hkl and -pdb together", ["-hkl", "in.hkl", "-pdb", "m.pdb"], 2, "-pdb",
         {"in.hkl": "0 0 0 100\n", "m.pdb": _PDB_CRYST1.format(sg="P 1") + _PDB_ATOM + "END\n"}),
    Case("img_bad_cbf", "-img CBF file that is not a CBF", ["-img", "bad.cbf"], 2, "bad.cbf",
         {"bad.cbf": "not a cbf\n"}),
    Case("mask_bad_nexus", "-mask NeXus file that is not HDF5", ["-mask", "bad.nxs"], 2, "bad.nxs",
         {"bad.nxs": "not hdf5\n"}),
]


def _prepare(case: Case, folder: Path) -> List[str]:
    for name, data in EXISTING.items():
        (folder / name).write_bytes(data)
    for name, spec in case.files.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if callable(spec):
            spec(p)
        elif isinstance(spec, bytes):
            p.write_bytes(spec)
        else:
            p.write_text(spec)
    return (BASE + OUTS + case.args) if case.base else (case.args + OUTS)


def run_case(case: Case, folder: Path):
    """(exit status, stderr text, stdout text) of the program on ``case`` in ``folder``."""
    from nanobragg_torch.cli.main import main
    argv = _prepare(case, folder)
    old = os.getcwd()
    err, out = io.StringIO(), io.StringIO()
    os.chdir(folder)
    try:
        with redirect_stderr(err), redirect_stdout(out):
            rc = main(argv)
    finally:
        os.chdir(old)
    return rc, err.getvalue(), out.getvalue()


RESULTS: Dict[str, tuple] = {}


def test_at_least_25_distinct_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path):
    rc, err, out = run_case(case, tmp_path)
    RESULTS[case.id] = (rc, err)
    lines = err.splitlines()
    assert "Traceback" not in err and "Traceback" not in out
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith("nanoBragg: error: "), lines[0]
    assert case.names in lines[0], f"message does not name {case.names!r}: {lines[0]}"
    assert rc == case.rc, f"exit status {rc}, expected {case.rc}: {lines[0]}"
    for name, data in EXISTING.items():
        assert (tmp_path / name).read_bytes() == data, f"{name} was changed by the failed run"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp") or ".nanobragg-probe" in p.name]
    assert not leftovers, leftovers


def test_existing_output_survives_failed_write(tmp_path, monkeypatch):
    """An error while an image is being written leaves the previous file whole (atomic replace)."""
    from nanobragg_torch.cli import main as cli
    from nanobragg_torch.io import smv

    (tmp_path / "old.img").write_bytes(b"previous SMV image\n")

    def broken(path, image, header):   # fails half-way, like a full disk
        from nanobragg_torch.io.atomic import atomic_open
        with atomic_open(path, "wb") as fh:
            fh.write(b"{\nHEADER_BYTES=512;")
            raise OSError(28, "No space left on device")
    monkeypatch.setattr(smv, "write_smv", broken)
    monkeypatch.chdir(tmp_path)
    rc = cli.main(BASE + ["-floatfile", "new.bin", "-intfile", "old.img", "-nonoise"])
    assert rc == 1
    assert (tmp_path / "old.img").read_bytes() == b"previous SMV image\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_internal_error_is_one_line_with_debug_hint(monkeypatch, capsys):
    from nanobragg_torch.cli import main as cli

    def boom(*a, **k):
        raise ZeroDivisionError("float division by zero\nsecond line")
    monkeypatch.setattr(cli, "run", boom)
    monkeypatch.delenv("NB_DEBUG", raising=False)
    assert cli.main(["-cell", "1"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("nanoBragg: internal error: ZeroDivisionError: float division by zero")
    assert "NB_DEBUG=1" in err
    monkeypatch.setenv("NB_DEBUG", "1")
    assert cli.main(["-cell", "1"]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_out_of_memory_is_reported(monkeypatch, capsys):
    from nanobragg_torch.cli import main as cli

    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr(cli, "run", oom)
    assert cli.main(["-cell", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nanoBragg: error: not enough memory") and err.count("\n") == 1


def test_keyboard_interrupt(monkeypatch, capsys):
    from nanobragg_torch.cli import main as cli

    def stop(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "run", stop)
    assert cli.main(["-cell", "1"]) == 130
    assert "Traceback" not in capsys.readouterr().err


def test_end_to_end_subprocess(tmp_path):
    """The installed program, as a user runs it: exit status and a clean stderr."""
    (tmp_path / "old.img").write_bytes(b"keep")
    env = dict(os.environ)
    env.pop("NB_DEBUG", None)
    bad = subprocess.run([sys.executable, "-m", "nanobragg_torch"] + BASE + ["-hkl", "nosuch.hkl",
                                                                          "-intfile", "old.img"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr == "nanoBragg: error: nosuch.hkl: cannot read HKL file (No such file or directory)\n"
    assert (tmp_path / "old.img").read_bytes() == b"keep"
    bad = subprocess.run([sys.executable, "-m", "nanobragg_torch"] + BASE + ["-intfile", "nodir/x.img"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("nanoBragg: error: -intfile nodir/x.img:") and bad.stderr.count("\n") == 1
    assert bad.stdout == ""     # nothing rendered


# ---------------------------------------------------------------------------
# docs/bad_input.md
# ---------------------------------------------------------------------------

def _md(text: str) -> str:
    return text.replace("|", "\\|")


def table(results: Dict[str, tuple]) -> str:
    rows = ["# Bad input: what nanoBragg prints",
            "",
            "Generated by `python tests/test_bad_input.py` from the cases in `tests/test_bad_input.py`,",
            "which also check each row (exit status, one line on standard error naming the flag or",
            "the file, no traceback, existing outputs untouched).  Each case runs",
            "",
            "    nanoBragg " + " ".join(BASE + OUTS) + " FLAGS",
            "",
            "(or FLAGS alone, marked *alone*) in a folder where `old.bin`, `old.img` and",
            "`old_noise.img` already exist; all three survive every failed run.",
            "Exit status: 2 bad input, 1 an output cannot be written (checked before rendering),",
            "3 an internal error (one line; set `NB_DEBUG=1` for the traceback).",
            "",
            "| # | bad input | flags (and file content) | message on standard error | exit |",
            "|---|---|---|---|---|"]
    for n, case in enumerate(CASES, 1):
        rc, err = results[case.id]
        flags = " ".join(case.args) if case.args else ""
        if not case.base:
            flags += " *(alone)*"
        contents = []
        for name, spec in case.files.items():
            if callable(spec):
                contents.append(f"{name}: {getattr(spec, 'described', 'a 16x16 SMV image')}")
            elif isinstance(spec, bytes):
                kind = " (binary)" if b"\0" in spec else ""
                contents.append(f"{name}: {len(spec)} bytes{kind}")
            elif len(spec) > 40:
                contents.append(f"{name}: {spec[:24]!r}... ({len(spec)} characters)")
            else:
                contents.append(f"{name}: {spec!r}")
        cell = f"`{_md(flags)}`" + (f" ({_md('; '.join(contents))})" if contents else "")
        rows.append(f"| {n} | {_md(case.what)} | {cell} | `{_md(err.strip())}` | {rc} |")
    return "\n".join(rows) + "\n"


def _collect(tmp_root: Path) -> Dict[str, tuple]:
    out = {}
    for case in CASES:
        folder = tmp_root / case.id
        folder.mkdir()
        rc, err, _ = run_case(case, folder)
        out[case.id] = (rc, err)
    return out


def test_docs_table_is_current(tmp_path):
    missing = [c for c in CASES if c.id not in RESULTS]
    results = dict(RESULTS)
    if missing:
        for case in missing:
            folder = tmp_path / case.id
            folder.mkdir()
            rc, err, _ = run_case(case, folder)
            results[case.id] = (rc, err)
    assert DOC.is_file(), "docs/bad_input.md is missing: run python tests/test_bad_input.py"
    assert DOC.read_text() == table(results), "docs/bad_input.md is out of date: run python tests/test_bad_input.py"


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        res = _collect(Path(tmp))
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(table(res))
    print(f"wrote {DOC} ({len(CASES)} cases)")
