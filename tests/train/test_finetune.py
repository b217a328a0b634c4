import json

import pytest
import torch

from conftest import assert_state_equal, state_snapshot
from nullviz.core.errors import CheckpointError, InvalidParameterError
from nullviz.core.params import constraints_of
from nullviz.data import digits_dataset
from nullviz.models import load_model
from nullviz.train import methods as finetune_methods
from nullviz.train.finetune import METHODS, FinetuneConfig, FinetuneRun, finetune
from nullviz.train.methods import FINETUNE_METHODS


@pytest.fixture(scope="module")
def sets(default_lm):
    train = torch.utils.data.Subset(digits_dataset("train", default_lm.transform), range(96))
    held = torch.utils.data.Subset(digits_dataset("heldout", default_lm.transform), range(48))
    return train, held


def small(method, **kw):
    base = dict(method=method, epochs=1, steps_per_epoch=3, batch_size=16, lr=1e-3, synth_steps=5, eval_synth_steps=5,
                synth_fraction=0.2, seed=0)
    return FinetuneConfig(**{**base, **kw})


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.slow
def test_loss_decreases_on_a_fixed_batch(default_lm, sets, method):
    run = FinetuneRun(default_lm, sets[0], sets[1], small(method, lr=5e-4, steps_per_epoch=12))
    run.synthesize_delta(seed=0)
    x = torch.stack([sets[0][i][0] for i in range(16)])
    y = torch.tensor([sets[0][i][1] for i in range(16)])
    losses = [run.train_step(x, y)["loss"] for _ in range(6)]
    assert losses[-1] < losses[0]


def test_nullspace_method_really_adds_delta(default_lm, sets):
    run = FinetuneRun(default_lm, sets[0], sets[1], small("nullspace"))
    run.synthesize_delta(seed=0)
    assert run.delta is not None and float(run.delta.norm()) > 1.0 and not run.delta.requires_grad
    x = torch.stack([sets[0][i][0] for i in range(8)])
    y = torch.tensor([sets[0][i][1] for i in range(8)])
    m = run.train_step(x, y)
    assert m["loss_noise"] > 0 and m["loss_noise"] != pytest.approx(m["loss_clean"], rel=1e-6)
    base = FinetuneRun(default_lm, sets[0], sets[1], small("baseline")).train_step(x, y)
    assert base["loss_noise"] == 0.0


def test_cached_model_untouched(default_lm, sets, tmp_path):
    snap = state_snapshot(default_lm.model)
    finetune(default_lm, sets[0], sets[1], small("adversarial"), tmp_path)
    assert_state_equal(default_lm.model, snap)
    assert not default_lm.model.training and not any(p.requires_grad for p in default_lm.model.parameters())


@pytest.mark.slow
def test_history_metrics_logs_and_checkpoint(default_lm, sets, tmp_path):
    seen = []
    res = finetune(default_lm, sets[0], sets[1], small("nullspace", epochs=2), tmp_path, on_epoch=seen.append)
    assert res.epochs_run == 2 and res.steps_run == 6 and not res.stopped and len(seen) == 2
    for key in ("clean_acc", "delta_acc", "delta_acc_std", "delta_acc_seeds", "train_delta_acc", "gaussian_acc",
                "fgsm_acc", "loss", "loss_clean", "loss_noise", "lr", "delta_l2", "delta_mse_probs", "delta_agreement"):
        assert key in res.history[-1]
    lines = [json.loads(s) for s in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in lines].count("step") == 6 and [r["kind"] for r in lines].count("epoch") == 2
    assert (tmp_path / "epochs.csv").read_text().startswith("kind,method,epoch")
    d = res.to_dict()
    assert d["method"] == "nullspace" and d["checkpoint"].endswith("model.safetensors")
    # the checkpoint loads through the foundation's loader, with its sidecar
    lm2 = load_model("default", checkpoint=d["checkpoint"], device="cpu")
    assert lm2.name == "nullviz_digits_vit" and lm2.class_names == default_lm.class_names
    x = torch.stack([sets[1][i][0] for i in range(4)])
    assert lm2.predict(x).shape == (4, 10)


@pytest.mark.slow
def test_stop_and_resume_reproduce_the_same_state(default_lm, sets, tmp_path):
    cfg = small("nullspace", epochs=2, steps_per_epoch=4)
    straight = FinetuneRun(default_lm, sets[0], sets[1], cfg, tmp_path / "a")
    straight.run()
    count = {"n": 0}

    def stop_after_5():
        count["n"] += 1
        return count["n"] > 5

    first = finetune(default_lm, sets[0], sets[1], cfg, tmp_path / "b", should_stop=stop_after_5)
    assert first.stopped and first.steps_run == 5
    resumed_run = FinetuneRun(default_lm, sets[0], sets[1], cfg, tmp_path / "b")
    resumed_run.load_state(tmp_path / "b")
    assert resumed_run.global_step == 5 and resumed_run.epoch == 1 and resumed_run.step_in_epoch == 1
    resumed = resumed_run.run()
    assert resumed.steps_run == 8 and not resumed.stopped
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed_run.model.state_dict()[k]), k
    assert straight.history[-1]["clean_acc"] == resumed.history[-1]["clean_acc"]
    assert straight.history[-1]["loss"] == pytest.approx(resumed.history[-1]["loss"], rel=1e-6)


@pytest.mark.slow
def test_resume_errors(default_lm, sets, tmp_path):
    with pytest.raises(CheckpointError, match="no complete nullviz run"):
        finetune(default_lm, sets[0], sets[1], small("baseline"), tmp_path / "empty", resume=True)
    finetune(default_lm, sets[0], sets[1], small("baseline"), tmp_path / "r")
    with pytest.raises(CheckpointError, match="other settings"):
        finetune(default_lm, sets[0], sets[1], small("baseline", lr=0.5), tmp_path / "r", resume=True)


def test_freeze_options(default_lm, sets):
    run = FinetuneRun(default_lm, sets[0], sets[1], small("baseline", freeze="all_but_head"))
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    x = torch.stack([sets[0][i][0] for i in range(8)])
    y = torch.tensor([sets[0][i][1] for i in range(8)])
    run.train_step(x, y)
    after = run.model.state_dict()
    assert torch.equal(before["blocks.0.attn.qkv.weight"], after["blocks.0.attn.qkv.weight"])
    assert not torch.equal(before["head.weight"], after["head.weight"])
    run = FinetuneRun(default_lm, sets[0], sets[1], small("baseline", freeze="patch_embed"))
    assert not any(p.requires_grad for p in run.model.patch_embed.parameters())


@pytest.mark.parametrize("name,constraint", sorted(constraints_of(FinetuneConfig).items()))
def test_config_rejects_each_bad_value(name, constraint):
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter of FinetuneConfig"):
        FinetuneConfig(**{name: constraint.invalid_value()})


def test_new_class_count_gets_a_seeded_head_without_touching_global_rng(default_lm):
    ds = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,)))
    ds.classes = ["a", "b", "c"]
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = FinetuneRun(default_lm, ds, ds, small("baseline", new_head=True))
    assert torch.equal(torch.rand(1), expected)
    b = FinetuneRun(default_lm, ds, ds, small("baseline", new_head=True))
    assert a.model.num_classes == 3 and torch.equal(a.model.head.weight, b.model.head.weight)


def test_other_classes_are_refused_without_an_explicit_new_head(default_lm, tmp_path):
    """A model is never quietly retrained on data of another number of classes (a 1,000-class ViT on the 10
    digits): the run, the page and the CLI say what to do instead."""
    from nullviz.core.errors import DataError
    from nullviz.data import DataSpec
    from nullviz.train.finetune import check_head

    ds = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,)))
    ds.classes = ["a", "b", "c"]
    with pytest.raises(DataError, match="predicts 10 classes but the training data has 3: .*new classifier head"):
        FinetuneRun(default_lm, ds, ds, small("baseline"))
    with pytest.raises(DataError, match="predicts 1,000 classes but the training data has 10"):
        check_head("vit_small_patch16_224", 1000, DataSpec.parse("digits").class_count(), new_head=False)
    check_head("vit_small_patch16_224", 1000, 10, new_head=True)
    check_head("nullviz_digits_vit", 10, DataSpec.parse("cluttered").class_count(), new_head=False)
    for name in ("cat", "dog", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("not a class")
    assert DataSpec.parse(str(tmp_path)).class_count() == 2
    assert DataSpec.parse(str(tmp_path / "missing")).class_count() is None


def test_seed_streams_never_share_a_draw():
    """The Gaussian control trained on seed*7919 + period and was evaluated with seed + 17: seed 0, period 17
    trained on the evaluation noise. Now every (stream, seed, index) has its own seed, by construction."""
    from nullviz.core.seeds import INDEX_PERIOD, MAX_SEED, STREAMS, stream_seed

    train = {stream_seed("train_gaussian", s, p) for s in range(200) for p in range(500)}
    evaluation = {stream_seed("eval_gaussian", s, k) for s in range(200) for k in range(17)}
    assert not train & evaluation and len(train) == 200 * 500
    every = [stream_seed(st, s, i) for st in STREAMS for s in (0, 1, MAX_SEED) for i in (0, 1, INDEX_PERIOD - 1)]
    assert len(set(every)) == len(every) and max(every) < 2 ** 32  # torch's CPU generator reads 32 bits
    assert stream_seed("train_gaussian", 3, INDEX_PERIOD + 5) == stream_seed("train_gaussian", 3, 5)
    # and the draws themselves: the old collision is gone
    run_seed = 0
    ref = torch.ones(4, 8)
    gaussian = FINETUNE_METHODS["gaussian"]
    drawn_train = [gaussian.training_noise(ref, stream_seed("train_gaussian", run_seed, p)) for p in range(40)]
    drawn_eval = [gaussian.training_noise(ref, stream_seed("eval_gaussian", run_seed, k)) for k in range(8)]
    assert not any(torch.equal(a, b) for a in drawn_train for b in drawn_eval)
    with pytest.raises(InvalidParameterError):
        stream_seed("train_gaussian", MAX_SEED + 1, 0)
    with pytest.raises(InvalidParameterError):
        FinetuneConfig(seed=MAX_SEED + 1)


@pytest.mark.slow
def test_training_and_evaluation_use_their_own_streams(default_lm, sets, monkeypatch):
    from nullviz.core.seeds import stream_seed

    run = FinetuneRun(default_lm, sets[0], sets[1], small("gaussian", epochs=1, steps_per_epoch=2, fresh_deltas=2))
    synth_seeds, gauss_seeds = [], []
    real_synth, real_random_like = run.deltas.synthesize, finetune_methods.random_like
    monkeypatch.setattr(run.deltas, "synthesize",
                        lambda model, seed, **kw: synth_seeds.append(seed) or real_synth(model, seed, **kw))
    monkeypatch.setattr(finetune_methods, "random_like",
                        lambda d, kind, gen: gauss_seeds.append(gen.initial_seed()) or real_random_like(d, kind, gen))
    run.run()
    assert synth_seeds == [stream_seed("train_delta", 0, 0), stream_seed("fresh_delta", 0, 0),
                           stream_seed("fresh_delta", 0, 1), stream_seed("start_delta", 0)]
    assert gauss_seeds == [stream_seed("train_gaussian", 0, 0)] * 2  # the evaluation's Gaussians: a fixed grid


@pytest.mark.slow
def test_accuracy_under_delta_uses_fresh_deltas_from_the_evaluated_model(default_lm, sets):
    """The headline 'under δ' figure is the mean over δs synthesized from the final model on training images;
    the δ the run trained on is reported apart."""
    from nullviz.noise.approximate import synthesize_for_model
    from nullviz.core.seeds import stream_seed

    run = FinetuneRun(default_lm, sets[0], sets[1], small("nullspace", fresh_deltas=3))
    res = run.run()
    last = res.history[-1]
    assert len(last["delta_acc_seeds"]) == 3
    assert last["delta_acc"] == pytest.approx(sum(last["delta_acc_seeds"]) / 3)
    assert last["delta_acc_std"] >= 0 and "train_delta_acc" in last
    # re-derive the first fresh δ independently and check its accuracy: the evaluation's fixed settings, fit on
    # EVAL_FIT_FRACTION of the training images and selected on a validation draw of others
    from nullviz.train.evaluator import predict
    from nullviz.train.finetune import EVAL_FIT_FRACTION, EVAL_VALIDATION_IMAGES

    seed = stream_seed("fresh_delta", 0, 0)
    order = torch.randperm(len(sets[0]), generator=torch.Generator().manual_seed(seed))
    n_fit = max(1, round(len(sets[0]) * EVAL_FIT_FRACTION))
    n_val = min(EVAL_VALIDATION_IMAGES, (len(sets[0]) - n_fit) // 2)
    x = torch.stack([sets[0][int(i)][0] for i in order[:n_fit]]).to(run.device)
    val = torch.stack([sets[0][int(i)][0] for i in order[n_fit:n_fit + n_val]]).to(run.device)
    run.model.eval()
    delta = synthesize_for_model(run.model, x, run.cfg.evaluation_synthesis(seed), validation_images=val).delta
    xs = torch.stack([sets[1][i][0] for i in range(len(sets[1]))]).to(run.device)
    ys = torch.tensor([sets[1][i][1] for i in range(len(sets[1]))]).to(run.device)
    acc = float((predict(run.model, xs, delta.to(run.device)) == ys).float().mean())
    # exact on the CPU; CUDA's reductions are not bit-reproducible, so a re-derived δ may flip an image or two
    assert acc == pytest.approx(last["delta_acc_seeds"][0], abs=1e-6 if run.device.type == "cpu" else 0.02)
    only_training = FinetuneRun(default_lm, sets[0], sets[1], small("nullspace", fresh_deltas=0)).run().history[-1]
    assert "delta_acc" not in only_training and "train_delta_acc" in only_training
    # fresh δs after the last epoch only, unless asked for at every epoch
    two = FinetuneRun(default_lm, sets[0], sets[1], small("nullspace", epochs=2, fresh_deltas=1)).run().history
    assert "delta_acc" not in two[0] and "delta_acc" in two[1]
    every = FinetuneRun(default_lm, sets[0], sets[1], small("nullspace", epochs=2, fresh_deltas=1,
                                                            fresh_every_epoch=True)).run().history
    assert "delta_acc" in every[0] and every[1]["delta_acc"] == two[1]["delta_acc"]


@pytest.mark.slow
def test_logged_learning_rate_is_the_one_the_step_used(default_lm, sets):
    """It was read after scheduler.step(): the next step's rate."""
    steps = []
    run = FinetuneRun(default_lm, sets[0], sets[1], small("baseline", steps_per_epoch=3, warmup_steps=2, lr=1e-3,
                                                          fresh_deltas=0), on_step=steps.append)
    run.run()
    assert [r["lr"] for r in steps] == pytest.approx([0.5e-3, 1e-3, 1e-3])
    assert run.history[-1]["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("method", ["baseline", "nullspace"])
@pytest.mark.slow
def test_progress_counts_synthesis_training_and_evaluation(default_lm, sets, method):
    """The work a run reports, phase by phase, is what its plan says (the progress bar's total): δ synthesis
    and evaluation move the bar, not only the training steps."""
    from nullviz.train.finetune import PHASES

    train, held = sets
    cfg = small(method, epochs=2, steps_per_epoch=3, synth_steps=4, fresh_deltas=1, eval_limit=40)
    seen: dict[str, float] = {}
    order: list[str] = []

    def work(phase, units):
        seen[phase] = seen.get(phase, 0.0) + units
        if not order or order[-1] != phase:
            order.append(phase)

    finetune(default_lm, train, held, cfg, on_work=work)
    plan = cfg.work_plan(3, len(held))
    assert set(seen) == set(PHASES) and set(plan) == set(PHASES)
    for phase in PHASES:
        assert seen[phase] == pytest.approx(plan[phase], rel=1e-9), phase
    # the order a user sees: (δ,) training, evaluating — and δ again for the fresh ones at the end
    assert order[order.index("training") + 1] in ("evaluating", "synthesizing δ")
    assert order[-1] == "evaluating"


@pytest.mark.slow
def test_same_weights_same_evaluation_whatever_the_training_settings(default_lm, sets):
    """One yardstick: runs that leave the weights unchanged but differ in method, λ and lim report
    identical evaluation numbers — fresh δs, the starting model's δ, the Gaussian grid, FGSM, nullspace size.
    Before, the fresh δs used each run's own λ and the Gaussian each run's own δ norm."""
    from nullviz.train.finetune import GAUSSIAN_GRID

    # lr 1e-30 (it must be > 0): Adam's step is about lr, far below float32 rounding of the weights
    common = dict(epochs=1, steps_per_epoch=1, lr=1e-30, weight_decay=0.0, fresh_deltas=1, eval_synth_steps=8)
    a = FinetuneRun(default_lm, sets[0], sets[1], small("nullspace", synth_lam=2.0, synth_lim=3.0, **common)).run()
    b = FinetuneRun(default_lm, sets[0], sets[1], small("gaussian", synth_lam=0.0, synth_lim=0.5, **common)).run()
    c = FinetuneRun(default_lm, sets[0], sets[1], small("baseline", **common)).run()
    keys = ["clean_acc", "fgsm_acc", "delta_acc", "fresh_delta_l2", "nullspace_size", "start_delta_acc",
            "start_delta_l2", "token_norm", "gaussian_acc", *(f"gaussian_acc@{m:g}" for m in GAUSSIAN_GRID)]
    ea, eb, ec = a.history[-1], b.history[-1], c.history[-1]
    assert [ea[k] for k in keys] == [eb[k] for k in keys] == [ec[k] for k in keys]
    assert ea["delta_l2"] != eb["delta_l2"]  # their training δs did differ
    assert ea["nullspace_size"] == pytest.approx(ea["fresh_delta_l2"] / ea["token_norm"])
    assert ea["nullspace_size_validation_mse"] <= 0.01  # the kept δ is inside ε on its validation images


def test_best_epoch_is_the_first_with_the_highest_held_out_accuracy():
    from nullviz.train.finetune import best_epoch

    assert best_epoch([{"epoch": 1, "clean_acc": 0.5}, {"epoch": 2, "clean_acc": 0.7}, {"epoch": 3, "clean_acc": 0.7},
                       {"epoch": 4, "clean_acc": 0.6}]) == 2
    assert best_epoch([]) is None and best_epoch([{"epoch": 1}]) is None


@pytest.mark.slow
def test_keep_best_keeps_the_best_epochs_weights(default_lm, sets, tmp_path):
    """With keep_best the run's checkpoint is the best held-out epoch's own run folder (its sidecar says which
    epoch, its weights load); the last epoch's folder is still there for resuming; the result says the epoch."""
    from safetensors.torch import load_file

    from nullviz.train.finetune import best_epoch

    cfg = small("baseline", epochs=3, lr=3e-3, keep_best=True, fresh_deltas=0)
    result = finetune(default_lm, sets[0], sets[1], cfg, tmp_path)
    best = best_epoch(result.history)
    assert result.best_epoch == best and result.to_dict()["best_epoch"] == best
    assert result.checkpoint == str(tmp_path / "best" / "model.safetensors")
    side = json.loads((tmp_path / "best" / "model.json").read_text())
    assert side["metrics"]["epoch"] == best and side["finetune"]["keep_best"] is True
    kept, last = load_file(result.checkpoint), load_file(str(tmp_path / "model.safetensors"))
    assert any(not torch.equal(kept[k], last[k]) for k in kept) == (best != 3)
    assert load_model(checkpoint=result.checkpoint).model.num_classes == 10


def test_the_papers_recipe_as_a_preset_and_augmentation_only_for_natural_images(default_lm):
    """The preset's values (../shared/PAPER.md §3), any one overridable; an unknown preset is refused; the
    paper's augmentation is a random resized crop and a flip without colour jitter; the embedded data refuse
    augmentation with a clear message."""
    from nullviz.core.errors import DataError
    from nullviz.data import train_heldout
    from nullviz.train.config import preset_config

    cfg = preset_config("paper")
    assert (cfg.epochs, cfg.lr, cfg.weight_decay, cfg.warmup_steps, cfg.augment, cfg.keep_best, cfg.synth_tol) == (
        10, 1e-4, 1e-4, 0, "rrc_flip", True, 0.03)
    assert preset_config("paper", epochs=2).epochs == 2
    with pytest.raises(InvalidParameterError):
        preset_config("imaginary")
    names = [type(t).__name__ for t in default_lm.augmentation("rrc_flip").transforms]
    assert "RandomResizedCropAndInterpolation" in names and "RandomHorizontalFlip" in names
    assert "ColorJitter" not in names and "ColorJitter" in [type(t).__name__ for t in
                                                            default_lm.augmentation("timm").transforms]
    assert default_lm.augmentation("none") is None
    with pytest.raises(DataError, match="augmentation is for natural images"):
        train_heldout("digits", default_lm.transform, train_transform=default_lm.augmentation("rrc_flip"))


def test_a_control_told_its_noise_norms_trains_on_them_and_synthesizes_no_delta(default_lm, sets):
    """The fair test's controls train on noise of the *same seed's nullspace run's* δ norms (a δ synthesized on
    the control's own model is another size): one norm per period, the last repeated, and no δ is made."""
    from nullviz.train import methods as M

    seen = []
    original = M.Gaussian.training_noise

    def spy(self, delta, seed):
        noise = original(self, delta, seed)
        seen.append((round(float(delta.norm()), 3), round(float(noise.norm()), 3), seed))
        return noise

    M.Gaussian.training_noise = spy
    try:
        run = FinetuneRun(default_lm, sets[0], sets[1], small("gaussian", epochs=3, steps_per_epoch=2,
                                                              noise_norms=(7.0, 11.0), fresh_deltas=0))
        result = run.run()
    finally:
        M.Gaussian.training_noise = original
    assert [s[:2] for s in seen] == [(7.0, 7.0)] * 2 + [(11.0, 11.0)] * 4  # epoch 3 repeats the last norm
    assert len({s[2] for s in seen}) == 3  # a new draw each period
    assert result.synthesis_seconds == 0.0 and [r["delta_l2"] for r in result.history] == [7.0, 11.0, 11.0]
    assert result.history[0]["delta_source"] == "given norm"
    assert small("gaussian", noise_norms=[3.0]).noise_norms == (3.0,)  # read back from JSON
    plan = small("gaussian", noise_norms=(3.0,)).work_plan(3, 48)
    assert plan["synthesizing δ"] == small("baseline").work_plan(3, 48)["synthesizing δ"]  # no training δ
    for bad in ((), (0.0,), (-1.0,), ("a",), 3.0):
        with pytest.raises(InvalidParameterError, match="noise_norms"):
            small("gaussian", noise_norms=bad)
    with pytest.raises(InvalidParameterError, match="noise_norms"):
        small("nullspace", noise_norms=(3.0,))  # δ itself has no given norm


@pytest.mark.slow
def test_runs_of_one_job_share_the_starting_models_noises(default_lm, sets, monkeypatch):
    """A job's methods start from one model and seed: its δ and Gaussian grid are made once (the Finetune page's
    default run made them three times), and every run measures exactly what it measured alone."""
    from nullviz.core.seeds import stream_seed
    from nullviz.train.deltas import RunDeltas
    from nullviz.train.evaluator import reference_key

    common = dict(epochs=1, steps_per_epoch=2, fresh_deltas=0, eval_synth_steps=6, eval_limit=32)
    alone = finetune(default_lm, *sets, small("gaussian", **common)).history[-1]
    start_seed = stream_seed("start_delta", 0)
    made, real = [], RunDeltas.synthesize

    def counting(self, model, seed, evaluation=False):
        made.append((seed, evaluation))
        return real(self, model, seed, evaluation)

    monkeypatch.setattr(RunDeltas, "synthesize", counting)
    references: dict = {}
    seen: dict[str, float] = {}
    shared = [finetune(default_lm, *sets, small(m, **common), references=references,
                       on_work=lambda phase, units, m=m: seen.__setitem__(m, seen.get(m, 0.0) +
                                                                           (units if phase == "synthesizing δ" else 0)))
              .history[-1] for m in ("baseline", "gaussian")]
    assert made.count((start_seed, True)) == 1 and list(references) == [reference_key(small("baseline", **common))]
    keys = ["start_delta_acc", "start_delta_l2", "token_norm", "gaussian_acc", "clean_acc", "fgsm_acc"]
    assert [shared[1][k] for k in keys] == [alone[k] for k in keys]
    assert shared[0]["start_delta_l2"] == alone["start_delta_l2"]
    # the progress plan of a run that borrows them counts no start δ
    assert seen["baseline"] == pytest.approx(small("baseline", **common).work_plan(2, len(sets[1]))["synthesizing δ"])
    assert seen["gaussian"] == pytest.approx(
        small("gaussian", **common).work_plan(2, len(sets[1]), start_delta=False)["synthesizing δ"])
