"""The Table 1 suite on tiny folders written in exactly the published layouts (real wnid lists, a few images)."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import imagenet_like_checkpoint
from nullviz.core.errors import DataError, InvalidParameterError
from nullviz.models import load_model
from nullviz.robustness.benchmarks import (BENCHMARKS, IMAGENET_C_CORRUPTIONS, PAPER_COLUMNS, BenchmarkResult,
                                           SuiteReport, alexnet_reference, evaluate_suite, imagenet_wnids,
                                           subset_indices, unresized_transform)
from nullviz.robustness.evaluation import EvalConfig


def _write(folder, n, rng, size=32):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"img{k}.png")


@pytest.fixture(scope="module")
def suite_root(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("suite")
    wnids = imagenet_wnids()
    for name in ("val", "imagenet-sketch", "stylized-imagenet", "damagenet"):
        for w in (wnids[0], wnids[6], wnids[11]):
            _write(root / name / w, 2, rng)
    for sub in ("a", "r"):
        for i in subset_indices(sub)[:3]:
            _write(root / f"imagenet-{sub}" / wnids[i], 2, rng)
    for c in ("0", "6", "999"):
        _write(root / "imagenetv2" / c, 2, rng)
    for corruption in IMAGENET_C_CORRUPTIONS:
        for s in range(1, 6):
            _write(root / "imagenet-c" / corruption / str(s) / wnids[6], 1, rng, size=224)
    return root


@pytest.fixture(scope="module")
def imagenet_lm(tmp_path_factory):
    return load_model("vit_tiny_patch16_224", checkpoint=imagenet_like_checkpoint(tmp_path_factory.mktemp("ck")),
                      device="cpu")


def test_every_number_of_the_suite_and_the_papers_average(imagenet_lm, suite_root):
    cfg = EvalConfig(cw_steps=2, patch_steps=2)
    stages = []
    report = evaluate_suite(imagenet_lm, suite_root, attacks=("patchfool", "cw", "fgsm"), attack_config=cfg,
                            progress=lambda key, done, total: stages.append(key))
    assert {"val", "a", "c/fog/3", "attack cw"} <= set(stages)  # the attacks report progress too
    cols = report.columns()
    assert list(cols) == list(PAPER_COLUMNS) and not report.skipped
    assert {k: v.images for k, v in report.results.items()} == {
        "val": 6, "sketch": 6, "stylized": 6, "damagenet": 6, "a": 6, "r": 6, "v2": 6}
    summary = report.corruption_summary()
    assert summary["complete"] and summary["missing"] == [] and len(summary["ce"]) == 15
    average, missing = report.paper_average()
    assert missing == [] and average == pytest.approx(np.mean([100 - cols[c] if c == "c" else cols[c]
                                                               for c in PAPER_COLUMNS]))
    assert report.attack_images == 6 and set(report.attacks) == {"patchfool", "cw", "fgsm"}
    d = report.to_dict()
    assert d["paper_average"] == average and d["imagenet_c"]["errors"]["fog"]["3"] in (0.0, 1.0)


def test_imagenet_a_and_r_restrict_the_logits_to_their_200_classes(imagenet_lm, suite_root):
    """By hand: the arg-max over the 200 classes' logits, mapped back to ImageNet-1k, against the label."""
    report = evaluate_suite(imagenet_lm, suite_root, only=("a", "r"))
    wnids = imagenet_wnids()
    for sub in ("a", "r"):
        idx = torch.tensor(subset_indices(sub))
        right = 0
        for i in subset_indices(sub)[:3]:
            for f in sorted((suite_root / f"imagenet-{sub}" / wnids[i]).iterdir()):
                logits = imagenet_lm.model(imagenet_lm.transform(Image.open(f).convert("RGB")).unsqueeze(0))
                right += int(idx[logits[0, idx].argmax()] == i)
        assert report.results[sub].accuracy == right / 6
    full = evaluate_suite(imagenet_lm, suite_root, only=("val",)).results["val"].accuracy
    assert 0 <= full <= 1


def test_mce_is_normalised_by_alexnets_published_errors():
    """A worked example: errors 0.5 (fog: 0.4 and 0.6 at two severities) against AlexNet's fog error 0.819324,
    clean error 0.2 against AlexNet's 0.4348 for the relative mCE."""
    ref = alexnet_reference()
    assert ref["errors"]["fog"] == 0.819324 and ref["clean_error"] == 0.4348 and len(ref["errors"]) == 15
    report = SuiteReport("m", "/r", results={"val": BenchmarkResult(0.8, 10, 10)},
                         corruption_errors={"fog": {1: 0.4, 2: 0.6}, "contrast": {1: 0.3}})
    s = report.corruption_summary()
    assert s["ce"]["fog"] == pytest.approx(0.5 / 0.819324)
    assert s["mce"] == pytest.approx(100 * (0.5 / 0.819324 + 0.3 / 0.853204) / 2)
    assert s["relative_mce"] == pytest.approx(100 * ((0.5 - 0.2) / (0.819324 - 0.4348) + (0.3 - 0.2) /
                                                     (0.853204 - 0.4348)) / 2)
    assert not s["complete"] and "fog/3" in s["missing"]
    average, missing = report.paper_average()
    assert average is None and "c" in missing and "patchfool" in missing


def test_missing_sets_are_skipped_and_wrong_layouts_named(imagenet_lm, tmp_path, suite_root):
    rng = np.random.default_rng(1)
    _write(tmp_path / "val" / imagenet_wnids()[3], 2, rng)
    report = evaluate_suite(imagenet_lm, tmp_path, limit=1)
    assert list(report.results) == ["val"] and report.results["val"].images == 1
    assert set(report.skipped) == set(BENCHMARKS) - {"val"} and "imagenet-a" in report.skipped["a"]
    _write(tmp_path / "imagenet-r" / "cats", 1, rng)
    with pytest.raises(DataError, match="200 classes"):
        evaluate_suite(imagenet_lm, tmp_path, only=("r",))
    _write(tmp_path / "imagenetv2" / "n01440764", 1, rng)
    with pytest.raises(DataError, match="class index"):
        evaluate_suite(imagenet_lm, tmp_path, only=("v2",))
    _write(tmp_path / "imagenet-c" / "fog" / "9" / imagenet_wnids()[0], 1, rng)
    with pytest.raises(DataError, match="severity"):
        evaluate_suite(imagenet_lm, tmp_path, only=("c",))
    with pytest.raises(DataError, match="does not exist"):
        evaluate_suite(imagenet_lm, tmp_path / "nowhere")
    with pytest.raises(InvalidParameterError):
        evaluate_suite(imagenet_lm, suite_root, only=("imagenet-z",))
    with pytest.raises(InvalidParameterError, match="1,000 classes"):
        evaluate_suite(load_model("default", device="cpu"), suite_root)


def test_imagenet_c_is_read_without_another_crop(imagenet_lm, tmp_path):
    """A 224×224 ImageNet-C image reaches a 224-px model untouched (normalised only); a 32-px model gets it
    resized, never cropped."""
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    x = unresized_transform(imagenet_lm)(img)
    assert tuple(x.shape) == (3, 32, 32)
    big = load_model("vit_tiny_patch16_224", device="cpu", pretrained=False)
    y = unresized_transform(big)(img)
    mean, std = (torch.tensor(big.data_config[k]).view(3, 1, 1) for k in ("mean", "std"))
    torch.testing.assert_close(y * std + mean, torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255,
                               atol=1e-6, rtol=0)


def test_the_command_line_runs_the_suite_and_says_what_it_skipped(suite_root, tmp_path, capsys):
    import json

    from nullviz.cli import main

    ck = imagenet_like_checkpoint(tmp_path)
    assert main(["evaluate", "--suite", "imagenet", "--root", str(suite_root), "--checkpoint", ck, "--only",
                 "val,a", "--limit", "2", "--attacks", "none", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert set(out["columns"]) == {"clean", "a"} and out["results"]["a"]["images"] == 2
    assert out["paper_average"] is None and "patchfool" in out["paper_average_missing"]
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--suite", "imagenet", "--root", str(tmp_path / "empty"), "--checkpoint", ck,
                 "--attacks", "none", "--json"]) == 0
    assert "nullviz: skipped ImageNet-A: no folder 'imagenet-a'" in capsys.readouterr().err
    assert main(["evaluate", "--suite", "imagenet", "--checkpoint", ck]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nullviz: error:") and "--root" in err and err.count("\n") == 1
