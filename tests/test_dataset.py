"""Issue 7: whole datasets (rotation series, serial shots), locally and on a Dask cluster.

* the experiment file becomes plain nanoBragg argument lists (spec unit tests);
* a rotation series and a serial set rendered in-process and through a
  two-worker Dask LocalCluster (processes, one thread each) are byte-identical;
* every manifest line reproduces its frame byte for byte through the plain CLI;
* a run killed half way (SIGKILL of a real process; an interruption injected
  after k frames) resumes without re-rendering a finished frame and ends with
  every frame correct; a cut-short last manifest line is tolerated;
* failures are retried and reported per frame.
"""
from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from nanobragg_torch.dataset import (SpecError, latest_records, load_spec, read_manifest, render_dataset,
                                     spec_from_dict, verify_dataset)
from nanobragg_torch.dataset import render as ds_render
from nanobragg_torch.dataset import runner as ds_runner
from nanobragg_torch.dataset.cli import main as ds_main
from nanobragg_torch.dataset.manifest import MANIFEST
from nanobragg_torch.dataset.spec import misset_angles, random_rotation, frame_rng

SETUP = """
[setup]
cell = [70, 80, 90, 75, 85, 95]
default_F = 100
lambda = 1.0
distance = 100
detpixels = 64
pixel = 0.4
oversample = 1
"""

ROTATION = SETUP + """
N = 5
[rotation]
start = 10
osc = 0.5
frames = 6
[noise]
enabled = true
seed = 7
"""

SERIAL = SETUP + """
[serial]
shots = 4
seed = 42
N = {dist = "uniform", low = 3, high = 6}
mosaic = {dist = "normal", mean = 0.2, sd = 0.05, min = 0}
mosaic_domains = 2
lambda = {dist = "normal", mean = 1.0, sd = 0.01}
beam_jitter = 0.05
"""


# frames slow enough (about a second each) for a kill to land half way
SLOW_ROTATION = ROTATION.replace("oversample = 1", "oversample = 3")


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("dataset")
    write(d / "rotation.toml", ROTATION)
    write(d / "serial.toml", SERIAL)
    write(d / "slow.toml", SLOW_ROTATION)
    return d


def frames_bytes(folder: Path):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.name.startswith("frame_")}


def manifest_of(folder: Path):
    return read_manifest(str(folder / MANIFEST))


# ---------------------------------------------------------------------------
# the experiment file
# ---------------------------------------------------------------------------

def test_rotation_frames_are_cli_argument_lists(work):
    spec = load_spec(str(work / "rotation.toml"))
    assert spec.kind == "rotation" and spec.count == 6
    f3 = spec.frame(3)
    assert f3.args[-8:] == ["-phi", "11.5", "-osc", "0.5", "-phisteps", "1", "-seed", "10"]
    assert f3.args[:7] == ["-cell", "70", "80", "90", "75", "85", "95"]
    assert f3.file == "frame_00004.img"
    assert f3.output_args("smv", True) == ["-nopgm", "-noisefile", "frame_00004.img"]
    assert f3.params == {"phi": 11.5, "osc": 0.5, "phisteps": 1, "seed": 10}


def test_serial_draws_are_seeded_and_independent(work):
    spec = load_spec(str(work / "serial.toml"))
    a = [spec.frame(i) for i in range(4)]
    b = [load_spec(str(work / "serial.toml")).frame(i) for i in range(4)]
    assert [f.args for f in a] == [f.args for f in b]
    assert len({tuple(f.params["misset"]) for f in a}) == 4
    for f in a:
        p = f.params
        assert 3 <= p["N"] <= 6 and p["mosaic"] >= 0 and abs(p["lambda"] - 1) < 0.1
        assert abs(p["Xbeam"] - 12.85) < 0.5 and abs(p["Ybeam"] - 12.85) < 0.5  # (25.6 + 0.4) / 2 mm
        for key in ("-misset", "-N", "-mosaic", "-mosaic_dom", "-lambda", "-Xbeam", "-Ybeam", "-mosaic_seed"):
            assert key in f.args
        assert f.args[-2:] == ["-seed", str(f.seed)]
    # more shots leave the first ones alone
    doc = __import__("tomllib").loads(textwrap.dedent(SERIAL))
    doc["serial"]["shots"] = 10
    more = spec_from_dict(doc, str(work))
    assert [more.frame(i).args for i in range(4)] == [f.args for f in a]
    assert more.identity_sha256() == spec.identity_sha256()


def test_misset_convention_matches_the_cli():
    """The drawn rotation U equals the C's misset: about x, then y, then z."""
    import torch
    from nanobragg_torch.physics.rotation import rotate_xyz
    for i in range(20):
        U = random_rotation(frame_rng(3, i, "orientation"))
        assert np.allclose(U @ U.T, np.eye(3)) and abs(np.linalg.det(U) - 1) < 1e-12
        rx, ry, rz = (math.radians(a) for a in misset_angles(U))
        eye = torch.eye(3, dtype=torch.float64)
        rotated = rotate_xyz(eye, rx, ry, rz).numpy()        # rows: images of the basis vectors
        assert np.allclose(rotated.T, U, atol=1e-12)


def test_uniform_rotations_cover_so3():
    z = np.array([random_rotation(frame_rng(5, i, "orientation"))[:, 2] for i in range(4000)])
    assert abs(z[:, 2].mean()) < 0.05 and abs((z[:, 2] ** 2).mean() - 1 / 3) < 0.03


@pytest.mark.parametrize("table,msg", [
    ("[setup]\nfloatfile = 'x.bin'\n[rotation]\nosc = 1\nframes = 2\n", "-floatfile"),
    ("[setup]\nseed = 3\n[rotation]\nosc = 1\nframes = 2\n", "[noise] seed"),
    ("[rotation]\nosc = 1\nframes = 2\n[serial]\nshots = 2\n", "exactly one"),
    ("[rotation]\nosc = 1\n", "'frames'"),
    ("[serial]\nshots = 2\nmosaic = {dist = 'gamma', k = 1}\n", "'dist'"),
    ("[serial]\nshots = 2\nsize = 3\n", "unknown keys"),
    ("[setup]\nmisset = 'random'\n[rotation]\nosc = 1\nframes = 2\n", "-misset_seed"),
    ("[rotation]\nosc = 1\nframes = 2\n[output]\nformat = 'float'\n[noise]\nenabled = true\n", "noiseless"),
    ("[rotation]\nosc = 1\nframes = 2\n[setup]\nformat = 'cbf'\n", "[output] format"),
    ("[rotation]\nosc = 1\nframes = 2\n[output]\nname = 'same'\n", "distinct"),
])
def test_bad_experiment_files_are_reported(tmp_path, table, msg):
    p = write(tmp_path / "bad.toml", table)
    with pytest.raises(SpecError) as e:
        load_spec(str(p))
    assert msg in str(e.value)


def test_bad_setup_flag_is_reported_before_rendering(tmp_path, capsys):
    p = write(tmp_path / "bad.toml", "[setup]\ncell = [70, 80, 90, 90, 90, 90]\nbogus = 3\ndefault_F = 1\n"
                                     "[rotation]\nosc = 1\nframes = 2\n")
    assert ds_main([str(p), str(tmp_path / "out")]) == 2
    assert "unknown flag '-bogus'" in capsys.readouterr().err
    assert not (tmp_path / "out" / MANIFEST).exists()


# ---------------------------------------------------------------------------
# bookkeeping with a stand-in renderer (fast)
# ---------------------------------------------------------------------------

def _fake_render(fail=None):
    calls = []

    def fake(jobs, fmt, noise, cwd, device, realism=None):
        out = []
        for job in jobs:
            calls.append(job.index)
            if fail is not None and fail(job.index, calls):
                raise RuntimeError(f"boom {job.index}")
            data = ("%s|%s" % (job.file, " ".join(job.args))).encode()
            out.append(ds_render.RenderedFrame(index=job.index, file=job.file, data=data,
                                               sha256=__import__("hashlib").sha256(data).hexdigest(),
                                               device="cpu", seconds=0.0, worker="fake"))
        return out
    return fake, calls


def test_retries_and_failure_report(work, tmp_path, monkeypatch):
    # frame 1 fails once (retried), frame 2 always fails
    fake, calls = _fake_render(lambda i, calls: i == 2 or (i == 1 and calls.count(1) == 1))
    monkeypatch.setattr(ds_runner, "render_batch", fake)
    out = io.StringIO()
    s = render_dataset(str(work / "rotation.toml"), str(tmp_path / "ds"), retries=1, progress=out)
    assert s.rendered == 5 and list(s.failed) == [2] and "boom 2" in s.failed[2]
    assert calls.count(1) == 2 and calls.count(2) == 2
    text = out.getvalue()
    assert "frame_00003.img  FAILED: RuntimeError: boom 2 (after 1 retries)" in text
    assert "failed 1" in text and "images/s" in text
    fails = [json.loads(x) for x in (tmp_path / "ds" / "failures.jsonl").read_text().splitlines()]
    assert [f["index"] for f in fails] == [2]
    # the rerun renders only the failed frame
    fake2, calls2 = _fake_render()
    monkeypatch.setattr(ds_runner, "render_batch", fake2)
    s2 = render_dataset(str(work / "rotation.toml"), str(tmp_path / "ds"), progress=None)
    assert calls2 == [2] and s2.skipped == 5 and s2.rendered == 1 and not s2.failed


def test_resume_checks_files_and_tolerates_a_cut_manifest_line(work, tmp_path, monkeypatch):
    fake, calls = _fake_render()
    monkeypatch.setattr(ds_runner, "render_batch", fake)
    folder = tmp_path / "ds"
    render_dataset(str(work / "rotation.toml"), str(folder), progress=None)
    assert calls == list(range(6))
    # damage: frame 1's file changed, frame 4's file gone, a line cut short at the end
    (folder / "frame_00002.img").write_bytes(b"corrupt")
    (folder / "frame_00005.img").unlink()
    with open(folder / MANIFEST, "ab") as fh:
        fh.write(b'{"index": 5, "file": "frame_0')
    assert verify_dataset(str(work / "rotation.toml"), str(folder)) == {"ok": [0, 2, 3, 5], "bad": [1, 4],
                                                                         "missing": []}
    calls.clear()
    s = render_dataset(str(work / "rotation.toml"), str(folder), progress=None)
    assert sorted(calls) == [1, 4] and s.skipped == 4
    lines = (folder / MANIFEST).read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(x) for x in lines[:-1])   # the cut line is gone
    assert verify_dataset(str(work / "rotation.toml"), str(folder))["ok"] == list(range(6))


def test_an_other_experiment_is_refused(work, tmp_path, monkeypatch):
    fake, _ = _fake_render()
    monkeypatch.setattr(ds_runner, "render_batch", fake)
    render_dataset(str(work / "rotation.toml"), str(tmp_path / "ds"), progress=None, frames=[0])
    other = write(tmp_path / "other.toml", ROTATION.replace("osc = 0.5", "osc = 0.25"))
    with pytest.raises(SpecError, match="different experiment"):
        render_dataset(str(other), str(tmp_path / "ds"), progress=None)


# ---------------------------------------------------------------------------
# real renders: local, Dask, CLI reproduction, interruption
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local(work):
    """Both series rendered in this process (the reference for everything below)."""
    out = {}
    for name in ("rotation", "serial"):
        before = ds_render.RENDER_COUNT["n"]
        s = render_dataset(str(work / f"{name}.toml"), str(work / f"local_{name}"), progress=None)
        assert s.rendered == s.total and not s.failed
        assert ds_render.RENDER_COUNT["n"] - before == s.total
        out[name] = work / f"local_{name}"
    return out


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as c, distributed.Client(c) as client:
        yield client


@pytest.mark.parametrize("name", ["rotation", "serial"])
def test_dask_cluster_gives_byte_identical_frames(work, local, cluster, name):
    folder = work / f"dask_{name}"
    s = render_dataset(str(work / f"{name}.toml"), str(folder), client=cluster, progress=None)
    assert s.rendered == s.total and not s.failed and s.where.startswith("Dask")
    ref, got = frames_bytes(local[name]), frames_bytes(folder)
    assert len(ref) == s.total and got.keys() == ref.keys()
    for k in ref:
        assert got[k] == ref[k], k
    workers = {r["worker"] for r in manifest_of(folder)}
    assert all(w.startswith("tcp://") for w in workers)
    ref_sums = {r["index"]: r["sha256"] for r in manifest_of(local[name])}
    assert {r["index"]: r["sha256"] for r in manifest_of(folder)} == ref_sums


def test_dask_failures_are_reported_per_frame(work, cluster, tmp_path):
    s = render_dataset(str(work / "serial.toml"), str(tmp_path / "ds"), client=cluster, frames=[0, 1],
                       device="cuda:7", retries=1, progress=None)
    assert sorted(s.failed) == [0, 1] and s.rendered == 0
    assert all("CUDA" in err or "cuda" in err for err in s.failed.values())


@pytest.mark.parametrize("name,index", [("rotation", 4), ("serial", 2)])
def test_manifest_reproduces_a_frame_through_the_plain_cli(local, tmp_path, name, index):
    from nanobragg_torch.cli.main import run
    rec = latest_records(manifest_of(local[name]))[index]
    assert rec["cli"].startswith("nanoBragg ") and rec["cli_reproduces"] == "file"
    rc = run(rec["args"] + rec["output_args"], out=io.StringIO(), cwd=str(tmp_path))
    assert rc == 0
    assert (tmp_path / rec["file"]).read_bytes() == (local[name] / rec["file"]).read_bytes()


def test_float_and_int_smv_frames_match_the_cli(work, tmp_path):
    """The other output paths: the raw float image and the SMV integer image (no noise)."""
    from nanobragg_torch.cli.main import run
    for fmt in ("float", "smv"):
        toml = write(tmp_path / f"{fmt}.toml", SERIAL + f'\n[output]\nformat = "{fmt}"\n')
        folder = tmp_path / f"ds_{fmt}"
        render_dataset(str(toml), str(folder), frames=[1], progress=None)
        rec = latest_records(manifest_of(folder))[1]
        assert "-nonoise" in rec["output_args"]
        cwd = tmp_path / f"cli_{fmt}"
        cwd.mkdir()
        assert run(rec["args"] + rec["output_args"], out=io.StringIO(), cwd=str(cwd)) == 0
        assert (cwd / rec["file"]).read_bytes() == (folder / rec["file"]).read_bytes()


@pytest.mark.parametrize("fmt", ["cbf", "h5"])
def test_container_formats_match_the_cli(work, tmp_path, fmt):
    """CBF and NeXus frames are what the CLI writes for the same -noisefile name."""
    pytest.importorskip("fabio" if fmt == "cbf" else "h5py")
    from nanobragg_torch.cli.main import run
    toml = write(tmp_path / "exp.toml", ROTATION + f'\n[output]\nformat = "{fmt}"\n')
    folder = tmp_path / "ds"
    s = render_dataset(str(toml), str(folder), frames=[2], progress=None)
    assert s.rendered == 1 and not s.failed, s.failed
    rec = latest_records(manifest_of(folder))[2]
    assert rec["file"] == f"frame_00003.{fmt}" and rec["output_args"][-2:] == ["-noisefile", rec["file"]]
    cwd = tmp_path / "cli"
    cwd.mkdir()
    assert run(rec["args"] + rec["output_args"], out=io.StringIO(), cwd=str(cwd)) == 0
    mine, theirs = folder / rec["file"], cwd / rec["file"]
    if fmt == "cbf":
        assert rec["cli_reproduces"] == "file"
        assert mine.read_bytes() == theirs.read_bytes()
    else:
        import h5py
        assert rec["cli_reproduces"] == "pixels"
        with h5py.File(mine, "r") as a, h5py.File(theirs, "r") as b:
            assert np.array_equal(a["entry/data/data"][()], b["entry/data/data"][()])


def test_dry_run_prints_every_frame_command(work, capsys):
    assert ds_main([str(work / "serial.toml"), str(work / "unused"), "--dry-run", "--frames", "1:3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    spec = load_spec(str(work / "serial.toml"))
    assert lines == ["nanoBragg " + " ".join(spec.frame(i).args + spec.frame(i).output_args("smv", False))
                     for i in (1, 2)]
    assert not (work / "unused").exists()


def test_interrupted_run_resumes_without_rendering_twice(work, local, tmp_path):
    """An interruption injected after 2 frames; the rerun renders only the rest."""
    folder = tmp_path / "ds"

    def stop(rec, seen=[]):
        seen.append(rec["index"])
        if len(seen) == 2:
            raise KeyboardInterrupt
    s1 = render_dataset(str(work / "rotation.toml"), str(folder), progress=None, _after_frame=stop)
    assert s1.interrupted and s1.rendered == 2
    before = ds_render.RENDER_COUNT["n"]
    s2 = render_dataset(str(work / "rotation.toml"), str(folder), progress=None)
    assert s2.skipped == 2 and s2.rendered == 4 and ds_render.RENDER_COUNT["n"] - before == 4
    idx = [r["index"] for r in manifest_of(folder)]
    assert sorted(idx) == list(range(6))                       # one line per frame: none rendered twice
    assert frames_bytes(folder) == frames_bytes(local["rotation"])


def test_killed_process_resumes_every_frame_correct(work, tmp_path):
    """SIGKILL a real run once two frames are recorded; the rerun completes it."""
    exp = str(work / "slow.toml")
    folder = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "nanobragg_torch.dataset.cli", exp, str(folder), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = folder / MANIFEST
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and manifest.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    first = latest_records(manifest_of(folder))
    assert 2 <= len(first) < 6
    before = ds_render.RENDER_COUNT["n"]
    s = render_dataset(exp, str(folder), progress=None)
    assert s.skipped == len(first) and s.rendered == 6 - len(first) and not s.failed
    assert ds_render.RENDER_COUNT["n"] - before == 6 - len(first)
    recs = manifest_of(folder)
    assert sorted(r["index"] for r in recs) == list(range(6))   # finished frames were not rendered again
    for r in recs:
        if r["index"] in first:
            assert r["run"] == first[r["index"]]["run"]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    # every frame correct: the same bytes as an uninterrupted run
    ref = tmp_path / "reference"
    render_dataset(exp, str(ref), progress=None)
    assert frames_bytes(folder) == frames_bytes(ref)
