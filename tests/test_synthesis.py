import dataclasses

import pytest
import torch

from conftest import assert_state_equal, state_snapshot
from nullviz import data
from nullviz.errors import InvalidParameterError, NoiseFileError
from nullviz.params import constraints_of
from nullviz.robustness import images_tensor
from nullviz.synthesis import (SynthesisConfig, check_noise_fits, evaluate_noise, load_noise, noise_effect,
                               synthesize)


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
    assert res.mse_probs < 0.05 and res.agreement >= 0.9
    assert res.permuted_mse_probs > 5 * res.mse_probs  # same norm, not optimised: much more visible
    assert res.permuted_agreement < res.agreement
    assert res.noise_l2 > 10  # large: the start is U(−3, 3)
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


def test_tolerance_stops_early_on_all_images(default_lm, digits_x):
    res = synthesize(default_lm, digits_x, SynthesisConfig(steps=300, tol=0.02, batch_size=8))
    assert res.reached_tolerance and res.steps_run < 300
    assert res.mse_probs < 0.02  # the criterion holds over all images, not just the last batch


def test_lambda_keeps_delta_larger(default_lm, digits_x):
    base = SynthesisConfig(steps=40, tol=1e-9, lim=1.0)
    plain = synthesize(default_lm, digits_x, base)
    pushed = synthesize(default_lm, digits_x, dataclasses.replace(base, lam=2.0))
    assert pushed.noise_l2 > plain.noise_l2


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
    from nullviz.synthesis import synthesize_for_model

    model = default_lm.trainable_copy()
    synthesize_for_model(model, digits_x, SynthesisConfig(steps=3, tol=1e-9))
    assert all(p.grad is None for p in model.parameters())


def test_save_load_round_trip(default_lm, digits_x, tmp_path):
    res = synthesize(default_lm, digits_x, SynthesisConfig(steps=5, tol=1e-9))
    path = res.save(tmp_path / "delta.pt")
    saved = load_noise(path)
    assert torch.equal(saved.delta, res.delta) and saved.level == "encoder"
    assert saved.meta["model_name"] == default_lm.name and saved.meta["config"]["lim"] == 3.0
    assert saved.meta["mse_probs"] == res.mse_probs
    check_noise_fits(default_lm, saved.delta, saved.level)
    again = evaluate_noise(default_lm, digits_x, saved.delta, saved.level)
    assert again["mse_probs"] == pytest.approx(res.mse_probs, rel=1e-5)
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


def test_input_level_delta_says_it_is_not_an_image_or_is_made_valid(default_lm, digits_x):
    """x + δ left 65 % of its values outside [0, 1]; clipping dropped agreement from 1.00 to 0.24."""
    from nullviz.synthesis import clipped_delta, pixel_bounds

    free = synthesize(default_lm, digits_x, SynthesisConfig(level="input", steps=40, seed=0))
    assert free.extra["out_of_range_fraction"] > 0.3 and free.to_dict()["clipped"] is False
    clipped_view = evaluate_noise(default_lm, digits_x, free.delta, "input", clip=True)
    assert clipped_view["agreement"] < free.agreement  # what a saved image would do
    valid = synthesize(default_lm, digits_x, SynthesisConfig(level="input", steps=40, seed=0, clip=True))
    assert valid.extra["clipped"] and 0 < valid.extra["effective_l2"] < valid.noise_l2
    # its metrics are about the valid images clip(x + δ): an independent evaluation agrees
    again = evaluate_noise(default_lm, digits_x, valid.delta, "input", clip=True)
    assert again["mse_probs"] == pytest.approx(valid.mse_probs, rel=1e-5)
    assert again["agreement"] == pytest.approx(valid.agreement)
    assert valid.agreement > clipped_view["agreement"]
    lo, hi = pixel_bounds(default_lm)
    seen = digits_x + clipped_delta(default_lm, digits_x, valid.delta)
    assert bool(((seen >= lo - 1e-6) & (seen <= hi + 1e-6)).all())
    with pytest.raises(InvalidParameterError, match="clip"):
        SynthesisConfig(level="encoder", clip=True)
