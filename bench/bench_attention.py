"""Attention extraction and the Attention page's interaction, as ratios and latencies in one run.

    python bench/bench_attention.py [--device cpu|cuda] [--browser] [--before PATH] [--glibc-defaults]

Runs with the allocator setting the app and the CLI use (:func:`nullviz.server.process.keep_freed_memory`), or with
glibc's defaults (``--glibc-defaults``); the README gives both.

- ``nullviz.inspection.attention.trace`` (every block's attention *and* output tokens, and the logits) ÷ timm's own
  ``timm.utils.AttentionExtract`` (fused attention off) on the same model and batch — fx with its default
  names (attention only), hook, and fx asked for the same outputs as trace — for the digits ViT b64, the
  cluttered ViT b64, ViT-Ti/16 b16 (random weights); and the hooked pass (trace before the direct pass) ÷
  fx. Alternating pairs, medians.
- the Attention page's main interaction, server side (what a new noise seed costs the server): exact
  noise + clean/noised trace + rollout + every map + head statistics + the exact/random contrast, per
  embedded model, in ms (median of 15).
- ``--browser``: the same interaction in Chromium (type a new seed, wait for the rerun to finish), median of
  10 per embedded model as the server's default; ``--before PATH`` also runs it against another checkout
  (e.g. a ``git worktree`` of the previous commit) for a before/after.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

from bench_core import paired_ratio, print_table, timeit
from nullviz.data import sample_image
from nullviz.inspection.attention import (attention_views, compare, contrast_noises, head_statistics, noise_contrast,
                                          trace, unfused_attention)
from nullviz.models import create_random_vit, embedded_model, load_model
from nullviz.noise import exact as N
from nullviz.server.process import keep_freed_memory


SAME_OUTPUTS = [r"blocks\.\d+\.attn\.softmax$", r"norm_pre$", r"blocks\.\d+\.add_1$", r"head$"]


def extract_ratio(lm, x: torch.Tensor, label: str) -> dict:
    """trace ÷ AttentionExtract three ways: fx with its default names (attention only; the graph is cut after
    the last softmax), hook (the whole forward, attention kept), and fx asked for what trace returns
    (attention, the first block's input, every block's output, the logits). Also the hooked pass (the
    previous trace) ÷ fx, for a before/after in one run."""
    from timm.utils import AttentionExtract

    views = attention_views(lm)
    theirs_model = copy.deepcopy(lm.model).eval()
    out = {}
    with unfused_attention(theirs_model), torch.no_grad():
        extractors = {"fx": AttentionExtract(theirs_model, method="fx"),
                      "hook": AttentionExtract(theirs_model, method="hook"),
                      "fx_same_outputs": AttentionExtract(theirs_model, names=SAME_OUTPUTS, method="fx",
                                                          use_regex=True)}
        ours = trace(lm.model, x, views=views)
        for method, theirs in extractors.items():
            ref = theirs(x)
            softmax = [v for k, v in ref.items() if k.endswith(("softmax", "attn_drop"))]
            assert torch.allclose(torch.stack(softmax).float().cpu(), ours.attention, atol=1e-5)
            if method == "fx_same_outputs":
                assert len(ref) == 2 * ours.layers + 2
                assert torch.allclose(ref["head"].float().cpu(), ours.logits, atol=1e-4)
            r, t_ours, t_theirs = paired_ratio(lambda: trace(lm.model, x, views=views), lambda: theirs(x), repeat=15)
            out.update({f"{label}_trace_ms": t_ours * 1e3, f"{label}_AttentionExtract_{method}_ms": t_theirs * 1e3,
                        f"{label}_trace_over_AttentionExtract_{method}": r})
        r, t_hooks, _ = paired_ratio(lambda: trace(lm.model, x, views=views, method="hooks"),
                                     lambda: extractors["fx"](x), repeat=15)
        out.update({f"{label}_hooked_trace_ms": t_hooks * 1e3, f"{label}_hooked_trace_over_AttentionExtract_fx": r})
    return out


def interaction(lm) -> float:
    """The work of one 'new seed' on the Attention page, server side (the page's library calls)."""
    ns = N.nullspace(lm)
    x = lm.preprocess(sample_image(embedded_model(lm.name).sample))
    seed = [0]

    def once():
        seed[0] += 1
        v = N.sample_noise(ns, lm.img_size, N.NoiseSpec(magnitude=1.0, seed=seed[0]))
        cmp = compare(lm, x, v)
        cmp.rollout_maps()
        cmp.clean.cls_maps(), cmp.noised.cls_maps()
        head_statistics(cmp.clean, cmp.noised, lm.patch_size)
        noise_contrast(lm, x, contrast_noises(v), clean=cmp.clean)

    return timeit(once, repeat=15, warmup=3)


def browser_latency(root: Path, model: str, rounds: int = 10) -> float:
    from bench_server import ARGS, CHROMIUM, RUN_COUNTER, Server, wait_idle
    from playwright.sync_api import sync_playwright

    server = Server(Path(tempfile.mkdtemp(prefix="nullviz-bench-")), NULLVIZ_DEFAULT_MODEL=model)
    if root != ROOT:  # another checkout: restart the server from there
        server.stop()
        import subprocess

        server.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(root / "server.py"), "--server.headless", "true",
             "--server.port", str(server.port), "--server.address", "127.0.0.1"], cwd=root,
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        time.sleep(8)
    times = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server.url + "/attention", timeout=300_000)
            page.get_by_text("Prediction clean").first.wait_for(timeout=300_000)
            wait_idle(page, 300_000)
            box = page.get_by_label("seed")
            for seed in range(1, rounds + 3):
                box.fill(str(seed))
                done = page.evaluate(RUN_COUNTER)
                t = time.perf_counter()
                box.press("Enter")
                page.wait_for_function(f"window.__nullvizRuns > {done}", timeout=120_000)
                wait_idle(page)
                if seed > 2:  # the first two warm the caches
                    times.append(time.perf_counter() - t)
            assert page.locator("[data-testid='stException']").count() == 0
            browser.close()
    finally:
        server.stop()
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--browser", action="store_true")
    ap.add_argument("--before", type=Path, default=None)
    ap.add_argument("--glibc-defaults", action="store_true",
                    help="keep glibc's malloc defaults (the app and the CLI call nullviz.server.process.keep_freed_memory)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2 if args.device == "cpu" else torch.get_num_threads())
    out = {"device": args.device,
           "allocator": "glibc defaults" if args.glibc_defaults or not keep_freed_memory() else "keep_freed_memory"}
    digits = load_model("digits", device=args.device)
    cluttered = load_model("cluttered", device=args.device)
    g = torch.Generator().manual_seed(0)
    out.update(extract_ratio(digits, torch.randn(64, 3, 32, 32, generator=g).to(digits.device), "digits_b64"))
    out.update(extract_ratio(cluttered, torch.randn(64, 3, 64, 64, generator=g).to(cluttered.device), "cluttered_b64"))
    tiny = create_random_vit("vit_tiny_patch16_224", seed=0, num_classes=10, device=args.device)
    out.update(extract_ratio(tiny, torch.randn(16, 3, 224, 224, generator=g).to(tiny.device), "vit_ti16_b16"))
    out["interaction_digits_ms"] = interaction(digits) * 1e3
    out["interaction_cluttered_ms"] = interaction(cluttered) * 1e3
    if args.browser:
        for model in ("digits", "cluttered"):
            out[f"chromium_new_seed_{model}_s"] = browser_latency(ROOT, model)
        if args.before is not None:
            out["chromium_new_seed_before_digits_s"] = browser_latency(args.before.resolve(), "digits")
    print_table(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
