"""The refinement example (issue 5): distance, beam centre, cell and orientation recovered from an image.

Runs ``examples/refine_geometry.py`` on its default case (a 100 x 100 still
image, noise-free target) and checks the acceptance tolerances: distance
within 0.05 mm, beam centre within 0.05 pixel, cell lengths within 0.1 %,
orientation within 0.01 degree, from starting errors of 1 mm, 2 pixels, 1 %
and 0.5 degree, in under 2 minutes of CPU time.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "refine_geometry.py"
from conftest import TEST_DEVICE as DEVICE, requires_test_device  # noqa: E402


def _load():
    spec = importlib.util.spec_from_file_location("refine_geometry", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@requires_test_device
def test_refinement_recovers_geometry(one_thread):
    mod = _load()
    res = mod.refine(noise=False, seed=0, verbose=False, device=DEVICE)
    print("\n" + mod.table(res))
    for key, tol in mod.TOLERANCES.items():
        assert res["errors"][key] <= tol, f"{key}: error {res['errors'][key]:.3g} > {tol}"
    # starting errors as specified
    assert abs(res["start"]["distance_mm"] - res["true"]["distance_mm"]) == pytest.approx(1.0)
    assert abs(res["start"]["beam_f_px"] - res["true"]["beam_f_px"]) == pytest.approx(2.0)
    assert abs(res["start"]["a"] / res["true"]["a"] - 1) == pytest.approx(0.01)
    assert res["orientation_error_start_deg"] == pytest.approx(0.5)
    assert res["cpu_seconds"] < 120.0
