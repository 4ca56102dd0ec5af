"""Crystal model: unit cell and orientation, crystal size, mosaic domains, phi sweep.

The lattice is built the way the reference program builds it:

* from a cell (a, b, c, alpha, beta, gamma) the reciprocal vectors are placed
  in the standard frame (a* along x, b* in the x-y plane), or they are read
  from a MOSFLM A matrix;
* misset angles rotate the reciprocal vectors about x, then y, then z;
* real-space vectors are rebuilt from the reciprocal ones (with the user's
  cell lengths and volume enforced), and the reciprocal ones again from them;
* at each phi step the real-space vectors are rotated about the spindle axis,
  then by each mosaic domain's rotation matrix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import CrystalConfig
from ..physics.rotation import rotate_axis, rotate_xyz

DBL_MIN = 2.2250738585072014e-308


def _t(x, dtype, device):
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype, device=device)
    return torch.as_tensor(x, dtype=dtype, device=device)


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


class Crystal:
    """A crystal built from a :class:`CrystalConfig`.

    Continuous parameters (cell lengths and angles, misset angles, N, phi
    start/step, mosaic spread through the fixed unit rotations) may be tensors
    that require grad.
    """

    def __init__(self, config: CrystalConfig):
        self.config = config

    # -- lattice -----------------------------------------------------------
    def lattice(self, dtype=torch.float64, device="cpu") -> Lattice:
        c = self.config
        t = lambda x: _t(x, dtype, device)
        user_cell = c.user_cell and c.cell is not None
        if user_cell:
            a_len, b_len, c_len, alpha, beta, gamma = (t(x) for x in c.cell)
            b_len = torch.where(b_len <= 0, a_len, b_len)
            c_len = torch.where(c_len <= 0, a_len, c_len)
            right = torch.full_like(alpha, math.pi / 2)
            alpha = torch.where(alpha <= 0, right, alpha)
            beta = torch.where(beta <= 0, right, beta)
            gamma = torch.where(gamma <= 0, right, gamma)
            a_star, b_star, c_star, V_user = cell_to_reciprocal(a_len, b_len, c_len, alpha, beta, gamma)
        if c.a_star is not None:
            m = t(c.a_star)
            a_star, b_star, c_star = m[0], m[1], m[2]
        if c.misset is not None:
            rx, ry, rz = (t(x) for x in c.misset)
            a_star = rotate_xyz(a_star, rx, ry, rz)
            b_star = rotate_xyz(b_star, rx, ry, rz)
            c_star = rotate_xyz(c_star, rx, ry, rz)
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
    def cell_counts(self, lattice: Lattice, dtype=torch.float64, device="cpu"):
        """(Na, Nb, Nc) after the sample size (if given) has been turned into unit cells."""
        c = self.config
        out = []
        for N, size, vec in zip((c.Na, c.Nb, c.Nc), c.sample_size, (lattice.a, lattice.b, lattice.c)):
            if isinstance(size, torch.Tensor) or size > 0:
                N = torch.ceil(_t(size, dtype, device) / torch.linalg.vector_norm(vec))
            N = _t(N, dtype, device)
            N = torch.where(N <= 1.0, torch.ones_like(N), N)
            out.append(N if isinstance(c.Na, torch.Tensor) or isinstance(size, torch.Tensor) else N)
        return tuple(out)

    # -- phi and mosaic ------------------------------------------------------
    def phi_angles(self, dtype=torch.float64, device="cpu") -> torch.Tensor:
        c = self.config
        tic = torch.arange(c.phisteps, dtype=dtype, device=device)
        return _t(c.phi0, dtype, device) + _t(c.phistep, dtype, device) * tic

    def effective_phi(self, dtype=torch.float64, device="cpu", first: bool = False) -> torch.Tensor:
        """Angles actually applied at each phi step.

        Normally the phi steps themselves.  With ``phi_carryover`` (the C
        program's bug C-PARITY-001) a step whose angle is exactly 0 is not
        rotated: it reuses the orientation of the last rotation performed,
        i.e. the previous non-zero step of this evaluation, or of the previous
        evaluation (wrapping around); for the first evaluation of the run there
        is none, and the unrotated crystal is used.
        """
        phi = self.phi_angles(dtype, device)
        if not self.config.phi_carryover:
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

    def mosaic_matrices(self, dtype=torch.float64, device="cpu") -> torch.Tensor:
        c = self.config
        if c.mosaic_umats is None:
            return torch.eye(3, dtype=dtype, device=device).unsqueeze(0)
        return _t(c.mosaic_umats, dtype, device)

    def rotated_lattices(self, lattice: Lattice, dtype=torch.float64, device="cpu",
                         first: bool = False) -> torch.Tensor:
        """Real-space lattice rows (a, b, c) for every (phi step, mosaic domain).

        Returns shape (phisteps * domains, 3, 3): entry [p*D + m, r] is vector r
        (0=a, 1=b, 2=c, metres) rotated by phi step p and then by domain m.
        """
        c = self.config
        spindle = _t(c.spindle_axis, dtype, device)
        spindle = spindle / torch.linalg.vector_norm(spindle)
        phi = self.effective_phi(dtype, device, first=first)                     # (P,)
        base = lattice.real_matrix().to(dtype)                                   # (3 vectors, 3)
        rot = rotate_axis(base.unsqueeze(0), spindle, phi.view(-1, 1))           # (P, 3, 3)
        U = self.mosaic_matrices(dtype, device)                                  # (D, 3, 3)
        spread = c.mosaic_spread
        if isinstance(spread, torch.Tensor) or spread > 0:
            out = torch.einsum("dij,prj->pdri", U, rot)                           # (P, D, 3, 3)
        else:
            out = rot.unsqueeze(1).expand(-1, U.shape[0], -1, -1)
        return out.reshape(-1, 3, 3)
