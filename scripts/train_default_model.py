"""Train nullviz's embedded default ViT on scikit-learn's handwritten digits (deterministic, CPU, minutes).

    python scripts/train_default_model.py            # writes assets/default_model/{model.safetensors,config.json}

The digits (8×8, 0..16) become 8-bit RGB images that timm's eval transform of the model upsamples to 32×32
(bicubic) and normalises, exactly as every image the app shows the model. Training adds small random
affine jitter in pixel space. The held-out split (20 %, fixed seed, see ``nullviz.data``) is never used for
training or model selection: it is evaluated once, at the end.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F


from _training import adamw_warmup_cosine, normalisation, save_embedded, seed_deterministic, training_parser
from nullviz import data
from nullviz.models import DEFAULT_ARCH, DEFAULT_DATA_CONFIG, DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME, nullviz_digits_vit


def random_affine(pixels: torch.Tensor, gen: torch.Generator, max_deg=12.0, max_shift=0.12,
                  scale=(0.9, 1.1)) -> torch.Tensor:
    """Per-sample rotation/scale/shift of a [B, C, H, W] batch in [0, 1] pixels (black background)."""
    b = pixels.shape[0]
    ang = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(max_deg)
    s = scale[0] + torch.rand(b, generator=gen) * (scale[1] - scale[0])
    t = (torch.rand(b, 2, generator=gen) * 2 - 1) * max_shift * 2
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def main(argv=None) -> int:
    args = training_parser(__doc__.splitlines()[0], epochs=120, batch_size=64, out=DEFAULT_MODEL_DIR).parse_args(argv)

    seed_deterministic(args.seed, threads=1)  # identical float reductions on every machine → identical weights
    gen = torch.Generator().manual_seed(args.seed)

    from timm.data import create_transform

    pixel_cfg = {**DEFAULT_DATA_CONFIG, "mean": (0.0,) * 3, "std": (1.0,) * 3}
    to_pixels = create_transform(**pixel_cfg, is_training=False)
    mean, std = normalisation(DEFAULT_DATA_CONFIG)

    train_imgs, train_y = data.digits_split("train")
    x_train = torch.stack([to_pixels(im) for im in train_imgs])
    y_train = torch.tensor(train_y)

    model = nullviz_digits_vit(pretrained=False)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    opt, sched = adamw_warmup_cosine(model, args.lr, args.weight_decay, 5 * steps_per_epoch,
                                     steps_per_epoch * args.epochs)

    t0 = time.perf_counter()
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_train), generator=gen)
        running = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            xb = (random_affine(x_train[idx], gen) - mean) / std
            loss = F.cross_entropy(model(xb), y_train[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
        if epoch % 10 == 0 or epoch == args.epochs - 1:
            print(f"epoch {epoch:3d}  loss {running / steps_per_epoch:.4f}  {time.perf_counter() - t0:.0f}s",
                  flush=True)
    model.eval()
    train_seconds = time.perf_counter() - t0

    # Held-out accuracy, once, through the same timm eval transform the app uses.
    to_input = create_transform(**DEFAULT_DATA_CONFIG, is_training=False)
    held_imgs, held_y = data.digits_split("heldout")
    with torch.no_grad():
        logits = model(torch.stack([to_input(im) for im in held_imgs]))
    acc = (logits.argmax(1) == torch.tensor(held_y)).float().mean().item()
    print(f"held-out top-1: {acc:.4f} on {len(held_y)} images; trained in {train_seconds:.0f}s")

    config = {
        "arch": DEFAULT_MODEL_NAME,
        "arch_kwargs": DEFAULT_ARCH,
        "data_config": DEFAULT_DATA_CONFIG,
        "class_names": list(data.DIGITS_CLASS_NAMES),
        "dataset": "scikit-learn load_digits (8x8, upsampled to 32x32 RGB)",
        "split": {"seed": data.DIGITS_SPLIT_SEED, "heldout_fraction": data.DIGITS_HELDOUT_FRACTION,
                  "train": len(train_y), "heldout": len(held_y)},
        "training": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "heldout_accuracy_at_training": round(acc, 4),
        "train_seconds_cpu_1_thread": round(train_seconds, 1),
    }
    save_embedded(args.out, model, config)
    return 0 if acc >= 0.97 else 1


if __name__ == "__main__":
    raise SystemExit(main())
