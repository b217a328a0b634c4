"""Who may use a shared server and what a browser's names may reach (the library side: nullviz.server.access,
the workspace's name policy, the model budget, model-folder uploads)."""

import io
import json
import os
import stat
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT
from nullviz.core.errors import CheckpointError, DataError, ModelTooLargeError, PretrainedWeightsUnavailableError, \
    ServerPathRefusedError
from nullviz.models import load_model
from nullviz.server.access import (AttemptLimiter, WorkspaceSigner, allowed_hosts, codes_match, generate_access_code,
                                   host_allowed, markdown_text, normalise_code, server_secret)
from nullviz.server.settings import ServerSettings, Workspace


# --------------------------------------------------------------------------------------------- codes
def test_class_codes_are_random_readable_and_compared_without_case_or_dashes():
    codes = {generate_access_code() for _ in range(200)}
    assert len(codes) == 200
    code = codes.pop()
    assert len(code) == 9 and code[4] == "-" and not set(code) & set("01ILO")
    assert codes_match(code.lower().replace("-", " "), code)
    assert not codes_match(code[:-1], code) and not codes_match("", code) and not codes_match(code, "")
    assert normalise_code(" ab-cd ef ") == "ABCDEF"


def test_wrong_codes_lock_a_client_out_doubling_and_a_right_code_clears_it():
    now = [0.0]
    limiter = AttemptLimiter(free=3, window=600, lockout=30, clock=lambda: now[0])
    assert [limiter.failed("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.wait_seconds("a") == 0
    assert limiter.failed("a") == 30 and limiter.wait_seconds("a") == 30
    assert limiter.wait_seconds("b") == 0  # another client is not slowed
    now[0] = 31
    assert limiter.failed("a") == 60  # the next wrong try doubles the wait
    limiter.succeeded("a")
    assert limiter.wait_seconds("a") == 0
    now[0] = 10_000
    assert limiter.failed("a") == 0  # old failures left the window


# ----------------------------------------------------------------------------------------- workspaces
def test_workspace_ids_are_signed_by_the_server_secret(tmp_path):
    secret = server_secret(tmp_path)
    assert server_secret(tmp_path) == secret and len(secret) == 32
    assert stat.S_IMODE(os.stat(tmp_path / "server_secret").st_mode) == 0o600
    signer = WorkspaceSigner(secret)
    issued = signer.issue()
    assert signer.verify(issued) and len(issued) == 46
    assert Workspace(issued, ServerSettings(shared=True, data_root=tmp_path)).id == issued
    for forged in ("aaaaaaaaaaaaaaaa", "student01-------", "a" * 46, issued[:-1] + ("A" if issued[-1] != "A" else "B"),
                   issued[:24] + WorkspaceSigner(b"x" * 32).issue()[24:], None, 7, issued + "x"):
        assert not signer.verify(forged), forged
    assert not WorkspaceSigner(b"another server's secret!").verify(issued)
    alice = signer.for_identity("alice@school.example")
    assert alice == signer.for_identity("alice@school.example") != signer.for_identity("bob@school.example")
    assert signer.verify(alice)


# ---------------------------------------------------------------------------------------------- hosts
def test_hosts_served_address_loopback_and_configured_names_only():
    hosts = allowed_hosts("127.0.0.1", ["class.example.org"])
    for ok in ("127.0.0.1:8501", "localhost:8501", "[::1]:8501", "class.example.org", "CLASS.example.org.:80"):
        assert host_allowed(ok, hosts), ok
    for bad in ("evil.example:8721", "evil.example", "", None, "127.0.0.1.evil.example", "user@127.0.0.1"):
        assert not host_allowed(bad, hosts), bad
    everywhere = allowed_hosts("0.0.0.0")
    assert "localhost" in everywhere and not host_allowed("evil.example", everywhere)
    assert host_allowed("a.campus.example", ["*.campus.example"])


# ------------------------------------------------------------------------------------------- settings
def test_shared_settings_code_and_model_budget(tmp_path):
    shared = ServerSettings.from_env({"NULLVIZ_SHARED": "1"})
    assert shared.access_code is None and shared.max_model_params == 90_000_000 and not shared.open_access
    assert ServerSettings.from_env({}).max_model_params is None  # local mode: unbounded
    opened = ServerSettings.from_env({"NULLVIZ_SHARED": "1", "NULLVIZ_ACCESS_CODE": "none"})
    assert opened.open_access and "open to anyone" in opened.describe()
    assert ServerSettings.from_env({"NULLVIZ_ACCESS_CODE": "maths-7b"}).access_code == "maths-7b"
    assert ServerSettings.from_env({"NULLVIZ_SHARED": "1", "NULLVIZ_MAX_MODEL_PARAMS": "none"}).max_model_params is None
    with pytest.raises(Exception, match="at least 6") as info:
        ServerSettings.from_env({"NULLVIZ_ACCESS_CODE": "ab1"})
    assert "ab1" not in str(info.value)  # a secret is never echoed
    hosts = ServerSettings.from_env({"NULLVIZ_ALLOWED_HOSTS": "a.example, b.example"}).extra_allowed_hosts
    assert hosts == ("a.example", "b.example")
    assert shared.retention_days == 7 and ServerSettings.from_env({}).retention_days is None
    assert ServerSettings.from_env({"NULLVIZ_SHARED": "1", "NULLVIZ_RETENTION_DAYS": "0.01"}).retention_days == 0.01
    for bad in ("-1", "soon", "inf"):
        with pytest.raises(Exception, match="a number > 0"):
            ServerSettings.from_env({"NULLVIZ_SHARED": "1", "NULLVIZ_RETENTION_DAYS": bad})
    with pytest.raises(Exception, match="whole number"):  # the others are counts
        ServerSettings.from_env({"NULLVIZ_SHARED": "1", "NULLVIZ_MAX_QUEUED_JOBS": "2.5"})


def test_model_names_on_a_shared_server_one_message_whatever_the_folder(tmp_path):
    ws = Workspace(WorkspaceSigner(server_secret(tmp_path)).issue(), ServerSettings(shared=True, data_root=tmp_path))
    (tmp_path / "existing").mkdir()
    refused = ["hf:assets/../../../../etc", "hf:/etc", "hf:~/.ssh", "hf:/nonexistent/folder", f"hf:{tmp_path}/existing",
               "hf:./assets/default_model", f"hf:{ws.uploads}/../../jobs", "local-dir:/etc", "file:/etc/passwd",
               "hf-hub:timm/vit_base", "../x", "hf:", f"hf:{tmp_path / 'uploads' / 'another-workspace' / 'm'}"]
    messages = set()
    for name in refused:
        with pytest.raises(ServerPathRefusedError) as info:
            ws.check_model_name(name)
        messages.add(str(info.value))
    assert len(messages) == 1 and "not a path on the server" in messages.pop()
    assert ws.check_model_name("hf:google/vit-base-patch16-224") == "hub"
    assert ws.check_model_name("hf:assets/default_model") == "hub"  # read from the hub, never from the disk
    assert ws.check_model_name("vit_tiny_patch16_224") == "name"
    assert ws.check_model_name(f"hf:{ws.uploads / 'm-0123' / 'vit'}") == "folder"
    local = Workspace("local", ServerSettings(shared=False, data_root=tmp_path))
    assert local.check_model_name("hf:/some/folder") == "folder"  # local mode: a trusted user's paths


def test_hub_only_loading_never_reads_a_local_folder(monkeypatch):
    """``hf:assets/default_model`` names a folder in the checkout: hub-only loading asks the hub (offline here)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (ROOT / "assets" / "default_model").is_dir()
    monkeypatch.chdir(ROOT)
    with pytest.raises(PretrainedWeightsUnavailableError, match="not in this server's Hugging Face cache"):
        load_model("hf:assets/default_model", device="cpu", local_folders=False)


def test_markdown_in_names_is_text():
    assert markdown_text("![t](http://127.0.0.1:8799/x.png).png") == r"!\[t\](http\://127.0.0.1:8799/x.png).png"
    assert markdown_text("[c](javascript:alert(1))") == r"\[c\](javascript:alert(1))"
    assert markdown_text("a_b*c`d`<img src=x>$x$") == r"a\_b\*c\`d\`\<img src=x\>\$x\$"
    assert markdown_text("- item\nline") == r"\- item line"


# ------------------------------------------------------------------------------------------ the budget
BUDGET_PROBE = r"""
import json, resource, sys
import timm, torch
from safetensors.torch import save_file
from nullviz.core.errors import ModelTooLargeError
from nullviz.models import load_model
path = sys.argv[1]
save_file({}, path, metadata={"arch": "vit_large_patch16_224"})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_model("default", checkpoint=path, device="cpu", max_params=90_000_000)
    outcome = "loaded"
except ModelTooLargeError as exc:
    outcome = str(exc)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "grew_kb": after - before}))
"""


@pytest.mark.slow
def test_a_header_naming_vit_l_is_refused_before_allocation(tmp_path):
    """A ~100-byte .safetensors whose header names ViT-L (304 M parameters): refused on the meta device, the
    process's peak memory growing < 50 MB (building it allocated 1.2 GB)."""
    path = tmp_path / "header_only.safetensors"
    out = subprocess.run([sys.executable, "-c", BUDGET_PROBE, str(path)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert path.stat().st_size < 1000
    assert "304.3 M parameters" in result["outcome"] and "at most 90.0 M" in result["outcome"], result
    assert str(tmp_path) not in result["outcome"]  # names the upload, not its folder
    assert result["grew_kb"] < 50 * 1024, result


def test_timm_name_over_the_budget_is_refused_without_download():
    with pytest.raises(ModelTooLargeError, match="'vit_large_patch16_224' has 304.3 M parameters"):
        load_model("vit_large_patch16_224", device="cpu", max_params=90_000_000)


def hf_config(**kw):
    from transformers import ViTConfig

    base = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                patch_size=8, num_labels=3, architectures=["ViTForImageClassification"])
    return ViTConfig(**{**base, **kw})


def test_hf_folder_over_the_budget_is_refused_from_its_config_alone(tmp_path):
    folder = tmp_path / "big-vit"
    hf_config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
              image_size=224, patch_size=16).save_pretrained(folder)  # config.json only: no weights at all
    with pytest.raises(ModelTooLargeError, match="'big-vit' has 30[0-9].[0-9] M parameters"):
        load_model(f"hf:{folder}", device="cpu", max_params=90_000_000)


# ------------------------------------------------------------------------------- model-folder uploads
def zipped(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tiny_model_folder_zip(tmp_path) -> bytes:
    from transformers import ViTForImageClassification

    folder = tmp_path / "saved"
    ViTForImageClassification(hf_config()).save_pretrained(folder)
    return zipped({f"my-vit/{p.name}": p.read_bytes() for p in folder.iterdir()})


def test_a_zipped_model_folder_is_an_upload_kind_stored_once_and_shown_by_its_name(tmp_path):
    ws = Workspace(WorkspaceSigner(server_secret(tmp_path)).issue(), ServerSettings(shared=True, data_root=tmp_path))
    data = tiny_model_folder_zip(tmp_path)
    folder = ws.save_model_folder_zip("my vit!.zip", data)
    assert folder == ws.save_model_folder_zip("my vit!.zip", data)  # stored once per content
    assert folder.name == "my_vit_" and folder.is_relative_to(ws.uploads)
    assert ws.check_model_name(f"hf:{folder}") == "folder"
    lm = load_model(f"hf:{folder}", device="cpu", max_params=90_000_000)
    assert lm.label == "hf:my_vit_" and str(tmp_path) not in json.dumps(lm.facts())
    assert len(list(ws.uploads.iterdir())) == 1  # no staging folder left


def test_model_folder_zips_unpack_no_pickles_and_refused_ones_leave_nothing(tmp_path):
    ws = Workspace(WorkspaceSigner(server_secret(tmp_path)).issue(), ServerSettings(shared=True, data_root=tmp_path))
    with pytest.raises(CheckpointError, match="no config.json"):
        ws.save_model_folder_zip("x.zip", zipped({"m/pytorch_model.bin": b"pickle", "m/run.py": b"import os"}))
    with pytest.raises(CheckpointError, match="no .safetensors"):
        ws.save_model_folder_zip("x.zip", zipped({"m/config.json": b"{}", "m/pytorch_model.bin": b"pickle"}))
    assert not any(p for p in ws.uploads.rglob("*") if p.is_file())


def test_checkpoint_uploads_are_stored_once_per_content(tmp_path):
    ws = Workspace(WorkspaceSigner(server_secret(tmp_path)).issue(), ServerSettings(shared=True, data_root=tmp_path))
    a = ws.save_upload("m.safetensors", b"x" * 100, (".safetensors",))
    assert ws.save_upload("m.safetensors", b"x" * 100, (".safetensors",)) == a
    assert ws.save_upload("m.safetensors", b"y" * 100, (".safetensors",)) != a
    assert len([p for p in ws.uploads.rglob("*") if p.is_file()]) == 2


# ---------------------------------------------------------------------------------------------- disk
def test_workspace_quota_and_free_space_floor_refuse_with_what_to_do(tmp_path, monkeypatch):
    from nullviz.core.errors import DiskSpaceError

    settings = ServerSettings(shared=True, data_root=tmp_path, workspace_quota_mb=1, retention_days=7)
    ws = Workspace(WorkspaceSigner(server_secret(tmp_path)).issue(), settings)
    ws.save_upload("a.safetensors", b"x" * 700_000, (".safetensors",))
    with pytest.raises(DiskSpaceError, match=r"of the 1 MB each session may keep.*older than 7 days are deleted"):
        ws.save_upload("b.safetensors", b"y" * 700_000, (".safetensors",))
    assert ws.unpack_budget() <= 2**20 - 700_000
    with ws.upload_folder():
        pass
    with pytest.raises(DataError):
        with ws.upload_folder() as folder:
            raise DataError("not a data set")
    assert not folder.exists()  # a refused unpack leaves nothing

    class Rerun(BaseException):  # Streamlit's rerun and stop are BaseExceptions, raised at any st call
        pass

    with pytest.raises(Rerun):
        with ws.upload_folder() as kept:
            raise Rerun()
    assert kept.exists()  # a job submitted in the block may be reading it: a rerun does not delete it
    with pytest.raises(Rerun):
        with ws.upload_folder(keep=False) as once:
            raise Rerun()
    assert not once.exists()  # an upload read once goes whatever ends the block
    import shutil

    floor = ServerSettings(shared=True, data_root=tmp_path, min_free_disk_mb=10**9)
    with pytest.raises(DiskSpaceError, match="nearly full"):
        Workspace(ws.id, floor).save_upload("c.safetensors", b"z", (".safetensors",))
    assert shutil.disk_usage(tmp_path).free > 0
