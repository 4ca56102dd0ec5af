"""The backend seam: which implementation renders a problem.

Every backend renders the same :class:`~nanobragg_torch.engine.RenderProblem` to the same
image and declares what it can take with ``supports(problem, request) -> (bool, reason)``.

========  ===========================================================================
torch     the reference implementation (``engine.render_chunk``): every problem, every
          device, and the only gradient path
fused     one C kernel over pixels x subpaths on the CPU (``fused_cpu.c``), forward only;
          compiled once per machine into a cache.  Not: gradients, GPU tensors, tricubic
          interpolation (its order-dependent switch-off), the C's phi carry-over
compile   ``engine.render_chunk`` traced by torch.compile (any device; pays tracing in
          every new process); chunks that carry no state, no gradients
========  ===========================================================================

``auto`` (the default) takes, in the order of :data:`AUTO_ORDER`, the first backend
that supports the problem and the request: the fused kernel for a CPU render that needs
no gradient, the torch backend otherwise.  When ``auto`` passes over the fused kernel
only because it could not be built (no compiler), one line says so on stderr, once per
process.  A backend named explicitly that cannot take the problem is an error.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

# torch is imported where a backend is chosen, not here: the package's torch-free helpers
# (cbuild, cio: the readers' and writers' C fast paths) run before torch is loaded

BACKENDS = ("auto", "torch", "fused", "compile")
AUTO_ORDER = ("fused", "torch")


class BackendError(ValueError):
    """A backend named explicitly (``-backend``) cannot render the problem; the message says why."""


@dataclass
class Request:
    """What the caller asks of a render, beside the problem itself."""
    needs_grad: bool = False
    device: str = "cpu"
    dtype: Any = None                 # torch.dtype; None: torch.float64

    def __post_init__(self):
        if self.dtype is None:
            import torch
            self.dtype = torch.float64


def request_for(pb) -> Request:
    from ..engine import _needs_grad
    return Request(needs_grad=_needs_grad(pb), device=pb.fdet.device.type, dtype=pb.fdet.dtype)


class Backend:
    name = ""

    def supports(self, pb, request: Request) -> Tuple[bool, str]:   # pragma: no cover - interface
        raise NotImplementedError

    def render(self, pb, max_elements=None, progress=None):          # pragma: no cover - interface
        raise NotImplementedError


class TorchBackend(Backend):
    name = "torch"

    def supports(self, pb, request):
        return True, ""

    def render(self, pb, max_elements=None, progress=None):
        from ..engine import render_torch
        return render_torch(pb, max_elements, progress=progress)


class CompileBackend(Backend):
    name = "compile"

    def supports(self, pb, request):
        from ..engine import compile_eligible
        if request.needs_grad:
            return False, "a render that asks for gradients"
        if not compile_eligible(pb):
            return False, "state carried from chunk to chunk (tricubic interpolation or the C's phi carry-over)"
        return True, ""

    def render(self, pb, max_elements=None, progress=None):
        from ..engine import render_torch
        return render_torch(pb, max_elements, progress=progress, compiled=True)


class FusedCPUBackend(Backend):
    name = "fused"

    def supports(self, pb, request):
        ok, why = self.takes_problem(pb, request)
        if not ok:
            return ok, why
        from . import fused_cpu
        return fused_cpu.available()

    def takes_problem(self, pb, request):
        """supports() without the question whether the kernel could be built here."""
        if request.needs_grad:
            return False, "a render that asks for gradients (the fused kernel is forward only)"
        if request.device != "cpu":
            return False, f"tensors on {request.device} (the fused kernel is CPU only)"
        import torch
        if request.dtype not in (torch.float32, torch.float64):
            return False, f"dtype {request.dtype}"
        if pb.interpolate:
            return False, "tricubic interpolation (its order-dependent switch-off is the torch backend's)"
        if pb.lattices_first is not None:
            return False, "the C's phi carry-over (first evaluation with the unrotated lattice)"
        if pb.F_grid is not None and pb.F_grid.numel() >= 2 ** 31:
            return False, "a structure-factor grid of 2^31 points or more"
        return True, ""

    def render(self, pb, max_elements=None, progress=None):
        from ..engine import RenderResult
        from . import fused_cpu
        image, omega_sum = fused_cpu.render(pb, progress=progress)
        return RenderResult(image=image, omega_sum=omega_sum, backend=self.name)


REGISTRY: Dict[str, Backend] = {b.name: b for b in (TorchBackend(), FusedCPUBackend(), CompileBackend())}

_noted: set = set()


def _note(msg: str) -> None:
    if msg not in _noted:
        _noted.add(msg)
        print(f"nanoBragg: note: {msg}", file=sys.stderr, flush=True)


def select(pb, backend: str = "auto", request: Optional[Request] = None) -> Backend:
    """The backend that renders ``pb``: ``backend`` by name, or the first of AUTO_ORDER that supports it.

    Raises :class:`BackendError` (a ValueError) when a named backend cannot take the problem
    (the message gives the reason).
    """
    request = request or request_for(pb)
    if backend not in BACKENDS:
        raise BackendError(f"-backend: unknown backend {backend!r} (one of {', '.join(BACKENDS)})")
    if backend != "auto":
        b = REGISTRY[backend]
        ok, why = b.supports(pb, request)
        if not ok:
            raise BackendError(f"-backend {backend}: cannot render this problem: {why}")
        return b
    for name in AUTO_ORDER:
        b = REGISTRY[name]
        ok, why = b.supports(pb, request)
        if ok:
            return b
        if name == "fused" and b.takes_problem(pb, request)[0]:
            _note(f"the fused CPU kernel is not available ({why}); rendering with the torch backend")
    return REGISTRY["torch"]


def explain(pb, request: Optional[Request] = None) -> List[Tuple[str, bool, str]]:
    """(name, supported, reason) of every registered backend for this problem (reports, tests)."""
    request = request or request_for(pb)
    return [(name, *b.supports(pb, request)) for name, b in REGISTRY.items()]
