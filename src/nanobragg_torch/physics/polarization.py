"""Polarization factor of the scattered intensity (Kahn et al. 1982 parameterisation)."""
from __future__ import annotations

import torch


def polarization_factor(kahn_factor, incident: torch.Tensor, diffracted: torch.Tensor,
                        axis: torch.Tensor) -> torch.Tensor:
    """0.5 (1 + cos^2 2theta - K cos(2 psi) sin^2 2theta).

    incident, diffracted: unit vectors (..., 3) that broadcast against each
    other (pass one incident direction as (3,), not expanded: the frame below is
    then built once); axis: the beam's polarization (E-vector) direction (3,).
    psi is the azimuth of the diffracted ray about the incident beam, measured
    from the E-vector.  K = 0 gives an unpolarized beam.
    """
    cos2t = (incident * diffracted).sum(-1)
    cos2t_sqr = cos2t * cos2t
    sin2t_sqr = 1 - cos2t_sqr
    if not isinstance(kahn_factor, torch.Tensor) and kahn_factor == 0:
        return 0.5 * (1.0 + cos2t_sqr)
    axis = axis.to(incident.dtype).expand_as(incident)
    B_in = torch.linalg.cross(axis, incident, dim=-1)
    B_in = B_in / torch.linalg.vector_norm(B_in, dim=-1, keepdim=True).clamp_min(torch.finfo(incident.dtype).tiny)
    E_in = torch.linalg.cross(incident, B_in, dim=-1)
    E_in = E_in / torch.linalg.vector_norm(E_in, dim=-1, keepdim=True).clamp_min(torch.finfo(incident.dtype).tiny)
    E_out = (diffracted * E_in).sum(-1)
    B_out = (diffracted * B_in).sum(-1)
    psi = -torch.atan2(B_out, E_out)
    return 0.5 * (1.0 + cos2t_sqr - kahn_factor * torch.cos(2 * psi) * sin2t_sqr)
