"""Per-pixel detector factors: solid angle and sensor absorption."""
from __future__ import annotations

import torch


def solid_angle(pixel_size, airpath: torch.Tensor, close_distance, point_pixel: bool = False) -> torch.Tensor:
    """Solid angle (sr) of a pixel seen from the sample: (pixel/R)^2 * close_distance/R.

    With ``point_pixel`` the obliquity factor is dropped: 1/R^2.
    """
    if point_pixel:
        return 1.0 / (airpath * airpath)
    return pixel_size * pixel_size / (airpath * airpath) * close_distance / airpath


def capture_fraction(layer, thickstep, mu, parallax: torch.Tensor) -> torch.Tensor:
    """Fraction of photons absorbed in sensor layer ``layer`` (0-based).

    exp(-t*dt*mu/p) - exp(-(t+1)*dt*mu/p), with p = |cos| of the ray's angle to the
    sensor normal.  The C program uses the signed cosine: a ray that reaches the
    sensor from behind (a -curved_det pixel past the plane's horizon) then gets a
    negative capture fraction of ~exp(+dt*mu/|p|), which overflows to -inf or NaN.
    The path through a slab is dt/|p| from either side, so |p| is used.  A grazing
    ray (p = 0) is absorbed entirely in the first layer it meets; a sensor of zero optical
    depth (thickness x mu underflowing to 0) absorbs nothing, whatever the angle.
    """
    p = torch.abs(parallax)
    tm = torch.as_tensor(thickstep * mu, dtype=p.dtype, device=p.device)
    # +inf where p == 0 (a grazing ray); a layer of zero optical depth absorbs nothing, even then
    a = torch.where(tm == 0, torch.zeros_like(p), tm / p)
    layer = torch.as_tensor(layer, dtype=p.dtype, device=p.device)
    front = torch.where(layer == 0, torch.ones_like(a), torch.exp(-layer * a))   # 0 * inf would be NaN
    return front - torch.exp(-(layer + 1) * a)
