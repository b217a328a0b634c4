"""Which device a model runs on: 'auto' (CUDA, else MPS, else CPU) or a named one, checked."""

from __future__ import annotations

import torch

from nullviz.core.errors import InvalidParameterError


# ---------------------------------------------------------------------------------------------- device
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'auto'/None → CUDA when present, else Apple MPS, else CPU; otherwise the device asked for."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidParameterError("device", "resolve_device", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'",
                                    device) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError("device", "resolve_device", "a device present on this machine (no CUDA "
                                    "GPU is available here; use 'cpu' or 'auto')", str(device))
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InvalidParameterError("device", "resolve_device", "a device present on this machine (Apple MPS "
                                    "is not available here; use 'cpu' or 'auto')", str(device))
    return dev


def available_devices() -> list[str]:
    """Devices a user can pick on this machine, best first."""
    out = []
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out + ["cpu"]
