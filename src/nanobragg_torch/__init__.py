"""nanobragg-torch: a differentiable PyTorch reimplementation of nanoBragg."""
from .config import (BeamConfig, CrystalConfig, DetectorConfig, SimulationOptions,
                     StructureFactorConfig)
from .simulator import SimulationResult, Simulator, simulate

__all__ = ["BeamConfig", "CrystalConfig", "DetectorConfig", "SimulationOptions",
           "StructureFactorConfig", "SimulationResult", "Simulator", "simulate"]
__version__ = "0.1.0"
