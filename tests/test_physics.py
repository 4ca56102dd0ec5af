"""Small physics kernels against their defining formulas."""
from __future__ import annotations

import math

import pytest
import torch

from nanobragg_torch.physics.lattice import (CHEBYSHEV_MAX_N, sincg, sincg_chebyshev,
                                             sincg_chebyshev_inplace)


@pytest.mark.parametrize("N", range(1, CHEBYSHEV_MAX_N + 1))
def test_chebyshev_grating_function_equals_sin_ratio(N):
    # away from exact integers, where sin(N x)/sin(x) is 0/0 in floating point
    h = torch.linspace(-20.3, 20.7, 200_001, dtype=torch.float64)
    h = h[(h - torch.round(h)).abs() > 1e-3]
    ref = sincg(math.pi * h, N)
    assert torch.allclose(sincg_chebyshev(math.pi * h, N), ref, rtol=0, atol=1e-9 * N)
    assert torch.allclose(sincg_chebyshev_inplace(h.clone(), N), ref, rtol=0, atol=1e-9 * N)
    # the limit at the Bragg condition: |U_{N-1}(+-1)| = N
    ints = torch.arange(-5.0, 6.0, dtype=torch.float64)
    assert torch.allclose(sincg_chebyshev(math.pi * ints, N).abs(), torch.full_like(ints, float(N)))


def test_chebyshev_float32_error_is_small_against_the_peak():
    h = torch.rand(100_000, dtype=torch.float64) * 60 - 30
    for N in (2, 5, CHEBYSHEV_MAX_N):
        ref = sincg(math.pi * h, N) ** 2
        got = sincg_chebyshev_inplace(h.float(), N).double() ** 2
        assert (got - ref).abs().max() <= 1e-4 * N * N


def test_chebyshev_gradient_matches_finite_differences():
    h = (torch.rand(20, dtype=torch.float64) * 10 - 5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: sincg_chebyshev(math.pi * x, 5) ** 2, (h,))
