"""Plain configuration records, in SI units (metres, radians, photons/m^2).

They hold *resolved* values: every default and convention the C program applies
after reading its flags has already been applied (see
:mod:`nanobragg_torch.cli.resolve`).  Models turn them into tensors.

Any float field may also hold a ``torch.Tensor`` (scalar or 3-vector) that
requires grad: the models use it as given, so gradients flow back to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

R_E_SQR = 7.94079248018965e-30          # Thomson cross section (m^2)
DEFAULT_FLUENCE = 125932015286227086360700780544.0  # photons/m^2
AVOGADRO = 6.02214179e23
WATER_F = 2.57
WATER_MW = 18.0


@dataclass
class BeamConfig:
    """Incident beam and source sampling.

    ``beam_vector`` points along the beam (from source to sample).  Sources are
    either a list read from a file (``source_xyz`` positions relative to the
    sample, any length, and per-source wavelengths) or generated from the
    divergence grid and the dispersion steps, as the C program does.
    """
    wavelength: float = 1e-10
    beam_vector: Sequence[float] = (1.0, 0.0, 0.0)
    polar_vector: Sequence[float] = (0.0, 0.0, 1.0)
    polarization: float = 0.0        # Kahn factor
    nopolar: bool = False
    fluence: float = DEFAULT_FLUENCE
    # divergence grid (radians) and dispersion (fraction)
    hdivrange: float = 0.0
    hdivstep: float = 0.0
    hdivsteps: int = 1
    vdivrange: float = 0.0
    vdivstep: float = 0.0
    vdivsteps: int = 1
    round_div: bool = True
    dispersion: float = 0.0
    dispstep: float = 0.0
    dispsteps: int = 1
    source_distance: float = 10.0
    # explicit sources (from -sourcefile): positions (m) and wavelengths (m)
    source_xyz: Optional[np.ndarray] = None
    source_lambda: Optional[np.ndarray] = None
    source_weight: Optional[np.ndarray] = None   # read and reported; the C does not weight by it
    water_size: float = 0.0          # m


@dataclass
class DetectorConfig:
    """Flat (or curved) pixel-array detector, following the C geometry rules.

    ``Fbeam``/``Sbeam`` and ``Fclose``/``Sclose`` are the beam and near-point
    coordinates (m) along the fast/slow axes *before* rotations, as the C has
    them once the convention has been applied; the model rotates and pivots.
    """
    fpixels: int = 1024
    spixels: int = 1024
    pixel_size: float = 1e-4
    distance: float = 0.1
    close_distance: Optional[float] = None   # None: derived from distance
    Fbeam: float = 0.05125
    Sbeam: float = 0.05125
    Fclose: float = 0.0512
    Sclose: float = 0.0512
    Xbeam: float = 0.05125               # header value of the beam centre (m)
    Ybeam: float = 0.05125
    Xclose: float = 0.0512
    Yclose: float = 0.0512
    convention: str = "mosflm"
    pivot: str = "beam"
    fdet_vector: Sequence[float] = (0.0, 0.0, 1.0)
    sdet_vector: Sequence[float] = (0.0, -1.0, 0.0)
    odet_vector: Sequence[float] = (1.0, 0.0, 0.0)
    detector_rotx: float = 0.0
    detector_roty: float = 0.0
    detector_rotz: float = 0.0
    twotheta: float = 0.0
    twotheta_axis: Sequence[float] = (0.0, 0.0, -1.0)
    thickness: float = 0.0               # m
    mu: float = -1.0                     # attenuation coefficient (1/m)
    thicksteps: int = 1
    thickstep: float = 0.0
    curved: bool = False
    point_pixel: bool = False
    oversample: int = 1                  # <= 0: auto-select as the C does
    oversample_thick: bool = False
    oversample_polar: bool = False
    oversample_omega: bool = False
    roi: Optional[Tuple[int, int, int, int]] = None   # xmin, xmax, ymin, ymax (inclusive)
    mask: Optional[np.ndarray] = None    # (spixels, fpixels); zero = skip
    detsize_f: Optional[float] = None    # m; None = fpixels * pixel_size (the C keeps the size it was given)
    detsize_s: Optional[float] = None

    def size_f(self) -> float:
        return self.detsize_f if self.detsize_f is not None else self.pixel_size * self.fpixels

    def size_s(self) -> float:
        return self.detsize_s if self.detsize_s is not None else self.pixel_size * self.spixels


@dataclass
class CrystalConfig:
    """Crystal lattice, size, shape, mosaicity and the rotation (phi) sweep.

    The orientation comes from a cell (``cell`` = a, b, c in Angstrom and
    alpha, beta, gamma in radians) with ``misset`` angles (radians, about x,
    y, z), or from a MOSFLM A matrix (``a_star``: rows a*, b*, c* in 1/Angstrom,
    wavelength already removed).
    """
    cell: Optional[Sequence[float]] = (100.0, 100.0, 100.0, np.pi / 2, np.pi / 2, np.pi / 2)
    a_star: Optional[np.ndarray] = None  # (3,3) rows a*, b*, c* (1/Angstrom)
    user_cell: bool = True
    misset: Optional[Sequence[float]] = None
    Na: float = 1.0
    Nb: float = 1.0
    Nc: float = 1.0
    sample_size: Sequence[float] = (0.0, 0.0, 0.0)   # m; > 0 overrides N
    shape: str = "square"                # square | round | gauss | tophat
    fudge: float = 1.0
    mosaic_spread: float = 0.0           # rad
    mosaic_umats: Optional[np.ndarray] = None    # (domains, 3, 3)
    phi0: float = 0.0
    phistep: float = 0.0
    phisteps: int = 1
    osc: float = 0.0
    spindle_axis: Sequence[float] = (0.0, 0.0, 1.0)
    phi_carryover: bool = False          # reproduce C-PARITY-001


@dataclass
class StructureFactorConfig:
    """Structure factors on an integer grid h_min..h_max (inclusive) etc."""
    grid: Optional[np.ndarray] = None    # (h_range+1, k_range+1, l_range+1), C layout incl. padding slab
    hkl_min: Tuple[int, int, int] = (0, 0, 0)
    hkl_max: Tuple[int, int, int] = (-1, -1, -1)
    default_F: float = 0.0
    interpolate: bool = False

    @property
    def hkls(self) -> int:
        if self.grid is None:
            return 0
        return int(np.prod([mx - mn + 1 for mn, mx in zip(self.hkl_min, self.hkl_max)]))


@dataclass
class SimulationOptions:
    """How to compute (not what): dtype, device, chunking, C-compatibility switches."""
    dtype: str = "float64"
    device: str = "cpu"
    dmin: float = 0.0
    max_chunk_elements: Optional[int] = None   # None: engine.default_chunk_elements (2^19 CPU, 2^23 GPU)
    progress: bool = False
    compile: bool = False                 # fused kernels via torch.compile (engine.render's compiled)
    backend: str = "auto"                 # auto | torch | fused | compile (nanobragg_torch.backends)
    # Reproduce the unmodified C program's known bugs, all at once (CLI -c_legacy): the phi = 0
    # carry-over (C-PARITY-001) and the compounding of the -oversample_thick/_polar/_omega factors.
    c_legacy: bool = False
