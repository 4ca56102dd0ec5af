"""Is a requested compute device present?  Checked before any rendering starts."""
from __future__ import annotations

from typing import Optional

import torch


def device_problem(device) -> Optional[str]:
    """One line saying why ``device`` ("cpu", "cuda", "cuda:1", "xpu", "mps", a torch.device)
    cannot be used on this machine, or None when it can."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return f"{device!r} is not a device name"
    kind, index = d.type, d.index
    if kind == "cpu":
        return None
    if kind == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available on this machine"
        count = torch.cuda.device_count()
    elif kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        if xpu is None or not xpu.is_available():
            return "no Intel GPU (XPU) is available to this PyTorch build on this machine"
        count = xpu.device_count()
    elif kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return "the Apple GPU (MPS) is not available to this PyTorch build on this machine"
        if index not in (None, 0):
            return "there is only one MPS device (mps or mps:0)"
        return None
    else:
        return f"device type {kind!r} is not supported (cpu, cuda, xpu or mps)"
    if index is not None and index >= count:
        return f"there are {count} {kind.upper()} device(s): {kind}:0 to {kind}:{count - 1}"
    return None
