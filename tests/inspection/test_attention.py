import json

import numpy as np
import pytest
import torch

from conftest import assert_state_equal, state_snapshot
from nullviz.core.errors import InvalidParameterError
from nullviz.data import sample_image
from nullviz.inspection.attention import (attention_distance, cls_attention_maps, compare, representation_change,
                                          rollout, trace, unfused_attention)
from nullviz.inspection.attribution import METHODS, attribute
from nullviz.noise import exact as N


def _fused_flags(model):
    return [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]


def test_rows_sum_to_one_and_geometry(default_lm, digit_x):
    t = trace(default_lm.model, digit_x)
    assert t.attention.shape == (4, 1, 4, 17, 17)
    torch.testing.assert_close(t.attention.sum(-1), torch.ones(4, 1, 4, 17))
    assert t.cls_maps().shape == (4, 1, 4, 4, 4)
    assert t.hidden.shape == (5, 1, 17, 96)


def test_extraction_leaves_outputs_flags_and_hooks_unchanged(default_lm, digit_x):
    model = default_lm.model
    flags = _fused_flags(model)
    snap = state_snapshot(model)
    before = default_lm.predict(digit_x)
    t = trace(model, digit_x)
    torch.testing.assert_close(t.logits, before.cpu())  # a trace's tensors are on the CPU
    assert _fused_flags(model) == flags
    assert_state_equal(model, snap)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    torch.testing.assert_close(default_lm.predict(digit_x), before)


def test_flags_and_hooks_restored_on_error(default_lm):
    model = default_lm.model
    flags = _fused_flags(model)
    with pytest.raises(RuntimeError):
        trace(model, torch.zeros(1, 5, 32, 32))  # wrong channel count fails inside the forward
    assert _fused_flags(model) == flags
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    with pytest.raises(ValueError):
        with unfused_attention(model):
            assert not any(_fused_flags(model))
            raise ValueError("boom")
    assert _fused_flags(model) == flags


def test_maps_equal_independent_qk_computation(tiny_lm):
    model = tiny_lm.model
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = trace(model, x.to(tiny_lm.device))
    for layer, blk in enumerate(model.blocks):
        h = torch.nn.functional.layer_norm(t.hidden[layer], blk.norm1.normalized_shape, blk.norm1.weight.cpu(),
                                           blk.norm1.bias.cpu(), blk.norm1.eps)
        B, T, C = h.shape
        heads = blk.attn.num_heads
        qkv = h @ blk.attn.qkv.weight.cpu().T + blk.attn.qkv.bias.cpu()
        q, k, _ = qkv.reshape(B, T, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        expected = ((q @ k.transpose(-1, -2)) / (C // heads) ** 0.5).softmax(-1)
        torch.testing.assert_close(t.attention[layer], expected, atol=1e-5, rtol=1e-4)


def test_rollout_of_identity_is_identity():
    eye = torch.eye(6).expand(3, 2, 4, 6, 6).clone()
    for fusion in ("mean", "max", "min"):
        torch.testing.assert_close(rollout(eye, fusion), torch.eye(6).expand(2, 6, 6))
    torch.testing.assert_close(rollout(eye, "mean", 0.5), torch.eye(6).expand(2, 6, 6))


def test_rollout_rows_are_distributions(default_lm, digit_x):
    t = trace(default_lm.model, digit_x)
    r = rollout(t.attention, "max", 0.9)
    torch.testing.assert_close(r.sum(-1), torch.ones(1, 17))
    assert (r >= 0).all()
    with pytest.raises(InvalidParameterError):
        rollout(t.attention, "median")


def test_exact_noise_gives_zero_change_at_every_layer(default_lm, digit_x):
    ns = N.nullspace(default_lm)
    v = N.sample_noise(ns, default_lm.img_size, N.NoiseSpec(magnitude=3.0))
    cmp = compare(default_lm, digit_x, v)
    assert float(cmp.layer_attention_distance.max()) < 1e-5
    assert float(cmp.layer_repr_change.max()) < 1e-5
    d = cmp.to_dict()
    assert len(d["layer_attention_distance"]) == len(d["layer_repr_change"]) == d["layers"] == 4
    assert (d["heads"], d["tokens"]) == (4, 17)


def test_random_noise_changes_attention(default_lm, digit_x):
    v = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    cmp = compare(default_lm, digit_x, v)
    assert float(cmp.layer_attention_distance.min()) > 1e-3
    assert float(cmp.layer_repr_change.min()) > 1e-2


def test_encoder_level_delta(default_lm, digit_x):
    delta = torch.randn(16, 96, generator=torch.Generator().manual_seed(0))
    cmp = compare(default_lm, digit_x, delta, level="encoder")
    assert cmp.embed_repr_change > 0 and float(cmp.layer_attention_distance[0]) > 0
    arrays = cmp.arrays()
    assert arrays["attention_noised"].shape == (4, 1, 4, 17, 17)


def test_distances():
    p = torch.softmax(torch.randn(2, 1, 2, 5, 5), -1)
    assert float(attention_distance(p, p).abs().max()) == 0.0
    q = torch.zeros_like(p)
    q[..., 0] = 1
    tv = attention_distance(p, q, "tv")
    np.testing.assert_allclose(tv.numpy(), (1 - p[..., 0]).mean(dim=(1, 2, 3)).numpy(), rtol=1e-5)
    js = attention_distance(p, q, "js")
    assert (js > 0).all() and (js <= np.log(2) + 1e-6).all()
    h = torch.randn(3, 1, 5, 4)
    np.testing.assert_allclose(representation_change(h, 2 * h).numpy(), 1.0, rtol=1e-6)
    with pytest.raises(InvalidParameterError):
        cls_attention_maps(p, 1, (3, 3))


@pytest.mark.parametrize("method", METHODS)
def test_attribution_methods(default_lm, digit_x, method):
    snap = state_snapshot(default_lm.model)
    a = attribute(default_lm, default_lm.denormalize(digit_x), method, steps=8)
    assert a.attributions.shape == (1, 3, 32, 32) and torch.isfinite(a.attributions).all()
    assert a.target == [3]
    assert float(a.attributions.abs().sum()) > 0
    assert_state_equal(default_lm.model, snap)
    assert not default_lm.model.training


@pytest.mark.parametrize("method", METHODS)
def test_attribution_leaves_torch_global_rng_alone(default_lm, digit_x, method):
    """captum's NoiseTunnel draws (and callers used to reseed) torch's global RNG, which sessions share."""
    state = torch.random.get_rng_state()
    attribute(default_lm, default_lm.denormalize(digit_x), method, steps=4, smoothgrad_samples=4, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_vit_without_class_token_maps_the_mean_patch_query():
    """Patch 0's attention row used to be labelled as the CLS map (and the rollout's)."""
    from nullviz.inspection.attention import rollout_map
    from nullviz.models import create_random_vit

    lm = create_random_vit("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=2,
                           embed_dim=32, num_heads=2, class_token=False, global_pool="avg")
    x = torch.randn(2, 3, 32, 32)
    t = trace(lm.model, x)
    assert t.num_prefix_tokens == 0 and not t.has_class_token and "no class token" in t.query_label
    expected = t.attention.mean(-2).reshape(2, 2, 2, 4, 4)  # mean over the 16 patch queries
    torch.testing.assert_close(t.cls_maps(), expected)
    assert not torch.allclose(t.cls_maps(), t.attention[..., 0, :].reshape(2, 2, 2, 4, 4))
    cmp = compare(lm, x[:1], None)
    rolled = rollout(t.attention[:, :1])
    torch.testing.assert_close(cmp.rollout_maps()[0], rolled.mean(-2).reshape(1, 4, 4))
    torch.testing.assert_close(rollout_map(rolled, 0, (4, 4), class_token=False), rolled.mean(-2).reshape(1, 4, 4))
    assert "no class token" in cmp.to_dict()["query"]
    # a ViT with a class token (and registers) keeps the CLS row
    reg = create_random_vit("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=1,
                            embed_dim=32, num_heads=2, reg_tokens=2)
    tr = trace(reg.model, x)
    assert tr.has_class_token and tr.query_label == "CLS" and tr.num_prefix_tokens == 3
    torch.testing.assert_close(tr.cls_maps(), tr.attention[..., 0, 3:].reshape(1, 2, 2, 4, 4))


def test_integrated_gradients_completeness(default_lm, digit_x):
    pixels = default_lm.denormalize(digit_x)
    a = attribute(default_lm, pixels, "integrated_gradients", steps=64)
    with torch.no_grad():
        f_x = default_lm.predict(digit_x)[0, 3]
        f_0 = default_lm.predict(default_lm.normalize(torch.zeros_like(pixels)))[0, 3]
    total = float(a.attributions.sum())
    # captum's delta is exactly the completeness gap: Σ attr − (f(x) − f(0))
    assert total - float(f_x - f_0) == pytest.approx(a.convergence_delta[0], abs=1e-4)
    more = attribute(default_lm, pixels, "integrated_gradients", steps=256)
    assert abs(more.convergence_delta[0]) < abs(a.convergence_delta[0]) + 1e-6


def test_attribution_with_token_noise_and_bad_target(default_lm, digit_x):
    delta = torch.zeros(16, 96)
    clean = attribute(default_lm, default_lm.denormalize(digit_x), "saliency")
    same = attribute(default_lm, default_lm.denormalize(digit_x), "saliency", token_noise=delta)
    torch.testing.assert_close(clean.attributions, same.attributions, atol=1e-5, rtol=1e-4)
    with pytest.raises(InvalidParameterError, match="target"):
        attribute(default_lm, default_lm.denormalize(digit_x), "saliency", target=10)
    with pytest.raises(InvalidParameterError, match="method"):
        attribute(default_lm, default_lm.denormalize(digit_x), "lime")


def test_odd_geometry_vit():
    """A 40×24 image with 8×8 patches and two prefix tokens (class + register): no hard-coded grid."""
    from nullviz.models import create_random_vit

    lm = create_random_vit("vit_tiny_patch16_224", seed=0, img_size=(40, 24), patch_size=8, embed_dim=32,
                           depth=2, num_heads=2, reg_tokens=1, num_classes=3)
    x = lm.preprocess(sample_image("chelsea"))
    assert x.shape == (1, 3, 40, 24)
    ns = N.nullspace(lm)
    v = N.sample_noise(ns, lm.img_size, N.NoiseSpec(magnitude=2.0))
    cmp = compare(lm, x, v)
    assert cmp.clean.cls_maps().shape == (2, 1, 2, 5, 3) and cmp.clean.num_prefix_tokens == 2
    assert float(cmp.layer_repr_change.max()) < 1e-5


# ----------------------------------------------------------------------------------- research views
from nullviz.inspection.attention import (attention_entropy, head_statistics, mean_attention_distance,  # noqa: E402
                               noise_contrast, patch_distances, query_index, query_maps, set_statistics)


def test_query_maps_are_rows_of_the_full_matrix(default_lm, digit_x):
    t = trace(default_lm.model, digit_x)
    assert torch.equal(query_maps(t.attention, 0, 1, t.grid_size), t.cls_maps())  # token 0 is CLS
    q = query_index(1, t.grid_size, (2, 3))
    assert q == 1 + 2 * 4 + 3
    maps = query_maps(t.attention, q, 1, t.grid_size)
    assert torch.equal(maps.flatten(-2), t.attention[..., q, 1:])
    with pytest.raises(InvalidParameterError):
        query_index(1, t.grid_size, (4, 0))
    with pytest.raises(InvalidParameterError):
        query_maps(t.attention, 17, 1, t.grid_size)


def test_mean_attention_distance_and_entropy_by_hand():
    # 1 prefix token + a 1×2 grid of 8-pixel patches: patches are 8 pixels apart
    assert torch.equal(patch_distances((1, 2), 8), torch.tensor([[0.0, 8.0], [8.0, 0.0]], dtype=torch.float64))
    a = torch.tensor([[0.5, 0.25, 0.25],   # CLS row: not a patch query, ignored by the distance
                      [0.5, 0.5, 0.0],     # patch 0 looks only at itself among patches: distance 0
                      [0.2, 0.2, 0.6]])    # patch 1: 0.2/0.8 of its patch attention is 8 px away → 2 px
    att = a.view(1, 1, 1, 3, 3)
    d = mean_attention_distance(att, 1, (1, 2), 8)
    assert d.shape == (1, 1, 1) and d.item() == pytest.approx((0.0 + 2.0) / 2)
    h = attention_entropy(att).item()
    ent = lambda row: -sum(p * np.log(p) for p in row if p > 0)  # noqa: E731
    assert h == pytest.approx((ent([0.5, 0.25, 0.25]) + ent([0.5, 0.5]) + ent([0.2, 0.2, 0.6])) / 3)
    uniform = torch.full((1, 1, 1, 5, 5), 0.2)
    assert attention_entropy(uniform).item() == pytest.approx(np.log(5))
    assert attention_entropy(torch.eye(5).view(1, 1, 1, 5, 5)).item() == pytest.approx(0.0)


def test_set_statistics_batched_equal_the_per_image_loop(tiny_lm):
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    v = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1)) * 0.3
    seen = []
    batched = set_statistics(tiny_lm, x, v, batch_size=2, progress=lambda done, n: seen.append((done, n)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    singles = [set_statistics(tiny_lm, x[i:i + 1], v, batch_size=1) for i in range(5)]
    np.testing.assert_allclose(batched.attention_tv, np.concatenate([s.attention_tv for s in singles]), rtol=1e-4,
                               atol=1e-7)
    np.testing.assert_allclose(batched.repr_change, np.concatenate([s.repr_change for s in singles]), rtol=1e-4)
    np.testing.assert_allclose(batched.mean_map_clean, np.mean([s.mean_map_clean for s in singles], 0), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(batched.heads.distance_noised, np.mean([s.heads.distance_noised for s in singles], 0),
                               rtol=1e-5)
    np.testing.assert_allclose(batched.heads.entropy_clean, np.mean([s.heads.entropy_clean for s in singles], 0),
                               rtol=1e-5)
    # each image's numbers equal compare() on that image alone
    one = compare(tiny_lm, x[3:4], v)
    np.testing.assert_allclose(batched.attention_tv[3], one.layer_attention_distance.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(batched.repr_change[3], one.layer_repr_change.numpy(), rtol=1e-4)
    assert batched.images == 5 and 0 <= batched.top1_agreement <= 1


def test_head_statistics_of_identical_traces_match(default_lm, digit_x):
    t = trace(default_lm.model, digit_x)
    s = head_statistics(t, t, default_lm.patch_size)
    assert s.distance_clean.shape == (4, 4) and np.array_equal(s.distance_clean, s.distance_noised)
    assert (s.entropy_clean >= 0).all() and (s.entropy_clean <= s.max_entropy + 1e-6).all()
    # 4×4 grid of 8-pixel patches: no patch is farther than 3·√2·8 ≈ 34 px from another
    assert (s.distance_clean >= 0).all() and (s.distance_clean <= 3 * np.sqrt(2) * 8).all()


def test_noise_contrast_exact_vs_random(default_lm, digit_x):
    from nullviz.noise.kinds import random_like

    ns = N.nullspace(default_lm)
    v = N.sample_noise(ns, default_lm.img_size, N.NoiseSpec(magnitude=2.0, seed=0))
    r = random_like(v, "gaussian", torch.Generator().manual_seed(0))
    c = noise_contrast(default_lm, digit_x, {"exact": (v, "input"), "random": (r, "input")})
    assert c.repr_change.shape == (2, 5) and c.attention_tv.shape == (2, 4)
    assert c.norms[0] == pytest.approx(c.norms[1], rel=1e-5)
    assert c.repr_change[0].max() < 1e-5 and c.repr_change[1].min() > 1e-2
    with pytest.raises(InvalidParameterError):
        noise_contrast(default_lm, digit_x, {})
    clean = compare(default_lm, digit_x, v).clean  # a clean trace the caller has: not traced again
    reused = noise_contrast(default_lm, digit_x, {"exact": (v, "input"), "random": (r, "input")}, clean=clean)
    np.testing.assert_array_equal(reused.repr_change, c.repr_change)
    np.testing.assert_array_equal(reused.attention_tv, c.attention_tv)
    with pytest.raises(InvalidParameterError, match="clean"):
        noise_contrast(default_lm, digit_x.repeat(2, 1, 1, 1), {"exact": (v, "input")}, clean=clean)


def test_contrast_noises_page_and_cli_draw_the_same(default_lm, digit_x):
    from nullviz.inspection.attention import contrast_noises

    ns = N.nullspace(default_lm)
    exact = N.sample_noise(ns, default_lm.img_size, N.NoiseSpec(magnitude=1.0, seed=0))
    alone = contrast_noises(exact)
    assert list(alone) == ["exact", "gaussian@exact"]
    assert [lvl for _, lvl in alone.values()] == ["input", "input"]
    torch.testing.assert_close(alone["gaussian@exact"][0].norm(), exact.norm())

    pixel_delta = 3.0 * torch.randn(exact.shape, generator=torch.Generator().manual_seed(1))
    pixel = contrast_noises(exact, (pixel_delta, "input"), seed=4)
    assert list(pixel) == ["exact", "approximate", "gaussian@approximate"]
    for noise, _ in pixel.values():  # one norm: the lines differ in structure, not size
        torch.testing.assert_close(noise.norm(), pixel_delta.norm())
    moved = default_lm.predict(digit_x + pixel["exact"][0].to(digit_x))
    assert (moved - default_lm.predict(digit_x)).abs().max() < 1e-4  # rescaled, still in the nullspace

    token_delta = torch.randn(16, 96, generator=torch.Generator().manual_seed(2))
    token = contrast_noises(exact, (token_delta, "encoder"), seed=4)
    assert list(token) == ["exact", "gaussian@exact", "approximate",
                           "gaussian@approximate"]
    assert token["exact"][0] is exact
    assert [lvl for _, lvl in token.values()] == ["input", "input", "encoder", "encoder"]
    torch.testing.assert_close(token["gaussian@approximate"][0].norm(), token_delta.norm())
    again = contrast_noises(exact, (token_delta, "encoder"), seed=4)
    assert all(torch.equal(token[k][0], again[k][0]) for k in token)  # seeded


def test_cli_contrast_uses_the_library_noises(capsys, default_lm, digit_x, tmp_path):
    """`nullviz attention --contrast` with a saved δ: the same noises and numbers as the library call."""
    import json

    from nullviz.inspection.attention import contrast_noises
    from nullviz.cli import main
    from nullviz.data import sample_image

    delta = 0.05 * torch.randn(16, 96, generator=torch.Generator().manual_seed(3))
    path = tmp_path / "delta.pt"
    torch.save({"delta": delta, "meta": {"level": "encoder"}, "format": "nullviz-noise-1"}, path)
    assert main(["attention", "--model", "digits", "--image", "digit-3", "--noise", str(path), "--contrast",
                 "--seed", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["contrast"]
    ns = N.nullspace(default_lm)
    exact = N.sample_noise(ns, default_lm.img_size, N.NoiseSpec(magnitude=1.0, seed=5))
    x = default_lm.preprocess(sample_image("digit-3"))
    expected = noise_contrast(default_lm, x, contrast_noises(exact, (delta, "encoder"), seed=5))
    assert out["names"] == expected.names
    assert out["labels"] == ["exact nullspace noise", "Gaussian, same norm as the exact noise", "approximate δ",
                             "Gaussian, same norm as δ"]
    np.testing.assert_allclose(out["repr_change"], expected.repr_change, rtol=1e-5, atol=1e-7)


def test_contrast_caption_says_what_was_measured():
    """The caption comes from the numbers: a δ that moves the tokens as much as random noise of its norm is
    said to, one that barely moves them is said to move them far less (the page used a fixed 'a little')."""
    from nullviz.inspection.attention import NoiseContrast

    names = ["exact", "gaussian@exact", "approximate", "gaussian@approximate"]

    def contrast(delta_change):
        repr_change = np.array([[1e-7] * 3, [0.1] * 3, [delta_change] * 3, [0.2] * 3])
        return NoiseContrast(names, [1.0] * 4, ["input"] * 4, repr_change, np.zeros((4, 2)))

    loud, quiet = contrast(0.19), contrast(0.004)
    assert loud.ratio_to_control("approximate", "gaussian@approximate") == pytest.approx(0.95)
    assert "0.95× as much as random noise of its norm: about as much as random noise" in loud.describe()
    assert "0.02× as much" in quiet.describe() and "far less than random noise" in quiet.describe()
    assert "at most 1.0e-07" in quiet.describe() and "float32 rounding" in quiet.describe()
    only_exact = NoiseContrast(names[:2], [1.0] * 2, ["input"] * 2, np.array([[0.0] * 3, [0.1] * 3]), np.zeros((2, 2)))
    assert "approximate" not in only_exact.describe() and "1.0e-01" in only_exact.describe()


def test_attribution_methods_are_one_registry_with_one_call(default_lm, digit_x):
    from nullviz.inspection.attribution import (ATTRIBUTION_METHODS, AttributionSettings, SaliencyMethod,
                                                register_attribution)
    from nullviz.models import PixelModel

    assert tuple(ATTRIBUTION_METHODS) == METHODS and all(m.label for m in ATTRIBUTION_METHODS.values())
    fn = PixelModel.of(default_lm)
    pixels = default_lm.denormalize(digit_x).clone().requires_grad_(True)
    target = fn(pixels).argmax(-1)
    settings = AttributionSettings(steps=4, internal_batch_size=8, smoothgrad_samples=2, patch_size=8)
    for name, method in ATTRIBUTION_METHODS.items():
        attr, delta = method(fn, pixels, target, settings)
        assert attr.shape == pixels.shape and (delta is not None) == (name == "integrated_gradients")
    with pytest.raises(ValueError, match="registered already"):
        register_attribution(SaliencyMethod)


def test_two_models_side_by_side(default_lm, digit_x):
    """The same model twice is zero apart; a copy with one block changed differs from that block on; models of
    another shape are refused before anything is traced."""
    from nullviz.core.errors import InvalidParameterError
    from nullviz.inspection.attention import compare, compare_models
    from nullviz.models import LoadedModel, load_model

    ns = N.nullspace(default_lm)
    v = N.sample_noise(ns, default_lm.img_size, N.NoiseSpec(seed=0))
    same = compare_models(default_lm, default_lm, digit_x, v)
    assert float(same.between_attention.abs().max()) == 0.0 and float(same.rollout_maps()[2].abs().max()) == 0.0
    changed = default_lm.trainable_copy().eval()
    with torch.no_grad():
        changed.blocks[2].attn.qkv.weight.mul_(1.5)
    other = LoadedModel(model=changed, name=default_lm.name, device=default_lm.device,
                        data_config=default_lm.data_config, class_names=default_lm.class_names, checkpoint="changed")
    both = compare_models(default_lm, other, digit_x, v)
    assert float(both.between_attention[:2].abs().max()) == 0.0  # blocks 1–2 untouched
    assert float(both.between_attention[2]) > 1e-3 and float(both.between_repr[-1]) > 1e-3
    torch.testing.assert_close(both.a.layer_attention_distance, compare(default_lm, digit_x, v).layer_attention_distance)
    assert both.to_dict()["models"] == [default_lm.name, f"{default_lm.name} (changed)"]
    with pytest.raises(InvalidParameterError, match="shape"):
        compare_models(default_lm, load_model("cluttered", device=default_lm.device), digit_x, v)


def test_one_head_across_images_pca_and_tsne(default_lm):
    """Exact nullspace noise leaves every query and key where it was; random noise of its norm moves them; the
    coordinates are reproducible (t-SNE with its seed); a block or head that does not exist is refused."""
    from nullviz.core.errors import InvalidParameterError
    from nullviz.data import load_dataset
    from nullviz.inspection.attention import contrast_noises, head_embedding
    from nullviz.robustness.evaluation import images_tensor

    x, _ = images_tensor(default_lm, load_dataset("digits"), 4)
    v = N.sample_noise(N.nullspace(default_lm), default_lm.img_size, N.NoiseSpec(seed=0))
    noises = {"clean": None, **contrast_noises(v)}
    emb = head_embedding(default_lm, x, noises, block=2, head=1)
    n = 4 * int(default_lm.model.patch_embed.num_patches)
    assert emb.coords["clean"].shape == (2, n, 2) and emb.image.tolist()[:17][-1] == 1
    assert 0 < emb.explained <= 1
    shift = emb.shift()
    assert shift["clean"] == 0 and shift["exact"] < 1e-5 < 1e-2 < shift["gaussian@exact"]
    again = head_embedding(default_lm, x, noises, block=2, head=1)
    assert all(np.array_equal(emb.coords[c], again.coords[c]) for c in emb.conditions)
    tsne = head_embedding(default_lm, x[:2], {"clean": None}, block=1, head=2, method="tsne", seed=3)
    tsne2 = head_embedding(default_lm, x[:2], {"clean": None}, block=1, head=2, method="tsne", seed=3)
    assert tsne.explained is None and np.allclose(tsne.coords["clean"], tsne2.coords["clean"])
    for bad in (dict(block=0, head=1), dict(block=1, head=99)):
        with pytest.raises(InvalidParameterError):
            head_embedding(default_lm, x, noises, **bad)


def test_head_embedding_in_batches_with_progress_stop_and_a_job_file(default_lm, tmp_path):
    """Batches change nothing; progress counts images; a stop keeps the images done (before any: StoppedError);
    the result and its noises survive a file (what the background job reads and writes); the cost grows with
    images and is far higher for t-SNE."""
    from nullviz.core.errors import InvalidParameterError, StoppedError
    from nullviz.data import load_dataset
    from nullviz.inspection.attention import (HeadEmbedding, contrast_noises, head_embedding, head_embedding_size,
                                              load_conditions, save_conditions)
    from nullviz.robustness.evaluation import images_tensor

    x, _ = images_tensor(default_lm, load_dataset("digits"), 5)
    v = N.sample_noise(N.nullspace(default_lm), default_lm.img_size, N.NoiseSpec(seed=0))
    noises = {"clean": None, **contrast_noises(v)}
    whole = head_embedding(default_lm, x, noises, block=3, head=2)
    seen = []
    batched = head_embedding(default_lm, x, noises, block=3, head=2, batch_size=2,
                             progress=lambda d, n: seen.append((d, n)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    assert all(np.allclose(whole.coords[c], batched.coords[c], atol=1e-5) for c in whole.conditions)
    calls = iter([False, True])
    part = head_embedding(default_lm, x, noises, block=3, head=2, batch_size=2, should_stop=lambda: next(calls))
    assert part.stopped and part.images == 2 and part.coords["clean"].shape[1] == 2 * default_lm.model.patch_embed.num_patches
    with pytest.raises(StoppedError):
        head_embedding(default_lm, x, noises, block=3, head=2, should_stop=lambda: True)
    back = HeadEmbedding.from_dict(json.loads(json.dumps(whole.to_dict())))
    assert back.conditions == whole.conditions and back.images == 5 and back.explained == pytest.approx(whole.explained)
    assert all(np.allclose(back.coords[c], whole.coords[c]) for c in whole.conditions)
    assert np.array_equal(back.patch, whole.patch)
    with pytest.raises(InvalidParameterError):
        HeadEmbedding.from_dict({"block": 1})
    path = save_conditions(noises, tmp_path / "conditions.pt")
    loaded = load_conditions(path)
    assert list(loaded) == list(noises) and loaded["clean"] is None
    assert torch.equal(loaded["exact"][0], noises["exact"][0].float()) and loaded["exact"][1] == "input"
    (tmp_path / "bad.pt").write_bytes(b"not a file of noises")
    with pytest.raises(InvalidParameterError):
        load_conditions(tmp_path / "bad.pt")
    pca16, pca32 = (head_embedding_size(default_lm, n, 3, "pca") for n in (16, 32))
    assert pca32 == 2 * pca16 and head_embedding_size(default_lm, 16, 3, "tsne") > 100 * pca16
