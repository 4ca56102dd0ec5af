"""Rotations of 3-vectors, in the C program's conventions (right-handed, radians).

All functions broadcast over leading dimensions: ``v`` has shape (..., 3).
"""
from __future__ import annotations

import torch


def _as_tensor(x, like: torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(dtype=like.dtype, device=like.device)
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


def rotate_xyz(v: torch.Tensor, rotx, roty, rotz) -> torch.Tensor:
    """Rotate ``v`` about the lab x axis by ``rotx``, then y by ``roty``, then z by ``rotz``.

    Each angle is a float or a scalar tensor (radians); gradients flow to tensors.
    """
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    rx, ry, rz = (_as_tensor(a, v) for a in (rotx, roty, rotz))
    cx, sx = torch.cos(rx), torch.sin(rx)
    y, z = y * cx - z * sx, y * sx + z * cx
    cy, sy = torch.cos(ry), torch.sin(ry)
    x, z = x * cy + z * sy, -x * sy + z * cy
    cz, sz = torch.cos(rz), torch.sin(rz)
    x, y = x * cz - y * sz, x * sz + y * cz
    return torch.stack([x, y, z], dim=-1)


def rotate_axis(v: torch.Tensor, axis: torch.Tensor, phi) -> torch.Tensor:
    """Rotate ``v`` (..., 3) by ``phi`` (radians; broadcastable to v[..., 0]) about the unit ``axis``.

    Rodrigues' formula, written in the same order of operations as the C program.
    """
    axis = _as_tensor(axis, v)
    phi = _as_tensor(phi, v)
    s, c = torch.sin(phi), torch.cos(phi)
    ax, ay, az = axis[..., 0], axis[..., 1], axis[..., 2]
    vx, vy, vz = v[..., 0], v[..., 1], v[..., 2]
    dot = (ax * vx + ay * vy + az * vz) * (1.0 - c)
    return torch.stack([
        ax * dot + vx * c + (-az * vy + ay * vz) * s,
        ay * dot + vy * c + (az * vx - ax * vz) * s,
        az * dot + vz * c + (-ay * vx + ax * vy) * s,
    ], dim=-1)


def axis_rotation_matrix(axis: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Matrices (..., 3, 3) that rotate column vectors by ``phi`` about ``axis``."""
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device)
    cols = rotate_axis(eye, axis, phi.unsqueeze(-1))   # (..., 3 basis, 3)
    return cols.transpose(-1, -2)


def unitize(v: torch.Tensor):
    """(unit vector, magnitude); a zero vector stays zero (as in the C)."""
    mag = torch.linalg.vector_norm(v, dim=-1)
    safe = torch.where(mag == 0, torch.ones_like(mag), mag)
    u = torch.where((mag == 0).unsqueeze(-1), torch.zeros_like(v), v / safe.unsqueeze(-1))
    return u, mag
