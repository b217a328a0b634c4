import numpy as np
import pytest
import torch

from conftest import assert_state_equal, state_snapshot
from nullviz.core.errors import InvalidParameterError
from nullviz.data import sample_image
from nullviz.models import create_random_vit
from nullviz.noise import exact as N


def _assert_invariant(lm, x, v):
    report = N.verify_invariance(lm, x, v)
    assert report.noise_l2 > 1.0  # the noise is not tiny…
    assert report.rel_logit_change < 1e-5  # …and the logits agree to float32 rounding
    assert report.token_rel_change < 1e-5
    assert report.top1_unchanged
    assert report.residual_ratio < 1e-6
    return report


def test_default_model_exact_invariance(default_lm, digit_x):
    ns = N.nullspace(default_lm)
    assert (ns.input_dim, ns.embed_dim, ns.rank, ns.nullity) == (192, 96, 96, 96)
    v = N.sample_noise(ns, default_lm.img_size, N.NoiseSpec(magnitude=3.0, seed=1))
    report = _assert_invariant(default_lm, digit_x, v)
    # and the same logits under torch.testing's float32 defaults
    torch.testing.assert_close(default_lm.predict(digit_x + v.to(digit_x)), default_lm.predict(digit_x), rtol=1e-5,
                               atol=1e-5)
    assert report.noise_linf_pixels == pytest.approx(report.noise_linf * 0.5)  # std 0.5


@pytest.mark.parametrize("name,nullity", [("vit_tiny_patch16_224", 576),
                                          pytest.param("vit_base_patch32_224", 2304, marks=pytest.mark.slow)])
def test_random_timm_vits_exact_invariance(name, nullity):
    lm = create_random_vit(name, seed=0)
    ns = N.nullspace(lm)
    assert ns.nullity == nullity
    x = lm.preprocess(sample_image("chelsea"))
    v = N.sample_noise(ns, lm.img_size, N.NoiseSpec(magnitude=2.0, seed=0))
    _assert_invariant(lm, x, v)


def test_full_rank_vit_b16_has_nullity_zero():
    lm = create_random_vit("vit_base_patch16_224", seed=0)
    ns = N.nullspace(lm)
    assert (ns.input_dim, ns.rank, ns.nullity) == (768, 768, 0)
    assert ns.basis.shape == (768, 0)
    v = N.sample_noise(ns, lm.img_size, N.NoiseSpec(magnitude=1.0, weakest=0))
    assert torch.count_nonzero(v) == 0 and not torch.isnan(v).any()
    weak = N.sample_noise(ns, lm.img_size, N.NoiseSpec(magnitude=1.0, weakest=8))
    assert weak.abs().max() > 0
    # the one policy every caller gets by default: the FULL_RANK_WEAKEST weakest directions
    assert torch.equal(N.sample_noise(ns, lm.img_size, N.NoiseSpec(magnitude=1.0)), weak)
    # a looser tolerance counts the weakest directions as null
    s = ns.spectrum.singular_values
    loose = N.nullspace(lm, rtol=float(s[-4] / s[0]) * 1.0001)
    assert loose.nullity == 4
    summary = ns.summary()
    assert np.isfinite(summary["sigma_min"]) and len(summary["singular_values"]) == 768


def test_basis_is_orthonormal_and_null(tiny_lm):
    ns = N.nullspace(tiny_lm)
    B = ns.basis
    assert B.shape == (192, 128)
    torch.testing.assert_close(B.T @ B, torch.eye(128, dtype=torch.float64), atol=1e-10, rtol=0)
    W = N.patch_embed_matrix(tiny_lm.model)
    assert float((W @ B).abs().max()) < 1e-10 * float(W.abs().max()) * 192


def test_projector_properties(tiny_lm):
    ns = N.nullspace(tiny_lm)
    g = torch.randn(2, 7, 192, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    on, off = ns.project(g), ns.project_off(g)
    torch.testing.assert_close(on + off, g)
    torch.testing.assert_close(ns.project(on), on)  # idempotent
    assert abs(float((on * off).sum())) < 1e-8  # orthogonal
    W = N.patch_embed_matrix(tiny_lm.model)
    assert float((on @ W.T).abs().max()) < 1e-10


def test_patchify_matches_conv(tiny_lm):
    W = tiny_lm.model.patch_embed.proj.weight.reshape(64, -1)
    x = torch.randn(2, 3, 32, 32).to(W)
    ours = N.patchify(x, 8) @ W.T + tiny_lm.model.patch_embed.proj.bias
    timm_tokens = tiny_lm.model.patch_embed(x)
    torch.testing.assert_close(ours, timm_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(N.unpatchify(N.patchify(x, 8), 8, (32, 32)), x)


def test_noise_norms_and_seeds(tiny_lm):
    ns = N.nullspace(tiny_lm)
    v = N.sample_noise(ns, (32, 32), N.NoiseSpec(magnitude=2.5, seed=3))
    norms = N.per_patch_norms(v, 8)
    np.testing.assert_allclose(norms, 2.5, rtol=1e-5)
    assert torch.equal(v, N.sample_noise(ns, (32, 32), N.NoiseSpec(magnitude=2.5, seed=3)))
    assert not torch.equal(v, N.sample_noise(ns, (32, 32), N.NoiseSpec(magnitude=2.5, seed=4)))
    linf = N.sample_noise(ns, (32, 32), N.NoiseSpec(magnitude=0.7, norm="linf"))
    assert float(linf.abs().max()) == pytest.approx(0.7, rel=1e-6)
    shared = N.patchify(N.sample_noise(ns, (32, 32), N.NoiseSpec(shared=True)).unsqueeze(0), 8)[0]
    torch.testing.assert_close(shared, shared[:1].expand_as(shared))


@pytest.mark.parametrize("kwargs", [dict(magnitude=-1.0), dict(norm="l3"), dict(seed=-2), dict(weakest=-1)])
def test_noise_spec_validation(kwargs):
    with pytest.raises(InvalidParameterError):
        N.NoiseSpec(**kwargs)


def test_bad_rtol_and_size(tiny_lm):
    with pytest.raises(InvalidParameterError, match="rtol"):
        N.nullspace(tiny_lm, rtol=1.5)
    with pytest.raises(InvalidParameterError, match="multiple of the patch size"):
        N.sample_noise(N.nullspace(tiny_lm), (30, 32))


@pytest.mark.parametrize("image", ["digit-3", "chelsea"])
def test_feasible_noise_stays_in_box_and_null(default_lm, image):
    x = default_lm.preprocess(sample_image(image))
    ns = N.nullspace(default_lm)
    v = N.sample_noise(ns, default_lm.img_size, N.NoiseSpec(magnitude=2.0))
    assert N.verify_invariance(default_lm, x, v).clipped_fraction > 0  # plain noise leaves the box
    f = N.feasible_noise(default_lm, ns, x, v)
    pixels = default_lm.denormalize(x[0] + f.noise.to(x))
    assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1 + 1e-6
    assert f.max_box_violation <= 1e-6
    assert 0.2 < f.kept_norm_fraction <= 1.0
    report = _assert_invariant(default_lm, x, f.noise)
    assert report.clipped_fraction == 0.0


def test_quantized_report(default_lm, digit_x):
    ns = N.nullspace(default_lm)
    report = N.verify_invariance(default_lm, digit_x, N.sample_noise(ns, (32, 32), N.NoiseSpec(magnitude=1.0)))
    assert report.quantized_rel_logit_change > report.rel_logit_change
    zero = N.verify_invariance(default_lm, digit_x, torch.zeros(3, 32, 32))
    assert zero.rel_logit_change == 0.0 and zero.clipped_fraction == 0.0


def test_decomposition_visible_part_moves_logits(default_lm, digit_x):
    parts = N.decompose_random_noise(default_lm, N.nullspace(default_lm), digit_x, magnitude=1.0)
    assert parts["null part"]["rel_logit_change"] < 1e-5
    assert parts["visible part"]["rel_logit_change"] > 1e-2
    assert parts["random"]["noise_l2"] ** 2 == pytest.approx(
        parts["null part"]["noise_l2"] ** 2 + parts["visible part"]["noise_l2"] ** 2, rel=1e-4)


def test_nullspace_calls_do_not_touch_model(default_lm, digit_x):
    snap = state_snapshot(default_lm.model)
    ns = N.nullspace(default_lm)
    v = N.sample_noise(ns, (32, 32))
    N.verify_invariance(default_lm, digit_x, v)
    N.feasible_noise(default_lm, ns, digit_x, v, iterations=5)
    assert_state_equal(default_lm.model, snap)


@pytest.mark.parametrize("A,rank", [([[1, 0, 1], [0, 1, 1]], 2), ([[1, 2, -1], [2, 4, -2]], 1), ([[0, 0, 0], [0, 0, 0]], 0)])
def test_matrix_nullspace(A, rank):
    mn = N.matrix_nullspace(np.array(A, dtype=float))
    assert mn.rank == rank and mn.nullity == 3 - rank
    np.testing.assert_allclose(np.array(A) @ mn.basis, 0, atol=1e-12)
    with pytest.raises(InvalidParameterError):
        N.matrix_nullspace(np.array([1.0, np.nan]))


def test_basis_patches_and_basis_noise(default_lm, digit_x):
    ns = N.nullspace(default_lm)
    patches = N.basis_patch_images(ns, 5)
    assert patches.shape == (5, 8, 8, 3) and patches.min() >= 0 and patches.max() <= 1
    one = N.basis_vector_noise(ns, (32, 32), 2, patch=5, magnitude=3.0)
    assert float(N.per_patch_norms(one, 8).max()) == pytest.approx(3.0, rel=1e-5)
    assert np.count_nonzero(N.per_patch_norms(one, 8)) == 1
    every = N.basis_vector_noise(ns, (32, 32), 2, magnitude=3.0)
    assert np.count_nonzero(N.per_patch_norms(every, 8)) == 16
    _assert_invariant(default_lm, digit_x, every)
    with pytest.raises(InvalidParameterError):
        N.basis_vector_noise(ns, (32, 32), 500)


def test_smooth_null_directions_are_null_orthonormal_and_smoother(default_lm):
    ns = N.nullspace(default_lm)
    S = N.smooth_null_directions(ns, 8)
    torch.testing.assert_close(S.T @ S, torch.eye(8, dtype=torch.float64), atol=1e-10, rtol=0)
    W = N.patch_embed_matrix(default_lm.model)
    assert float((W @ S).abs().max()) < 1e-10
    energy = N.dirichlet_energy(S, 3, 8)
    assert torch.all(energy[:-1] <= energy[1:] + 1e-9)  # ordered from the smoothest
    assert float(energy.mean()) < float(N.dirichlet_energy(ns.basis[:, :8], 3, 8).mean())


def test_the_invariance_sentence_is_computed_from_its_numbers(default_lm, digit_x):
    """'agree to float32 rounding' only where every relative change is rounding; on a full-rank embedding the
    sentence gives the changes the table shows (it used to say 'about 1e-7' beside 7e-05 and 4e-03)."""
    ns = N.nullspace(default_lm)
    rows = {label: N.verify_invariance(default_lm, digit_x, N.basis_vector_noise(ns, default_lm.img_size, 0,
                                                                                 patch=patch, magnitude=3.0), ns)
            for label, patch in (("one patch", 5), ("every patch", None))}
    assert all(r.within_rounding for r in rows.values())
    assert "agree to float32 rounding" in N.describe_invariance(rows)

    full = create_random_vit("vit_tiny_patch16_224", seed=0, img_size=32, patch_size=4, embed_dim=64, depth=1,
                             num_heads=2, num_classes=5)  # 48 pixels per patch → 64: full rank
    fns = N.nullspace(full)
    assert fns.nullity == 0
    x = full.preprocess(sample_image("digit-3"))
    weak = {label: N.verify_invariance(full, x, N.basis_vector_noise(fns, full.img_size, 0, patch=patch,
                                                                    magnitude=3.0), fns)
            for label, patch in (("one patch", 5), ("every patch", None))}
    sentence = N.describe_invariance(weak)
    assert not any(r.within_rounding for r in weak.values())
    assert "float32 rounding (" not in sentence.split("—")[0] and sentence.startswith("Not invisible")
    for r in weak.values():
        assert f"{r.rel_logit_change:.1e}" in sentence and f"{r.token_rel_change:.1e}" in sentence
