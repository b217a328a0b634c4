"""One rank of a 2-process gloo run, started by torchrun from tests/train/test_distributed.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/helpers/dist_worker.py OUT [MODE]

MODE 'identity' (default): each rank trains a 'nullspace' run on a slice of the digits with its own run
folder OUT/rank{r} and saves what it saw (δ after synthesis, the evaluation history, the error if any) to
OUT/seen{r}.pt. MODE 'straight' / 'stop' / 'resume': one run in OUT/run, uninterrupted / stopped by every rank
after step 5 / resumed from OUT/run. MODE 'methods': the baseline, gaussian and adversarial runs of
``nullviz finetune`` at a global batch of 16 (8 per rank on 2 processes, 16 in one), one after the other in one
process group, into OUT/world{W}/{method} (also runs without torchrun, as the one-process reference).
"""

import os
import sys
from pathlib import Path


import torch

from nullviz.data import digits_dataset
from nullviz.models import load_model
from nullviz.train.distributed import cleanup
from nullviz.train.finetune import FinetuneConfig, FinetuneRun


def main() -> int:
    out = Path(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "identity"
    rank = int(os.environ.get("RANK", "0"))
    lm = load_model("default", device="cpu")
    train = torch.utils.data.Subset(digits_dataset("train", lm.transform), range(128))
    held = torch.utils.data.Subset(digits_dataset("heldout", lm.transform), range(41))  # odd: uneven shards
    cfg = FinetuneConfig(method="nullspace", epochs=2, steps_per_epoch=3, batch_size=8, synth_steps=5,
                         fresh_deltas=2, fresh_every_epoch=True, seed=3)

    if mode == "methods":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        train_all, held_all = digits_dataset("train", lm.transform), digits_dataset("heldout", lm.transform)
        for method in ("baseline", "gaussian", "adversarial"):
            # what the command line builds from: --method M --epochs 1 --steps-per-epoch 3 --batch-size 16/W
            # --synth-steps 5 --eval-synth-steps 5 --fresh-deltas 1 --seed 2
            cfg = FinetuneConfig(method=method, epochs=1, steps_per_epoch=3, batch_size=16 // world, synth_steps=5,
                                 eval_synth_steps=5, fresh_deltas=1, seed=2)
            FinetuneRun(lm, train_all, held_all, cfg, out / f"world{world}" / method).run()
        cleanup()
        return 0
    if mode != "identity":
        cfg = FinetuneConfig(method="nullspace", epochs=2, steps_per_epoch=4, batch_size=8, synth_steps=5,
                             fresh_deltas=0, seed=5)
        run = FinetuneRun(lm, train, held, cfg, out / "run",
                          should_stop=(lambda: run.global_step >= 5) if mode == "stop" else None)
        if mode == "resume":
            run.load_state(out / "run")
        result = run.run()
        cleanup()
        return 0 if result.stopped == (mode == "stop") else 1
    run = FinetuneRun(lm, train, held, cfg, out / f"rank{rank}")
    seen = {"rank": rank, "world": run.world}
    try:
        run.synthesize_delta(11)
        seen["delta"] = run.delta.clone()
        result = run.run()
        seen["history"] = result.history
    except Exception as exc:  # noqa: BLE001 — report it to the test
        seen["error"] = f"{type(exc).__name__}: {exc}"
    torch.save(seen, str(out / f"seen{rank}.pt"))
    cleanup()
    return 1 if "error" in seen else 0


if __name__ == "__main__":
    raise SystemExit(main())
