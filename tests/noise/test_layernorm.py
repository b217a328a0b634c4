"""The LayerNorm nullspace: c_i·1 added to patch token i (encoder level) or W⁺1 per patch (input level) leaves
a pre-norm ViT's logits unchanged; post-norm blocks and un-normed average pooling are not invariant."""

import pytest
import torch
from timm.models.vision_transformer import ResPostBlock

from nullviz.models import create_random_vit, logits_from_patch_tokens, patch_tokens
from nullviz.noise import exact as N
from nullviz.noise.approximate import SynthesisConfig, synthesize
from nullviz.noise.layernorm import (is_layernorm_invariant, patch_mean_direction, remove_token_means,
                                     token_mean_fraction)


def _tokens_and_change(model, x, delta):
    with torch.no_grad():
        u = patch_tokens(model, x)
        clean = logits_from_patch_tokens(model, u)
        noised = logits_from_patch_tokens(model, u + delta)
    return u, float((noised - clean).norm() / clean.norm())


def test_token_means_are_invisible_to_a_pre_norm_vit(tiny_lm):
    model = tiny_lm.model
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    n, d = patch_tokens(model, x).shape[1:]
    c = torch.randn(n, 1, generator=torch.Generator().manual_seed(1))
    means_only = c.expand(n, d) * 3.0  # the same number on every channel of a token
    u, change = _tokens_and_change(model, x, means_only)
    assert means_only.norm() > 3 * u[0].norm()  # far larger than an image's tokens…
    assert change < 1e-5  # …and the logits agree to float32 rounding
    assert token_mean_fraction(means_only) == pytest.approx(1.0)
    # the same size without token means is seen
    other = remove_token_means(torch.randn(n, d, generator=torch.Generator().manual_seed(2)))
    other = other * (means_only.norm() / other.norm())
    assert token_mean_fraction(other) < 1e-10
    assert _tokens_and_change(model, x, other)[1] > 0.05


def test_a_full_rank_patch_embedding_still_has_one_exact_direction_per_patch():
    # 4×4×3 = 48 numbers per patch → D = 48: W is square, and (random) full rank: "no nullspace"
    lm = create_random_vit("vit_tiny_patch16_224", seed=0, img_size=16, patch_size=4, embed_dim=48, depth=2,
                           num_heads=2, num_classes=5)
    assert N.nullspace(lm).nullity == 0
    assert is_layernorm_invariant(lm.model, level="input")
    direction = patch_mean_direction(lm.model)
    assert direction.residual < 1e-8
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scales = torch.randn(1, 16, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 5
    v = N.unpatchify((scales * direction.vector).float(), 4, (16, 16))  # a different c_i on every patch
    random = torch.randn(v.shape, generator=torch.Generator().manual_seed(2)) * (v.norm() / v[0].numel() ** 0.5)
    with torch.no_grad():
        clean, noised, control = lm.model(x), lm.model(x + v), lm.model(x + random)
    assert v.norm() > x[0].norm()
    assert float((noised - clean).norm() / clean.norm()) < 1e-4
    assert float((control - clean).norm() / clean.norm()) > 0.05


def test_post_norm_blocks_and_unnormed_pooling_are_not_invariant(tiny_lm):
    kwargs = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=5)
    post = create_random_vit("vit_tiny_patch16_224", seed=0, block_fn=ResPostBlock, **kwargs).model
    pooled = create_random_vit("vit_tiny_patch16_224", seed=0, global_pool="avg", final_norm=False, fc_norm=False,
                               **kwargs).model
    assert is_layernorm_invariant(tiny_lm.model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for model in (post, pooled):
        assert not is_layernorm_invariant(model)
        n, d = patch_tokens(model, x).shape[1:]
        means_only = torch.randn(n, 1, generator=torch.Generator().manual_seed(1)).expand(n, d) * 3.0
        assert _tokens_and_change(model, x, means_only)[1] > 1e-3  # and indeed they see it


def test_synthesized_delta_has_no_token_means_on_an_invariant_model(tiny_lm):
    x = torch.randn(48, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    r = synthesize(tiny_lm, x, SynthesisConfig(steps=20, lam=1.0, batch_size=16, seed=0))
    assert r.token_means_removed
    assert token_mean_fraction(r.delta) < 1e-10
    assert r.to_dict()["token_means_removed"] is True


def test_layernorm_noise_leaves_the_logits_and_moves_the_tokens(default_lm, digit_x):
    from nullviz.core.errors import InvalidParameterError
    from nullviz.noise.layernorm import layernorm_residual, sample_layernorm_noise

    v = sample_layernorm_noise(default_lm, default_lm.img_size, magnitude=3.0, seed=1)
    p = default_lm.patch_size
    assert v.shape == digit_x.shape[-3:]
    rms = N.patchify(v.unsqueeze(0), p)[0].norm(dim=1).pow(2).mean().sqrt()
    assert float(rms) == pytest.approx(3.0, rel=1e-5)
    report = N.verify_invariance(default_lm, digit_x, v)
    assert report.rel_logit_change < 1e-5 and report.top1_unchanged
    assert report.token_rel_change > 0.1  # the tokens do move: by a multiple of 1 each, which every norm removes
    assert layernorm_residual(default_lm, v) < 1e-6  # float32 rounding of the noise itself
    random = torch.randn(v.shape, generator=torch.Generator().manual_seed(0))
    assert layernorm_residual(default_lm, random) > 0.5
    post = create_random_vit("vit_tiny_patch16_224", seed=0, block_fn=ResPostBlock, img_size=32, patch_size=8,
                             embed_dim=64, depth=2, num_heads=2, num_classes=5)
    with pytest.raises(InvalidParameterError, match="mean-subtracting LayerNorm"):
        sample_layernorm_noise(post, post.img_size)


def test_the_attention_contrast_names_layernorm_noise(default_lm, digit_x):
    from nullviz.inspection.attention import contrast_noises, noise_contrast
    from nullviz.noise.layernorm import sample_layernorm_noise

    exact = N.sample_noise(N.nullspace(default_lm), default_lm.img_size, N.NoiseSpec(magnitude=1.0, seed=0))
    ln = sample_layernorm_noise(default_lm, default_lm.img_size, magnitude=3.0)
    contrast = noise_contrast(default_lm, digit_x, contrast_noises(exact, (ln, "input"), kind="layernorm"))
    assert contrast.names == ["exact", "layernorm", "gaussian@layernorm"]
    i = contrast.names.index("layernorm")
    assert contrast.repr_change[i, -1] > 0.01 and contrast.attention_tv[i].max() < 1e-4
    assert contrast.labels[2] == "Gaussian, same norm as the LayerNorm noise"
    assert "LayerNorm noise moves the residual stream" in contrast.describe()
