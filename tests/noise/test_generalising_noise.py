"""δ is fit, selected and judged on three disjoint sets of images (issue: noise on images it never saw)."""

import numpy as np
import pytest
import torch

from nullviz import data
from nullviz.noise.approximate import (MIN_VERDICT_IMAGES, SynthesisConfig, default_synthesis_config, frontier,
                                       distinct_rows, probs_change, split_fit_validation, synthesize)
from nullviz.robustness.evaluation import images_tensor


@pytest.fixture(scope="module")
def digit_sets(default_lm):
    train, _ = images_tensor(default_lm, data.digits_dataset("train"), limit=200)
    held, _ = images_tensor(default_lm, data.digits_dataset("heldout"), limit=64)
    return train[:150], train[150:200], held


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.flatten(1)}


def test_own_data_sets_are_disjoint_and_say_what_they_are():
    sets = data.synthesis_sets(data.synthesis_sources("digits")[0], None, own="digits")
    fit, val, test = (np.stack([np.asarray(im) for im in s]) for s in (sets.fit, sets.validation, sets.test))
    n_train = len(data.digits_indices("train"))
    assert len(fit) + len(val) == n_train and len(val) == data.SYNTHESIS_VALIDATION_IMAGES
    assert len(test) == min(data.SYNTHESIS_TEST_IMAGES, len(data.digits_indices("heldout")))
    # the validation draw is a fixed part of the training split, apart from the fit pool
    train = np.stack([np.asarray(im) for im in data.digits_split("train")[0]])
    order = np.random.default_rng(data.VALIDATION_SEED).permutation(n_train)
    val_idx = np.sort(order[:len(val)])
    assert np.array_equal(val, train[val_idx])
    assert np.array_equal(fit, np.delete(train, val_idx, axis=0))
    assert set(sets.used) == {"fit", "validation", "test"}
    assert "held-out" in sets.used["test"] and "never fit on" in sets.used["validation"]


def _digests(images) -> set[str]:
    return {data.image_digest(im) for im in images}


@pytest.mark.parametrize("own", data.EMBEDDED_DATA)
def test_every_embedded_source_is_disjoint_by_content(own):
    """Train and held-out splits, the fit pool and its validation draw share no picture, whatever its index."""
    train = _digests(data.load_dataset(own, None, "train").images)
    held = _digests(data.load_dataset(own, None, "heldout").images)
    fit, val = (_digests(s) for s in data.own_train_validation(own))
    assert not train & held and not fit & val and not (fit | val) & held
    assert fit <= train  # the fit pool is training images (the cluttered validation scenes are drawn apart)


def test_the_sample_pool_holds_each_picture_once():
    """skimage's 'cat' is 'chelsea' pixel for pixel: the pool lists it once."""
    import skimage.data

    assert len(_digests(data.sample_image(n) for n in data.SAMPLE_PHOTOS)) == len(data.SAMPLE_PHOTOS)
    assert data.image_digest(data.sample_image("chelsea")) == data.image_digest(
        data.images._array_to_rgb(skimage.data.cat()))
    names = data.sample_image_names()
    assert len(_digests(data.sample_image(n) for n in names)) == len(names)


@pytest.mark.parametrize("source", data.SYNTHESIS_SOURCES)
@pytest.mark.parametrize("own", [*data.EMBEDDED_DATA, None])
def test_synthesis_sets_are_disjoint_by_content_for_every_current_image(source, own):
    """Whatever the current image (every sample, under any name), no picture is both fit on and held out; the
    current image is fit on exactly when the source says so."""
    if source not in data.synthesis_sources(own):
        pytest.skip("no own data")
    for name in data.sample_image_names():
        current = data.sample_image(name)
        sets = data.synthesis_sets(source, current, own=own or "digits", n_test=64)
        fit = _digests(sets.fit)
        assert len(fit) == len(sets.fit), name  # no picture twice in the pool a split is held out of
        for held in (sets.validation, sets.test):
            if held is not None:
                assert not fit & _digests(held), (source, name)
        assert (data.image_digest(current) in fit) == (source != data.OWN_SOURCE), (source, name)


def test_a_split_of_given_images_holds_out_no_twin_and_knows_what_it_fit_on(default_lm):
    """Given images with a picture twice (a sample photo under two names): the twin is dropped before the held-out
    split, and ``was_fit_on`` answers by content."""
    photos = [data.sample_image(n) for n in data.SAMPLE_PHOTOS]
    chelsea = data.sample_image("chelsea")
    given = default_lm.preprocess([chelsea, *photos])  # the current image, and the pool holding it again
    r = synthesize(default_lm, given, SynthesisConfig(steps=2, seed=0, check_fraction=0.5))
    assert "repeat" in r.images_used["repeats"]
    assert r.fit.images + r.check.images + (r.validation.images if r.validation else 0) == len(photos)
    kept = distinct_rows(given).tolist()
    assert kept == [i for i in range(len(given)) if i != 2]  # given[2] is chelsea again: dropped
    held = [given[i] for i in kept if i not in set(r.fit_index.tolist())]  # the test and validation images
    fit_rows = _rows(given[r.fit_index])
    assert not fit_rows & _rows(torch.stack(held))  # no picture on both sides
    x = default_lm.preprocess(chelsea)
    assert r.was_fit_on(given, x) == (x.flatten().numpy().tobytes() in fit_rows)
    for k in range(len(given)):
        assert r.was_fit_on(given, given[k:k + 1]) == (given[k].flatten().numpy().tobytes() in fit_rows)


@pytest.mark.slow
def test_test_images_cannot_change_delta(default_lm, digit_sets):
    """δ and every choice depend on the fit and validation images only: judging it on other images changes
    nothing but the judgement."""
    fit, val, held = digit_sets
    cfg = SynthesisConfig(steps=30, seed=3, batch_size=32, check_every=5)
    a = synthesize(default_lm, fit, cfg, validation_images=val, check_images=held[:32])
    b = synthesize(default_lm, fit, cfg, validation_images=val, check_images=held[32:])
    assert torch.equal(a.delta, b.delta) and a.steps_run == b.steps_run
    assert a.check.mse_probs != b.check.mse_probs
    assert a.selected_on == "validation" and a.validation.images == len(val)


@pytest.mark.slow
def test_kept_delta_is_inside_the_selection_threshold_on_validation(default_lm, digit_sets):
    fit, val, held = digit_sets
    for lam, margin in ((0.5, 1.0), (3.0, 0.5)):  # λ 3 pushes δ past ε: it is shrunk back inside
        cfg = SynthesisConfig(steps=40, lam=lam, selection_margin=margin, batch_size=32, seed=1)
        r = synthesize(default_lm, fit, cfg, validation_images=val, check_images=held)
        assert r.validation.mse_probs < cfg.tol * margin
        assert 0 < r.shrunk_to <= 1
    assert r.shrunk_to < 1  # the λ = 3 run needed shrinking (its own numbers say so)


def test_minibatches_cover_the_pool(default_lm, digit_sets):
    """δ is fit on minibatches drawn from the whole pool, not on its first batch."""
    fit, val, _ = digit_sets
    cfg = SynthesisConfig(steps=6, batch_size=50, tol=1e-9, seed=0)
    whole = synthesize(default_lm, fit, cfg, validation_images=val, check_images=val)
    first = synthesize(default_lm, fit[:50], cfg, validation_images=val, check_images=val)
    assert not torch.equal(whole.delta, first.delta)
    assert whole.fit.images == 150


def test_without_validation_images_part_of_the_fit_images_is_held_out(default_lm, digit_sets):
    fit, _, held = digit_sets
    r = synthesize(default_lm, fit[:40], SynthesisConfig(steps=5, seed=0), check_images=held)
    keep, val = split_fit_validation(40, 0.2, 0)
    assert r.validation.images == len(val) == 8 and r.fit.images == len(keep) == 32
    tiny = synthesize(default_lm, fit[:5], SynthesisConfig(steps=3, seed=0), check_images=held)
    assert tiny.validation is None and tiny.selected_on == "fit"
    assert "too few" in tiny.images_used["validation"]


@pytest.mark.slow
def test_no_verdict_on_too_few_unseen_images(default_lm, digit_sets):
    fit, val, held = digit_sets
    few = synthesize(default_lm, fit, SynthesisConfig(steps=5), validation_images=val,
                     check_images=held[:MIN_VERDICT_IMAGES - 1])
    assert few.verdict.startswith("no verdict") and str(MIN_VERDICT_IMAGES) in few.verdict
    enough = synthesize(default_lm, fit, SynthesisConfig(steps=5), validation_images=val,
                        check_images=held[:MIN_VERDICT_IMAGES])
    assert enough.verdict in ("inside ε", "outside ε")
    assert enough.to_dict()["verdict"] == enough.verdict


@pytest.mark.slow
def test_frontier_chooses_on_validation_not_on_the_test_images(default_lm, digit_sets):
    fit, val, held = digit_sets
    front = frontier(default_lm, fit, SynthesisConfig(steps=10, batch_size=32), lams=(0.0, 1.0, 4.0),
                     validation_images=val, check_images=held)
    best = front.allowed()
    assert front.num_validation_images == len(val) and front.to_dict()["chosen_on"] == "validation images"
    inside = [p for p in front.points if p.validation_mse_probs <= front.tol]
    assert best is (max(inside, key=lambda p: p.noise_l2) if inside else None)


def test_embedded_models_carry_their_measured_defaults():
    for name in ("nullviz_digits_vit", "nullviz_cluttered_vit"):
        cfg = default_synthesis_config(name)
        assert cfg.selection_margin <= 1.0 and cfg.steps >= 1
    assert default_synthesis_config("vit_small_patch16_224") == SynthesisConfig()
    assert default_synthesis_config("nullviz_cluttered_vit", lam=0.25).lam == 0.25


def test_probs_change_by_hand():
    assert probs_change([0.5, 0.5], [0.75, 0.25]) == pytest.approx(0.125)
    assert probs_change([1.0, 0.0], [1.0, 0.0]) == 0.0


@pytest.mark.slow
def test_kept_clean_logits_give_the_same_delta(default_lm, digit_sets):
    """The page keeps every set's clean logits for every synthesis: δ and every number are the same as computing
    them as needed; logits that are not one row per image of their set are refused."""
    from nullviz.core.errors import InvalidParameterError
    from nullviz.noise.approximate import clean_logits

    fit, val, held = digit_sets
    cfg = SynthesisConfig(steps=12, batch_size=32, seed=2, lam=0.5, check_every=4)
    plain = synthesize(default_lm, fit, cfg, validation_images=val, check_images=held)
    known = {"fit_logits": clean_logits(default_lm.model, fit),
             "validation_logits": clean_logits(default_lm.model, val), "check_logits": clean_logits(default_lm.model, held)}
    kept = synthesize(default_lm, fit, cfg, validation_images=val, check_images=held, **known)
    assert torch.allclose(plain.delta, kept.delta, atol=1e-5)
    for effect in ("fit", "validation", "check"):
        a, b = getattr(plain, effect), getattr(kept, effect)
        assert b.images == a.images and b.agreement == a.agreement, effect
        assert b.mse_probs == pytest.approx(a.mse_probs, rel=1e-3, abs=1e-7), effect
    for name, wrong in (("fit_logits", known["fit_logits"][:10]), ("validation_logits", known["check_logits"][:3]),
                        ("check_logits", known["check_logits"][:, :1].squeeze(1))):
        with pytest.raises(InvalidParameterError, match="one row per image"):
            synthesize(default_lm, fit, cfg, validation_images=val, check_images=held, **{**known, name: wrong})
    with pytest.raises(InvalidParameterError, match="no set given"):
        synthesize(default_lm, fit, cfg, check_images=held, validation_logits=known["validation_logits"])


def test_matched_visibility_norm_is_the_largest_control_inside_tol(default_lm, digit_sets):
    """The Gaussian control at δ's *visibility*: the largest norm of the seeded draw whose mean Σ Δp² is inside
    tol — just above it, it is outside."""
    from nullviz.noise.approximate import evaluate_noise, matched_visibility_norm
    from nullviz.noise.kinds import random_like

    _, val, _ = digit_sets
    norm = matched_visibility_norm(default_lm.model, val, "gaussian", tol=0.01, seed=4)
    shape = (default_lm.grid_size[0] * default_lm.grid_size[1], default_lm.embed_dim)
    direction = random_like(torch.ones(shape), "gaussian", torch.Generator().manual_seed(4))
    direction = direction / direction.norm()
    inside = evaluate_noise(default_lm, val, direction * norm, "encoder")["mse_probs"]
    outside = evaluate_noise(default_lm, val, direction * norm * 1.02, "encoder")["mse_probs"]
    assert norm > 0 and inside <= 0.01 < outside
    assert matched_visibility_norm(default_lm.model, val, "gaussian", tol=0.03, seed=4) > norm
