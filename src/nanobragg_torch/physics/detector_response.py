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


def capture_fraction(layer: torch.Tensor, thickstep, mu, parallax: torch.Tensor) -> torch.Tensor:
    """Fraction of photons absorbed in sensor layer ``layer`` (0-based).

    exp(-t*dt*mu/p) - exp(-(t+1)*dt*mu/p), with p = cos of the ray's angle to the
    sensor normal.
    """
    return (torch.exp(-layer * thickstep * mu / parallax)
            - torch.exp(-(layer + 1) * thickstep * mu / parallax))
