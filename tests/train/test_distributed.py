"""Distributed finetuning on CPU: 2 gloo processes under torchrun, the loader, accumulation, checkpoints.

Equivalence tolerance. Two ranks × batch b and one process × 2b see the same images per step and DDP
averages the ranks' gradients, so the updates agree up to float32 reduction order: after 3 AdamW steps at
lr 1e-4 the weights agree within 5e-7 (measured 4.4e-7), and we allow 2e-6. One slice is excluded: the key
part of each ``qkv.bias``. Its exact gradient is 0 (adding a constant to every key shifts a softmax row
uniformly), so what autograd returns is rounding noise of ~1e-10, and Adam divides by its own magnitude,
turning noise into updates of up to lr/2 whose sign depends on the reduction order. The same can happen to any
single weight whose gradient happens to be near 0 (one fc2 weight of the gaussian run at 3.1e-6 once the
synthesis changed its δ): at most 1 in 10,000 weights may lie past ATOL, and none past ADAM_FLIP_BOUND
(a small part of the lr·steps = 3e-4 a flipped update would move it).
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, wait_until
from nullviz.core.atomic import replace_atomically
from nullviz.core.errors import CheckpointError
from nullviz.core.seeds import stream_seed
from nullviz.data import digits_dataset
from nullviz.train.checkpoint import load_checkpoint, save_checkpoint
from nullviz.train.finetune import FinetuneConfig, FinetuneRun
from nullviz.train.loader import EpochBatchSampler, make_train_loader

pytestmark = pytest.mark.distributed  # torchrun with two gloo processes

ATOL = 2e-6
ADAM_FLIP_BOUND = 5e-5
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "NULLVIZ_DIST_TIMEOUT_S": "30", "OMP_NUM_THREADS": "1"}


def assert_same_weights(a: dict, b: dict) -> None:
    past, total = [], 0
    for k in a:
        x, y = a[k].clone(), b[k].clone()
        if k.endswith("attn.qkv.bias"):  # the key bias: zero exact gradient (see the module doc)
            d = x.numel() // 3
            x[d:2 * d] = y[d:2 * d] = 0
        torch.testing.assert_close(x, y, atol=ADAM_FLIP_BOUND, rtol=0, msg=k)
        diff = (x - y).abs()
        past += [(k, float(v)) for v in diff[diff > ATOL]]
        total += diff.numel()
    assert len(past) <= total // 10_000, past  # rounding noise in a near-zero gradient (see the module doc)


@pytest.fixture(scope="module")
def small_sets(default_lm):
    train = torch.utils.data.Subset(digits_dataset("train", default_lm.transform), range(128))
    held = torch.utils.data.Subset(digits_dataset("heldout", default_lm.transform), range(40))
    return train, held


def test_loader_gives_the_batches_of_the_old_path():
    """The old loop read order[rank::world][step·b : (step+1)·b] of a (seed, epoch)-seeded order."""
    n, b, steps, seed, epoch = 50, 8, 5, 3, 2
    for world in (1, 2):
        gen = torch.Generator().manual_seed(stream_seed("data_order", seed, epoch))
        needed = steps * b * world
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-needed // n))])[:needed]
        for rank in range(world):
            old = [order[rank::world][s * b:(s + 1) * b].tolist() for s in range(steps)]
            assert list(EpochBatchSampler(n, seed, epoch, steps, b, 1, rank, world)) == old
            assert list(EpochBatchSampler(n, seed, epoch, steps, b, 1, rank, world, start_step=2)) == old[2:]
    # accumulation: one step's micro-batches are that step's images
    acc = list(EpochBatchSampler(n, seed, epoch, steps, 4, 2, 0, 1))
    assert [acc[2 * s] + acc[2 * s + 1] for s in range(steps)] == list(EpochBatchSampler(n, seed, epoch, steps, 8))


def test_dataloader_workers_read_the_same_batches(small_sets):
    train = small_sets[0]
    batches = [list(make_train_loader(train, EpochBatchSampler(len(train), 0, 1, 3, 8), workers=w)) for w in (0, 2)]
    for (x0, y0), (x2, y2) in zip(*batches):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


@pytest.mark.parametrize("method", ["baseline", "nullspace"])
def test_gradient_accumulation_equals_the_larger_batch(default_lm, small_sets, method):
    base = dict(method=method, epochs=1, steps_per_epoch=3, synth_steps=5, eval_synth_steps=5, fresh_deltas=0, seed=1)
    big = FinetuneRun(default_lm, *small_sets, FinetuneConfig(batch_size=16, **base))
    acc = FinetuneRun(default_lm, *small_sets, FinetuneConfig(batch_size=8, grad_accum=2, **base))
    big.run(), acc.run()
    assert acc.global_batch == 16
    if method == "nullspace":
        assert torch.equal(big.delta, acc.delta)
    assert_same_weights(big.model.state_dict(), acc.model.state_dict())


def _finetune_cmd(out: Path, method: str, batch: int) -> list[str]:
    return ["-m", "nullviz", "finetune", "--method", method, "--epochs", "1", "--steps-per-epoch", "3",
            "--batch-size", str(batch), "--synth-steps", "5", "--eval-synth-steps", "5", "--fresh-deltas", "1", "--seed", "2",
            "--out", str(out), "--json"]


def test_two_processes_equal_one_with_twice_the_batch_from_the_command_line(tmp_path):
    """`torchrun … nullviz finetune` as a user runs it (the nullspace method: δ synthesized, broadcast, trained on)."""
    method = "nullspace"
    two = subprocess.run(TORCHRUN + _finetune_cmd(tmp_path / "two", method, 8), cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stderr[-2000:]
    one = subprocess.run([sys.executable] + _finetune_cmd(tmp_path / "one", method, 16), cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-2000:]
    report = json.loads(two.stdout)  # rank 0 alone reports
    assert report["world_size"] == 2 and report["global_batch"] == 16 and report["images_per_second"] > 0
    assert len(two.stdout.strip().splitlines()) == 1
    assert_same_weights(load_file(str(tmp_path / "one" / "model.safetensors")),
                        load_file(str(tmp_path / "two" / "model.safetensors")))
    single = json.loads(one.stdout)["history"][-1]
    assert report["history"][-1]["clean_acc"] == pytest.approx(single["clean_acc"])


def test_two_processes_equal_one_with_twice_the_batch_for_the_other_methods(tmp_path):
    """baseline, gaussian and adversarial, the same settings as the command line above, in one process group
    each way (one torchrun start instead of three: the suite's time)."""
    worker = [str(ROOT / "tests" / "helpers" / "dist_worker.py"), str(tmp_path), "methods"]
    two = subprocess.run(TORCHRUN + worker, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    one = subprocess.run([sys.executable] + worker, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    for method in ("baseline", "gaussian", "adversarial"):
        assert_same_weights(load_file(str(tmp_path / "world1" / method / "model.safetensors")),
                            load_file(str(tmp_path / "world2" / method / "model.safetensors")))
        a, b = (json.loads((tmp_path / f"world{w}" / method / "model.json").read_text())["metrics"] for w in (1, 2))
        assert a["clean_acc"] == pytest.approx(b["clean_acc"]) and b["world_size"] == 2


def test_delta_and_evaluation_are_identical_on_both_ranks_and_only_rank_0_writes(tmp_path):
    proc = subprocess.run(TORCHRUN + [str(ROOT / "tests" / "helpers" / "dist_worker.py"), str(tmp_path)], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = [torch.load(str(tmp_path / f"seen{r}.pt"), weights_only=False) for r in (0, 1)]
    assert seen[0]["world"] == seen[1]["world"] == 2
    assert torch.equal(seen[0]["delta"], seen[1]["delta"])  # bit-identical
    timing = ("images_per_second",)  # each rank's own clock
    numbers = [[{k: v for k, v in rec.items() if k not in timing} for rec in s["history"]] for s in seen]
    assert numbers[0] == numbers[1]  # every number, every epoch (the held-out set splits unevenly: 21 + 20)
    assert len(seen[0]["history"]) == 2 and "delta_acc" in seen[0]["history"][0]
    assert (tmp_path / "rank0" / "model.safetensors").exists() and not (tmp_path / "rank1").exists()


def test_stop_and_resume_on_two_processes_is_bit_identical(tmp_path):
    worker = str(ROOT / "tests" / "helpers" / "dist_worker.py")
    for folder, modes in (("straight", ["straight"]), ("interrupted", ["stop", "resume"])):
        for mode in modes:
            proc = subprocess.run(TORCHRUN + [worker, str(tmp_path / folder), mode], cwd=ROOT, env=ENV,
                                  capture_output=True, text=True, timeout=240)
            assert proc.returncode == 0, (mode, proc.stderr[-2000:])
    a = load_file(str(tmp_path / "straight" / "run" / "model.safetensors"))
    b = load_file(str(tmp_path / "interrupted" / "run" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _pid_of_rank(out: Path, rank: int) -> int | None:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes().split(b"\0")
            environ = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (str(out).encode() in cmdline and b"nullviz" in cmdline and b"torch.distributed.run" not in cmdline
                and f"RANK={rank}".encode() in environ):
            return int(d.name)
    return None


def test_a_killed_rank_fails_with_a_clear_message_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["-m", "nullviz", "finetune", "--method", "nullspace", "--epochs", "3", "--steps-per-epoch", "30",
            "--batch-size", "8", "--synth-steps", "5", "--eval-synth-steps", "5", "--fresh-deltas", "0", "--out", str(out), "--json"]
    proc = subprocess.Popen(TORCHRUN + args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    def mid_epoch_rank_1():  # (step, pid) once the run is in its second epoch, or the run's end
        log = out / "log.jsonl"
        recs = [json.loads(s) for s in log.read_text().splitlines() if s.strip()] if log.exists() else []
        if recs and recs[-1]["kind"] == "step" and recs[-1]["epoch"] == 1 and recs[-1]["step"] >= 32:
            pid = _pid_of_rank(out, 1)
            return (recs[-1]["step"], pid) if pid else None
        return proc.poll() is not None

    found = wait_until(mid_epoch_rank_1, 180, 0.02)
    killed_at = None
    if found is not True:
        killed_at, pid = found
        os.kill(pid, signal.SIGKILL)  # mid-epoch, one rank
    _, err = proc.communicate(timeout=180)
    assert killed_at is not None, "the run ended before a rank could be killed"
    assert proc.returncode != 0
    assert "another process of this run stopped" in err and "--resume" in err
    weights, state = load_checkpoint(out)  # the checkpoint of the finished epoch is whole
    assert state["epoch"] == 1 and state["global_step"] == 30 and state["world_size"] == 2
    resumed = subprocess.run([sys.executable] + args + ["--resume"], cwd=ROOT, env=ENV, capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads(resumed.stdout)
    assert report["epochs_run"] == 3 and report["world_size"] == 1
    assert "Resumed on 1 process(es) a run saved on 2" in report["resume_note"]


def test_a_checkpoint_is_never_half_written(tmp_path, default_lm):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")

    def crash(p):
        p.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        replace_atomically(path, crash)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["file.bin"]
    weights = default_lm.model.state_dict()
    save_checkpoint(tmp_path / "a", weights, {"arch": "x"}, {"global_step": 4, "epoch": 0})
    save_checkpoint(tmp_path / "b", weights, {"arch": "x"}, {"global_step": 9, "epoch": 1})
    (tmp_path / "b" / "trainer_state.pt").replace(tmp_path / "a" / "trainer_state.pt")  # files of two moments
    with pytest.raises(CheckpointError, match="incomplete: its weights are from step 4 and its trainer state "
                                              "from step 9"):
        load_checkpoint(tmp_path / "a")
