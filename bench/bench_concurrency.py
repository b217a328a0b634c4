"""Several threads sharing one LoadedModel (the app's cached model under many sessions), library level.

    python bench/bench_concurrency.py [--device cpu|cuda] [--model default|vit_base_patch16_224] [--threads 8]

For one interaction of the Attention page (exact noise + clean/noised attention trace of one image) it
reports, in one run:
- requests per second with 1 thread and with N threads (no lock: N requests really run at once);
- whether every concurrent result equals the serial one, and whether the model is untouched afterwards;
- on CUDA, the memory a request allocates beyond the model, one at a time vs N at once, against the size of
  the model's weights (per-request views share the weights: N requests must not cost N models).
"""

from __future__ import annotations

import argparse
import threading
import time

import torch


from nullviz.inspection.attention import compare
from nullviz.models import create_random_vit, load_model
from nullviz.noise import exact as N


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--requests", type=int, default=48)
    a = ap.parse_args()
    lm = load_model("default", device=a.device) if a.model == "default" else create_random_vit(a.model, device=a.device)
    cuda = lm.device.type == "cuda"
    gen = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 3, *lm.img_size, generator=gen).to(lm.device) for _ in range(a.threads)]
    ns = N.nullspace(lm)
    noise = N.sample_noise(ns, lm.img_size, N.NoiseSpec(seed=0)).to(lm.device)

    def request(k: int) -> torch.Tensor:
        c = compare(lm, images[k % len(images)], noise, "input")
        return torch.cat([c.clean.attention.flatten(), c.layer_repr_change])

    serial = [request(k) for k in range(len(images))]  # also warms up
    weights_mb = sum(p.numel() * p.element_size() for p in lm.model.parameters()) / 2**20

    def run(threads: int) -> tuple[float, float, bool]:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if cuda else 0
        ok = [True]
        count = a.requests

        def worker(w: int) -> None:
            for k in range(w, count, threads):
                out = request(k)
                if not torch.equal(out, serial[k % len(images)]):
                    ok[0] = False

        t = time.perf_counter()
        ts = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float("nan")
        return count / seconds, peak, ok[0]

    before = {n: (m.training, getattr(m, "fused_attn", None), len(m._forward_hooks)) for n, m in lm.model.named_modules()}
    one = run(1)
    many = run(a.threads)
    after = {n: (m.training, getattr(m, "fused_attn", None), len(m._forward_hooks)) for n, m in lm.model.named_modules()}
    print(f"device                     {lm.device} ({torch.cuda.get_device_name() if cuda else 'CPU'}), "
          f"torch threads {torch.get_num_threads()}")
    print(f"model                      {lm.name}, weights {weights_mb:.1f} MB")
    print(f"requests_per_s_1_thread    {one[0]:.1f}")
    print(f"requests_per_s_{a.threads}_threads   {many[0]:.1f}   (×{many[0] / one[0]:.2f})")
    print(f"results_equal_serial       {one[2] and many[2]}")
    print(f"model_state_unchanged      {before == after}")
    if cuda:
        print(f"peak_extra_mb_1_thread     {one[1]:.1f}")
        print(f"peak_extra_mb_{a.threads}_threads    {many[1]:.1f}   (weights are {weights_mb:.1f} MB: "
              f"{a.threads} copies would add {a.threads * weights_mb:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
