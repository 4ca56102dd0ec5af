"""Crystal model: unit cell and orientation, crystal size, mosaic domains, phi sweep.

The lattice is built the way the reference program builds it:

* from a cell (a, b, c, alpha, beta, gamma) the reciprocal vectors are placed
  in the standard frame (a* along x, b* in the x-y plane), or they are read
  from a MOSFLM A matrix;
* misset angles rotate the reciprocal vectors about x, then y, then z (and an
  optional rotation vector, ``rotvec``, rotates them further);
* real-space vectors are rebuilt from the reciprocal ones (with the user's
  cell lengths and volume enforced), and the reciprocal ones again from them;
* at each phi step the real-space vectors are rotated about the spindle axis,
  then by each mosaic domain's rotation matrix.

Mosaic domains are reparameterised for differentiation: each domain's random
rotation is stored as its axis and its angle as a fraction of the spread, so
a spread that requires grad rebuilds the matrices as ``R(axis, fraction *
spread)``.  With a spread that does not require grad the stored matrices (the
C generator's, bit for bit) are used unchanged.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..config import CrystalConfig
from ..physics.rotation import rotate_axis, rotate_xyz
from .base import TensorModel, as_tensor, needs_grad, to_float

DBL_MIN = 2.2250738585072014e-308


def _rescale(v: torch.Tensor, mag) -> torch.Tensor:
    old = torch.linalg.vector_norm(v)
    old = torch.where(old <= 0, torch.ones_like(old), old)
    return mag / old * v


@dataclass
class Lattice:
    """Real and reciprocal lattice of the unrotated (phi = 0) crystal."""
    a: torch.Tensor          # (3,) metres
    b: torch.Tensor
    c: torch.Tensor
    a_star: torch.Tensor     # (3,) 1/Angstrom
    b_star: torch.Tensor
    c_star: torch.Tensor
    V_cell: torch.Tensor     # Angstrom^3

    def real_matrix(self):
        return torch.stack([self.a, self.b, self.c])

    def reciprocal_matrix(self):
        return torch.stack([self.a_star, self.b_star, self.c_star])


def cell_to_reciprocal(a, b, c, alpha, beta, gamma):
    """Reciprocal vectors (1/Angstrom) in the standard frame, and the cell volume (Angstrom^3)."""
    aavg = (alpha + beta + gamma) / 2
    skew = torch.sin(aavg) * torch.sin(aavg - alpha) * torch.sin(aavg - beta) * torch.sin(aavg - gamma)
    skew = torch.abs(skew)
    V = 2.0 * a * b * c * torch.sqrt(skew)
    V = torch.where(V <= 0, torch.full_like(V, DBL_MIN), V)
    Vs = 1.0 / V
    as_len = (b * c * torch.sin(alpha) * Vs).abs()
    bs_len = (c * a * torch.sin(beta) * Vs).abs()
    cs_len = (a * b * torch.sin(gamma) * Vs).abs()
    sin_gs = torch.clamp(c * Vs / as_len / bs_len, -1.0, 1.0)
    cos_as = (torch.cos(beta) * torch.cos(gamma) - torch.cos(alpha)) / (torch.sin(beta) * torch.sin(gamma))
    cos_bs = (torch.cos(gamma) * torch.cos(alpha) - torch.cos(beta)) / (torch.sin(gamma) * torch.sin(alpha))
    cos_gs = (torch.cos(alpha) * torch.cos(beta) - torch.cos(gamma)) / (torch.sin(alpha) * torch.sin(beta))
    one = torch.ones_like(cos_as)
    cos_as = torch.where(cos_as * cos_as > 1.0, one, cos_as)
    cos_bs = torch.where(cos_bs * cos_bs > 1.0, one, cos_bs)
    cos_gs = torch.where(cos_gs * cos_gs > 1.0, one, cos_gs)
    zero = torch.zeros_like(as_len)
    a_star = torch.stack([as_len, zero, zero])
    b_star = torch.stack([bs_len * cos_gs, bs_len * sin_gs, zero])
    c_star = torch.stack([cs_len * cos_bs,
                          cs_len * (cos_as - cos_bs * cos_gs) / sin_gs,
                          cs_len * V / (a * b * c * sin_gs)])
    return a_star, b_star, c_star, V


def rotvec_matrix(r: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (3, 3) of the rotation vector ``r`` (3,) (axis times angle, radians).

    Smooth everywhere, including r = 0 (series expansions below 1e-4 rad).
    """
    th2 = (r * r).sum()
    small = th2 < 1e-8
    safe = torch.where(small, torch.ones_like(th2), th2)
    th = torch.sqrt(safe)
    sinc = torch.where(small, 1.0 - th2 / 6.0, torch.sin(th) / th)
    cosc = torch.where(small, 0.5 - th2 / 24.0, (1.0 - torch.cos(th)) / safe)
    z = torch.zeros_like(th2)
    K = torch.stack([torch.stack([z, -r[2], r[1]]),
                     torch.stack([r[2], z, -r[0]]),
                     torch.stack([-r[1], r[0], z])])
    eye = torch.eye(3, dtype=r.dtype, device=r.device)
    return eye + sinc * K + cosc * (K @ K)


def axis_angle_matrices(axes: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (D, 3, 3) about unit ``axes`` (D, 3) by ``angles`` (D,), as the C builds them."""
    c, s = torch.cos(angles), torch.sin(angles)
    omc = 1.0 - c
    x, y, z = axes[:, 0], axes[:, 1], axes[:, 2]
    return torch.stack([
        torch.stack([c + omc * x * x, omc * x * y - s * z, omc * x * z + s * y], -1),
        torch.stack([omc * x * y + s * z, c + omc * y * y, omc * y * z - s * x], -1),
        torch.stack([omc * x * z - s * y, omc * y * z + s * x, c + omc * z * z], -1),
    ], -2)


def matrices_to_axis_angle(umats: np.ndarray):
    """Axes (D, 3) and angles (D,) of rotation matrices (D, 3, 3); identity gives axis (0, 0, 1), angle 0."""
    U = np.asarray(umats, dtype=np.float64).reshape(-1, 3, 3)
    w = np.stack([U[:, 2, 1] - U[:, 1, 2], U[:, 0, 2] - U[:, 2, 0], U[:, 1, 0] - U[:, 0, 1]], -1)
    sin2 = np.linalg.norm(w, axis=-1)                     # 2 sin(angle)
    cos2 = np.trace(U, axis1=1, axis2=2) - 1.0           # 2 cos(angle)
    angle = np.arctan2(sin2, cos2)
    axes = np.where(sin2[:, None] > 0, w / np.where(sin2 > 0, sin2, 1.0)[:, None], np.array([0.0, 0.0, 1.0]))
    return axes, angle


def mosaic_domain_matrices(spread: float, domains: int, seed: int = -12345678) -> np.ndarray:
    """The C program's mosaic domain rotations (domains, 3, 3) for ``spread`` (rad).

    ``seed`` is the value the C stores (the negated ``-mosaic_seed``; default
    the C's).  A fresh generator is used, as in a run without a random misset;
    domain 0 is the identity.
    """
    from ..rng import CRandom, SeedStream
    rng = CRandom()
    stream = SeedStream(seed)
    out = np.zeros((domains, 3, 3))
    for d in range(domains):
        out[d] = rng.mosaic_rotation_umat(spread, stream)
    out[0] = np.eye(3)
    return out


_CONTINUOUS = ("cell", "a_star", "misset", "rotvec", "Na", "Nb", "Nc", "sample_size", "fudge",
               "mosaic_spread", "mosaic_umats", "phi0", "phistep", "osc", "spindle_axis")
_EXTRA = ("rotvec", "mosaic_domains", "mosaic_seed", "N")


class Crystal(TensorModel):
    """A crystal (lattice, orientation, size, mosaicity and phi sweep), as a ``torch.nn.Module``.

    Build it from a :class:`~nanobragg_torch.config.CrystalConfig`, from
    keyword arguments, or both (keywords override).  Continuous fields may be
    tensors that require grad:

    ``cell`` (6 values: a, b, c in Angstrom, alpha, beta, gamma in radians)
        unit cell; default (100, 100, 100, pi/2, pi/2, pi/2);
    ``a_star`` ((3, 3), 1/Angstrom, rows a*, b*, c*; default None)
        orientation matrix (MOSFLM A matrix without the wavelength), used
        instead of the cell's standard setting;
    ``misset`` (3 values, rad, default None)
        rotations of the reciprocal lattice about x, then y, then z;
    ``rotvec`` (3-vector, rad, default None)
        a further rotation of the crystal (axis times angle, lab frame), smooth
        at zero: a convenient orientation parameter for refinement;
    ``Na``, ``Nb``, ``Nc`` (scalars, default 1; ``N`` sets all three)
        unit cells along each axis; continuous when they require grad;
    ``sample_size`` (3 values, m): when > 0, replaces N by ceil(size / cell edge);
    ``fudge`` (scalar): spot-shape width factor for the round/gauss/tophat shapes;
    ``mosaic_spread`` (scalar, rad, default 0)
        mosaic cap diameter; differentiable through the reparameterised domains;
    ``mosaic_umats`` ((D, 3, 3), default None)
        the domains' rotations; keywords ``mosaic_domains`` and ``mosaic_seed``
        draw them with the C generator instead;
    ``phi0``, ``phistep`` (scalars, rad), ``osc`` (rad, header only),
    ``spindle_axis`` (3-vector): the rotation sweep (``phisteps`` steps).

    Discrete: ``shape`` ("square", "round", "gauss", "tophat"), ``phisteps``,
    ``user_cell``, ``phi_carryover``.
    """

    _fields = _CONTINUOUS + ("mosaic_axes", "mosaic_fractions")

    def __init__(self, config: Optional[CrystalConfig] = None, **kwargs):
        super().__init__()
        self._discrete_kwargs(CrystalConfig, kwargs, _CONTINUOUS, extra=_EXTRA)   # refuses unknown keywords
        if "N" in kwargs:
            N = kwargs.pop("N")
            for k in ("Na", "Nb", "Nc"):
                kwargs.setdefault(k, N)
        domains = kwargs.pop("mosaic_domains", None)
        seed = kwargs.pop("mosaic_seed", -12345678)
        disc = {k: v for k, v in kwargs.items() if k not in _CONTINUOUS}
        cfg = CrystalConfig(**disc) if config is None else dataclasses.replace(config, **disc)
        object.__setattr__(self, "settings", cfg)
        src = config if config is not None else cfg
        for name in _CONTINUOUS:
            if name in kwargs:
                val = kwargs[name]
            else:
                val = getattr(src, name, None)
            setattr(self, name, val)
        spread0 = self.plain("mosaic_spread")
        if domains is not None:
            if spread0 > 0:
                self.mosaic_umats = mosaic_domain_matrices(spread0, int(domains), seed)
                # the draws themselves: axes and angle/spread, from the same generator at unit spread
                axes, frac = matrices_to_axis_angle(mosaic_domain_matrices(1.0, int(domains), seed))
                self.mosaic_axes, self.mosaic_fractions = axes, frac
            else:
                self.mosaic_umats = None
                self.mosaic_axes = self.mosaic_fractions = None
        else:
            self.set_mosaic_draws(spread0)

    def __setattr__(self, name, value):
        if name == "mosaic_spread":
            # a spread given as a tensor (with or without grad) rebuilds the domains from the draws;
            # a plain number keeps the stored (C generator's) matrices
            object.__setattr__(self, "_spread_is_tensor", isinstance(value, torch.Tensor))
        super().__setattr__(name, value)

    def set_mosaic_draws(self, spread0: float):
        """Store each domain's axis and angle / ``spread0`` from the current ``mosaic_umats``."""
        if self.mosaic_umats is None or spread0 <= 0:
            self.mosaic_axes = None
            self.mosaic_fractions = None
            return
        axes, angles = matrices_to_axis_angle(self.mosaic_umats.detach().cpu().numpy())
        self.mosaic_axes = axes
        self.mosaic_fractions = angles / spread0

    @property
    def mosaic_reparameterised(self) -> bool:
        """True when the domain matrices are rebuilt from the draws and the spread tensor."""
        return (self.mosaic_axes is not None
                and (self.__dict__.get("_spread_is_tensor", False) or self.requires_grad_of("mosaic_spread")))

    @property
    def shape(self) -> str:
        return self.settings.shape

    @property
    def phisteps(self) -> int:
        return self.settings.phisteps

    def to_config(self) -> CrystalConfig:
        """A :class:`CrystalConfig` holding this model's current values (``rotvec`` is not part of it)."""
        return dataclasses.replace(self.settings, **{n: getattr(self, n) for n in _CONTINUOUS if n != "rotvec"})

    # -- lattice -----------------------------------------------------------
    def lattice(self, dtype=torch.float64, device=None) -> Lattice:
        """Real (m) and reciprocal (1/Angstrom) lattice vectors before the phi/mosaic rotations."""
        c = self.settings
        device = self.device if device is None else device
        t = lambda name: self.value(name, dtype, device)
        user_cell = c.user_cell and self.cell is not None
        if user_cell:
            a_len, b_len, c_len, alpha, beta, gamma = t("cell").unbind()
            b_len = torch.where(b_len <= 0, a_len, b_len)
            c_len = torch.where(c_len <= 0, a_len, c_len)
            right = torch.full_like(alpha, math.pi / 2)
            alpha = torch.where(alpha <= 0, right, alpha)
            beta = torch.where(beta <= 0, right, beta)
            gamma = torch.where(gamma <= 0, right, gamma)
            a_star, b_star, c_star, V_user = cell_to_reciprocal(a_len, b_len, c_len, alpha, beta, gamma)
        if self.a_star is not None:
            m = t("a_star").reshape(3, 3)
            a_star, b_star, c_star = m[0], m[1], m[2]
        if self.misset is not None:
            rx, ry, rz = t("misset").unbind()
            a_star = rotate_xyz(a_star, rx, ry, rz)
            b_star = rotate_xyz(b_star, rx, ry, rz)
            c_star = rotate_xyz(c_star, rx, ry, rz)
        if self.rotvec is not None:
            R = rotvec_matrix(t("rotvec"))
            a_star, b_star, c_star = R @ a_star, R @ b_star, R @ c_star
        axb = torch.linalg.cross(a_star, b_star)
        bxc = torch.linalg.cross(b_star, c_star)
        cxa = torch.linalg.cross(c_star, a_star)
        V_star = torch.dot(a_star, bxc)
        if user_cell:
            bxc = _rescale(bxc, a_len / V_user)
            cxa = _rescale(cxa, b_len / V_user)
            axb = _rescale(axb, c_len / V_user)
            V_star = 1.0 / V_user
        V_cell = 1.0 / V_star
        a = bxc * V_cell
        b = cxa * V_cell
        cc = axb * V_cell
        a_star = torch.linalg.cross(b, cc) * V_star
        b_star = torch.linalg.cross(cc, a) * V_star
        c_star = torch.linalg.cross(a, b) * V_star
        return Lattice(a=a * 1e-10, b=b * 1e-10, c=cc * 1e-10,
                       a_star=a_star, b_star=b_star, c_star=c_star, V_cell=V_cell)

    # -- size ----------------------------------------------------------------
    def cell_counts(self, lattice: Lattice, dtype=torch.float64, device=None):
        """(Na, Nb, Nc) tensors after the sample size (if given) has been turned into unit cells."""
        device = self.device if device is None else device
        sizes = self.value("sample_size", dtype, device)
        out = []
        for name, size, vec in zip(("Na", "Nb", "Nc"), sizes.unbind(), (lattice.a, lattice.b, lattice.c)):
            N = self.value(name, dtype, device)
            if to_float(size) > 0:
                N = torch.ceil(size / torch.linalg.vector_norm(vec))
            N = torch.where(N <= 1.0, torch.ones_like(N), N)
            out.append(N)
        return tuple(out)

    # -- phi and mosaic ------------------------------------------------------
    def phi_angles(self, dtype=torch.float64, device=None) -> torch.Tensor:
        device = self.device if device is None else device
        tic = torch.arange(self.settings.phisteps, dtype=dtype, device=device)
        return self.value("phi0", dtype, device) + self.value("phistep", dtype, device) * tic

    def effective_phi(self, dtype=torch.float64, device=None, first: bool = False,
                      carryover: Optional[bool] = None) -> torch.Tensor:
        """Angles actually applied at each phi step.

        Normally the phi steps themselves.  With ``phi_carryover`` (the C
        program's bug C-PARITY-001) a step whose angle is exactly 0 is not
        rotated: it reuses the orientation of the last rotation performed,
        i.e. the previous non-zero step of this evaluation, or of the previous
        evaluation (wrapping around); for the first evaluation of the run there
        is none, and the unrotated crystal is used.

        ``carryover``: None takes ``phi_carryover`` from the settings; True/False overrides it
        (``SimulationOptions.c_legacy`` turns it on for one render).
        """
        device = self.device if device is None else device
        phi = self.phi_angles(dtype, device)
        if not (self.settings.phi_carryover if carryover is None else carryover):
            return phi
        vals = [float(x) for x in phi.detach().cpu()]
        n = len(vals)
        src = []
        for i in range(n):
            if vals[i] != 0.0:
                src.append(i)
                continue
            j = None
            order = list(range(i - 1, -1, -1)) + ([] if first else list(range(n - 1, i, -1)))
            for cand in order:
                if vals[cand] != 0.0:
                    j = cand
                    break
            src.append(j)
        zero = torch.zeros((), dtype=dtype, device=device)
        return torch.stack([phi[j] if j is not None else zero for j in src])

    def mosaic_matrices(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """Domain rotations (D, 3, 3): rebuilt from the draws and the spread when it was given as a
        tensor (see :attr:`mosaic_reparameterised`), else the stored matrices."""
        device = self.device if device is None else device
        if self.mosaic_umats is None:
            return torch.eye(3, dtype=dtype, device=device).unsqueeze(0)
        if self.mosaic_reparameterised:
            angles = self.value("mosaic_fractions", dtype, device) * self.value("mosaic_spread", dtype, device)
            return axis_angle_matrices(self.value("mosaic_axes", dtype, device), angles)
        return self.value("mosaic_umats", dtype, device)

    def rotated_lattices(self, lattice: Lattice, dtype=torch.float64, device=None,
                         first: bool = False, carryover: Optional[bool] = None) -> torch.Tensor:
        """Real-space lattice rows (a, b, c) for every (phi step, mosaic domain).

        Returns shape (phisteps * domains, 3, 3): entry [p*D + m, r] is vector r
        (0=a, 1=b, 2=c, metres) rotated by phi step p and then by domain m.
        """
        device = self.device if device is None else device
        spindle = self.value("spindle_axis", dtype, device)
        spindle = spindle / torch.linalg.vector_norm(spindle)
        phi = self.effective_phi(dtype, device, first=first, carryover=carryover)   # (P,)
        base = lattice.real_matrix().to(dtype)                                   # (3 vectors, 3)
        rot = rotate_axis(base.unsqueeze(0), spindle, phi.view(-1, 1))           # (P, 3, 3)
        U = self.mosaic_matrices(dtype, device)                                  # (D, 3, 3)
        if self.requires_grad_of("mosaic_spread") or self.plain("mosaic_spread") > 0:
            out = torch.einsum("dij,prj->pdri", U, rot)                           # (P, D, 3, 3)
        else:
            out = rot.unsqueeze(1).expand(-1, U.shape[0], -1, -1)
        return out.reshape(-1, 3, 3)

    @property
    def domains(self) -> int:
        return 1 if self.mosaic_umats is None else int(self.mosaic_umats.reshape(-1, 3, 3).shape[0])
