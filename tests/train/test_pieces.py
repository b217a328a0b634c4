"""The training loop's pieces on their own: each usable without FinetuneRun, and FinetuneRun only assembling them."""

import json
import math

import pytest
import torch

from nullviz.core.errors import CheckpointError, InvalidParameterError
from nullviz.data import digits_dataset
from nullviz.robustness.evaluation import Batch, batches, correctness
from nullviz.train.checkpoint import CheckpointSaver
from nullviz.train.config import FinetuneConfig
from nullviz.train.deltas import RunDeltas
from nullviz.train.evaluator import Evaluator
from nullviz.train.finetune import FinetuneRun
from nullviz.train.logger import RunLogger
from nullviz.train.loop import TrainState, noise_seed, train_one_epoch, warmup_cosine


@pytest.fixture(scope="module")
def sets(default_lm):
    train = torch.utils.data.Subset(digits_dataset("train", default_lm.transform), range(64))
    held = torch.utils.data.Subset(digits_dataset("heldout", default_lm.transform), range(32))
    return train, held


def small(method="baseline", **kw):
    base = dict(method=method, epochs=1, steps_per_epoch=3, batch_size=16, lr=1e-3, synth_steps=4, eval_synth_steps=4,
                synth_fraction=0.25, fresh_deltas=1, seed=0)
    return FinetuneConfig(**{**base, **kw})


def test_correctness_is_per_image_and_stops_between_batches():
    x = torch.arange(10.0).unsqueeze(1)
    y = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    conditions = {"parity": lambda b: (b.x[:, 0].long() % 2), "zeros": lambda b: torch.zeros_like(b.y)}
    seen = []
    right = correctness(conditions, batches(x, y, 4), on_batch=lambda b: seen.append((b.start, len(b.y))))
    assert right["parity"].tolist() == [True] * 10
    assert right["zeros"].tolist() == [True, False] * 5
    assert seen == [(0, 4), (4, 4), (8, 2)]
    calls = iter([False, True])
    assert correctness(conditions, batches(x, y, 4), should_stop=lambda: next(calls)) is None
    empty = correctness(conditions, iter([]))
    assert [len(v) for v in empty.values()] == [0, 0]
    assert isinstance(next(batches(x, y, 3)), Batch)


def test_warmup_cosine_schedule():
    f = warmup_cosine(2, 10)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == 1.0 and f(10) == pytest.approx(0.0, abs=1e-12)
    assert f(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert warmup_cosine(0, 4)(0) == 1.0


def test_noise_seed_is_one_per_period():
    cfg = small("gaussian")
    assert noise_seed(cfg, 0, 5) == noise_seed(cfg, 4, 5) != noise_seed(cfg, 5, 5)
    every = small("gaussian", noise_every=2)
    assert noise_seed(every, 1, 5) != noise_seed(every, 2, 5)


def test_logger_and_saver_write_only_on_the_primary_rank(tmp_path):
    RunLogger(tmp_path / "a", primary=False).log({"kind": "epoch", "epoch": 1})
    assert not (tmp_path / "a").exists()
    log = RunLogger(tmp_path / "b")
    log.log({"kind": "step", "step": 1})
    log.log({"kind": "epoch", "epoch": 1, "loss": 0.5})
    lines = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["step", "epoch"]
    assert (tmp_path / "b" / "epochs.csv").read_text().splitlines() == ["kind,epoch,loss", "epoch,1,0.5"]
    RunLogger(None).log({"kind": "epoch"})  # no folder: nothing, no error

    weights = {"w": torch.ones(2)}
    assert CheckpointSaver(tmp_path / "c", primary=False).save(weights, {}, {"global_step": 1}) is None
    assert not (tmp_path / "c").exists()
    saver = CheckpointSaver(tmp_path / "d")
    assert saver.save(weights, {"arch": "x"}, {"global_step": 3}) == tmp_path / "d" / "model.safetensors"
    loaded, state = saver.load()
    assert torch.equal(loaded["w"], weights["w"]) and state["global_step"] == 3
    with pytest.raises(CheckpointError):
        CheckpointSaver(None).load()


def test_train_one_epoch_stops_between_steps_and_counts(default_lm, sets):
    run = FinetuneRun(default_lm, *sets, small(steps_per_epoch=4))
    st = TrainState()
    records = []
    stops = iter([False, False, True])
    stopped = train_one_epoch(run.step, st, run._micro_batches(0), run.steps_per_epoch, run.global_batch,
                              should_stop=lambda: next(stops), on_step=records.append)
    assert stopped and st.global_step == st.step_in_epoch == 2 and st.images_trained == 32
    assert [r["step"] for r in records] == [1, 2] and records[0]["total_steps"] == 4
    assert st.epoch_sums["loss"] == pytest.approx(sum(r["loss"] for r in records))


def test_evaluator_alone_gives_the_runs_numbers(default_lm, sets):
    """The evaluator needs no run: the same model, sets and config give the run's own evaluation."""
    cfg = small("nullspace")
    run = FinetuneRun(default_lm, *sets, cfg)
    from_run = run.evaluate()
    deltas = RunDeltas(sets[0], cfg, run.device)
    alone = Evaluator(default_lm.model, deltas, *sets, cfg, run.mean, run.std, run.device).evaluate(run.model)
    assert alone == from_run
    assert set(alone) >= {"clean_acc", "fgsm_acc", "delta_acc", "nullspace_size", "start_delta_acc", "gaussian_acc"}
    assert "train_delta_acc" not in alone  # no training δ given
    assert run.model.training  # the evaluated model's mode is restored


def test_clean_only_epochs_measure_what_the_best_epoch_rule_reads(default_lm, sets):
    """epoch_measures="clean": each epoch's record holds held-out clean accuracy (the same as the full
    evaluation's) and no δ is synthesized for it; the work plan counts one pass per image and no evaluation δ."""
    cfg = small("nullspace", epochs=2, epoch_measures="clean")
    run = FinetuneRun(default_lm, *sets, cfg)
    result = run.run()
    assert [set(r) & {"clean_acc", "fgsm_acc", "delta_acc", "start_delta_acc"} for r in result.history] == [
        {"clean_acc"}] * 2
    full = Evaluator(default_lm.model, RunDeltas(sets[0], cfg, run.device), *sets, cfg, run.mean, run.std,
                     run.device).evaluate(run.model)
    assert result.history[-1]["clean_acc"] == full["clean_acc"]
    assert run.evaluator.synthesis_seconds == 0.0 and run.evaluator._reference is None
    plan, everything = cfg.work_plan(3, 32), small("nullspace", epochs=2).work_plan(3, 32)
    assert plan["evaluating"] * cfg.eval_passes(fresh=1) == pytest.approx(everything["evaluating"])
    assert plan["synthesizing δ"] == 2 * cfg.synth_steps * 0.55 < everything["synthesizing δ"]
    with pytest.raises(InvalidParameterError, match="measures"):
        run.evaluator.evaluate(run.model, measures="some")


def test_a_run_result_reads_back_typed_from_its_json():
    """What a job's results.json holds comes back as a FinetuneResult (the pages read fields, not .get)."""
    from nullviz.train.finetune import FinetuneResult

    res = FinetuneResult(config=small("nullspace"), history=[{"epoch": 1, "clean_acc": 0.5}], epochs_run=1,
                         steps_run=3, stopped=False, checkpoint="/x/model.safetensors", seconds=2.0,
                         synthesis_seconds=0.5, world_size=2)
    back = FinetuneResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back == res and back.usable and back.final == {"epoch": 1, "clean_acc": 0.5} and back.global_batch == 32
    stopped = FinetuneResult.from_dict({"config": small().__dict__, "stopped": True})  # stopped before it began
    assert stopped.stopped and not stopped.usable and stopped.final == {} and stopped.method == "baseline"
