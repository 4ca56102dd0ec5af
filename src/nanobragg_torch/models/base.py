"""Common machinery of the models: continuous fields held as tensors.

A model (:class:`~nanobragg_torch.models.beam.Beam`,
:class:`~nanobragg_torch.models.detector.Detector`,
:class:`~nanobragg_torch.models.crystal.Crystal`,
:class:`~nanobragg_torch.models.structure_factors.StructureFactors`) is a
``torch.nn.Module`` built from a configuration record and/or keyword
arguments.  Every *continuous* field is stored as a tensor:

* a ``torch.nn.Parameter`` is registered as a parameter (optimisers find it
  through ``parameters()``, ``.to()`` moves it);
* any other tensor that requires grad (for example ``scale * p`` built from a
  parameter) is kept as given, so gradients flow back through it to its
  leaves; it is *not* moved by ``.to()`` and its graph is consumed by the first
  backward pass -- rebuild the model for every evaluation (the functional
  style) or use parameters;
* everything else (numbers, sequences, numpy arrays, tensors without grad)
  becomes a buffer (numbers: float64, or the module's dtype and device once it
  has been moved), moved and cast by ``.to(device, dtype)``.

A sequence field (a cell, a vector) whose entries mix numbers and tensors that
require grad is stored entry by entry (``cell__0`` ... ``cell__5``), so that
one entry can be refined while the others stay fixed.

Discrete settings (pixel counts, conventions, step counts, switches) stay in
the record ``model.settings`` (as given: its continuous fields are not kept up
to date); ``model.config`` (or ``model.to_config()``) returns a record with the
model's current values, so ``Detector(det.config, distance=...)`` copies a model
with one field changed.  Reading a field (``model.distance``) returns
the stored tensor, or a tuple of tensors for a split sequence, or None.
Assigning one (``model.distance = torch.nn.Parameter(...)``) stores it again
by the rules above.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

import numpy as np
import torch


def as_tensor(x, dtype, device) -> torch.Tensor:
    """``x`` (number, sequence, array, tensor, or tuple mixing them) as a tensor of dtype/device."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype, device=device)
    if isinstance(x, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in x):
        return torch.stack([as_tensor(v, dtype, device) for v in x])
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype, device=device)


def to_float(x) -> float:
    """A Python float of a number or a one-element tensor (detached: no warning, no graph)."""
    if isinstance(x, torch.Tensor):
        return float(x.detach())
    return float(x)


def needs_grad(x) -> bool:
    """True if ``x`` is a tensor (or a sequence holding one) that requires grad."""
    if isinstance(x, torch.Tensor):
        return bool(x.requires_grad)
    if isinstance(x, (list, tuple)):
        return any(needs_grad(v) for v in x)
    return False


class RefTracked(torch.nn.Module):
    """A module whose ``dtype``/``device`` follow ``.to()`` through a scalar ``_ref`` buffer.

    The buffer is never used in computations; it only records where the module lives.
    """

    def __init__(self, dtype: torch.dtype = torch.float64, device=None):
        super().__init__()
        self.register_buffer("_ref", torch.zeros((), dtype=dtype, device=device), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the module's buffers (float64 unless moved with ``.to()``)."""
        return self._ref.dtype

    @property
    def device(self) -> torch.device:
        return self._ref.device


class TensorModel(RefTracked):
    """Base class: a module whose continuous fields (named in ``_fields``) are tensors."""

    _fields: tuple = ()

    def __init__(self):
        super().__init__()
        object.__setattr__(self, "_graph", {})      # name -> tensor carrying a graph
        object.__setattr__(self, "_split", {})      # name -> number of entries
        object.__setattr__(self, "_nones", set())   # fields set to None

    def _discrete_kwargs(self, config_cls, kwargs: dict, continuous: Iterable[str], extra=()) -> dict:
        """Refuse keywords that are not fields of ``config_cls`` (nor in ``extra``), with a
        TypeError naming the model; return those that are not continuous (tensor) fields."""
        bad = set(kwargs) - {f.name for f in dataclasses.fields(config_cls)} - set(extra)
        if bad:
            raise TypeError(f"{type(self).__name__}: unknown field(s) {sorted(bad)}")
        return {k: v for k, v in kwargs.items() if k not in continuous}

    # -- storage ----------------------------------------------------------------
    def _clear(self, name: str):
        self._parameters.pop(name, None)
        self._buffers.pop(name, None)
        self._graph.pop(name, None)
        self._nones.discard(name)
        n = self._split.pop(name, None)
        if n is not None:
            for i in range(n):
                self._clear(f"{name}__{i}")

    def _store(self, name: str, value):
        self._clear(name)
        if value is None:
            self._nones.add(name)
        elif isinstance(value, torch.nn.Parameter):
            self.register_parameter(name, value)
        elif isinstance(value, torch.Tensor):
            if value.requires_grad:
                self._graph[name] = value
            else:
                if not value.is_floating_point():
                    value = value.to(torch.float64)
                self.register_buffer(name, value)
        elif isinstance(value, (list, tuple)) and needs_grad(value):
            self._split[name] = len(value)
            for i, v in enumerate(value):
                self._store(f"{name}__{i}", v)
        else:
            if isinstance(value, (list, tuple)):
                value = [to_float(v) for v in value]
            ref = self._buffers.get("_ref")            # new values follow the module's dtype and device
            dtype = ref.dtype if ref is not None else torch.float64
            device = ref.device if ref is not None else None
            self.register_buffer(name, torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=dtype,
                                                       device=device))

    def __setattr__(self, name, value):
        if name in type(self)._fields:
            self._store(name, value)
        else:
            super().__setattr__(name, value)

    def __getattr__(self, name):
        d = self.__dict__
        if name in d.get("_graph", ()):
            return d["_graph"][name]
        if name in d.get("_split", ()):
            return tuple(getattr(self, f"{name}__{i}") for i in range(d["_split"][name]))
        if name in d.get("_nones", ()):
            return None
        return super().__getattr__(name)

    @property
    def config(self):
        """A configuration record holding the model's current values (see ``to_config``)."""
        return self.to_config()

    def to_config(self):
        raise NotImplementedError

    # -- reading ----------------------------------------------------------------
    def value(self, name: str, dtype=None, device=None) -> Optional[torch.Tensor]:
        """Field ``name`` as one tensor (entries of a split sequence stacked), cast to dtype/device.

        dtype/device default to the module's (see :attr:`dtype`, :attr:`device`).
        """
        v = getattr(self, name)
        if v is None:
            return None
        return as_tensor(v, self.dtype if dtype is None else dtype, self.device if device is None else device)

    def plain(self, name: str) -> float:
        """Field ``name`` (a scalar) as a Python float, for decisions that are not differentiable."""
        return to_float(getattr(self, name))

    def requires_grad_of(self, name: str) -> bool:
        """True if field ``name`` (or an entry of it) requires grad."""
        return needs_grad(getattr(self, name))

    def graph_tensors(self) -> Iterable[torch.Tensor]:
        """Tensors stored as given because they carry a graph (not moved by ``.to()``)."""
        return tuple(self._graph.values())

    def extra_repr(self) -> str:
        parts = []
        for name in type(self)._fields:
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, tuple):
                parts.append(f"{name}=({', '.join('%g' % to_float(x) for x in v)})")
            elif v.numel() == 1:
                parts.append(f"{name}={to_float(v):g}{' (grad)' if v.requires_grad else ''}")
            elif v.numel() <= 9:
                parts.append(f"{name}={[round(float(x), 6) for x in v.detach().reshape(-1).cpu()]}")
            else:
                parts.append(f"{name}=<{tuple(v.shape)}>")
        return ", ".join(parts)
