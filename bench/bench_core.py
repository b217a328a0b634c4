"""Benchmarks of the library core, as ratios within one run (never as timed assertions in tests).

    python bench/bench_core.py [--device cpu|cuda] [--json out.json]

Measures: cold load of the default model + one forward; nullspace SVD + basis of a ViT-B/32-sized patch
embedding (768 × 3072) and noise sampling for a 224² image; the approximate-synthesis step vs. one plain
forward+backward of the same batch through the encoder (ours, and the research code's pattern that
recomputes the clean forward and back-propagates into the weights every step); attention extraction vs. a
plain forward; rollout; Integrated Gradients with 32 steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


from nullviz.data import digits_dataset, sample_image
from nullviz.inspection.attention import attention_views, rollout, trace
from nullviz.inspection.attribution import attribute
from nullviz.models import create_random_vit, load_model, logits_from_patch_tokens, patch_tokens
from nullviz.noise import exact as N
from nullviz.noise.approximate import SynthesisConfig, CleanBatches, noised_logits
from nullviz.robustness.evaluation import images_tensor
from nullviz.server.process import keep_freed_memory


def _once(fn) -> float:
    """Seconds of one call of ``fn`` (synchronising CUDA around it)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def timeit(fn, repeat: int = 7, warmup: int = 2) -> float:
    """Median seconds of ``fn()``."""
    for _ in range(warmup):
        fn()
    return statistics.median(_once(fn) for _ in range(repeat))


def paired_ratio(fa, fb, repeat: int = 9, warmup: int = 2) -> tuple[float, float, float]:
    """Median over alternating (a, b) pairs of time(a) / time(b), and the median times: alternating the two
    inside one loop cancels most of the drift of a shared, noisy machine."""
    for _ in range(warmup):
        fa(), fb()
    ta, tb = [], []
    for _ in range(repeat):
        ta.append(_once(fa))
        tb.append(_once(fb))
    ratio = statistics.median(a / b for a, b in zip(ta, tb))
    return ratio, statistics.median(ta), statistics.median(tb)


def device_from_argv(argv=None) -> torch.device:
    """The ``--device`` option shared by the bench scripts (cpu by default; cuda on a GPU machine)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    return torch.device(ap.parse_args(argv).device)


def print_table(out: dict) -> None:
    width = max(len(k) for k in out)
    for k, v in out.items():
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")


def bench_load(device) -> dict:
    t = time.perf_counter()
    lm = load_model("default", device=device)
    load_s = time.perf_counter() - t
    img = sample_image("digit-3")
    t = time.perf_counter()
    lm.predict(lm.preprocess(img))
    first_s = time.perf_counter() - t
    return {"default_cold_load_s": load_s, "default_first_classify_s": first_s,
            "default_load_and_classify_s": load_s + first_s}


def bench_nullspace() -> dict:
    lm = create_random_vit("vit_base_patch32_224", seed=0)
    t = time.perf_counter()
    ns = N.nullspace(lm)  # SVD (Gram eigh) + rank
    _ = ns.basis  # explicit orthonormal basis (complete QR)
    svd_basis_s = time.perf_counter() - t
    spec = N.NoiseSpec(magnitude=1.0, seed=0)
    sample_s = timeit(lambda: N.sample_noise(ns, (224, 224), spec), repeat=11)
    return {"vit_b32_svd_plus_basis_s": svd_basis_s, "vit_b32_nullity": ns.nullity,
            "noise_sample_224_ms": sample_s * 1e3}


def synthesis_ratios(lm, x: torch.Tensor, label: str) -> dict:
    """Our synthesis step vs. one plain forward+backward (weights' grads too) of the same batch."""
    model = lm.model
    cfg = SynthesisConfig(level="encoder")
    batches = CleanBatches(model, x, "encoder", len(x))
    tokens, _, clean_logits = batches[0]
    delta = torch.zeros(tokens.shape[1:], device=x.device, requires_grad=True)
    trainable = lm.trainable_copy().eval()

    def ours():
        noised = noised_logits(model, tokens, delta, cfg.level)
        loss = (noised - clean_logits).norm(dim=-1).mean()
        torch.autograd.grad(loss, delta)

    def plain_forward_backward():  # one ordinary training-style pass through the encoder on the same tokens
        out = logits_from_patch_tokens(trainable, tokens)
        out.sum().backward()
        trainable.zero_grad(set_to_none=True)

    def research_pattern():  # clean forward again every step, δ as a leaf, grads into all weights too
        d = delta.detach().clone().requires_grad_(True)
        with torch.no_grad():
            clean = trainable(x)
        noised = logits_from_patch_tokens(trainable, patch_tokens(trainable, x) + d)
        loss = (noised - clean).norm(dim=-1).mean()
        loss.backward()
        trainable.zero_grad(set_to_none=True)

    r_ours, t_ours, t_plain = paired_ratio(ours, plain_forward_backward)
    r_research, _, _ = paired_ratio(research_pattern, plain_forward_backward)
    return {f"{label}_synthesis_step_ms": t_ours * 1e3, f"{label}_plain_fwd_bwd_ms": t_plain * 1e3,
            f"{label}_synthesis_over_plain": r_ours, f"{label}_research_pattern_over_plain": r_research}


def attention_ratios(lm, x: torch.Tensor, label: str) -> dict:
    model = lm.model
    views = attention_views(lm)  # as compare() and the app trace: a pooled view, not a new one per call
    r_trace, _, t_plain = paired_ratio(lambda: trace(model, x, views=views), lambda: lm.predict(x))
    att = trace(model, x).attention
    t_roll = timeit(lambda: rollout(att))
    return {f"{label}_attention_extract_over_forward": r_trace, f"{label}_rollout_ms": t_roll * 1e3,
            f"{label}_forward_ms": t_plain * 1e3}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    out: dict = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "keep_freed_memory": keep_freed_memory()}  # as the app server and the CLI run
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name()

    out.update(bench_load(device))
    out.update(bench_nullspace())

    lm = load_model("default", device=device)
    x, _ = images_tensor(lm, digits_dataset("train"), limit=64)
    out.update(synthesis_ratios(lm, x, "default_b64"))
    out.update(attention_ratios(lm, x, "default_b64"))
    pixels = lm.denormalize(x[:1])
    out["default_ig32_s"] = timeit(lambda: attribute(lm, pixels, "integrated_gradients", steps=32), repeat=3, warmup=1)

    tiny = create_random_vit("vit_tiny_patch16_224", seed=0, device=device)
    xt = torch.randn(16, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    out.update(synthesis_ratios(tiny, xt, "vit_ti16_b16"))
    out.update(attention_ratios(tiny, xt, "vit_ti16_b16"))

    print_table(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
