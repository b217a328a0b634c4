"""Corruptions are severity scales at the image's resolution (issue: ImageNet-C parameters on 32-px images)."""

import numpy as np
import pytest
import torch

from nullviz.data import digits_dataset
from nullviz.models import create_random_vit
from nullviz.robustness import corruptions as C
from nullviz.robustness import evaluation as R
from nullviz.robustness.corruptions import (CORRUPTIONS, CorruptionNotApplicableError, corrupt_image, is_severity_scale,
                                            scale_photos, ssim_by_severity)


@pytest.fixture(scope="module")
def photos_32():
    return scale_photos(32, ("astronaut", "coffee", "chelsea", "rocket"))


@pytest.fixture(scope="module")
def photos_224():
    return scale_photos(224, ("astronaut", "coffee", "chelsea"))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_is_a_severity_scale_at_32_px(photos_32, name):
    ladder = ssim_by_severity(photos_32, name)
    assert is_severity_scale(ladder, rise=0.015, span=0.04), ladder


@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.slow
def test_every_corruption_is_a_severity_scale_at_224_px(photos_224, name):
    ladder = ssim_by_severity(photos_224, name)
    assert is_severity_scale(ladder, rise=0.015, span=0.04), ladder


@pytest.mark.slow
def test_accuracy_never_rises_with_severity_at_32_px(default_lm):
    """The embedded model on 200 held-out digits: accuracy by severity falls (or saturates), for all 15."""
    cfg = R.EvalConfig(attacks=(), corruptions=CORRUPTIONS, limit=200)
    report = R.evaluate(default_lm, digits_dataset("heldout"), cfg)
    assert not report.corruption_skipped
    for name, accs in report.corruptions.items():
        assert is_severity_scale(accs, rise=0.02, span=None), (name, accs)
    # where the digits are not immune, severity 5 is clearly worse than severity 1
    # (glass blur is not among them: as the reference computes it — pixels copied, not swapped — it moves few
    # enough pixels that the digits keep 97–98 % at every severity)
    for name in ("frost", "fog", "contrast", "brightness", "snow"):
        assert report.corruptions[name][4] <= report.corruptions[name][0] - 0.05, name


@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_no_two_severities_give_the_same_image(photos_32, photos_224, size, name):
    img = (photos_32 if size == 32 else photos_224)[0]
    outs = [corrupt_image(img, name, s, np.random.default_rng(0)) for s in range(1, 6)]
    for a in range(5):
        for b in range(a + 1, 5):
            assert not np.array_equal(outs[a], outs[b]), (a + 1, b + 1)


def test_motion_blur_uses_sigma():
    """corrupt-tta's motion blur ignored σ: its severities 2–4 (same radius) were bit-identical."""
    img = scale_photos(224, ("astronaut",))[0]
    trails = [C.motion_trail(img, 15, sigma, 30.0) for sigma in (5, 8, 12)]
    assert not np.array_equal(trails[0], trails[1]) and not np.array_equal(trails[1], trails[2])
    # the trail is one-sided and normalised: a constant image stays constant
    flat = np.full((40, 40, 3), 0.25, np.float32)
    np.testing.assert_allclose(C.motion_trail(flat, 6, 2, 10.0), flat, atol=1e-6)


def _elastic_displacement(size: int, severity: int) -> float:
    """Mean displacement of the elastic transform, as a fraction of the image side (warping a coordinate grid)."""
    grid = np.stack(np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size)), -1)
    grid = np.concatenate([grid, np.zeros((size, size, 1))], -1).astype(np.float32)
    out = corrupt_image(grid, "elastic_transform", severity, np.random.default_rng(0))
    inner = slice(size // 8, size - size // 8)  # away from the reflected border
    return float(np.abs(out[inner, inner, :2] - grid[inner, inner, :2]).mean())


def test_elastic_transform_scales_with_the_image():
    """corrupt-tta moved a 32-px image's corners by 22–45 px; here lengths are in units of the image."""
    assert all(_elastic_displacement(32, s) < 0.1 for s in range(1, 6))  # at most 1.8 px here
    for s in (1, 5):  # the same table at twice the size: the same warp relative to the image
        assert _elastic_displacement(448, s) == pytest.approx(_elastic_displacement(224, s), rel=0.25)


def test_reference_size_rule():
    assert [C.reference_size(s, s) for s in (16, 32, 45, 46, 64, 119, 120, 224, 512)] == \
        [32, 32, 32, 64, 64, 64, 224, 224, 224]
    p = C.parameters("motion_blur", 2, 48, 48)
    assert p["reference_size"] == 64 and p["pixel_scale"] == pytest.approx(0.75)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_gray_and_rectangular_images(name):
    rng = np.random.default_rng(0)
    gray = rng.random((32, 32, 1), dtype=np.float32)
    out = corrupt_image(gray, name, 3, np.random.default_rng(1))
    assert out.shape == gray.shape and out.min() >= 0 and out.max() <= 1 and not np.array_equal(out, gray)
    rect = rng.random((32, 48, 3), dtype=np.float32)
    out = corrupt_image(rect, name, 3, np.random.default_rng(1))
    assert out.shape == rect.shape and not np.array_equal(out, rect)


def test_images_it_cannot_corrupt_raise_a_specific_error():
    with pytest.raises(CorruptionNotApplicableError, match="1 or 3 channels"):
        corrupt_image(np.zeros((32, 32, 4), np.float32), "fog", 1, np.random.default_rng(0))
    with pytest.raises(CorruptionNotApplicableError, match="too small"):
        corrupt_image(np.zeros((4, 4, 3), np.float32), "fog", 1, np.random.default_rng(0))


def test_gray_model_gets_every_corruption():
    """A ViT with in_chans=1 was evaluated on 1 of the 15 corruptions; now on all of them."""
    lm = create_random_vit("vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=1, num_classes=10,
                           depth=1, embed_dim=32, num_heads=2)
    data = [(torch.rand(1, 32, 32), k % 10) for k in range(8)]
    report = R.evaluate(lm, data, R.EvalConfig(attacks=(), corruptions=CORRUPTIONS, severities=(1, 5)))
    assert not report.corruption_skipped and set(report.corruptions) == set(CORRUPTIONS)


def test_four_channel_model_reports_skipped_corruptions():
    lm = create_random_vit("vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=4, num_classes=10,
                           depth=1, embed_dim=32, num_heads=2)
    data = [(torch.rand(4, 32, 32), k % 10) for k in range(4)]
    report = R.evaluate(lm, data, R.EvalConfig(attacks=(), corruptions=("fog", "contrast"), severities=(1,)))
    assert report.corruptions == {} and set(report.corruption_skipped) == {"fog", "contrast"}
    assert "1 or 3 channels" in report.corruption_skipped["fog"]


class _Draws:
    """A stand-in generator that hands out prepared integers in order, whatever the requested shape."""

    def __init__(self, values):
        self.values = list(values)

    def integers(self, low, high, size):
        n = int(np.prod(size))
        out, self.values = self.values[:n], self.values[n:]
        return np.array(out).reshape(size)


def test_glass_blur_copies_pixels_as_the_reference_does():
    """ImageNet-C's reference scrambles with ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy views: a copy
    of x[h', w'] onto x[h, w] (x[h', w'] keeps its value), in order; its first blur is truncated to uint8."""
    from nullviz.robustness.corruptions import gaussian_blur, glass_blur

    rng = np.random.default_rng(7)
    x = rng.random((12, 10, 3)).astype(np.float32)
    sigma, delta, iterations = 0.7, 2, 2
    n = len(range(12 - delta, delta, -1)) * len(range(10 - delta, delta, -1))
    draws = rng.integers(-delta, delta, size=2 * n * iterations).tolist()

    ref = np.uint8(gaussian_blur(x, sigma) * 255)  # the reference, line by line
    it = iter(np.array(draws).reshape(-1, 2))
    for _ in range(iterations):
        for h in range(12 - delta, delta, -1):
            for w in range(10 - delta, delta, -1):
                dx, dy = next(it)
                ref[h, w], ref[h + dy, w + dx] = ref[h + dy, w + dx], ref[h, w]
    ref = gaussian_blur(ref / 255.0, sigma)

    ours = glass_blur(x, (sigma, delta, iterations), _Draws(draws), 1.0)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    swapped = ref  # and it is not the true swap the code used to do: that gives another image
    assert not np.allclose(_swap_version(x, sigma, delta, iterations, draws), swapped, atol=1e-3)


def _swap_version(x, sigma, delta, iterations, draws):
    from nullviz.robustness.corruptions import gaussian_blur

    h_, w_, ch = x.shape
    y = np.floor(gaussian_blur(x, sigma) * 255) / 255
    order = list(range(h_ * w_))
    it = iter(np.array(draws).reshape(-1, 2))
    for _ in range(iterations):
        for r in range(h_ - delta, delta, -1):
            for q in range(w_ - delta, delta, -1):
                dx, dy = next(it)
                a, b = r * w_ + q, (r + dy) * w_ + (q + dx)
                order[a], order[b] = order[b], order[a]
    return gaussian_blur(y.reshape(h_ * w_, ch)[order].reshape(h_, w_, ch), sigma)
