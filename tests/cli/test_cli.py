import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from nullviz.cli import main
from nullviz.noise.files import load_noise


def run_json(capsys, *args):
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_info_json_measures_heldout_accuracy(capsys):
    out = run_json(capsys, "info", "--device", "cpu")
    for key in ("name", "patch_size", "embed_dim", "depth", "num_heads", "num_params", "img_size", "device"):
        assert key in out
    assert out["heldout_accuracy"] >= 0.97 and out["heldout_images"] == 359


def test_info_human(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "patch_size: 8" in text and "heldout_accuracy" in text


def test_nullspace_json_and_out(capsys, tmp_path):
    out = run_json(capsys, "nullspace", "--image", "digit-5", "--magnitude", "2", "--out", str(tmp_path / "v.pt"))
    assert (out["rank"], out["nullity"], out["input_dim"], out["embed_dim"]) == (96, 96, 192, 96)
    assert len(out["singular_values"]) == 96
    assert out["rel_logit_change"] < 1e-5 and out["max_abs_logit_change"] < 1e-4 and out["top1_unchanged"]
    saved = load_noise(tmp_path / "v.pt")  # the one noise file format: the Attention page reads it back
    assert saved.delta.shape == (3, 32, 32) and saved.level == "input" and saved.meta["kind"] == "exact"
    assert torch.load(tmp_path / "v.pt", weights_only=True)["format"] == "nullviz-noise-1"
    feas = run_json(capsys, "nullspace", "--feasible", "--image", "chelsea")
    assert feas["feasible_max_box_violation"] <= 1e-6 and feas["clipped_fraction"] == 0.0


def test_synthesize_json_and_round_trip(capsys, tmp_path):
    out = run_json(capsys, "synthesize", "--level", "encoder", "--images", "16", "--steps", "30",
                   "--out", str(tmp_path / "d.pt"))
    for key in ("level", "steps_run", "final_loss", "mse_probs", "agreement", "noise_l2", "noise_linf",
                "permuted_mse_probs", "permuted_agreement"):
        assert key in out
    assert out["level"] == "encoder" and out["permuted_mse_probs"] > out["mse_probs"]
    att = run_json(capsys, "attention", "--image", "digit-1", "--noise", str(tmp_path / "d.pt"))
    assert att["level"] == "encoder" and len(att["layer_repr_change"]) == 4 and att["query"] == "CLS"


@pytest.mark.slow
def test_synthesize_input_level_says_whether_it_is_an_image(capsys):
    free = run_json(capsys, "synthesize", "--level", "input", "--images", "8", "--steps", "5")
    assert free["clipped"] is False and free["out_of_range_fraction"] > 0.3
    valid = run_json(capsys, "synthesize", "--level", "input", "--images", "8", "--steps", "5", "--clip")
    assert valid["clipped"] is True and 0 < valid["effective_l2"] < valid["noise_l2"]


def test_attention_json_and_npz(capsys, tmp_path):
    out = run_json(capsys, "attention", "--image", "digit-2", "--out", str(tmp_path / "maps.npz"))
    assert (out["layers"], out["heads"], out["tokens"]) == (4, 4, 17)
    assert max(out["layer_attention_distance"]) < 1e-5 and max(out["layer_repr_change"]) < 1e-5
    with np.load(tmp_path / "maps.npz") as z:
        assert z["attention_clean"].shape == (4, 1, 4, 17, 17) and z["rollout_noised"].shape == (1, 17, 17)


def test_attention_research_views(capsys, tmp_path):
    out = run_json(capsys, "attention", "--image", "digit-2", "--query", "1,2", "--block", "2", "--contrast",
                   "--set", "12", "--batch-size", "5", "--out", str(tmp_path / "maps.npz"))
    q = out["query_token"]
    assert q["index"] == 1 + 1 * 4 + 2 and q["block"] == 2 and len(q["map_clean_mean_of_heads"]) == 4
    assert q["largest_change"] < 1e-5  # exact noise: the query's attention does not move
    assert len(out["head_statistics"]["distance_clean"]) == 4 and len(out["head_statistics"]["entropy_noised"][0]) == 4
    names = out["contrast"]["names"]
    assert names == ["exact", "gaussian@exact"]
    assert out["contrast"]["labels"] == ["exact nullspace noise", "Gaussian, same norm as the exact noise"]
    assert max(out["contrast"]["repr_change"][0]) < 1e-5 < min(out["contrast"]["repr_change"][1][1:])
    assert out["set"]["images"] == 12 and len(out["set"]["attention_tv_mean"]) == 4
    with np.load(tmp_path / "maps.npz") as z:
        assert z["set_attention_tv"].shape == (12, 4) and z["contrast_repr_change"].shape == (2, 5)


@pytest.mark.slow
def test_info_re_measures_the_cluttered_model(capsys):
    import json as _json

    from nullviz.models import CLUTTERED_MODEL_DIR

    out = run_json(capsys, "info", "--model", "cluttered")
    recorded = _json.loads((CLUTTERED_MODEL_DIR / "config.json").read_text())
    assert out["heldout_accuracy"] == recorded["heldout_accuracy"] and out["heldout_images"] == 1000
    assert out["localization"]["last_layer"]["ratio"] == pytest.approx(recorded["localization"]["last_layer"]["ratio"],
                                                                       abs=2e-4)
    assert out["nullspace"]["nullity"] == 96


@pytest.mark.parametrize("args,needle", [
    (["attention", "--query", "9,9"], "inside the 4×4 grid"),
    (["attention", "--query", "middle"], "'cls' or a patch"),
    (["info", "--model", "resnet50"], "not a plain Vision Transformer"),
    (["info", "--model", "no_such_model"], "Unknown model name"),
    (["info", "--checkpoint", "/nonexistent/x.pth"], "does not exist"),
    (["nullspace", "--magnitude", "-1"], "magnitude"),
    (["nullspace", "--image", "/nonexistent.png"], "does not exist"),
    (["nullspace", "--layernorm", "--feasible"], "--layernorm"),
    (["synthesize", "--steps", "0"], "steps"),
    (["attention", "--noise", "/nonexistent.pt"], "does not exist"),
    (["info", "--device", "tpu9"], "device"),
    (["evaluate", "--attacks", "deepfool", "--limit", "2"], "'fgsm', 'pgd', 'patchfool', 'cw', 'autoattack'"),
    (["finetune", "--method", "mixup"], "'baseline', 'nullspace', 'gaussian', 'random_start', 'adversarial'"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, needle):
    with pytest.raises(SystemExit) if args == ["frobnicate"] else _no_raise():
        code = main(args)
        assert code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and err.startswith("nullviz: error:") and "\n" not in err and "Traceback" not in err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.slow
def test_python_dash_m_entry_point():
    ok = subprocess.run([sys.executable, "-m", "nullviz", "info", "--json"], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout)["name"] == "nullviz_digits_vit"
    bad = subprocess.run([sys.executable, "-m", "nullviz", "info", "--model", "resnet50"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1


def test_evaluate_json(capsys, tmp_path):
    out = run_json(capsys, "evaluate", "--limit", "24", "--attacks", "fgsm,pgd", "--pgd-steps", "2",
                   "--corruptions", "fog,snow", "--severities", "1,3", "--csv", str(tmp_path / "r.csv"))
    assert 0 <= out["clean_acc"] <= 1
    assert set(out["attacks"]) == {"fgsm", "pgd"} and "robust_acc" in out["attacks"]["fgsm"]
    assert set(out["corruptions"]) == {"fog", "snow"} and len(out["corruptions"]["fog"]) == 2
    assert out["mean_corruption_acc"] is not None
    assert (tmp_path / "r.csv").read_text().startswith("model,evaluation,setting,value")
    rel = run_json(capsys, "evaluate", "--limit", "16", "--attacks", "none", "--corruptions", "fog",
                   "--severities", "2", "--reference", "default")
    assert rel["relative_corruption_error"] == pytest.approx(100.0)  # the default against itself
    assert rel["relative_corruption_error_left_out"] == {} and set(rel["relative_corruption_error_per_corruption"]) == {"fog"}


@pytest.mark.slow
def test_finetune_json(capsys, tmp_path):
    out = run_json(capsys, "finetune", "--method", "nullspace", "--epochs", "1", "--steps-per-epoch", "3",
                   "--batch-size", "16", "--synth-steps", "5", "--eval-synth-steps", "5", "--out", str(tmp_path / "run"))
    assert out["method"] == "nullspace" and out["epochs_run"] == 1
    for key in ("clean_acc", "delta_acc", "train_delta_acc", "gaussian_acc", "fgsm_acc", "loss"):
        assert key in out["history"][0]
    assert out["checkpoint"].endswith("model.safetensors")
    info = run_json(capsys, "info", "--checkpoint", out["checkpoint"])
    assert info["checkpoint"] == out["checkpoint"] and 0 <= info["heldout_accuracy"] <= 1
    clean = run_json(capsys, "finetune", "--method", "baseline", "--epochs", "1", "--steps-per-epoch", "2",
                     "--batch-size", "16", "--epoch-measures", "clean", "--out", str(tmp_path / "clean"))
    assert clean["config"]["epoch_measures"] == "clean"
    assert "clean_acc" in clean["history"][0] and "fgsm_acc" not in clean["history"][0]


def test_synthesize_sweep_traces_the_frontier(capsys, tmp_path):
    out = run_json(capsys, "synthesize", "--images", "16", "--check-images", "8", "--sweep", "lam=0,1", "steps=8",
                   "--html", str(tmp_path / "f.html"))
    assert [p["lam"] for p in out["points"]] == [0.0, 1.0] and out["num_check_images"] == 8
    for key in ("noise_l2", "check_mse_probs", "permuted_mse_probs", "gaussian_mse_probs", "random_start_mse_probs",
                "travelled_l2"):
        assert key in out["points"][0]
    assert "allowed" in out and (tmp_path / "f.html").exists()


def test_synthesize_reports_the_held_out_check(capsys):
    out = run_json(capsys, "synthesize", "--images", "16", "--check-images", "8", "--steps", "10")
    assert out["num_images"] == 16 and out["num_check_images"] == 8
    assert out["check_mse_probs"] is not None and isinstance(out["beats_permuted_on_check"], bool)


def test_bad_sweep_is_one_line(capsys):
    code = main(["synthesize", "--sweep", "lam=0,x"])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1 and "comma-separated numbers" in err


def test_a_model_without_its_own_data_is_told_what_to_give(capsys, tmp_path):
    """`synthesize`, `finetune` and `evaluate` on a 1,000-class ViT with the default data: one line saying it
    has no images of its own (it used to get the 32-px digits); asked for the digits, finetuning is refused
    without --new-head."""
    from conftest import imagenet_like_checkpoint

    ckpt = imagenet_like_checkpoint(tmp_path)
    for args in (["synthesize", "--steps", "2"], ["evaluate", "--limit", "4"], ["finetune", "--epochs", "1"]):
        assert main([*args, "--checkpoint", ckpt]) == 2
        err = capsys.readouterr().err.strip()
        assert "has no training images of its own" in err and "\n" not in err, (args, err)
    assert main(["finetune", "--checkpoint", ckpt, "--data", "digits", "--epochs", "1", "--steps-per-epoch", "1"]) == 2
    assert "predicts 1,000 classes but the training data has 10" in capsys.readouterr().err


def random_vit_checkpoint(path, embed_dim: int):
    """A seeded 32×32 ViT with 4×4 patches (48 numbers each) → ``embed_dim``, saved with its JSON sidecar."""
    from safetensors.torch import save_file

    from nullviz.models import create_random_vit

    kwargs = dict(img_size=32, patch_size=4, embed_dim=embed_dim, depth=1, num_heads=2, num_classes=10)
    lm = create_random_vit("vit_tiny_patch16_224", seed=0, **kwargs)
    save_file({k: v.contiguous() for k, v in lm.model.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"arch": "vit_tiny_patch16_224", "arch_kwargs": kwargs}))
    return path


def test_nullspace_command_on_a_full_rank_model_draws_the_weakest_directions(capsys, tmp_path):
    """`nullviz nullspace` on a full-rank patch embedding returned all-zero noise where the pages show the
    weakest-direction noise: the policy was copied into every caller but this one (now NoiseSpec's default)."""
    path = random_vit_checkpoint(tmp_path / "full_rank.safetensors", embed_dim=64)  # 48 → 64
    out = run_json(capsys, "nullspace", "--checkpoint", str(path), "--image", "digit-3", "--out",
                   str(tmp_path / "v.pt"))
    assert out["nullity"] == 0
    assert load_noise(tmp_path / "v.pt").delta.abs().max() > 0
    # and it is not called exact: its kind and a note say what it is, and the logits it moved
    assert out["kind"] == "weakest" and "not invisible" in out["note"] and out["rel_logit_change"] > 1e-5
    assert load_noise(tmp_path / "v.pt").kind == "weakest"
    # 48 → 64: the all-ones token shift lies outside W's range, so there is no LayerNorm direction either
    assert main(["nullspace", "--checkpoint", str(path), "--layernorm"]) == 2
    assert "all-ones token shift" in capsys.readouterr().err


def test_nullspace_command_draws_layernorm_noise_for_a_square_full_rank_embedding(capsys, tmp_path):
    path = random_vit_checkpoint(tmp_path / "square.safetensors", embed_dim=48)  # 48 → 48
    ln = run_json(capsys, "nullspace", "--checkpoint", str(path), "--image", "digit-3", "--layernorm",
                  "--magnitude", "3", "--out", str(tmp_path / "ln.pt"))
    assert ln["nullity"] == 0 and ln["kind"] == "layernorm"
    assert ln["rel_logit_change"] < 1e-5 and ln["top1_unchanged"] and ln["layernorm_residual"] < 1e-6
    assert load_noise(tmp_path / "ln.pt").meta["kind"] == "layernorm"


def test_help_and_bad_arguments_answer_without_importing_torch():
    """The command line imports the library inside its commands: `nullviz --help` (0.1 s) does not wait for torch
    (several seconds), and process tuning at start is a light module of its own."""
    code = ("import sys\nfrom nullviz.cli import console_main\nsys.argv = ['nullviz', '--help']\n"
            "try:\n    console_main()\nexcept SystemExit as exc:\n    code = exc.code\n"
            "print('torch' in sys.modules, code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "False 0"


@pytest.mark.slow
def test_finetune_preset_paper_with_overrides_on_a_folder(capsys, tmp_path):
    """`--preset paper` fills every recipe value (printed in the run's JSON), explicit flags override it, and
    the paper's augmentation trains on a natural-image folder (here the sample photographs, two classes)."""
    from nullviz.data import SAMPLE_PHOTOS, sample_image

    for k, name in enumerate(list(SAMPLE_PHOTOS)[:6]):
        folder = tmp_path / "photos" / f"class{k % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        sample_image(name).convert("RGB").save(folder / f"{name}.png")
    out = run_json(capsys, "finetune", "--preset", "paper", "--epochs", "1", "--steps-per-epoch", "1",
                   "--batch-size", "4", "--synth-steps", "2", "--eval-synth-steps", "2", "--fresh-deltas", "0",
                   "--data", str(tmp_path / "photos"), "--new-head", "--out", str(tmp_path / "run"))
    cfg = out["config"]
    assert (cfg["epochs"], cfg["lr"], cfg["weight_decay"], cfg["warmup_steps"], cfg["augment"], cfg["keep_best"],
            cfg["synth_tol"]) == (1, 1e-4, 1e-4, 0, "rrc_flip", True, 0.03)
    assert out["best_epoch"] == 1 and out["checkpoint"].endswith("best/model.safetensors")
    with pytest.raises(SystemExit) as exit_:
        main(["finetune", "--preset", "fast"])
    assert exit_.value.code == 2 and "invalid choice: 'fast'" in capsys.readouterr().err


def test_finetune_a_control_at_given_noise_norms(capsys, tmp_path):
    out = run_json(capsys, "finetune", "--method", "gaussian", "--epochs", "2", "--steps-per-epoch", "1",
                   "--batch-size", "8", "--eval-synth-steps", "2", "--fresh-deltas", "0", "--noise-norms", "5", "9",
                   "--out", str(tmp_path / "run"))
    assert [r["delta_l2"] for r in out["history"]] == [5.0, 9.0] and out["synthesis_seconds"] == 0.0
    assert main(["finetune", "--method", "nullspace", "--noise-norms", "5", "--out", str(tmp_path / "bad")]) != 0
    err = capsys.readouterr().err
    assert "noise_norms" in err and len(err.strip().splitlines()) == 1
