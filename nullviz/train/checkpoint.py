"""Checkpoints that are never half-written (timm's ``CheckpointSaver`` idea: write a temporary file, rename).

A run folder holds ``model.safetensors`` (weights, loadable by ``load_model(checkpoint=…)``), ``model.json``
(its sidecar) and ``trainer_state.pt`` (optimizer, schedule, δ, position). Each file is written to a
temporary name in the same folder and moved into place with ``os.replace`` (atomic on POSIX), and every file
records the global step it belongs to, so a folder whose files disagree (a crash between two renames) is
refused on resume with a clear message instead of mixing two moments of training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nullviz.core.atomic import replace_atomically
from nullviz.core.errors import CheckpointError
from nullviz.models.checkpoint import read_weights, safetensors_metadata


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
        weights_step = safetensors_metadata(out / "model.safetensors").get("global_step")
    except (FileNotFoundError, RuntimeError, OSError, CheckpointError) as exc:
        raise CheckpointError(f"Cannot resume from {str(out)!r}: no complete nullviz run there ({exc}).") from exc
    if weights_step is not None and int(weights_step) != int(state["global_step"]):
        raise CheckpointError(f"The checkpoint in {str(out)!r} is incomplete: its weights are from step "
                              f"{weights_step} and its trainer state from step {state['global_step']} (the run "
                              f"stopped while saving). Delete the folder's files or resume an earlier copy.")
    return weights, state


class CheckpointSaver:
    """Saves a run's folder and reads it back (timm's ``CheckpointSaver``): the primary rank alone writes, and
    a run without a folder saves nothing."""

    def __init__(self, out_dir: str | Path | None, primary: bool = True):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.primary = primary

    def save(self, weights: dict[str, torch.Tensor], sidecar: dict[str, Any], trainer_state: dict[str, Any],
             out_dir: str | Path | None = None) -> Path | None:
        """``model.safetensors`` (its path is returned), ``model.json`` and ``trainer_state.pt``; None when this
        process does not write."""
        out = Path(out_dir) if out_dir is not None else self.out_dir
        if out is None or not self.primary:
            return None
        return save_checkpoint(out, weights, sidecar, trainer_state)

    def load(self, out_dir: str | Path | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        out = Path(out_dir) if out_dir is not None else self.out_dir
        if out is None:
            raise CheckpointError("No run folder to resume from.")
        return load_checkpoint(out)
