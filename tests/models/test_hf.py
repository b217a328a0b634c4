"""Hugging Face transformers ViTs converted into timm's VisionTransformer (tiny random configs, no network)."""

import json

import pytest
import torch

from nullviz.core.errors import PretrainedWeightsUnavailableError, UnsupportedModelError
from nullviz.models import load_model
from nullviz.noise import exact as N


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96, image_size=32,
                    patch_size=8, num_labels=10, id2label={i: f"digit {i}" for i in range(10)},
                    label2id={f"digit {i}": i for i in range(10)})
    model = ViTForImageClassification(cfg).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a wrong mapping shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                      image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return folder, model


def test_a_converted_vit_gives_the_originals_logits_attention_and_exact_nullspace(hf_folder):
    folder, hf = hf_folder
    lm = load_model(f"hf:{folder}", device="cpu")
    assert lm.name == f"hf:{folder}" and lm.class_names[3] == "digit 3"
    assert lm.data_config["mean"] == pytest.approx((0.4, 0.5, 0.6)) and lm.data_config["input_size"] == (3, 32, 32)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        theirs = hf(pixel_values=x, output_attentions=True)
        ours = lm.model(x)
    torch.testing.assert_close(ours, theirs.logits, atol=1e-5, rtol=0)
    from nullviz.inspection.attention import trace

    tr = trace(lm.model, x)
    for block, att in enumerate(theirs.attentions):
        torch.testing.assert_close(tr.attention[block], att, atol=1e-5, rtol=0)
    ns = N.nullspace(lm)
    assert ns.nullity == 192 - 48
    v = N.sample_noise(ns, lm.img_size, N.NoiseSpec(magnitude=5.0, seed=0))
    with torch.no_grad():
        assert float((lm.model(x + v) - ours).abs().max()) < 1e-4


def test_a_vit_backbone_gives_its_cls_features(tmp_path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(1)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                    patch_size=8, architectures=["ViTModel"])
    backbone = ViTModel(cfg, add_pooling_layer=False).eval()
    backbone.save_pretrained(tmp_path / "dino-like")
    lm = load_model(f"hf:{tmp_path / 'dino-like'}", device="cpu")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x), backbone(pixel_values=x).last_hidden_state[:, 0], atol=1e-5, rtol=0)
    assert lm.model.num_classes == 0 and len(lm.class_names) == 32


def test_other_architectures_and_unreachable_names_are_refused_in_one_line(tmp_path, monkeypatch):
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    cfg = DeiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                     patch_size=8)
    DeiTForImageClassificationWithTeacher(cfg).save_pretrained(tmp_path / "deit-distilled")
    with pytest.raises(UnsupportedModelError, match="Distilled DeiT"):
        load_model(f"hf:{tmp_path / 'deit-distilled'}", device="cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedWeightsUnavailableError, match="local Hugging Face cache"):
        load_model("hf:someone/not-cached-vit", device="cpu")


@pytest.mark.slow
def test_a_finetuned_hf_model_saves_and_loads_back(hf_folder, tmp_path):
    """Finetuning works on the converted model unchanged; its checkpoint keeps the converted architecture and
    loads back under the same hf: name with the trained weights."""
    from nullviz.data import digits_dataset
    from nullviz.train.finetune import FinetuneConfig, finetune

    folder, _ = hf_folder
    lm = load_model(f"hf:{folder}", device="cpu")
    train = torch.utils.data.Subset(digits_dataset("train", lm.transform), range(32))
    held = torch.utils.data.Subset(digits_dataset("heldout", lm.transform), range(16))
    cfg = FinetuneConfig(method="nullspace", epochs=1, steps_per_epoch=2, batch_size=8, synth_steps=2,
                         eval_synth_steps=2, fresh_deltas=0)
    result = finetune(lm, train, held, cfg, tmp_path / "run")
    side = json.loads((tmp_path / "run" / "model.json").read_text())
    assert side["arch"] == f"hf:{folder}" and side["arch_kwargs"]["layer_norm_eps"] == 1e-12
    back = load_model(checkpoint=result.checkpoint, device="cpu")
    assert back.name == f"hf:{folder}" and back.class_names == side["class_names"]
    from safetensors.torch import load_file

    saved = load_file(result.checkpoint)
    assert all(torch.equal(back.model.state_dict()[k], saved[k]) for k in saved)
    assert any(not torch.equal(lm.model.state_dict()[k], saved[k]) for k in saved)


def test_the_command_line_says_one_line_for_a_missing_folder_and_nothing_more_for_a_good_one(hf_folder, capsys):
    """hf:/nonexistent is a path, not a hub id (it got 'huggingface-cli download /nonexistent'); transformers'
    progress bars and load tables never precede nullviz's own line."""
    from nullviz.cli import main

    assert main(["info", "--model", "hf:/nonexistent/folder"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No Hugging Face model folder" in err[0] and "huggingface-cli" not in err[0]
    folder, _ = hf_folder
    assert main(["info", "--model", f"hf:{folder}", "--json"]) == 0
    assert capsys.readouterr().err == ""  # no "Loading weights" bar
    config = json.loads((folder / "config.json").read_text())
    broken = folder.parent / "broken-vit"
    broken.mkdir()
    for f in folder.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))  # weights no longer fit
    assert main(["info", "--model", f"hf:{broken}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken-vit" in err[0], err[:3]
