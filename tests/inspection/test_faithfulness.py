"""Deletion / insertion faithfulness of the attribution methods, beside a random ranking."""

import pytest
import torch

from nullviz.core.errors import InvalidParameterError
from nullviz.data import load_dataset
from nullviz.inspection.attribution import ATTRIBUTION_METHODS
from nullviz.inspection.faithfulness import RANDOM, area, curves, faithfulness, patch_scores
from nullviz.models import PixelModel
from nullviz.robustness.evaluation import images_tensor


def test_curves_remove_and_insert_patches_in_the_given_order(default_lm, digit_x):
    """Exact ends: nothing removed is the image's own probability, everything removed (or nothing inserted) is
    the black image's; a curve moves one stretch of patches per step, in the given order."""
    fn = PixelModel.of(default_lm)
    pixels = default_lm.denormalize(digit_x)
    pixels = pixels if pixels.dim() == 4 else pixels.unsqueeze(0)
    t = fn(pixels).argmax(-1)
    n = int(default_lm.model.patch_embed.num_patches)
    order = torch.arange(n).unsqueeze(0)
    deletion, insertion = curves(fn, pixels, t, order, default_lm.patch_size, steps=4)
    with torch.no_grad():
        full = fn(pixels).softmax(-1)[0, t].item()
        black = fn(torch.zeros_like(pixels)).softmax(-1)[0, t].item()
        first_quarter = pixels.clone()
        first_quarter[..., : default_lm.img_size[0] // 4, :] = 0  # patches 0 … n/4 − 1: the top rows
        quarter = fn(first_quarter).softmax(-1)[0, t].item()
    assert deletion[0, 0].item() == pytest.approx(full) and deletion[0, -1].item() == pytest.approx(black)
    assert insertion[0, 0].item() == pytest.approx(black) and insertion[0, -1].item() == pytest.approx(full)
    assert deletion[0, 1].item() == pytest.approx(quarter)
    assert area(torch.tensor([[0.0, 1.0]])).item() == pytest.approx(0.5)
    heat = torch.zeros(1, 32, 32)
    heat[0, 8:16, 0:8] = 1.0
    assert patch_scores(heat, 8).tolist() == [[0, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]


def test_faithful_methods_beat_a_random_ranking(default_lm):
    x, _ = images_tensor(default_lm, load_dataset("digits"), 6)
    methods = ("occlusion", "attention_relevance", "integrated_gradients", "gradcam", "saliency")
    report = faithfulness(default_lm, default_lm.denormalize(x), methods, steps=8, attribution_steps=8)
    summary = report.summary()
    assert set(summary) == {*methods, RANDOM} and report.images == 6 and set(methods) <= set(ATTRIBUTION_METHODS)
    assert len(report.fractions) == 9 and len(report.deletion_auc["occlusion"]) == 6
    rand = summary[RANDOM]
    for m in ("occlusion", "attention_relevance", "integrated_gradients"):  # measured: far better than random
        assert summary[m]["deletion_auc"] < rand["deletion_auc"] and summary[m]["insertion_auc"] > rand["insertion_auc"]
    again = faithfulness(default_lm, default_lm.denormalize(x), ("occlusion",), steps=8)
    assert again.deletion_auc["occlusion"] == report.deletion_auc["occlusion"]  # seeded, deterministic
    assert again.deletion_auc[RANDOM] == report.deletion_auc[RANDOM]


def test_faithfulness_stops_between_images_and_checks_its_inputs(default_lm):
    x, _ = images_tensor(default_lm, load_dataset("digits"), 3)
    calls = iter([False, True])
    report = faithfulness(default_lm, default_lm.denormalize(x), ("saliency",), steps=2,
                          should_stop=lambda: next(calls))
    assert report.stopped and report.images == 1
    with pytest.raises(InvalidParameterError):
        faithfulness(default_lm, default_lm.denormalize(x), ("gradcam-of-the-future",))
    with pytest.raises(InvalidParameterError):
        faithfulness(default_lm, default_lm.denormalize(x), steps=1)


def test_cli_faithfulness(capsys):
    import json

    from nullviz.cli import main

    assert main(["attention", "--model", "digits", "--image", "digit-3", "--faithfulness", "2", "--methods",
                 "occlusion,gradcam", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["faithfulness"]
    assert out["images"] == 2 and set(out["summary"]) == {"occlusion", "gradcam", RANDOM}
    assert main(["attention", "--model", "digits", "--faithfulness", "-1"]) == 2


def test_road_is_pytorch_grad_cams_own_seeded_and_leaves_the_global_generator_alone(default_lm):
    """Our ROAD score is ROADCombined called directly (same seed); it is reproducible and does not move torch's
    global random stream; ``with_road`` puts one score per image and method (random included) in the report."""
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    from nullviz.inspection.attribution import attribute
    from nullviz.inspection.faithfulness import road

    x, _ = images_tensor(default_lm, load_dataset("digits"), 3)
    pixels = default_lm.denormalize(x)
    fn = PixelModel.of(default_lm)
    t = int(fn(pixels[:1]).argmax(-1))
    heat = attribute(default_lm, pixels[:1], "occlusion", t).heatmap()
    state = torch.get_rng_state()
    ours = road(fn, pixels[:1], heat, t, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(5)
    with torch.no_grad():
        direct = ROADCombined()(pixels[:1], heat.reshape(1, 32, 32).numpy(), [ClassifierOutputSoftmaxTarget(t)], fn)
    torch.set_rng_state(state)
    assert ours == pytest.approx(float(direct[0]), abs=1e-6) and ours == road(fn, pixels[:1], heat, t, seed=5)
    report = faithfulness(default_lm, pixels, ("occlusion",), steps=2, with_road=True)
    assert set(report.road) == {"occlusion", RANDOM} and len(report.road["occlusion"]) == 3
    assert "road" in report.summary()["occlusion"] and report.to_dict()["road_percentiles"][0] == 10
    assert faithfulness(default_lm, pixels[:1], ("occlusion",), steps=2).road == {}


def test_on_a_model_that_reads_one_patch_the_map_that_names_it_scores_best():
    """A constructed model whose class-0 logit is the brightness of patch 5 alone: the ranking that puts patch 5
    first has the lowest deletion and the highest insertion area; a random ranking scores between it and the
    ranking that puts patch 5 last."""
    class OnePatch(torch.nn.Module):
        def forward(self, x):
            s = 40 * x[:, :, 8:16, 8:16].mean((1, 2, 3)) - 20  # patch (1, 1): index 5 of the 4×4 grid
            return torch.stack([s, -s], 1)

    fn = OnePatch()
    pixels = torch.ones(1, 3, 32, 32)
    t = torch.tensor([0])
    n = 16
    right = torch.tensor([[5, *[i for i in range(n) if i != 5]]])
    wrong = torch.tensor([[*[i for i in range(n) if i != 5], 5]])
    gen = torch.Generator().manual_seed(0)
    scores = {}
    for name, order in (("right", right), ("wrong", wrong)):
        d, s = curves(fn, pixels, t, order, 8, steps=16)
        scores[name] = (float(area(d)), float(area(s)))
    rand_d, rand_s = [], []
    for _ in range(20):
        d, s = curves(fn, pixels, t, torch.randperm(n, generator=gen).unsqueeze(0), 8, steps=16)
        rand_d.append(float(area(d)))
        rand_s.append(float(area(s)))
    rd, rs = sum(rand_d) / 20, sum(rand_s) / 20
    assert scores["right"][0] < rd < scores["wrong"][0]
    assert scores["right"][1] > rs > scores["wrong"][1]
