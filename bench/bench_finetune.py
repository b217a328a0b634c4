"""Finetuning cost, as ratios within one run.

    python bench/bench_finetune.py [--device cpu|cuda]

- one nullspace-augmented step (patch embedding once, clean + noised tokens as one concatenated batch) ÷ one
  plain training step on the same batch (ideal 2.0: twice the samples; target ≤ 2.1);
- the same with two separate passes (what the concatenation saves);
- the share of an epoch spent synthesizing δ at the default settings, and steps/s.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


from bench_core import device_from_argv, paired_ratio, print_table
from nullviz.data import digits_dataset
from nullviz.models import create_random_vit, load_model, logits_from_patch_tokens, patch_tokens
from nullviz.train.finetune import FinetuneConfig, FinetuneRun, finetune


def step_ratios(lm, train, held, x, y, label: str) -> dict:
    run = FinetuneRun(lm, train, held, FinetuneConfig(method="nullspace", synth_steps=5))
    run.synthesize_delta(0)
    base = FinetuneRun(lm, train, held, FinetuneConfig(method="baseline"))
    model, delta = run.model, run.delta

    def two_passes():
        with run.step.autocast():  # same precision as the steps it is compared with
            loss = F.cross_entropy(model(x), y) + F.cross_entropy(
                logits_from_patch_tokens(model, patch_tokens(model, x) + delta), y)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()

    r_ns, t_ns, t_plain = paired_ratio(lambda: run.train_step(x, y), lambda: base.train_step(x, y))
    r_two, _, _ = paired_ratio(two_passes, lambda: base.train_step(x, y))
    return {f"{label}_plain_step_ms": t_plain * 1e3, f"{label}_nullspace_step_ms": t_ns * 1e3,
            f"{label}_nullspace_over_plain": r_ns, f"{label}_two_passes_over_plain": r_two}


def peak_memory(lm, train, x, y, label: str) -> dict:
    """Peak GPU memory of one training step beyond what was allocated before it, nullspace vs plain."""
    out = {}
    for method in ("baseline", "nullspace"):
        run = FinetuneRun(lm, train, train, FinetuneConfig(method=method, synth_steps=5))
        if method == "nullspace":
            run.synthesize_delta(0)
        run.train_step(x, y)  # optimizer state exists before the measurement
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run.train_step(x, y)
        torch.cuda.synchronize()
        out[f"{label}_{method}_step_peak_MB"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        del run
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    device = device_from_argv(argv)
    out = {"device": str(device)}
    lm = load_model("default", device=device)
    train, held = digits_dataset("train", lm.transform), digits_dataset("heldout", lm.transform)
    x = torch.stack([train[i][0] for i in range(64)]).to(device)
    y = torch.tensor([train[i][1] for i in range(64)]).to(device)
    out.update(step_ratios(lm, train, held, x, y, "default_b64"))

    t = time.perf_counter()
    res = finetune(lm, train, held, FinetuneConfig(method="nullspace", epochs=1))
    total = time.perf_counter() - t
    out["default_epoch_s"] = total
    out["default_synthesis_share_of_epoch"] = res.synthesis_seconds / total
    out["default_nullspace_steps_per_s"] = res.steps_run / total

    tiny = create_random_vit("vit_tiny_patch16_224", seed=0, num_classes=10, device=device)
    xt = torch.randn(16, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    yt = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(1)).to(device)
    fake = torch.utils.data.TensorDataset(xt.cpu(), yt.cpu())
    out.update(step_ratios(tiny, fake, fake, xt, yt, "vit_ti16_b16"))

    if device.type == "cuda":  # the paper's setting: ViT-S/16, 224², bf16 autocast (FinetuneConfig.amp)
        small = create_random_vit("vit_small_patch16_224", seed=0, num_classes=1000, device=device)
        for batch in (64, 256):  # b64 leaves an H100/H200 waiting on kernel launches; b256 keeps it busy
            xs = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
            ys = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(1)).to(device)
            fake = torch.utils.data.TensorDataset(xs.cpu(), ys.cpu())
            out.update(step_ratios(small, fake, fake, xs, ys, f"vit_s16_bf16_b{batch}"))
            out.update(peak_memory(small, fake, xs, ys, f"vit_s16_bf16_b{batch}"))
    print_table(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
