import json

import numpy as np
import pytest
import torch

from conftest import assert_state_equal, state_snapshot
from nullviz.core.errors import InvalidParameterError
from nullviz.data import digits_dataset
from nullviz.models import PixelModel
from nullviz.robustness import evaluation as R
from nullviz.robustness.attacks import ATTACKS, PGD, Attack, fgsm, make_attack, patchfool, pgd, register_attack


@pytest.fixture(scope="module")
def batch(default_lm):
    x, y = R.images_tensor(default_lm, digits_dataset("heldout"), limit=48)
    return default_lm.denormalize(x), y


def test_fgsm_at_zero_eps_is_clean(default_lm, batch):
    px, y = batch
    fn = PixelModel.of(default_lm)
    adv = fgsm(fn, px, y, eps=0.0)
    assert torch.equal(adv, px.clamp(0, 1))
    report = R.evaluate(default_lm, digits_dataset("heldout"), R.EvalConfig(attacks=("fgsm",), eps=0.0, limit=48))
    assert report.attacks["fgsm"]["robust_acc"] == report.clean_acc
    assert report.attacks["fgsm"]["success_rate"] == 0.0


def test_fgsm_matches_torchattacks(default_lm, batch):
    import torchattacks

    px, y = batch
    fn = PixelModel.of(default_lm)
    ours = fgsm(fn, px, y, 8 / 255)
    theirs = torchattacks.FGSM(fn, eps=8 / 255)(px, y)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert not default_lm.model.training  # torchattacks restores the mode it found: the wrapper's, eval
    assert float((ours - px).abs().max()) <= 8 / 255 + 1e-6


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_ball_and_is_at_least_as_strong_as_fgsm(default_lm, batch, norm):
    px, y = batch
    fn = PixelModel.of(default_lm)
    eps = 8 / 255 if norm == "linf" else 1.0
    adv = pgd(fn, px, y, eps=eps, alpha=eps / 4, steps=10, norm=norm)
    d = (adv - px).flatten(1)
    if norm == "linf":
        assert float(d.abs().max()) <= eps + 1e-6
    else:
        assert float(d.norm(dim=1).max()) <= eps + 1e-5
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    acc_pgd = float((R.predict_pixels(fn, adv) == y).float().mean())
    if norm == "linf":
        acc_fgsm = float((R.predict_pixels(fn, fgsm(fn, px, y, eps)) == y).float().mean())
        assert acc_pgd <= acc_fgsm
    assert acc_pgd < float((R.predict_pixels(fn, px) == y).float().mean())


def test_patch_attack_changes_only_one_patch(default_lm, batch):
    px, y = batch
    adv = patchfool(PixelModel.of(default_lm), px[:8], y[:8], steps=5)
    changed = (adv - px[:8]).abs().sum(1)  # [B, H, W]
    per_patch = changed.unfold(1, 8, 8).unfold(2, 8, 8).sum((-1, -2))  # [B, gh, gw]
    assert ((per_patch > 0).flatten(1).sum(1) <= 1).all()


def test_every_attack_has_one_call_and_is_weighed_in_the_progress(default_lm, batch):
    """One registry: each attack is built from an evaluation's settings and called as attack(fn, pixels,
    labels, seed); the progress plan weighs each by its gradient steps (PatchFool used to raise KeyError)."""
    px, y = batch
    fn = PixelModel.of(default_lm)
    cfg = R.EvalConfig(attacks=tuple(ATTACKS), pgd_steps=3, patch_steps=2, cw_steps=2)
    plan = cfg.work_plan()
    assert set(ATTACKS) == {"fgsm", "pgd", "patchfool", "cw", "autoattack"} and list(plan)[1:] == list(ATTACKS)
    assert (plan["fgsm"], plan["pgd"], plan["patchfool"], plan["cw"], plan["autoattack"]) == (4.0, 10.0, 7.0, 7.0,
                                                                                               301.0)
    for name in (n for n in ATTACKS if n != "autoattack"):  # AutoAttack: its own (slow) test
        attack = make_attack(name, cfg)
        assert isinstance(attack, Attack) and attack.label and attack.name == name
        adv = attack(fn, px[:4], y[:4], seed=0)
        assert adv.shape == px[:4].shape and float(adv.min()) >= 0 and float(adv.max()) <= 1
    torch.testing.assert_close(make_attack("pgd", cfg)(fn, px[:4], y[:4], seed=5),
                               pgd(fn, px[:4], y[:4], cfg.eps, cfg.pgd_alpha, 3, "linf", seed=5))
    with pytest.raises(InvalidParameterError, match="attack"):
        make_attack("deepfool", cfg)
    with pytest.raises(ValueError, match="registered already"):
        register_attack(PGD)


@pytest.mark.parametrize("name", R.CORRUPTIONS)
def test_corruptions_change_image_keep_shape_and_dtype(batch, name):
    px, _ = batch
    out = R.corrupt(px[:2], name, 3)
    assert out.shape == px[:2].shape and out.dtype == px.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.equal(out, px[:2])
    torch.testing.assert_close(R.corrupt(px[:2], name, 3, seed=1), R.corrupt(px[:2], name, 3, seed=1))


def test_corruptions_never_touch_numpy_global_rng(batch):
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    for name in R.CORRUPTIONS:
        R.corrupt(batch[0][:1], name, 2)
    assert np.random.rand() == expected


def test_exact_noise_tolerance_curve_is_flat(default_lm, batch):
    px, y = batch
    x = default_lm.normalize(px)
    curves = R.tolerance_curves(default_lm, x, y, [0.0, 10.0, 40.0, 160.0], kinds=("exact", "gaussian", "random_start"))
    assert curves["exact"]["agreement"] == [1.0, 1.0, 1.0, 1.0]
    assert len(set(curves["exact"]["accuracy"])) == 1
    assert curves["gaussian"]["agreement"][-1] < 1.0 and curves["random_start"]["agreement"][-1] < 1.0


@pytest.mark.slow
def test_evaluate_full_report_and_exports(default_lm):
    snap = state_snapshot(default_lm.model)
    cfg = R.EvalConfig(attacks=("fgsm", "pgd"), corruptions=("fog", "contrast"), severities=(1, 5),
                       tolerance_magnitudes=(0.0, 20.0), limit=32, pgd_steps=3)
    seen = []
    report = R.evaluate(default_lm, digits_dataset("heldout"), cfg, progress=lambda *a: seen.append(a))
    assert report.num_images == 32 and 0.9 <= report.clean_acc <= 1
    assert report.attacks["pgd"]["robust_acc"] < report.clean_acc
    assert report.attack_budgets == {"fgsm": "L∞ ε = 8/255, one step", "pgd": "L∞ ε = 8/255, 3 steps"}
    assert R.RobustnessReport.from_dict(json.loads(R.report_json([report]))[0]).attack_budgets == report.attack_budgets
    assert set(report.corruptions) == {"fog", "contrast"} and all(len(v) == 2 for v in report.corruptions.values())
    assert report.mean_corruption_acc == pytest.approx(np.mean([a for v in report.corruptions.values() for a in v]))
    assert report.relative_corruption_error(report).value == pytest.approx(100.0)
    rows = report.to_rows()
    assert rows[0] == {"model": "nullviz_digits_vit", "evaluation": "clean", "setting": "", "value": report.clean_acc}
    csv = R.rows_to_csv(rows)
    assert csv.splitlines()[0] == "model,evaluation,setting,value" and len(csv.splitlines()) == len(rows) + 1
    assert '"clean_acc"' in R.report_json([report])
    assert {s[0] for s in seen} >= {"clean", "fgsm", "pgd", "corruptions", "tolerance"}
    assert_state_equal(default_lm.model, snap)


def test_tolerance_with_approximate_delta_and_full_rank_model():
    from nullviz.models import create_random_vit

    lm = create_random_vit("vit_tiny_patch16_224", seed=0, img_size=32, patch_size=4, embed_dim=64, depth=1,
                           num_heads=2, num_classes=3)  # 3·4² = 48 < 64: full rank, no exact nullspace
    ds = torch.utils.data.TensorDataset(torch.randn(12, 3, 32, 32), torch.randint(0, 3, (12,)))
    report = R.evaluate(lm, ds, R.EvalConfig(attacks=(), tolerance_magnitudes=(0.0, 5.0)))
    assert "exact" in report.tolerance_skipped and set(report.tolerance) == {"approximate", "gaussian", "random_start"}


def _report(corruptions, severities=(1, 2), skipped=None):
    return R.RobustnessReport(model="m", num_images=10, clean_acc=1.0, corruptions=corruptions,
                              severities=list(severities), corruption_skipped=skipped or {})


def test_relative_corruption_error_states_what_it_leaves_out():
    """It used to drop, without a word, corruptions where the reference makes no error (0.3 vs 0 was lost)."""
    ref = _report({"fog": [1.0, 1.0], "snow": [0.8, 0.6], "frost": [1.0, 1.0]},
                  skipped={"pixelate": "cannot apply"})
    model = _report({"fog": [0.8, 0.9], "snow": [0.9, 0.8], "frost": [1.0, 1.0], "pixelate": [0.5, 0.5],
                     "contrast": [0.9, 0.9]})
    rce = model.relative_corruption_error(ref)
    assert rce.per_corruption == {"snow": pytest.approx(100 * 0.3 / 0.6), "frost": 100.0}  # 0 vs 0: as robust
    assert rce.value == pytest.approx((50.0 + 100.0) / 2)
    assert set(rce.excluded) == {"fog", "pixelate", "contrast"}
    assert "no error" in rce.excluded["fog"] and "0.3" in rce.excluded["fog"]
    assert "cannot apply" in rce.excluded["pixelate"] and "not evaluated" in rce.excluded["contrast"]
    assert "Left out: fog" in rce.summary() and rce.summary().startswith("75.0 (mean over 2 corruptions)")
    other = _report({"snow": [0.9, 0.8, 0.7]}, severities=(1, 2, 3)).relative_corruption_error(ref)
    assert other.value is None and "severities" in other.excluded["snow"]


def test_pooled_corruption_error_on_a_hand_example():
    """Σ err / Σ reference err over every corruption × severity both have: (0.2+0.1+0.1+0.2+0.5+0.5) /
    (0+0+0.2+0.4+0.1+0.1) = 1.6 / 0.8 → 200, where the mean of per-corruption ratios leaves fog out."""
    ref = _report({"fog": [1.0, 1.0], "snow": [0.8, 0.6], "pixelate": [0.9, 0.9]})
    model = _report({"fog": [0.8, 0.9], "snow": [0.9, 0.8], "pixelate": [0.5, 0.5], "contrast": [0.0, 0.0]})
    assert model.pooled_corruption_error(ref) == pytest.approx(100 * 1.6 / 0.8)
    assert ref.pooled_corruption_error(ref) == pytest.approx(100.0)
    assert _report({"fog": [1.0, 1.0]}).pooled_corruption_error(_report({"fog": [1.0, 1.0]})) == 100.0
    assert _report({"fog": [0.5, 0.5]}).pooled_corruption_error(_report({"fog": [1.0, 1.0]})) is None
    assert _report({"fog": [0.5] * 3}, severities=(1, 2, 3)).pooled_corruption_error(ref) is None


@pytest.mark.slow
def test_tolerance_curves_never_score_the_images_delta_was_fit_on(default_lm, monkeypatch):
    """δ was fit on the first 64 evaluated images and scored on them (agreement 1.000 there, 0.95–0.99 elsewhere)."""
    fits = []
    real = R._input_delta
    monkeypatch.setattr(R, "_input_delta",
                        lambda lm, fit, seed, steps: fits.append(fit.clone()) or real(lm, fit, seed, steps))
    held = digits_dataset("heldout", default_lm.transform)
    cfg = R.EvalConfig(attacks=(), tolerance_magnitudes=(10.0,), tolerance_kinds=("approximate",), limit=40)
    report = R.evaluate(default_lm, held, cfg)  # the data set has more images: δ is fit on the next ones
    x, _ = R.images_tensor(default_lm, held, 40 + R.FIT_IMAGES)
    torch.testing.assert_close(fits[0], x[40:])
    assert report.tolerance_images == 40 and report.tolerance_fit_images == R.FIT_IMAGES
    small = [held[i] for i in range(40)]  # no more images: the last quarter is held out of the curves
    report = R.evaluate(default_lm, small, cfg)
    torch.testing.assert_close(fits[1], x[30:40])
    assert report.tolerance_images == 30 and report.tolerance_fit_images == 10
    tiny = R.evaluate(default_lm, small[:3], cfg)
    assert "approximate" in tiny.tolerance_skipped


@pytest.mark.slow
def test_approximate_delta_beats_random_noise_of_same_norm(default_lm, batch):
    px, y = batch
    report = R.evaluate(default_lm, digits_dataset("heldout"),
                        R.EvalConfig(attacks=(), tolerance_magnitudes=(60.0,), limit=48))
    tol = report.tolerance
    assert tol["exact"]["agreement"] == [1.0]
    assert tol["approximate"]["agreement"][0] > tol["gaussian"]["agreement"][0]


def test_evaluate_can_be_stopped(default_lm):
    report = R.evaluate(default_lm, digits_dataset("heldout"), R.EvalConfig(attacks=("pgd",), limit=64, batch_size=16),
                        should_stop=lambda: True)
    assert report.stopped and "pgd" not in report.attacks and report.clean_acc > 0.9


@pytest.mark.parametrize("kwargs", [dict(attacks=("deepfool",)), dict(corruptions=("rain",)), dict(severities=(0,)),
                                    dict(eps=2.0), dict(limit=0), dict(pgd_norm="l1")])
def test_eval_config_validation(kwargs):
    with pytest.raises(InvalidParameterError):
        R.EvalConfig(**kwargs)


def test_specs():
    assert R.severities_from_spec("1-5") == (1, 2, 3, 4, 5) and R.severities_from_spec("2,4") == (2, 4)
    assert R.corruptions_from_spec("all") == R.CORRUPTIONS and R.corruptions_from_spec("none") == ()
    with pytest.raises(InvalidParameterError):
        R.severities_from_spec("0-9")
    with pytest.raises(InvalidParameterError):
        R.corruptions_from_spec("fog,rain")


def test_a_model_is_never_scored_on_images_of_other_classes():
    """A 1,000-class ViT on the 10 digits: a clear refusal, not an accuracy about labels it does not predict."""
    from nullviz.core.errors import DataError
    from nullviz.models import create_random_vit

    lm = create_random_vit("vit_tiny_patch16_224", seed=0, img_size=32, patch_size=8, embed_dim=64, depth=1,
                           num_heads=2, num_classes=1000)
    with pytest.raises(DataError, match="predicts 1,000 classes but the data set has 10"):
        R.evaluate(lm, digits_dataset("heldout"), R.EvalConfig(attacks=("fgsm",), limit=8))


def test_one_progress_bar_over_every_stage(default_lm):
    """The bar moves through the whole evaluation: it never reads full at the end of one stage (it read
    'fgsm: 128/128' full, then again for every stage), and each stage weighs what it costs."""
    cfg = R.EvalConfig(attacks=("fgsm", "pgd"), pgd_steps=10, corruptions=("fog",), severities=(1, 3), limit=16)
    seen: list[float] = []
    report = R.evaluate(default_lm, digits_dataset("heldout"), cfg,
                        progress=lambda stage, done, total: seen.append(cfg.fraction_done(stage, done, total)))
    assert report.attacks and seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    plan = cfg.work_plan()
    assert cfg.fraction_done("fgsm", 16, 16) == pytest.approx((plan["clean"] + plan["fgsm"]) / sum(plan.values()))
    assert cfg.fraction_done("fgsm", 16, 16) < 0.2 and plan["pgd"] == 31  # ten attack steps outweigh one


@pytest.mark.slow
def test_cw_and_autoattack_are_torchattacks_own_and_autoattack_beats_pgd(default_lm, batch):
    """CW-L2 and AutoAttack through the registry equal torchattacks called directly (same seed: the same
    adversarial images, so the same success rate); AutoAttack's accuracy is at most PGD-10's at its ε; the
    attacks leave torch's global random stream and the shared model's mode alone."""
    import torchattacks

    from nullviz.robustness.attacks import CW, AutoAttack

    px, y = batch[0][:16], batch[1][:16]
    fn = PixelModel.of(default_lm)
    state = torch.get_rng_state()
    cw = CW(steps=20)(fn, px, y, seed=3)
    auto = AutoAttack(eps=8 / 255)(fn, px, y, seed=3)
    assert torch.equal(torch.get_rng_state(), state) and not default_lm.model.training
    torch.manual_seed(3)
    cw_direct = torchattacks.CW(fn, c=1.0, kappa=0.0, steps=20, lr=0.01)(px, y)
    auto_direct = torchattacks.AutoAttack(fn, norm="Linf", eps=8 / 255, version="standard", n_classes=10, seed=3)(px, y)
    torch.set_rng_state(state)
    torch.testing.assert_close(cw, cw_direct, atol=1e-6, rtol=0)
    torch.testing.assert_close(auto, auto_direct, atol=1e-6, rtol=0)
    assert float((auto - px).abs().max()) <= 8 / 255 + 1e-6
    right = {name: (R.predict_pixels(fn, adv) == y) for name, adv in
             (("clean", px), ("auto", auto), ("pgd", pgd(fn, px, y, 8 / 255, 2 / 255, 10)), ("cw", cw))}
    assert int(right["auto"].sum()) <= int(right["pgd"].sum()) < int(right["clean"].sum())
    assert int(right["cw"].sum()) < int(right["clean"].sum())
    report = R.evaluate(default_lm, digits_dataset("heldout"), R.EvalConfig(attacks=("cw", "autoattack"), limit=16,
                                                                             cw_steps=20, autoattack_eps=8 / 255, seed=3))
    assert report.attacks["autoattack"]["robust_acc"] == int(right["auto"].sum()) / 16
    assert set(R.EvalConfig(attacks=("cw", "autoattack")).work_plan()) == {"clean", "cw", "autoattack"}


def test_evaluation_size_weighs_every_registered_attack():
    """The page's on-the-spot-or-job rule knew FGSM, PGD and PatchFool only (CW raised KeyError)."""
    size = {a: R.evaluation_size(100, R.EvalConfig(attacks=(a,))) for a in ATTACKS}
    assert size["fgsm"] < size["pgd"] < size["cw"] < size["autoattack"]
    assert R.evaluation_size(100, R.EvalConfig(attacks=(), shifts=("inverted",))) > R.evaluation_size(
        100, R.EvalConfig(attacks=()))


def test_per_image_outcomes_and_corrupted_images_made_once(default_lm):
    """A report keeps each image's outcome (the bootstrap over test images resamples them), and a comparison
    corrupts its test images once for every model: the same numbers as corrupting them again."""
    cfg = R.EvalConfig(attacks=("fgsm",), corruptions=("fog", "glass_blur"), severities=(1, 4), limit=40, batch_size=16)
    data = digits_dataset("heldout")
    plain = R.evaluate(default_lm, data, cfg)
    store = R.CorruptedImages()
    first = R.evaluate(default_lm, data, cfg, corrupted=store)
    assert len(store) == 2 * 2 * 3  # corruptions × severities × batches
    calls = []
    original = R.corrupt
    R.corrupt = lambda *a, **k: calls.append(a) or original(*a, **k)
    try:
        again = R.evaluate(default_lm, data, cfg, corrupted=store)
    finally:
        R.corrupt = original
    assert calls == [] and again.to_dict() | {"seconds": {}} == first.to_dict() | {"seconds": {}}
    assert first.corruptions == plain.corruptions
    p = first.per_image
    assert p["clean"].dtype == torch.bool and p["clean"].shape == (40,)
    assert int(p["clean"].sum()) / 40 == first.clean_acc
    assert int(p["fgsm"].sum()) / 40 == first.attacks["fgsm"]["robust_acc"]
    wrong = sum((1 - a) * 40 for accs in first.corruptions.values() for a in accs)
    assert int(p["corruption_errors"].sum()) == round(wrong) and int(p["corruption_errors"].max()) <= 4
    import json

    assert "per_image" not in first.to_dict() and json.dumps(first.to_dict())
    # other images are never served a stale copy
    other = R.evaluate(default_lm, digits_dataset("train"), cfg, corrupted=store)
    assert len(store) == 2 * 2 * 3 * 2
    assert other.corruptions == R.evaluate(default_lm, digits_dataset("train"), cfg).corruptions


def test_every_attack_states_its_budget():
    from nullviz.robustness.attacks import ATTACKS, make_attack

    cfg = R.EvalConfig()
    budgets = {name: make_attack(name, cfg).budget for name in ATTACKS}
    assert budgets["autoattack"] == "L∞ ε = 4/255" and budgets["fgsm"] == "L∞ ε = 8/255, one step"
    assert "no ε" in budgets["cw"] and "one patch" in budgets["patchfool"]
    assert make_attack("fgsm", R.EvalConfig(eps=0.01)).budget == "L∞ ε = 0.01, one step"
    assert budgets["pgd"] == "L∞ ε = 8/255, 10 steps"
    assert make_attack("pgd", R.EvalConfig(pgd_norm="l2", eps=0.5)).budget == "L2 ε = 0.5, 10 steps"
