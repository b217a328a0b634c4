"""Train nullviz's embedded cluttered-digits ViT (64×64 scenes, 8×8 token grid; deterministic, CPU, minutes).

    python scripts/train_cluttered_model.py     # writes assets/cluttered_model/{model.safetensors,config.json}

Every epoch draws fresh scenes (``nullviz.data.scenes.render``: training digits over crops of the training
photographs, seeded by (seed, epoch)); the held-out scenes (held-out digits on photographs training never
used) are evaluated once, at the end, through the same timm eval transform the app uses. The script also
records what the model is for: the share of the last layer's CLS attention and of rollout that falls inside
the digit's box vs the box's share of the image, and the exact-nullspace invariance. ``nullviz info --model
cluttered`` re-measures all three from the shipped weights. Deterministic for a given thread count.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F


from _training import adamw_warmup_cosine, normalisation, save_embedded, seed_deterministic, training_parser
from nullviz import data
from nullviz.data import scenes as cluttered
from nullviz.models import (CLUTTERED_ARCH, CLUTTERED_DATA_CONFIG, CLUTTERED_MODEL_DIR, CLUTTERED_MODEL_NAME,
                            load_model, nullviz_cluttered_vit)


def main(argv=None) -> int:
    ap = training_parser(__doc__.splitlines()[0], epochs=60, batch_size=128, out=CLUTTERED_MODEL_DIR)
    ap.add_argument("--scenes-per-epoch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    seed_deterministic(args.seed, args.threads)
    mean, std = normalisation(CLUTTERED_DATA_CONFIG)

    model = nullviz_cluttered_vit(pretrained=False)
    steps_per_epoch = math.ceil(args.scenes_per_epoch / args.batch_size)
    opt, sched = adamw_warmup_cosine(model, args.lr, args.weight_decay, 3 * steps_per_epoch,
                                     steps_per_epoch * args.epochs)

    t0 = time.perf_counter()
    model.train()
    for epoch in range(args.epochs):
        gen = torch.Generator().manual_seed(args.seed * 100_003 + epoch)
        scenes = cluttered.render("train", args.scenes_per_epoch, gen)
        x_all = (scenes.pixels - mean) / std
        order = torch.randperm(len(scenes), generator=gen)
        running = correct = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            logits = model(x_all[idx])
            loss = F.cross_entropy(logits, scenes.labels[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
            correct += (logits.argmax(1) == scenes.labels[idx]).sum().item()
        print(f"epoch {epoch:3d}  loss {running / steps_per_epoch:.4f}  train acc {correct / len(scenes):.3f}  "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
    model.eval()
    train_seconds = time.perf_counter() - t0
    config = {
        "arch": CLUTTERED_MODEL_NAME,
        "arch_kwargs": CLUTTERED_ARCH,
        "data_config": CLUTTERED_DATA_CONFIG,
        "class_names": list(data.DIGITS_CLASS_NAMES),
        "dataset": "cluttered digits: scikit-learn load_digits drawn at 22-37 px on 64x64 crops of "
                   "scikit-image photographs (nullviz.data.scenes; held-out digits on held-out photographs)",
        "split": {"digits_seed": data.DIGITS_SPLIT_SEED, "train_backgrounds": list(cluttered.TRAIN_BACKGROUNDS),
                  "heldout_backgrounds": list(cluttered.HELDOUT_BACKGROUNDS),
                  "heldout_scenes": cluttered.HELDOUT_SCENES},
        "training": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "train_seconds_cpu": round(train_seconds, 1),
    }
    save_embedded(args.out, model, config)
    shipped = args.out.resolve() == CLUTTERED_MODEL_DIR.resolve()
    lm = load_model(CLUTTERED_MODEL_NAME, checkpoint=None if shipped else str(args.out / "model.safetensors"),
                    device="cpu")
    measured = cluttered.measure(lm)  # through the loader, exactly as `nullviz info` does
    config.update(measured)
    save_embedded(args.out, model, config)
    print(json.dumps(measured, indent=2))
    ok = measured["heldout_accuracy"] >= 0.95 and measured["localization"]["last_layer"]["ratio"] >= 2
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
