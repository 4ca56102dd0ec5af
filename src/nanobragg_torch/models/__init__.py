"""Models: the beam, detector, crystal and structure factors as ``torch.nn.Module`` objects.

Each is built from a configuration record of :mod:`nanobragg_torch.config`
and/or keyword arguments; continuous fields are tensors that may require grad
(see :mod:`nanobragg_torch.models.base`).
"""
from .beam import Beam, Sources
from .crystal import Crystal, Lattice
from .detector import Detector, DetectorGeometry
from .structure_factors import StructureFactors

__all__ = ["Beam", "Sources", "Crystal", "Lattice", "Detector", "DetectorGeometry", "StructureFactors"]
