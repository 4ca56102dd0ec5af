"""Every command line shown in README.md and docs/*.md runs as written (issue 17).

The shell blocks (```bash / ```sh, and indented ones) of the README and the
docs are collected; each command (continuation lines joined, trailing comments
removed) runs in a clean copy of the repository (the files git tracks, as a
fresh clone has them) with ``.venv`` pointing at the running environment and its
``bin`` first on PATH, and must exit 0.  A command that cannot run here is
listed in NOT_RUN with the reason; a command that is neither run nor listed
fails the collection test, so a new example cannot go unchecked.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))

#: command (exactly as collected) -> why it is not run by this test
NOT_RUN = {
    "scripts/render_example.sh": "makes its own .venv and installs (minutes); its render command is run below",
    "scripts/run_tests.sh": "the test suite itself (CI runs it: .ci/run)",
    'python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e ".[test]"': "the install step (CI does it)",
    ".venv/bin/python -m pytest -q": "the test suite itself",
    "compare-traces py_trace.txt c_trace.txt": "needs a trace of the C program (built with -DTRACING)",
    "NB_C_BIN=/path/to/nanoBragg nb-compare --save-diff -- -cell 100 100 100 90 90 90 -default_F 100 "
    "-lambda 6.2 -N 5 -distance 100 -detpixels 256": "needs the C program (tests/test_nb_compare.py runs nb-compare)",
    "NB_C_BIN=/path/to/nanoBragg nb-compare --roi 0 127 0 127 --save-diff -- -cell 100 100 100 90 90 90 "
    "-hkl examples/P1.hkl -lambda 6.2 -N 5 -distance 100 -detpixels 256":
        "needs the C program (tests/test_nb_compare.py runs nb-compare)",
    'python ../shared/golden/compare.py ../shared/golden "nanoBragg -dtype float64"':
        "the golden suite beside the repository (tests/test_golden.py renders every case)",
    "nanobragg-dataset examples/serial.toml shots/ --scheduler tcp://head:8786": "a placeholder cluster address",
    "nanobragg-dataset examples/rotation.toml rot/ --local-cluster 4":
        "starts four worker processes (tests/test_dataset.py runs a LocalCluster)",
    "nonBragg -stol water.stol -thickness 0.1 -fluence 1e22 -detpixels 128 -pixel 0.2 -distance 100 -lambda 1":
        "reads water.stol, a file of the companion suite beside the repository (tests/test_companions.py runs it)",
    "nice -n 5 .venv/bin/python scripts/fuzz.py": "the extended random run (an hour on 2 cores); the quick one runs",
    "python examples/refine_geometry.py [--noise] [--seed S]": "a usage line ([...] = optional); run plainly below",
    "python scripts/dials_sweeps.py [--frames 20] [--out dials_sweeps] [--cases centred,offcentre,tilted]":
        "a usage line ([...] = optional) of three 20-frame DIALS sweeps (tens of minutes); "
        "tests/test_dials.py indexes a small sweep",
    "python scripts/dials_sweeps.py --frames 20 --out dials_sweeps":
        "six 20-frame DIALS sweeps (about 13 minutes on 2 cores; docs/dials.md has its output); "
        "tests/test_dials.py imports every geometry and indexes a small sweep",
}
#: extra commands: what a NOT_RUN entry stands for, run in its place
INSTEAD = [
    "python examples/refine_geometry.py",
    # the render of scripts/render_example.sh, on a smaller detector
    "mkdir -p example && cd example && ../.venv/bin/nanoBragg -cell 70 80 90 75 85 95 -default_F 100 -N 5 "
    "-lambda 1.0 -distance 100 -detpixels 128 -pixel 0.4 -misset 10 5 3 -mosaic 0.2 -mosaic_dom 5 "
    "-floatfile example.bin -intfile example.img -noisefile example_noise.img -pgmfile example.pgm -seed 1",
    "python examples/make_inputs.py && git diff --no-index --exit-code examples/A.mat examples/A.mat.orig",
]
PROGRAMS = ("nice ", "nanoBragg", "noisify", "nonBragg", "nb-compare", "compare-traces", "nanobragg-dataset", "python", "python3", "scripts/",
            ".venv/", "NB_C_BIN=", "mkdir", "cd ")


def _blocks(text: str):
    """Shell blocks: (language, lines) of every fenced block."""
    out, lang, buf, fence = [], None, None, None
    for line in text.splitlines():
        m = re.match(r"^(\s*)```(\w*)\s*$", line)
        if m and buf is None:
            lang, buf, fence = m.group(2), [], m.group(1)
            continue
        if m and buf is not None:
            out.append((lang, buf))
            buf = None
            continue
        if buf is not None:
            buf.append(line[len(fence):] if line.startswith(fence) else line.lstrip())
    return out


def commands():
    found = []
    for doc in DOCS:
        for lang, lines in _blocks(doc.read_text()):
            if lang not in ("bash", "sh", ""):
                continue
            joined, cur = [], ""
            for ln in lines:
                if ln.rstrip().endswith("\\"):
                    cur += ln.rstrip()[:-1].strip() + " "
                    continue
                joined.append((cur + ln.strip()).strip())
                cur = ""
            for cmd in joined:
                cmd = re.sub(r"\s+#.*$", "", cmd).strip()
                cmd = " ".join(cmd.split())
                if cmd and cmd.startswith(PROGRAMS):
                    found.append((doc.name, cmd))
    return found


def test_every_command_is_run_or_has_a_reason():
    cmds = [c for _, c in commands()]
    assert len(cmds) >= 15
    stale = [c for c in NOT_RUN if c not in cmds]
    assert stale == [], f"NOT_RUN lists commands no longer in the docs: {stale}"


@pytest.fixture(scope="module")
def clean_checkout(tmp_path_factory):
    """The tracked files (a fresh clone), with .venv -> this environment."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    dest = tmp_path_factory.mktemp("checkout")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    os.symlink(sys.prefix, dest / ".venv")
    shutil.copy2(dest / "examples" / "A.mat", dest / "examples" / "A.mat.orig")
    return dest


def _run(cmd, where):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("CI", None)
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
    return subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], cwd=where, env=env, capture_output=True,
                          text=True, timeout=600)


_CMDS = sorted({c for _, c in commands() if c not in NOT_RUN}) + INSTEAD

#: the full 100-frame rotation example (about 10 s on the 2-core machine): CI (CI=true) and
#: NB_DOCS_ALL=1 (scripts/check_docs.sh) run these commands exactly as written; a plain local run
#: renders their first three frames (the same command with --frames 0:3)
FULL = os.environ.get("NB_DOCS_ALL", "") not in ("", "0") or os.environ.get("CI") == "true"
SLOW = ("nanobragg-dataset examples/rotation.toml rotation_out/", "nanobragg-dataset examples/rotation.toml rot/",
        "nanobragg-dataset examples/rotation.toml rot/ --verify")


@pytest.mark.parametrize("cmd", _CMDS, ids=[c[:60] for c in _CMDS])
def test_documented_command_runs(clean_checkout, cmd):
    if cmd in SLOW and not FULL:
        if cmd.endswith("--verify"):
            pytest.skip("checks the full 100-frame dataset: NB_DOCS_ALL=1 (scripts/check_docs.sh)")
        cmd += " --frames 0:3"
    if cmd == "nanobragg-dataset examples/rotation.toml rot/ --verify":
        # verifies what the plain run wrote: make sure it ran first (frames already there are kept)
        _run("nanobragg-dataset examples/rotation.toml rot/ -q", clean_checkout)
    p = _run(cmd, clean_checkout)
    assert p.returncode == 0, f"{cmd}\nexit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    assert "Traceback" not in p.stderr
