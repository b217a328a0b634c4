import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import assert_state_equal, fake_hub_cache, state_snapshot
from nullviz import data
from nullviz.core.errors import (CheckpointError, InvalidParameterError, ModelNotFoundError, NotAVisionTransformerError,
                                 PretrainedWeightsUnavailableError)
from nullviz.models import DEFAULT_MODEL_NAME, load_model, resolve_device
from nullviz.robustness.evaluation import accuracy


def test_default_model_facts(default_lm):
    f = default_lm.facts()
    assert f["name"] == DEFAULT_MODEL_NAME
    assert (f["patch_size"], f["embed_dim"], f["depth"], f["num_heads"]) == (8, 96, 4, 4)
    assert f["patch_input_dim"] == 192 > f["embed_dim"]  # 3·p² > D: a non-trivial exact nullspace
    assert f["img_size"] == [32, 32] and f["grid_size"] == [4, 4] and f["num_prefix_tokens"] == 1
    assert f["device"] == "cpu"


def test_default_model_is_frozen_eval(default_lm):
    assert not default_lm.model.training
    assert not any(p.requires_grad for p in default_lm.model.parameters())


def test_default_model_heldout_accuracy_at_least_97(default_lm):
    held = data.digits_dataset("heldout")
    acc = accuracy(default_lm, held)
    assert acc >= 0.97
    assert len(held) == 359


def test_transform_and_inverse(default_lm):
    img = data.sample_image("chelsea")
    x = default_lm.preprocess(img)
    assert x.shape == (1, 3, 32, 32)
    disp = default_lm.to_display(x)
    assert disp.shape == (32, 32, 3) and disp.min() >= 0 and disp.max() <= 1
    torch.testing.assert_close(default_lm.normalize(default_lm.denormalize(x)), x)
    # the inverse of the timm normalisation reproduces timm's un-normalised pixels
    pixels = default_lm.pixel_transform(img)
    torch.testing.assert_close(default_lm.denormalize(x[0]), pixels, atol=1e-6, rtol=0)


def _write(tmp_path, state, name, wrap=None, prefix=""):
    state = {prefix + k: v for k, v in state.items()}
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save({wrap: state} if wrap else state, str(path))
    return path


@pytest.mark.parametrize("name,wrap,prefix", [("m.safetensors", None, ""), ("m.pth", None, ""),
                                              ("m.pth", "state_dict", ""), ("m.pt", "model", "module.")])
def test_local_checkpoint_round_trip(default_lm, tmp_path, digit_x, name, wrap, prefix):
    torch.manual_seed(1)
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in default_lm.model.state_dict().items()}
    path = _write(tmp_path, state, name, wrap, prefix)
    lm = load_model(DEFAULT_MODEL_NAME, checkpoint=path, device="cpu")
    for k, v in lm.model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert lm.checkpoint == str(path)
    assert lm.predict(digit_x).shape == (1, 10)


def test_checkpoint_into_timm_architecture_with_other_head(tmp_path, tiny_lm):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=7)
    path = _write(tmp_path, model.state_dict(), "tiny.safetensors")
    lm = load_model("vit_tiny_patch16_224", checkpoint=path, device="cpu")
    assert lm.model.num_classes == 7 and len(lm.class_names) == 7


def test_checkpoint_sidecar_names_architecture(tmp_path, default_lm):
    path = _write(tmp_path, default_lm.model.state_dict(), "ft.safetensors")
    path.with_suffix(".json").write_text(json.dumps({"arch": DEFAULT_MODEL_NAME, "class_names": list("abcdefghij")}))
    lm = load_model("default", checkpoint=path, device="cpu")
    assert lm.class_names == list("abcdefghij")


def test_checkpoint_errors(tmp_path, default_lm):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("default", checkpoint=tmp_path / "missing.pth")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model("default", checkpoint=empty)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model("default", checkpoint=corrupt)
    other = tmp_path / "x.onnx"
    other.write_bytes(b"123")
    with pytest.raises(CheckpointError, match="Unsupported"):
        load_model("default", checkpoint=other)
    # architecture mismatch: the digits weights into ViT-Ti/16
    path = _write(tmp_path, default_lm.model.state_dict(), "digits.safetensors")
    with pytest.raises(CheckpointError, match="does not match architecture 'vit_tiny_patch16_224'.*shape"):
        load_model("vit_tiny_patch16_224", checkpoint=path)
    no_tensors = tmp_path / "cfg.pth"
    torch.save({"epoch": 3}, str(no_tensors))
    with pytest.raises(CheckpointError, match="no state_dict"):
        load_model("default", checkpoint=no_tensors)


def test_unknown_and_non_vit_names():
    with pytest.raises(ModelNotFoundError, match="not a timm architecture"):
        load_model("definitely_not_a_model")
    with pytest.raises(NotAVisionTransformerError, match="patch embedding"):
        load_model("resnet50")


def test_pretrained_offline_names_the_alternatives(monkeypatch):
    import socket

    def no_dns(*a, **k):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(PretrainedWeightsUnavailableError) as info:
        load_model("vit_tiny_patch16_224")
    msg = str(info.value)
    assert "default" in msg and "checkpoint" in msg


def test_pretrained_hub_failure_is_translated(monkeypatch):
    import timm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # skip the DNS check; the hub call itself fails

    real = timm.create_model

    def failing(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", failing)
    with pytest.raises(PretrainedWeightsUnavailableError, match="OSError.*embedded default"):
        load_model("vit_tiny_patch16_224")


@pytest.mark.parametrize("offline_flag", [None, "1"])
def test_cached_pretrained_weights_load_without_a_network(tmp_path, monkeypatch, offline_flag):
    """A timm name whose weights are in the local hub cache loads offline whether or not HF_HUB_OFFLINE is
    set (the network pre-check used to refuse it)."""
    import socket

    from nullviz.models import cached_weights_file, create_random_vit

    weights = create_random_vit("vit_tiny_patch16_224", seed=7).model.state_dict()
    fake_hub_cache(tmp_path, "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", weights)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    if offline_flag:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline_flag)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert cached_weights_file("vit_tiny_patch16_224") is not None
    lm = load_model("vit_tiny_patch16_224", device="cpu")
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert cached_weights_file("vit_small_patch16_224") is None  # not cached: the hub path, as before


def test_rectangular_patches_are_refused_with_a_clear_message():
    from nullviz.core.errors import UnsupportedModelError
    from nullviz.models import create_random_vit

    with pytest.raises(UnsupportedModelError, match="rectangular 8×4 patches"):
        create_random_vit("vit_tiny_patch16_224", img_size=32, patch_size=(8, 4), num_classes=10, depth=1,
                          embed_dim=32, num_heads=2)


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(InvalidParameterError, match="device"):
        resolve_device("quantum")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidParameterError, match="no CUDA"):
            resolve_device("cuda")


def test_trainable_copy_leaves_cached_model_untouched(default_lm):
    snap = state_snapshot(default_lm.model)
    copy = default_lm.trainable_copy()
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(1.0)
    assert_state_equal(default_lm.model, snap)
    assert not any(p.requires_grad for p in default_lm.model.parameters())
    assert all(p.requires_grad for p in copy.parameters())


def test_default_model_loads_and_classifies_deterministically(default_lm):
    lm2 = load_model("default", device="cpu")
    x = lm2.preprocess(data.sample_image("digit-7"))
    assert int(lm2.predict(x).argmax()) == 7
    np.testing.assert_array_equal(lm2.predict(x).numpy(), default_lm.predict(x).numpy())


def test_token_grid_comes_from_the_input_shape():
    """A dynamic-size model fed 16×64 pixels (2×8 tokens: as many as its default 4×4 grid) gets the position
    embedding of a 2×8 grid, as its own forward does; the default grid is refused only when the counts differ."""
    import timm

    from nullviz.core.errors import InvalidParameterError
    from nullviz.models import PixelModel, logits_from_patch_tokens, patch_tokens, token_grid

    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64, depth=2,
                          num_heads=2, num_classes=5, dynamic_img_size=True).eval()
    x = torch.randn(2, 3, 16, 64)
    with torch.no_grad():
        u = patch_tokens(m, x)
        assert token_grid(m, x) == (2, 8) and u.shape[1] == 16
        assert torch.equal(logits_from_patch_tokens(m, u, token_grid(m, x)), m(x))
        assert (logits_from_patch_tokens(m, u) - m(x)).abs().max() > 1e-5  # the default 4×4 grid is another one
        pm = PixelModel(m, torch.zeros(3), torch.ones(3), token_noise=torch.zeros(16, 64))
        assert torch.allclose(pm(x), m(x), atol=1e-6)
        with pytest.raises(InvalidParameterError, match="token grid"):
            logits_from_patch_tokens(m, patch_tokens(m, torch.randn(1, 3, 16, 32)))


@pytest.mark.parametrize("kind", ["bare safetensors", "pth", "nullviz-saved, sidecar lost"])
def test_a_checkpoint_file_alone_names_its_architecture(tmp_path, kind):
    """An uploaded file has no sidecar: a finetuned cluttered model was loaded into the digits architecture
    and refused. Its architecture now comes from the file: the header nullviz writes, or the embedded model
    whose every weight shape it matches."""
    from nullviz.train.checkpoint import save_checkpoint
    from nullviz.models import CLUTTERED_MODEL_NAME

    cluttered = load_model("cluttered", device="cpu")
    weights = {k: v.clone() for k, v in cluttered.model.state_dict().items()}
    if kind == "bare safetensors":
        path = tmp_path / "finetuned.safetensors"
        save_file(weights, str(path))
    elif kind == "pth":
        path = tmp_path / "finetuned.pth"
        torch.save(weights, str(path))
    else:
        path = save_checkpoint(tmp_path / "run", weights, {"arch": CLUTTERED_MODEL_NAME}, {"global_step": 3})
        path.with_suffix(".json").unlink()
    lm = load_model("default", checkpoint=path, device="cpu")
    assert lm.name == CLUTTERED_MODEL_NAME and lm.img_size == (64, 64)
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(lm.model(x), cluttered.model(x))
    digits_file = tmp_path / "digits.safetensors"
    save_file({k: v.clone() for k, v in load_model("default", device="cpu").model.state_dict().items()}, str(digits_file))
    assert load_model("default", checkpoint=digits_file, device="cpu").name == DEFAULT_MODEL_NAME


def test_model_spec_round_trips_and_refuses_bad_values(tmp_path):
    from nullviz.models import ModelSpec

    spec = ModelSpec("digits", None, "cpu")
    assert ModelSpec.from_dict(spec.to_dict()) == spec and ModelSpec.from_dict(spec) is spec
    assert ModelSpec.from_dict({"name": "default"}) == ModelSpec()  # missing keys: defaults
    lm = spec.load()
    assert ModelSpec.of(lm) == ModelSpec("nullviz_digits_vit", None, "cpu")
    assert ModelSpec.of(lm).load().name == lm.name
    for bad in ({"name": ""}, {"name": "x", "checkpoint": "  "}, {"name": "x", "device": ""}, {"name": 3},
                {"name": "x", "weights": "a"}, ["default"], None):
        with pytest.raises(InvalidParameterError):
            ModelSpec.from_dict(bad)


def test_preprocess_of_images_at_the_models_size_is_the_transforms_exact_numbers(default_lm):
    """Images already at the model's size go through the transform's arithmetic as one batch: the very numbers the
    per-image transform gives; any other image (another size, greyscale) goes through the transform itself."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    side = default_lm.img_size[0]
    same = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(5)]
    tf = default_lm.transform
    expected = torch.stack([tf(im) for im in same])
    assert torch.equal(default_lm.preprocess(same), expected)
    assert torch.equal(default_lm.preprocess(same[0]), expected[:1])
    other = [same[0].resize((side + 7, side + 3)), same[1].convert("L").convert("RGB")]
    for im in other:  # another size; a colour image that was grey
        assert torch.equal(default_lm.preprocess([im]), tf(im).unsqueeze(0))
    mixed = default_lm.preprocess(same[:2] + other[:1])
    assert torch.equal(mixed, torch.stack([tf(im) for im in same[:2] + other[:1]]))
