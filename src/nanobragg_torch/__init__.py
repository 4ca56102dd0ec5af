"""nanobragg-torch: a differentiable PyTorch reimplementation of nanoBragg.

Python API (see docs/api.md): models :class:`Beam`, :class:`Detector`,
:class:`Crystal`, :class:`StructureFactors` (``torch.nn.Module`` objects whose
continuous fields may require grad), the function :func:`simulate` and its
module wrapper :class:`Simulator`, and :func:`from_args` to build the models
from nanoBragg command-line flags.

The names are imported on first use (PEP 562), so that ``import nanobragg_torch``
-- and the ``nanoBragg -h`` that goes through it -- does not load PyTorch until a
name that needs it is asked for.
"""
import sys as _sys
import types as _types
from importlib import import_module as _import_module

#: public name -> the module that defines it
_EXPORTS = {
    "BeamConfig": ".config", "CrystalConfig": ".config", "DetectorConfig": ".config",
    "SimulationOptions": ".config", "StructureFactorConfig": ".config",
    "Beam": ".models", "Crystal": ".models", "Detector": ".models", "StructureFactors": ".models",
    "SimulationResult": ".simulator", "Simulator": ".simulator", "simulate": ".simulator",
    "Setup": ".api", "from_args": ".api",
    "noisify": ".noisify", "Noisify": ".noisify",
    "StolTable": ".models.amorphous", "AmorphousSample": ".models.amorphous",
    "AmorphousScatter": ".models.amorphous", "amorphous_image": ".models.amorphous",
}

#: submodules reachable as attributes (``nanobragg_torch.engine``) without importing them first
_SUBMODULES = {"api", "backends", "cli", "config", "cutil", "dataset", "engine", "io", "models", "noisify",
               "physics", "pipeline", "rng", "simulator", "tools"}

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(_import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return _import_module("." + name, __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(_types.ModuleType):
    """Keeps the function ``noisify`` under its name when the submodule of that name is loaded
    later (an eager ``from .noisify import noisify`` in this file had the same effect)."""

    def __setattr__(self, name, value):
        if name == "noisify" and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def __dir__():
    return sorted(set(globals()) | set(__all__))
