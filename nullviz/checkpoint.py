"""Checkpoints that are never half-written (timm's ``CheckpointSaver`` idea: write a temporary file, rename).

A run folder holds ``model.safetensors`` (weights, loadable by ``load_model(checkpoint=…)``), ``model.json``
(its sidecar) and ``trainer_state.pt`` (optimizer, schedule, δ, position). Each file is written to a
temporary name in the same folder and moved into place with ``os.replace`` (atomic on POSIX), and every file
records the global step it belongs to, so a folder whose files disagree (a crash between two renames) is
refused on resume with a clear message instead of mixing two moments of training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .atomic import replace_atomically
from .errors import CheckpointError


def save_checkpoint(out: Path, weights: dict[str, torch.Tensor], sidecar: dict[str, Any],
                    trainer_state: dict[str, Any]) -> Path:
    """Weights, sidecar, then trainer state (the file resume reads first), each atomically."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    step = int(trainer_state["global_step"])
    weights = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    replace_atomically(out / "model.safetensors",
                       lambda p: save_file(weights, str(p), metadata={"global_step": str(step),
                                                                       "arch": str(sidecar.get("arch", ""))}))
    replace_atomically(out / "model.json",
                       lambda p: p.write_text(json.dumps({**sidecar, "global_step": step}, indent=2, default=str)))
    replace_atomically(out / "trainer_state.pt", lambda p: torch.save(trainer_state, str(p)))
    return out / "model.safetensors"


def load_checkpoint(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and trainer state of a run folder, checked to belong to the same step."""
    try:
        state = torch.load(str(out / "trainer_state.pt"), map_location="cpu", weights_only=True)
        weights = read_weights(out / "model.safetensors")
        weights_step = _safetensors_metadata(out / "model.safetensors").get("global_step")
    except (FileNotFoundError, RuntimeError, OSError, CheckpointError) as exc:
        raise CheckpointError(f"Cannot resume from {str(out)!r}: no complete nullviz run there ({exc}).") from exc
    if weights_step is not None and int(weights_step) != int(state["global_step"]):
        raise CheckpointError(f"The checkpoint in {str(out)!r} is incomplete: its weights are from step "
                              f"{weights_step} and its trainer state from step {state['global_step']} (the run "
                              f"stopped while saving). Delete the folder's files or resume an earlier copy.")
    return weights, state


# -- reading any checkpoint file (an upload, a timm or torchvision-style .pth, a nullviz run)

def read_sidecar(checkpoint: str | Path) -> dict:
    """The JSON beside a checkpoint (``model.json`` for ``model.safetensors``): its architecture and options."""
    side = Path(checkpoint).with_suffix(".json")
    if side.is_file():
        try:
            return json.loads(side.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"The checkpoint's metadata {str(side)!r} is not valid JSON ({exc}).") from exc
    return {}


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def recorded_arch(path: str | Path) -> str | None:
    """The architecture a nullviz-saved .safetensors file names in its header (None for other files)."""
    if Path(path).suffix.lower() != ".safetensors":
        return None
    try:
        return _safetensors_metadata(Path(path)).get("arch") or None
    except Exception:  # noqa: BLE001 — a corrupt header: read_weights says so in its own words
        return None


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a .safetensors or .pth/.pt file (unwrapped from the usual training wrappers); a clear
    :class:`CheckpointError` for a missing, empty, foreign or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"The checkpoint file {str(path)!r} does not exist.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"The checkpoint file {str(path)!r} is empty.")
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
