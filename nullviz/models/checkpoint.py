"""Reading any checkpoint file (an upload, a timm or torchvision-style .pth, a nullviz run's safetensors): the
state dict unwrapped from the usual training wrappers, the JSON sidecar, and the architecture a nullviz file
records in its header; a clear :class:`CheckpointError` for anything else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nullviz.core.errors import CheckpointError


def read_sidecar(checkpoint: str | Path) -> dict:
    """The JSON beside a checkpoint (``model.json`` for ``model.safetensors``): its architecture and options."""
    side = Path(checkpoint).with_suffix(".json")
    if side.is_file():
        try:
            return json.loads(side.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"The checkpoint's metadata {side.name!r} is not valid JSON ({exc}).") from exc
    return {}


def safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def recorded_arch(path: str | Path) -> str | None:
    """The architecture a nullviz-saved .safetensors file names in its header (None for other files)."""
    if Path(path).suffix.lower() != ".safetensors":
        return None
    try:
        return safetensors_metadata(Path(path)).get("arch") or None
    except Exception:  # noqa: BLE001 — a corrupt header: read_weights says so in its own words
        return None


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a .safetensors or .pth/.pt file (unwrapped from the usual training wrappers); a clear
    :class:`CheckpointError` for a missing, empty, foreign or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"The checkpoint file {path.name!r} does not exist.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"The checkpoint file {path.name!r} is empty.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(f"Unsupported checkpoint type {suffix!r} for {path.name!r}: use "
                                  f".safetensors, .pth or .pt.")
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 — safetensors/pickle raise many types for corrupt files
        raise CheckpointError(f"Could not read checkpoint {path.name!r}: the file is corrupt or not a "
                              f"PyTorch/safetensors checkpoint ({type(exc).__name__}).") from exc
    return _unwrap_state_dict(state, path.name)


def _unwrap_state_dict(state: Any, label: str) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state", "model_state_dict", "module", "ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{label!r} holds no state_dict of tensors (looked under 'state_dict', 'model', "
                              f"'module').")
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state
