"""Structure factors: an amplitude grid on integer (h, k, l) and a default amplitude."""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch

from ..config import StructureFactorConfig
from .base import TensorModel

_CONTINUOUS = ("grid", "default_F")


class StructureFactors(TensorModel):
    """Structure-factor amplitudes |F(hkl)|, as a ``torch.nn.Module``.

    ``grid`` ((H, K, L) amplitudes, electrons; default None)
        values at h = hkl_min[0] .. hkl_max[0] (inclusive) etc., C order; may
        be a tensor that requires grad (gradients reach it through the
        nearest-point lookup and through tricubic interpolation);
    ``default_F`` (scalar, default 0)
        amplitude off the grid (and everywhere without a grid);
    ``hkl_min``, ``hkl_max`` (3 ints each), ``interpolate`` (bool, default False)
        tricubic interpolation between grid points (the C switches it off for
        good at the first 4x4x4 neighbourhood that leaves the grid).

    ``StructureFactors.from_arrays(hkl, F)`` builds the grid from a reflection list.
    """

    _fields = _CONTINUOUS

    def __init__(self, config: Optional[StructureFactorConfig] = None, **kwargs):
        super().__init__()
        disc = self._discrete_kwargs(StructureFactorConfig, kwargs, _CONTINUOUS)
        cfg = StructureFactorConfig(**disc) if config is None else dataclasses.replace(config, **disc)
        grid = kwargs["grid"] if "grid" in kwargs else (config.grid if config is not None else None)
        if grid is not None and tuple(cfg.hkl_max) == (-1, -1, -1) and tuple(cfg.hkl_min) == (0, 0, 0):
            cfg.hkl_max = tuple(int(n) - 1 for n in grid.shape)
        object.__setattr__(self, "settings", cfg)
        self.grid = grid
        self.default_F = kwargs["default_F"] if "default_F" in kwargs else (config or cfg).default_F

    @classmethod
    def from_arrays(cls, hkl, F, default_F: float = 0.0, interpolate: bool = False) -> "StructureFactors":
        """Grid from Miller indices ``hkl`` (n, 3 ints) and amplitudes ``F`` (n,); unlisted points get default_F."""
        hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
        lo, hi = hkl.min(0), hkl.max(0)
        shape = tuple(int(x) for x in hi - lo + 1)
        idx = torch.as_tensor(np.ravel_multi_index(tuple((hkl - lo).T), shape))
        Ft = F if isinstance(F, torch.Tensor) else torch.as_tensor(np.asarray(F, dtype=np.float64))
        grid = torch.full((int(np.prod(shape)),), float(default_F), dtype=Ft.dtype, device=Ft.device)
        grid = grid.index_put((idx.to(Ft.device),), Ft).reshape(shape)
        return cls(grid=grid, default_F=default_F, hkl_min=tuple(int(x) for x in lo),
                   hkl_max=tuple(int(x) for x in hi), interpolate=interpolate)

    @property
    def hkls(self) -> int:
        if self.grid is None:
            return 0
        return int(np.prod([mx - mn + 1 for mn, mx in zip(self.settings.hkl_min, self.settings.hkl_max)]))

    @property
    def hkl_min(self):
        return tuple(self.settings.hkl_min)

    @property
    def hkl_max(self):
        return tuple(self.settings.hkl_max)

    @property
    def interpolate(self) -> bool:
        return bool(self.settings.interpolate)

    def to_config(self) -> StructureFactorConfig:
        return dataclasses.replace(self.settings, grid=self.grid, default_F=self.default_F)
