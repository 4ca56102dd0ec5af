"""Shared fixtures: the golden suite (../shared/golden) rendered once per session."""
from __future__ import annotations

import io
import json
import os
import shlex
from pathlib import Path

import numpy as np
import pytest

# NB_GOLDEN points elsewhere (for example on a GPU machine that has a copy of the suite)
GOLDEN = Path(os.environ.get("NB_GOLDEN") or Path(__file__).resolve().parents[1].parent / "shared" / "golden")


def golden_dir() -> Path:
    """The golden folder; a missing folder fails under CI=true and skips elsewhere."""
    if not (GOLDEN / "cases.json").is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"golden reference folder missing: {GOLDEN} (required in CI)")
        pytest.skip(f"golden reference folder missing: {GOLDEN}")
    return GOLDEN


def golden_cases() -> dict:
    if not (GOLDEN / "cases.json").is_file():
        return {}
    return json.loads((GOLDEN / "cases.json").read_text())


def run_cli(args, workdir: Path):
    """Run the nanoBragg command line in-process in ``workdir``; returns (rc, stdout text)."""
    from nanobragg_torch.cli.main import run
    out = io.StringIO()
    rc = run(list(args), out=out, cwd=str(workdir))
    return rc, out.getvalue()


class GoldenRunner:
    """Renders each (case, extra flags) combination once and keeps the outputs.

    Each render asks for the fused CPU backend (``-backend fused``) explicitly, so the
    golden suite checks the default forward path; a case that backend refuses (a usage
    error naming ``-backend``, raised before anything is written) is rendered by the torch
    backend instead and recorded in ``torch_cases``.  ``NB_GOLDEN_BACKEND`` names
    another backend to put through the suite (e.g. ``torch``).
    """

    def __init__(self, root: Path):
        self.root = root
        self.cache = {}
        self.backend = os.environ.get("NB_GOLDEN_BACKEND", "fused")
        self.torch_cases = {}       # (case, extra) -> the reason the asked-for backend gave

    def render(self, case: str, extra=()):
        key = (case, tuple(extra))
        if key not in self.cache:
            g = golden_dir()
            args = shlex.split(golden_cases()[case]["args"])
            work = self.root / f"{case}{abs(hash(tuple(extra))) % 100000}"
            work.mkdir(parents=True, exist_ok=True)
            if not (work / "inputs").exists():
                os.symlink(g / "inputs", work / "inputs")
            argv = args + ["-floatfile", "float.bin", "-noprogress"] + list(extra)
            from nanobragg_torch.cli.flags import FlagError
            try:
                rc, text = run_cli(argv + ["-backend", self.backend], work)
            except FlagError as e:
                if not str(e).startswith(f"-backend {self.backend}: cannot render"):
                    raise
                self.torch_cases[key] = str(e)
                rc, text = run_cli(argv + ["-backend", "torch"], work)
            assert rc == 0, text
            img = np.fromfile(work / "float.bin", dtype="<f4")
            self.cache[key] = (work, img, text)
        return self.cache[key]


def require_fused_kernel():
    """The fused CPU kernel built and loaded: a missing compiler fails under CI=true, skips elsewhere."""
    from nanobragg_torch.backends import fused_cpu
    ok, why = fused_cpu.available()
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the fused CPU kernel is not available (required in CI): {why}")
        pytest.skip(f"the fused CPU kernel is not available: {why}")


@pytest.fixture
def fused_kernel():
    require_fused_kernel()


@pytest.fixture(scope="session")
def golden_runner(tmp_path_factory):
    golden_dir()
    return GoldenRunner(tmp_path_factory.mktemp("golden"))


# --- device under test (issue 5): NB_TEST_DEVICE=cuda runs the API/gradient tests on the GPU ---
TEST_DEVICE = os.environ.get("NB_TEST_DEVICE", "cpu")


def _device_missing() -> bool:
    import torch
    return TEST_DEVICE.startswith("cuda") and not torch.cuda.is_available()


requires_test_device = pytest.mark.skipif(_device_missing(),
                                          reason="NB_TEST_DEVICE=cuda but CUDA is not available")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny renders: one thread is faster, and immune to a busy machine's OpenMP stalls."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_sessionstart(session):
    """Build the C kernels (once per machine, into the user cache) before any test captures
    stderr: on a fresh machine the one-line build notes would otherwise land in whichever
    test renders first."""
    import contextlib
    import io
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            from nanobragg_torch.backends import cio, cnoise, fused_cpu
            fused_cpu.available()
            cio.load()
            cnoise.load()
        except Exception:       # no compiler: the tests that need a kernel say so themselves
            pass
