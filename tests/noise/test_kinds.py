"""The noise-kind registry: one name per kind everywhere, controls drawn to a given noise's size."""

import pytest
import torch

from nullviz.core.errors import InvalidParameterError
from nullviz.noise.approximate import noise_controls
from nullviz.noise.kinds import CONTROLS, NOISE_KINDS, label, random_like
from nullviz.robustness.evaluation import TOLERANCE_KINDS, EvalConfig, config_from_dict


def test_registry_names_labels_and_controls():
    assert set(NOISE_KINDS) == {"exact", "weakest", "layernorm", "approximate", "gaussian", "random_start", "permuted"}
    assert CONTROLS == ("gaussian", "random_start", "permuted")
    assert len({k.label for k in NOISE_KINDS.values()}) == len(NOISE_KINDS)
    assert label("approximate") == "approximate δ" and label("something old") == "something old"
    assert set(TOLERANCE_KINDS) <= set(NOISE_KINDS)
    with pytest.raises(NotImplementedError):
        NOISE_KINDS["exact"].draw(torch.zeros(3), torch.Generator())


def test_controls_have_the_noise_norm_shape_and_their_distribution():
    delta = torch.randn(16, 96, generator=torch.Generator().manual_seed(0)) * 3
    for kind in CONTROLS:
        r = random_like(delta, kind, torch.Generator().manual_seed(1))
        assert r.shape == delta.shape and r.dtype == delta.dtype
        torch.testing.assert_close(r.norm(), delta.norm())
    start = random_like(delta, "random_start", torch.Generator().manual_seed(1))
    assert float(start.abs().max() / start.abs().mean()) == pytest.approx(2.0, rel=0.05)  # uniform: max = 2 × mean
    permuted = random_like(delta, "permuted", torch.Generator().manual_seed(1))
    assert torch.equal(permuted.flatten().sort().values, delta.flatten().sort().values)  # the same entries, moved
    with pytest.raises(InvalidParameterError):
        random_like(delta, "exact", torch.Generator())
    # synthesis' three controls are the registry's, drawn in one stream
    controls = noise_controls(delta, seed=4)
    gen = torch.Generator().manual_seed(5)
    assert all(torch.equal(controls[k], random_like(delta, k, gen)) for k in ("permuted", "gaussian", "random_start"))


def test_stored_configs_with_the_old_uniform_name_still_read():
    cfg = config_from_dict({"tolerance_kinds": ["exact", "uniform"], "attacks": ["fgsm"]})
    assert cfg.tolerance_kinds == ("exact", "random_start")
    with pytest.raises(InvalidParameterError):
        EvalConfig(tolerance_kinds=("uniform",))  # new configs use the registry's names


def test_a_noise_is_one_typed_value_in_memory_and_in_its_file(tmp_path):
    from nullviz.core.errors import NoiseFileError
    from nullviz.noise.files import Noise, load_noise, load_noise_bytes, noise_bytes

    delta = torch.randn(16, 96, generator=torch.Generator().manual_seed(0))
    noise = Noise(delta, "encoder", "approximate", {"lam": 0.5}, made_for="digits|None|cpu")
    back = load_noise_bytes(noise.to_bytes(), "n.pt")
    assert torch.equal(back.delta, delta) and (back.level, back.kind) == ("encoder", "approximate")
    assert back.meta == {"lam": 0.5, "level": "encoder", "kind": "approximate"} and back.made_for is None
    exact = load_noise(Noise(torch.zeros(3, 4, 4), "input", "exact").save(tmp_path / "e.pt"))
    assert exact.kind == "exact" and exact.level == "input"
    with pytest.raises(NoiseFileError, match="level"):
        Noise(delta, "pixels")
    with pytest.raises(NoiseFileError, match="'pixels' level"):
        import io

        buf = io.BytesIO()
        torch.save({"delta": delta, "meta": {"level": "pixels"}, "format": "nullviz-noise-1"}, buf)
        load_noise_bytes(buf.getvalue(), "odd.pt")
    assert noise_bytes(delta, {"level": "encoder"})  # the codec Noise uses
