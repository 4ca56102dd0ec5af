"""nanobragg-torch: a differentiable PyTorch reimplementation of nanoBragg.

Python API (see docs/api.md): models :class:`Beam`, :class:`Detector`,
:class:`Crystal`, :class:`StructureFactors` (``torch.nn.Module`` objects whose
continuous fields may require grad), the function :func:`simulate` and its
module wrapper :class:`Simulator`, and :func:`from_args` to build the models
from nanoBragg command-line flags.
"""
from .config import (BeamConfig, CrystalConfig, DetectorConfig, SimulationOptions,
                     StructureFactorConfig)
from .models import Beam, Crystal, Detector, StructureFactors
from .simulator import SimulationResult, Simulator, simulate
from .api import Setup, from_args
from .noisify import Noisify, noisify
from .models.amorphous import AmorphousSample, AmorphousScatter, StolTable, amorphous_image

__all__ = ["BeamConfig", "CrystalConfig", "DetectorConfig", "SimulationOptions",
           "StructureFactorConfig", "Beam", "Crystal", "Detector", "StructureFactors",
           "SimulationResult", "Simulator", "simulate", "Setup", "from_args",
           "noisify", "Noisify", "StolTable", "AmorphousSample", "AmorphousScatter", "amorphous_image"]
__version__ = "0.1.0"
