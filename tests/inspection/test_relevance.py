"""Chefer's class-specific attention relevance and the nullspace sanity check of explanations."""

import numpy as np
import pytest
import torch

from conftest import assert_state_equal, state_snapshot
from nullviz.core.errors import InvalidParameterError
from nullviz.inspection.attribution import ATTRIBUTION_METHODS, attribute, nullspace_sanity
from nullviz.models import create_random_vit
from nullviz.noise import exact as N


def test_relevance_is_class_specific_non_negative_and_per_patch(default_lm, digit_x):
    pixels = default_lm.denormalize(digit_x)
    own = attribute(default_lm, pixels, "attention_relevance")
    other = attribute(default_lm, pixels, "attention_relevance", target=(own.target[0] + 1) % 10)
    h, g = own.heatmap()[0], other.heatmap()[0]
    assert h.shape == pixels.shape[-2:] and float(h.min()) >= 0  # R = I + Σ Ā·R with Ā ≥ 0
    assert float((h - g).abs().max()) > 0.1 * float(h.max())  # another class, another map
    p = default_lm.patch_size
    assert torch.equal(h[:p, :p], torch.full((p, p), float(h[0, 0])))  # one value per patch
    assert ATTRIBUTION_METHODS["attention_relevance"].label.startswith("Attention relevance")


def test_relevance_follows_the_rule_on_a_one_block_model():
    """With one block, R = I + Ā, so the class row over the patches is Ā[0, 1:] itself."""
    lm = create_random_vit("vit_tiny_patch16_224", seed=3, img_size=32, patch_size=8, embed_dim=32, depth=1,
                           num_heads=2, num_classes=4, device="cpu")
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    got = attribute(lm, x, "attention_relevance", target=2).heatmap()[0, ::8, ::8].flatten()
    view = lm.view().model
    for m in view.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    seen = []
    view.blocks[0].attn.attn_drop.register_forward_hook(lambda mod, a, out: seen.append(out))
    logit = view(lm.normalize(x).requires_grad_(True))[0, 2]
    (grad,) = torch.autograd.grad(logit, seen)
    expected = (grad * seen[0]).clamp(min=0).mean(1)[0, 0, 1:]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)  # heatmap: the channels summed back


def test_relevance_leaves_the_shared_model_alone(default_lm, digit_x):
    snap = state_snapshot(default_lm.model)
    attribute(default_lm, default_lm.denormalize(digit_x), "attention_relevance")
    assert_state_equal(default_lm.model, snap)
    assert all(not m._forward_hooks for m in default_lm.model.modules())
    assert not default_lm.model.training


def test_nullspace_sanity_every_map_passes_per_patch_and_input_times_gradient_fails_per_pixel(default_lm, digit_x):
    """Exact nullspace noise changes no output: a map of the output must not change. Gradients lie in the row
    space (no nullspace part), so saliency, SmoothGrad, occlusion and the relevance pass per pixel and per patch;
    Integrated Gradients multiplies by (x − baseline), which the noise changes: it moves per pixel, while each
    patch's sum moves by vᵀ·gradient = 0."""
    pixels = default_lm.denormalize(digit_x)
    results = {m: nullspace_sanity(default_lm, pixels, m, steps=8) for m in ATTRIBUTION_METHODS}
    for m in ("saliency", "smoothgrad", "occlusion", "attention_relevance", "gradcam", "gradcam++", "eigencam",
              "layercam"):
        assert results[m].passes and results[m].pixel_passes, results[m]
    assert not results["scorecam"].passes  # it scores the input times upsampled masks: the noise leaves the nullspace
    ig = results["integrated_gradients"]
    assert ig.passes and not ig.pixel_passes and ig.map_change > 1e-2 and ig.patch_change < 1e-5
    for r in results.values():
        assert r.gradient_null_fraction < 1e-5  # float32 rounding
    assert results["saliency"].to_dict()["passes"] is True


def test_nullspace_sanity_needs_a_nullspace():
    full = create_random_vit("vit_tiny_patch16_224", seed=0, img_size=16, patch_size=4, embed_dim=48, depth=1,
                             num_heads=2, num_classes=3, device="cpu")
    assert N.nullspace(full).nullity == 0
    with pytest.raises(InvalidParameterError, match="nullspace"):
        nullspace_sanity(full, torch.rand(3, 16, 16))


def test_cli_sanity_reports_every_method(capsys):
    import json

    from nullviz.cli import main

    chosen = ["saliency", "integrated_gradients", "attention_relevance"]
    assert main(["attention", "--model", "digits", "--image", "digit-3", "--sanity", "--methods", ",".join(chosen),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["sanity"]
    assert [r["method"] for r in out] == chosen
    assert all(r["passes"] for r in out)  # per patch
    per_pixel = {r["method"]: r["pixel_passes"] for r in out}
    assert per_pixel["saliency"] and per_pixel["attention_relevance"] and not per_pixel["integrated_gradients"]
    null_share = {r["method"]: r["map_null_fraction"] for r in out}
    assert null_share["saliency"] < 1e-5 < 1e-2 < null_share["integrated_gradients"]
    assert main(["attention", "--model", "digits", "--sanity", "--methods", "saliency,nope"]) == 2
    assert "saliency" in capsys.readouterr().err  # the error lists the registry


@pytest.mark.parametrize("name,cam", [("gradcam", "GradCAM"), ("gradcam++", "GradCAMPlusPlus"), ("scorecam", "ScoreCAM"),
                                      ("eigencam", "EigenCAM"), ("layercam", "LayerCAM")])
def test_cam_methods_equal_pytorch_grad_cam_called_directly_and_leave_the_model_alone(default_lm, digit_x, name, cam):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from nullviz.models import PixelModel

    pixels = default_lm.denormalize(digit_x)
    pixels = pixels if pixels.dim() == 4 else pixels.unsqueeze(0)
    snap = state_snapshot(default_lm.model)
    ours = attribute(default_lm, pixels, name, target=3).heatmap()[0]
    assert_state_equal(default_lm.model, snap)
    assert all(not m._forward_hooks and not m._backward_hooks for m in default_lm.model.modules())
    assert not default_lm.model.training
    # the library's own ViT recipe, on a private copy
    copy = default_lm.trainable_copy().eval()
    model = PixelModel(copy, default_lm.mean, default_lm.std)
    gh, gw = (int(g) for g in copy.patch_embed.grid_size)
    with getattr(pytorch_grad_cam, cam)(model=model, target_layers=[copy.blocks[-1].norm1],
                                         reshape_transform=lambda t: t[:, 1:].reshape(t.shape[0], gh, gw, -1)
                                         .permute(0, 3, 1, 2)) as direct:
        expected = direct(input_tensor=pixels.clone().requires_grad_(True), targets=[ClassifierOutputTarget(3)])[0]
    torch.testing.assert_close(ours, torch.as_tensor(expected), rtol=1e-4, atol=1e-5)


def test_a_map_splits_into_what_the_embedding_sees_and_its_nullspace_part(default_lm, digit_x):
    """The two parts add up to the map; a gradient map has no nullspace part (float32 rounding), Integrated
    Gradients — gradient times input — has one; the figure draws all three on one scale with the share in its
    title; a full-rank model is refused."""
    from nullviz import figures
    from nullviz.inspection.attribution import attribution_split

    pixels = default_lm.denormalize(digit_x)
    sal = attribute(default_lm, pixels, "saliency")
    split = attribution_split(default_lm, sal)
    np.testing.assert_allclose(split.row + split.null, sal.heatmap()[0].numpy(), atol=1e-5)
    assert split.null_fraction < 1e-5
    ig = attribution_split(default_lm, attribute(default_lm, pixels, "integrated_gradients", steps=8))
    assert ig.null_fraction > 1e-2 and np.abs(ig.null).max() > 1e-3 * np.abs(ig.row).max()
    fig = figures.attribution_split_plot(ig)
    assert len([t for t in fig.data if t.type == "heatmap"]) == 3
    assert f"{ig.null_fraction:.1%} of the map" in fig.layout.annotations[2].text
    full = create_random_vit("vit_tiny_patch16_224", seed=0, img_size=16, patch_size=4, embed_dim=48, depth=1,
                             num_heads=2, num_classes=3, device="cpu")
    with pytest.raises(InvalidParameterError, match="nullspace"):
        attribution_split(full, attribute(full, torch.rand(3, 16, 16), "saliency"))
