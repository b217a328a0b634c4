"""What the embedded models' training scripts share: their common options, seeding, AdamW with warm-up +
cosine, and how weights are saved."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch


def training_parser(description: str, epochs: int, batch_size: int, out: Path) -> argparse.ArgumentParser:
    """The options every training script takes (each with its own defaults); a script adds its own."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=out)
    return ap


def seed_deterministic(seed: int, threads: int) -> None:
    """Seeded, deterministic kernels, a fixed thread count: the same weights from the same command."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def normalisation(data_config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The data config's mean and std as [1, 3, 1, 1] tensors, to normalise pixel batches."""
    return (torch.tensor(data_config["mean"]).view(1, 3, 1, 1), torch.tensor(data_config["std"]).view(1, 3, 1, 1))


def adamw_warmup_cosine(model: torch.nn.Module, lr: float, weight_decay: float, warmup_steps: int,
                        total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW without decay on biases, norms and the position embedding; linear warm-up, then cosine to 0."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup_steps if s < warmup_steps
        else 0.5 * (1 + math.cos(math.pi * (s - warmup_steps) / (total_steps - warmup_steps))))
    return opt, sched


def save_embedded(out: Path, model: torch.nn.Module, config: dict) -> None:
    """``model.safetensors`` and ``config.json`` (how the model was made and what it measured) in ``out``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
