"""The cluttered-digits scenes and the embedded model made from them (8×8 token grid)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from nullviz.core.errors import DataError, InvalidParameterError
from nullviz.data import scenes as C
from nullviz.data import digits_indices, load_dataset, own_data, sample_image, train_heldout
from nullviz.inspection.localization import box_attention_ratio, box_mask
from nullviz.models import CLUTTERED_MODEL_DIR, load_model
from nullviz.robustness.cluttered_report import measure


@pytest.fixture(scope="module")
def cluttered_lm():
    return load_model("cluttered", device="cpu")


def test_scenes_are_seeded_and_boxes_hold_the_digit():
    a = C.render("train", 12, torch.Generator().manual_seed(5))
    b = C.render("train", 12, torch.Generator().manual_seed(5))
    assert torch.equal(a.pixels, b.pixels) and torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)
    assert a.pixels.shape == (12, 3, 64, 64) and a.pixels.min() >= 0 and a.pixels.max() <= 1
    assert torch.equal(a.pixels, (a.pixels * 255).round() / 255)  # 8-bit values: the PNG path loses nothing
    x0, y0, x1, y1 = a.boxes.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 64).all() and (y1 <= 64).all()
    side = torch.maximum(x1 - x0, y1 - y0)
    assert (side >= 8).all() and (side <= C.DIGIT_SIDES[1]).all()
    # the digit is drawn brighter than the dimmed photograph: the box holds the brightest pixels
    for i in range(12):
        img = a.pixels[i].max(0).values
        inside = img[y0[i]:y1[i], x0[i]:x1[i]].max()
        assert inside >= img.max() - 1e-6


def test_held_out_scenes_use_held_out_digits_and_unseen_photographs():
    assert not set(C.TRAIN_BACKGROUNDS) & set(C.HELDOUT_BACKGROUNDS)
    assert not set(digits_indices("train")) & set(digits_indices("heldout"))
    held = C.fixed_scenes("heldout")
    assert len(held) == C.HELDOUT_SCENES and torch.equal(held.pixels, C.fixed_scenes("heldout").pixels)
    assert set(held.labels.tolist()) == set(range(10))
    with pytest.raises(DataError):
        C.render("test", 1, torch.Generator())


def test_box_mask_and_ratio_by_hand():
    # a 4×4 grid of 16-pixel patches on a 64×64 image; box (16, 16)–(40, 48) covers patch rows 1–2 fully and
    # columns 1 fully, 2 half: area share (24·32)/(64·64) = 0.1875
    boxes = torch.tensor([[16, 16, 40, 48]])
    mask = box_mask(boxes, (4, 4), (64, 64)).reshape(4, 4)
    expected = torch.zeros(4, 4)
    expected[1:3, 1] = 1.0
    expected[1:3, 2] = 0.5
    assert torch.allclose(mask, expected)
    uniform = torch.ones(1, 16)
    r = box_attention_ratio(uniform, boxes, (4, 4), (64, 64))
    assert r["box_share"] == pytest.approx(0.1875) and r["ratio"] == pytest.approx(1.0)
    focused = torch.zeros(1, 16)
    focused[0, 1 * 4 + 1] = 1.0  # all attention on a patch fully inside the box
    r = box_attention_ratio(focused, boxes, (4, 4), (64, 64))
    assert r["mass_inside"] == pytest.approx(1.0) and r["ratio"] == pytest.approx(1 / 0.1875)


@pytest.mark.slow
def test_own_data_follows_the_embedded_model():
    assert own_data("default", "nullviz_cluttered_vit") == "cluttered"
    assert own_data("default", "cluttered") == "cluttered"
    assert own_data("default", "nullviz_digits_vit") == "digits"
    with pytest.raises(DataError, match="vit_tiny_patch16_224 has no training images of its own"):
        own_data("default", "vit_tiny_patch16_224")  # an ImageNet ViT never silently gets the digits
    assert own_data("digits", "vit_tiny_patch16_224") == "digits"  # asked for by name: kept
    assert own_data("/some/folder", "nullviz_cluttered_vit") == "/some/folder"
    held = load_dataset("cluttered", split="heldout")
    assert len(held) == C.HELDOUT_SCENES and held.boxes.shape == (C.HELDOUT_SCENES, 4)
    train, held2 = train_heldout("cluttered")
    assert len(train) == C.TRAIN_SCENES and len(held2) == C.HELDOUT_SCENES
    img = sample_image("scene-7")
    assert img.size == (64, 64)


def test_the_eval_transform_sees_exactly_the_generated_pixels(cluttered_lm):
    held = C.fixed_scenes("heldout")
    ds = C.cluttered_dataset("heldout", cluttered_lm.transform)
    x = torch.stack([ds[i][0] for i in range(8)])
    assert torch.allclose(x, cluttered_lm.normalize(held.pixels[:8]), atol=1e-6)


def test_cluttered_model_has_an_exact_nullspace(cluttered_lm):
    from nullviz.noise import exact as N

    assert cluttered_lm.grid_size == (8, 8) and cluttered_lm.embed_dim == 96
    ns = N.nullspace(cluttered_lm)
    assert ns.nullity == 96
    x = cluttered_lm.preprocess(sample_image("scene-3"))
    v = N.sample_noise(ns, cluttered_lm.img_size, N.NoiseSpec(magnitude=3.0, seed=1))
    report = N.verify_invariance(cluttered_lm, x, v, ns)
    assert report.rel_logit_change < 1e-5 and report.top1_clean == report.top1_noised


@pytest.mark.slow
def test_recorded_figures_are_reproduced_by_the_code(cluttered_lm):
    """config.json holds what the training script measured; the library re-measures it from the weights."""
    recorded = json.loads((CLUTTERED_MODEL_DIR / "config.json").read_text())
    measured = measure(cluttered_lm)
    assert measured["heldout_accuracy"] == recorded["heldout_accuracy"]
    assert measured["heldout_accuracy"] >= 0.95
    for kind in ("last_layer", "rollout"):
        for key in ("mass_inside", "box_share", "ratio"):
            assert measured["localization"][kind][key] == pytest.approx(recorded["localization"][kind][key], abs=2e-4)
    assert measured["localization"]["last_layer"]["ratio"] >= 2.0
    assert measured["nullspace"]["nullity"] == recorded["nullspace"]["nullity"] == 96
    assert measured["nullspace"]["rel_logit_change"] < 1e-5


def test_distribution_shifts_render_the_same_scenes_with_one_change():
    """Each shift renders the held-out scenes from the same draws: the same digits and labels; inverted is the
    exact negative; outline and colour change only pixels at the digit (its box and its faint tail, 8 px); small
    and large change the
    digit's size; texture replaces the background. An unknown shift is refused."""
    g = lambda: torch.Generator().manual_seed(C.SPLIT_SEEDS["heldout"])  # noqa: E731
    clean = C.render("heldout", 12, g())
    shifted = {name: C.render("heldout", 12, g(), shift=name) for name in C.SHIFTS}
    for name, sc in shifted.items():
        assert torch.equal(sc.labels, clean.labels) and torch.equal(sc.backgrounds, clean.backgrounds), name
    assert torch.equal((shifted["inverted"].pixels * 255).round(), 255 - (clean.pixels * 255).round())
    for name in ("outline", "colour"):
        diff = (shifted[name].pixels - clean.pixels).abs().amax(1) > 0
        assert torch.equal(shifted[name].boxes, clean.boxes) and diff.any()
        for i in range(12):
            x0, y0, x1, y1 = (int(v) for v in clean.boxes[i])
            outside = diff[i].clone()
            outside[max(0, y0 - 8):y1 + 8, max(0, x0 - 8):x1 + 8] = False  # the digit's faint tail around its box
            assert not outside.any(), (name, i)
    side = lambda sc: (sc.boxes[:, 2] - sc.boxes[:, 0]).float().mean()  # noqa: E731
    assert side(shifted["small"]) < side(clean) < side(shifted["large"])
    texture_bg = (shifted["texture"].pixels - clean.pixels).abs()
    assert float(texture_bg[:, :, :4, :4].mean()) > 0.01  # a corner is background
    ds = C.shifted_dataset("outline")
    assert len(ds) == C.HELDOUT_SCENES and ds.classes == C.cluttered_dataset("heldout").classes
    with pytest.raises(DataError, match="Unknown distribution shift"):
        C.render("heldout", 2, g(), shift="fog")


@pytest.mark.slow
def test_the_cluttered_model_evaluated_under_the_shifts(cluttered_lm, capsys):
    """Accuracy on each shifted rendering of the evaluated scenes, in the report, its rows and on the command
    line; shifts on data that is not the cluttered held-out scenes are refused."""
    from nullviz.cli import main
    from nullviz.robustness import evaluation as R

    cfg = R.EvalConfig(attacks=(), shifts=tuple(C.SHIFTS), limit=48)
    report = R.evaluate(cluttered_lm, load_dataset("cluttered", split="heldout"), cfg)
    assert set(report.shifts) == set(C.SHIFTS) and all(0 <= a <= 1 for a in report.shifts.values())
    assert report.shifts["inverted"] < report.clean_acc
    assert {r["evaluation"] for r in report.to_rows()} >= {f"shift_{s}" for s in C.SHIFTS}
    assert R.RobustnessReport.from_dict(report.to_dict()).shifts == report.shifts
    with pytest.raises(DataError, match="cluttered model's own held-out scenes"):
        R.evaluate(load_model("default", device="cpu"), load_dataset("digits", split="heldout"),
                   R.EvalConfig(attacks=(), shifts=("inverted",), limit=8))
    with pytest.raises(InvalidParameterError):
        R.EvalConfig(shifts=("fog",))
    assert main(["evaluate", "--model", "cluttered", "--attacks", "none", "--shifts", "small,large", "--limit", "16",
                 "--json"]) == 0
    import json as _json

    out = _json.loads(capsys.readouterr().out)
    assert set(out["shifts"]) == {"small", "large"}


def test_rendered_training_scenes_are_seeded_fresh_draws():
    """The fair test's training pool and validation split: new renders of the training split, the same for the
    same seed, none of them one of the fixed training scenes."""
    a = C.rendered_dataset("train", 6, C.STREAM_SEED)
    b = C.rendered_dataset("train", 6, C.STREAM_SEED)
    c = C.rendered_dataset("train", 6, C.VALIDATION_STREAM_SEED)
    arr = lambda ds: torch.stack([torch.as_tensor(np.array(ds[i][0])) for i in range(len(ds))])  # noqa: E731
    assert torch.equal(arr(a), arr(b)) and a.labels == b.labels and not torch.equal(arr(a), arr(c))
    fixed = C.fixed_scenes("train").pixels
    mine = C.render("train", 6, torch.Generator().manual_seed(C.STREAM_SEED)).pixels
    assert not any(torch.equal(m, f) for m in mine for f in fixed)
    assert a.classes == list(C.DIGITS_CLASS_NAMES)


def test_fixed_scenes_are_kept_on_disk_and_read_back_exactly(tmp_path, monkeypatch):
    """A job's worker and a server start read the fixed scenes from the cache instead of rendering 5,000 again;
    the file holds the very pixels, and an unreadable one is rendered again."""
    monkeypatch.setenv("NULLVIZ_CACHE_DIR", str(tmp_path))
    C.fixed_scenes.cache_clear()
    try:
        rendered = C.fixed_scenes("heldout")
        files = list(tmp_path.glob("scenes-heldout-*.pt"))
        assert len(files) == 1
        C.fixed_scenes.cache_clear()
        real_render = C.render
        monkeypatch.setattr(C, "render", lambda *a, **k: pytest.fail("rendered although the cache holds them"))
        cached = C.fixed_scenes("heldout")
        assert torch.equal(cached.pixels, rendered.pixels) and torch.equal(cached.labels, rendered.labels)
        assert torch.equal(cached.boxes, rendered.boxes) and torch.equal(cached.backgrounds, rendered.backgrounds)
        files[0].write_bytes(b"not a tensor file")  # unreadable: rendered again, and the file rewritten
        monkeypatch.setattr(C, "render", real_render)
        C.fixed_scenes.cache_clear()
        assert torch.equal(C.fixed_scenes("heldout").pixels, rendered.pixels)
        assert C._load_scenes(files[0], C.HELDOUT_SCENES) is not None
    finally:
        C.fixed_scenes.cache_clear()  # later tests render or read with the real cache folder again


@pytest.mark.slow  # a fresh process
def test_reading_cached_scenes_imports_neither_scikit_package(tmp_path, monkeypatch):
    """The cache file's name holds the versions of scikit-learn and scikit-image (the digits and photographs come
    from them), read from their metadata: importing scikit-learn only to ask took 1.2 s of every server start."""
    monkeypatch.setenv("NULLVIZ_CACHE_DIR", str(tmp_path))
    n = C.HELDOUT_SCENES  # a cache file of the right shapes (blank scenes: only the imports are looked at here)
    torch.save({"levels": torch.zeros(n, 3, C.CANVAS, C.CANVAS, dtype=torch.uint8), "labels": torch.zeros(n),
                "boxes": torch.zeros(n, 4), "backgrounds": torch.zeros(n)}, C._scene_file("heldout", n))
    code = ("import sys; from nullviz.data import scenes as C; C.fixed_scenes('heldout'); "
            "print('imported:' + ','.join(m for m in ('skimage', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # (the cache dir set above)
                         check=True).stdout.split()[-1]
    assert out == "imported:" and len(list(tmp_path.glob("scenes-heldout-*.pt"))) == 1
