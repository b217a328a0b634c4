import dataclasses

import pytest
import torch

from conftest import assert_state_equal, state_snapshot
from nullviz import data
from nullviz.core.errors import InvalidParameterError, NoiseFileError
from nullviz.core.params import constraints_of
from nullviz.noise.approximate import (RESEARCH_CODE, SynthesisConfig, check_noise_fits, evaluate_noise, frontier,
                                       noise_controls, noise_effect, split_fit_check, split_fit_validation, synthesize)
from nullviz.noise.files import load_noise, load_noise_bytes
from nullviz.robustness.evaluation import images_tensor


def fit_indices(n: int, seed: int, check_fraction: float = 0.25, validation_fraction: float = 0.2) -> torch.Tensor:
    """The images a synthesis of n given images is fit on: the test and then the validation images held out."""
    keep, _ = split_fit_check(n, check_fraction, seed)
    sub, _ = split_fit_validation(len(keep), validation_fraction, seed)
    return keep[sub]


@pytest.fixture(scope="module")
def digits_x(default_lm):
    x, _ = images_tensor(default_lm, data.digits_dataset("train"), limit=32)
    return x


@pytest.mark.parametrize("level,shape", [("encoder", (16, 96)), ("input", (3, 32, 32))])
def test_synthesized_delta_beats_permuted_control(default_lm, digits_x, level, shape):
    res = synthesize(default_lm, digits_x, SynthesisConfig(level=level, steps=60, seed=0))
    assert tuple(res.delta.shape) == shape
    assert res.steps_run <= 60 and len(res.history) == res.steps_run
    assert res.history[-1].mse_probs < res.history[0].mse_probs  # optimisation helped
    assert res.fit.mse_probs < 0.05 and res.fit.agreement >= 0.9
    assert res.fit.permuted_mse_probs > 5 * res.fit.mse_probs  # same norm, not optimised: much more visible
    assert res.fit.permuted_agreement < res.fit.agreement
    assert res.noise_l2 > 10  # large
    d = res.to_dict()
    for key in ("level", "steps_run", "final_loss", "mse_probs", "agreement", "noise_l2", "noise_linf",
                "permuted_mse_probs", "permuted_agreement"):
        assert key in d


def test_seed_reproduces_and_differs(default_lm, digits_x):
    cfg = SynthesisConfig(steps=10, tol=1e-9, seed=5)
    a, b = synthesize(default_lm, digits_x, cfg), synthesize(default_lm, digits_x, cfg)
    assert torch.equal(a.delta, b.delta)
    c = synthesize(default_lm, digits_x, dataclasses.replace(cfg, seed=6))
    assert not torch.equal(a.delta, c.delta)


def test_tolerance_stops_early_on_the_validation_images(default_lm, digits_x):
    """λ = 0 keeps the research code's rule, judged on images δ is not fit on: stop once the batch and the
    validation images are inside ε."""
    res = synthesize(default_lm, digits_x, SynthesisConfig(**{**RESEARCH_CODE, "steps": 300}, tol=0.02, batch_size=8))
    assert res.steps_run < 300 and res.selected_on == "validation"
    assert res.validation.mse_probs < 0.02  # the criterion holds over the validation images, not just a batch


def test_lambda_keeps_delta_larger(default_lm, digits_x):
    base = SynthesisConfig(steps=40, tol=1e-9, lim=1.0)
    plain = synthesize(default_lm, digits_x, base)
    pushed = synthesize(default_lm, digits_x, dataclasses.replace(base, lam=2.0))
    assert pushed.history[-1].noise_l2 > plain.history[-1].noise_l2  # λ pushes the norm while optimising…
    # …and the kept δ is the largest s·δ inside the (here absurdly strict) tolerance on the validation images
    assert pushed.shrunk_to < 1 and pushed.validation.mse_probs < base.tol


def test_stop_and_callback(default_lm, digits_x):
    seen = []
    res = synthesize(default_lm, digits_x, SynthesisConfig(steps=100, tol=1e-9), callback=seen.append,
                     should_stop=lambda: len(seen) >= 3)
    assert res.stopped_by_user and res.steps_run == 3 and [s.step for s in seen] == [0, 1, 2]


def test_synthesis_leaves_model_untouched(default_lm, digits_x):
    snap = state_snapshot(default_lm.model)
    model = default_lm.model
    model.train()  # a caller's mode is restored
    try:
        synthesize(default_lm, digits_x, SynthesisConfig(steps=3, tol=1e-9))
        assert model.training
    finally:
        model.eval()
    assert_state_equal(model, snap)
    assert all(p.grad is None for p in model.parameters())


def test_trainable_model_gets_no_weight_grads(default_lm, digits_x):
    from nullviz.noise.approximate import synthesize_for_model

    model = default_lm.trainable_copy()
    synthesize_for_model(model, digits_x, SynthesisConfig(steps=3, tol=1e-9))
    assert all(p.grad is None for p in model.parameters())


def test_save_load_round_trip(default_lm, digits_x, tmp_path):
    res = synthesize(default_lm, digits_x, SynthesisConfig(steps=5, tol=1e-9))
    path = res.save(tmp_path / "delta.pt")
    saved = load_noise(path)
    assert torch.equal(saved.delta, res.delta) and saved.level == "encoder"
    assert saved.meta["model_name"] == default_lm.name and saved.meta["config"]["lim"] == 1.0
    assert saved.meta["mse_probs"] == res.fit.mse_probs
    check_noise_fits(default_lm, saved.delta, saved.level)
    fit = fit_indices(len(digits_x), 0)  # mse_probs is about the fit images
    again = evaluate_noise(default_lm, digits_x[fit], saved.delta, saved.level)
    assert again["mse_probs"] == pytest.approx(res.fit.mse_probs, rel=1e-5)
    eff = noise_effect(default_lm, digits_x[0], saved.delta, "encoder")
    assert abs(sum(eff.probs_noised) - 1) < 1e-5


def test_noise_file_errors(default_lm, tmp_path):
    with pytest.raises(NoiseFileError, match="does not exist"):
        load_noise(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(NoiseFileError, match="not a nullviz noise file"):
        load_noise(bad)
    with pytest.raises(NoiseFileError, match="needs"):
        check_noise_fits(default_lm, torch.zeros(10, 10), "encoder")


@pytest.mark.parametrize("name,constraint", sorted(constraints_of(SynthesisConfig).items()))
def test_config_rejects_each_bad_value(name, constraint):
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter of SynthesisConfig"):
        SynthesisConfig(**{name: constraint.invalid_value()})


def test_empty_images(default_lm):
    with pytest.raises(InvalidParameterError, match="images"):
        synthesize(default_lm, torch.empty(0, 3, 32, 32))


@pytest.mark.slow
def test_input_level_delta_says_it_is_not_an_image_or_is_made_valid(default_lm, digits_x):
    """x + δ left 65 % of its values outside [0, 1]; clipping dropped agreement from 1.00 to 0.24."""
    from nullviz.noise.approximate import clipped_delta, pixel_bounds

    fit = fit_indices(len(digits_x), 0)
    free = synthesize(default_lm, digits_x, SynthesisConfig(level="input", **RESEARCH_CODE, seed=0))
    assert free.extra["out_of_range_fraction"] > 0.3 and free.to_dict()["clipped"] is False
    clipped_view = evaluate_noise(default_lm, digits_x[fit], free.delta, "input", clip=True)
    assert clipped_view["agreement"] < free.fit.agreement  # what a saved image would do
    valid = synthesize(default_lm, digits_x, SynthesisConfig(level="input", **RESEARCH_CODE, seed=0, clip=True))
    assert valid.extra["clipped"] and 0 < valid.extra["effective_l2"] < valid.noise_l2
    # its metrics are about the valid images clip(x + δ): an independent evaluation agrees
    again = evaluate_noise(default_lm, digits_x[fit], valid.delta, "input", clip=True)
    assert again["mse_probs"] == pytest.approx(valid.fit.mse_probs, rel=1e-5)
    assert again["agreement"] == pytest.approx(valid.fit.agreement)
    assert valid.fit.agreement > clipped_view["agreement"]
    lo, hi = pixel_bounds(default_lm)
    seen = digits_x + clipped_delta(default_lm, digits_x, valid.delta)
    assert bool(((seen >= lo - 1e-6) & (seen <= hi + 1e-6)).all())
    with pytest.raises(InvalidParameterError, match="clip"):
        SynthesisConfig(level="encoder", clip=True)


def test_fit_and_check_images_never_overlap():
    for n, frac in ((32, 0.25), (2, 0.5), (7, 0.9), (1, 0.25), (10, 0.0)):
        fit, check = split_fit_check(n, frac, seed=3)
        assert len(fit) >= 1 and not set(fit.tolist()) & set(check.tolist())
        assert sorted(fit.tolist() + check.tolist()) == list(range(n))
    assert len(split_fit_check(1, 0.25, 0)[1]) == 0 and len(split_fit_check(32, 0.25, 0)[1]) == 8


def test_check_metrics_are_an_independent_evaluation_on_unseen_images(default_lm, digits_x):
    res = synthesize(default_lm, digits_x, SynthesisConfig(steps=30, seed=1))
    _, check = split_fit_check(len(digits_x), 0.25, 1)
    fit = fit_indices(len(digits_x), 1)
    assert res.fit.images == len(fit) == 19 and res.check.images == len(check) == 8
    assert res.validation.images == 5
    on_check = evaluate_noise(default_lm, digits_x[check], res.delta, "encoder")
    on_fit = evaluate_noise(default_lm, digits_x[fit], res.delta, "encoder")
    assert res.check.mse_probs == pytest.approx(on_check["mse_probs"], rel=1e-5, abs=1e-9)
    assert res.check.agreement == pytest.approx(on_check["agreement"])
    assert res.check.logit_distance == pytest.approx(on_check["mean_logit_distance"], rel=1e-5)
    assert res.fit.mse_probs == pytest.approx(on_fit["mse_probs"], rel=1e-5, abs=1e-9)
    controls = noise_controls(res.delta, 1)
    for key, name in (("permuted_mse_probs", "permuted"), ("gaussian_mse_probs", "gaussian"),
                      ("random_start_mse_probs", "random_start")):
        assert float(controls[name].norm()) == pytest.approx(res.noise_l2, rel=1e-5)
        assert getattr(res.check, key) == pytest.approx(evaluate_noise(default_lm, digits_x[check], controls[name],
                                                                 "encoder")["mse_probs"], rel=1e-5)
    assert res.travelled_l2 > 0 and res.start_l2 > 0
    d = res.to_dict()  # flat JSON: each set's numbers under its prefix, as noise files have always held them
    assert d["beats_permuted_on_check"] is True and d["num_check_images"] == 8
    assert d["check_gaussian_mse_probs"] == res.check.gaussian_mse_probs and d["mse_probs"] == res.fit.mse_probs
    assert d["num_validation_images"] == res.validation.images and d["validation_agreement"] == res.validation.agreement
    assert "check" not in d and "fit" not in d and "num_images" in d
    assert d["selected_on"] == res.selected_on == "validation"


def test_reached_tolerance_is_about_the_check_images(default_lm, digits_x):
    """Fit on 8 digits, check on 24 others: the fit images sit inside ε while the unseen ones do not."""
    tol = 1e-4
    res = synthesize(default_lm, digits_x[:8], SynthesisConfig(steps=120, lr=0.3, lam=1.0, tol=tol),
                     check_images=digits_x[8:])
    assert res.fit.mse_probs < tol <= res.check.mse_probs
    assert not res.reached_tolerance
    alone = synthesize(default_lm, digits_x[:1], SynthesisConfig(steps=5))  # one image: nothing to hold out
    assert alone.check is None and alone.beats_permuted_on_check is None


def test_unoptimised_start_is_flagged_as_no_better_than_its_control(default_lm, digits_x):
    """λ = 0 with a large ε stops at step 0: δ is its random start, and on unseen images it is no more
    invisible than its own entries shuffled."""
    res = synthesize(default_lm, digits_x, SynthesisConfig(**RESEARCH_CODE, tol=10.0, seed=0))
    assert res.steps_run == 1 and res.travelled_l2 == 0.0
    assert res.check.mse_probs > 0.5 * res.check.permuted_mse_probs
    optimised = synthesize(default_lm, digits_x, SynthesisConfig(steps=60, seed=0))
    assert optimised.beats_permuted_on_check and optimised.check.mse_probs < 0.1 * optimised.check.permuted_mse_probs


def test_frontier_larger_lambda_gives_larger_delta_on_shared_images(tiny_lm):
    x = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    front = frontier(tiny_lm, x[:16], SynthesisConfig(steps=25, lim=0.5, tol=0.05), lams=(0.0, 0.1, 0.5, 2.0),
                     check_images=x[16:])
    norms = [p.noise_l2 for p in front.points]
    assert [p.lam for p in front.points] == [0.0, 0.1, 0.5, 2.0] and norms == sorted(norms) and norms[-1] > norms[0]
    assert front.num_images == 16 and front.num_check_images == 8
    for p in front.points:  # every point measured on the same check images, with its controls at its norm
        again = evaluate_noise(tiny_lm, x[16:], p.delta, "encoder")
        assert p.check_mse_probs == pytest.approx(again["mse_probs"], rel=1e-5, abs=1e-9)
        perm = evaluate_noise(tiny_lm, x[16:], noise_controls(p.delta, 0)["permuted"], "encoder")
        assert p.permuted_mse_probs == pytest.approx(perm["mse_probs"], rel=1e-5, abs=1e-9)
    best = front.allowed()
    inside = [p for p in front.points if p.check_mse_probs <= 0.05]
    assert best is (max(inside, key=lambda p: p.noise_l2) if inside else None)
    assert front.allowed(0.0) is None or front.allowed(0.0).check_mse_probs == 0.0
    d = front.to_dict()
    assert len(d["points"]) == 4 and "delta" not in d["points"][0]
    from nullviz import figures

    fig = figures.frontier_plot(front)
    assert {t.name for t in fig.data} >= {"optimised δ", "δ permuted", "Gaussian, same norm", "random start, same norm"}


def test_one_noise_file_format_round_trips_and_refuses_what_is_not_one(tmp_path):
    from nullviz.noise.files import NOISE_FORMAT, noise_bytes, save_noise

    delta = torch.arange(12.0).reshape(3, 2, 2)
    path = save_noise(tmp_path / "d.pt", delta, {"level": "input", "kind": "exact", "seed": 3})
    saved = load_noise(path)
    assert torch.equal(saved.delta, delta) and saved.level == "input" and saved.meta["seed"] == 3
    assert load_noise_bytes(path.read_bytes(), "d.pt").meta == saved.meta
    assert torch.load(path, weights_only=True)["format"] == NOISE_FORMAT
    assert list(tmp_path.iterdir()) == [path]  # written atomically: no temporary file left beside it
    with pytest.raises(NoiseFileError, match="level"):
        noise_bytes(delta, {"kind": "exact"})
    bare = tmp_path / "bare.pt"  # what `nullviz nullspace --out` wrote before: still read, as input-level δ
    torch.save(delta, bare)
    assert load_noise(bare).level == "input"
    with pytest.raises(NoiseFileError, match="not a PyTorch file"):
        load_noise_bytes(b"hello", "notes.txt")


@pytest.mark.parametrize("settings", [dict(lam=2.0, tol=1e-4, check_every=5),  # the frontier rule
                                      dict(lam=0.0, lim=3.0, tol=5e-3, batch_size=2, check_every=1)])  # research
def test_looks_that_stop_reading_early_keep_the_same_delta(default_lm, digits_x, monkeypatch, settings):
    """A look during the steps stops reading the selection images once the chunks read already put their mean
    past the threshold (Σ Δp² ≥ 0 on every image); the δ kept, and every number, is what reading them all gives."""
    import nullviz.noise.approximate as A

    monkeypatch.setattr(A, "SELECTION_CHUNK", 1)  # several chunks even for these few validation images
    cfg = SynthesisConfig(steps=40, seed=0, **settings)
    reads: list[tuple[int, int]] = []
    real = A._evaluate_delta

    def counted(model, batches, delta, level, outside_at=None):
        out = real(model, batches, delta, level, outside_at)
        reads.append((out["images"], sum(len(chunk[0]) for chunk in batches.chunks)))
        return out

    monkeypatch.setattr(A, "_evaluate_delta", counted)
    early = synthesize(default_lm, digits_x, cfg)
    monkeypatch.setattr(A, "_evaluate_delta", lambda model, batches, delta, level, outside_at=None:
                        real(model, batches, delta, level))
    everything = synthesize(default_lm, digits_x, cfg)
    assert any(n < total for n, total in reads)  # some looks stopped early…
    assert torch.equal(early.delta, everything.delta)  # …and none changed δ
    assert (early.validation, early.check, early.shrunk_to) == (everything.validation, everything.check,
                                                                 everything.shrunk_to)


def test_a_look_reads_on_only_while_delta_could_still_be_inside(default_lm, digits_x):
    import nullviz.noise.approximate as A

    batches = A.CleanBatches(default_lm.model, digits_x, "encoder", 4)
    with torch.no_grad():
        delta = torch.randn(16, 96, generator=torch.Generator().manual_seed(0)) * 2
    full = A._evaluate_delta(default_lm.model, batches, delta, "encoder")
    assert full["images"] == len(digits_x)
    for threshold in (full["mse"] / 8, full["mse"] / 2, full["mse"] * 0.99, full["mse"] * 1.01, full["mse"] * 4):
        look = A._evaluate_delta(default_lm.model, batches, delta, "encoder", outside_at=threshold)
        assert (look["mse"] < threshold) == (full["mse"] < threshold), threshold  # the same verdict
        if full["mse"] < threshold:
            assert look == full  # inside: every image read
    assert A._evaluate_delta(default_lm.model, batches, delta, "encoder", outside_at=full["mse"] / 8)["images"] < 16


def test_scale_search_stops_once_a_probe_lands_close_inside(default_lm, digits_x, monkeypatch):
    """The largest s·δ inside the threshold: a probe inside at ≥ CLOSE_ENOUGH of it ends the search (the next
    probes moved ‖δ‖ by under 1 % in the measured runs, at a pass over the validation images each)."""
    import nullviz.noise.approximate as A

    model = default_lm.model
    batches = A.CleanBatches(model, digits_x, "encoder", 64)
    delta = torch.randn(16, 96, generator=torch.Generator().manual_seed(0)) * 4
    at_half = A._evaluate_delta(model, batches, delta * 0.5, "encoder")["mse"]
    cfg = SynthesisConfig(tol=at_half / 0.97, selection_margin=1.0)  # Σ Δp² ∝ s² would put the boundary near 0.5
    probes = []
    real = A._evaluate_delta
    monkeypatch.setattr(A, "_evaluate_delta", lambda *a, **k: probes.append(1) or real(*a, **k))
    scale, measured = A._largest_scale_inside(model, batches, delta, cfg, real(model, batches, delta, "encoder")["mse"])
    assert 0 < scale < 1 and measured["mse"] < cfg.tol
    assert measured == real(model, batches, delta * scale, "encoder")
    assert measured["mse"] >= A.CLOSE_ENOUGH * cfg.tol and len(probes) < 4


def test_a_sweep_is_bounded_before_anything_runs():
    from nullviz.core.errors import InvalidParameterError
    from nullviz.noise.approximate import parse_sweep, sweep_size

    grid = parse_sweep({"lam": "0, 0.5, 1", "lim": "1, 3", "steps": "100, 200"})
    assert sweep_size(grid) == (12, 1800)
    assert parse_sweep({"lam": "0, 0.5, 1", "steps": "100"}, max_points=3, max_total_steps=300)["lam"] == (0, 0.5, 1)
    with pytest.raises(InvalidParameterError, match="at most 12 syntheses on this server"):
        parse_sweep({"lam": ",".join(str(k) for k in range(13)), "steps": "10"}, max_points=12)
    with pytest.raises(InvalidParameterError, match="at most 3,000 synthesis steps in all"):
        parse_sweep({"lam": "0, 1", "steps": "100000"}, max_total_steps=3000)
