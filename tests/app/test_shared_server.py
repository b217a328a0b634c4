"""The shared-server deployment mode, upload limits, and the small defects of the shared-server issue."""

import io
import subprocess
import sys
import zipfile

import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import CLASS_CODE, ROOT, shown, wait_until
from nullviz.core.errors import (DataError, ImageLoadError, InvalidParameterError, NoiseFileError,
                                 ServerPathRefusedError, UploadTooLargeError)
from nullviz.data import extract_image_folder_zip, load_image_bytes
from nullviz.models import ModelSpec
from nullviz.noise.files import load_noise_bytes
from nullviz.server.access import WorkspaceSigner, server_secret
from nullviz.server.settings import ServerSettings, Workspace

TIMEOUT = 120


def png(size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ settings
def test_settings_from_env_and_overrides(tmp_path):
    local = ServerSettings.from_env({})
    assert not local.shared and local.max_upload_mb == 200
    shared = ServerSettings.from_env({"NULLVIZ_SHARED": "1", "NULLVIZ_DATA_DIR": str(tmp_path)})
    assert shared.shared and shared.max_upload_mb == 50 and shared.max_jobs_per_workspace == 2
    assert shared.jobs_root == tmp_path / "jobs"
    over = ServerSettings.from_env({"NULLVIZ_SHARED": "0"}, overrides={"shared": True, "max_jobs": 3})
    assert over.shared and over.max_running_jobs == 3
    with pytest.raises(InvalidParameterError, match="NULLVIZ_MAX_JOBS"):
        ServerSettings.from_env({"NULLVIZ_MAX_JOBS": "many"})


def test_workspace_refuses_server_paths_without_saying_whether_they_exist(tmp_path):
    settings = ServerSettings(shared=True, data_root=tmp_path)
    signer = WorkspaceSigner(server_secret(tmp_path))
    a, b = Workspace(signer.issue(), settings), Workspace(signer.issue(), settings)
    mine = a.save_upload("model.safetensors", b"x" * 10, (".safetensors",))
    assert a.check_server_path(mine, "the checkpoint") == mine
    messages = set()
    for path in (mine, "/etc/passwd", "/nonexistent/file", str(a.uploads / ".." / ".." / "x")):
        with pytest.raises(ServerPathRefusedError) as info:
            b.check_server_path(path, "the checkpoint")
        messages.add(str(info.value))
    assert len(messages) == 1  # the same words whether the file exists or not
    with pytest.raises(InvalidParameterError):
        Workspace("../../etc", settings)
    local = Workspace("local", ServerSettings(shared=False, data_root=tmp_path))
    assert local.check_server_path("/etc/passwd", "x").name == "passwd"  # local mode: paths allowed


def test_upload_size_cap(tmp_path):
    ws = Workspace(WorkspaceSigner(server_secret(tmp_path)).issue(),
                   ServerSettings(shared=True, max_upload_mb=1, data_root=tmp_path))
    with pytest.raises(UploadTooLargeError, match="at most 1 MB"):
        ws.save_upload("big.safetensors", b"\0" * (2 * 2**20), (".safetensors",))
    with pytest.raises(DataError, match="accepted file types"):
        ws.save_upload("model.exe", b"x", (".safetensors",))
    saved = ws.save_upload("../../evil name!.pt", b"x", (".pt",))
    assert saved.is_relative_to(ws.uploads) and saved.name == "evil_name_.pt"


# ----------------------------------------------------------------------------------------------- zips
def test_zip_expanded_size_file_count_and_image_size_bounded_before_writing(tmp_path):
    zeros = zip_bytes({"a/zeros.bin": b"\0" * (3 * 2**20), "a/run.sh": b"rm -rf /"})
    assert len(zeros) < 10_000
    with pytest.raises(DataError, match="holds no images"):  # only image members are unpacked: none here
        extract_image_folder_zip(zeros, tmp_path / "w", max_bytes=2**20)
    assert not any((tmp_path / "w").iterdir())
    bomb = zip_bytes({"a/zeros.png": b"\0" * (3 * 2**20)})
    with pytest.raises(UploadTooLargeError, match="unpacks to"):
        extract_image_folder_zip(bomb, tmp_path / "x", max_bytes=2**20)
    assert not any((tmp_path / "x").iterdir())
    many = zip_bytes({f"a/{i}.png": b"" for i in range(20)})
    with pytest.raises(UploadTooLargeError, match="20 files"):
        extract_image_folder_zip(many, tmp_path / "y", max_files=10)
    big_image = zip_bytes({"cat/big.png": png((300, 300))})
    with pytest.raises(UploadTooLargeError, match="300×300"):
        extract_image_folder_zip(big_image, tmp_path / "z", max_image_pixels=50_000)
    assert not any((tmp_path / "z").iterdir())


def test_zip_escape_is_checked_by_path_not_string_prefix(tmp_path):
    dest = tmp_path / "data"
    sibling = zip_bytes({"../data-evil/x.png": png()})  # str(...).startswith(str(dest)) would pass this
    with pytest.raises(DataError, match="unsafe path"):
        extract_image_folder_zip(sibling, dest)
    assert not (tmp_path / "data-evil").exists()
    ok = extract_image_folder_zip(zip_bytes({"top/cat/1.png": png(), "top/dog/1.png": png()}), tmp_path / "ok")
    assert ok.name == "top" and sorted(p.name for p in ok.iterdir()) == ["cat", "dog"]


def test_zip_that_lies_about_its_sizes_stops_at_the_limit(tmp_path):
    data = bytearray(zip_bytes({"a/x.png": b"\0" * 2**20}))
    # shrink the declared size in both headers: the real bytes must still be counted while copying
    real = (2**20).to_bytes(4, "little")
    data = bytes(data).replace(real, (10).to_bytes(4, "little"))
    with pytest.raises((UploadTooLargeError, DataError)):
        extract_image_folder_zip(data, tmp_path / "lie", max_bytes=1000)
    assert not any((tmp_path / "lie").rglob("*.png"))


# ---------------------------------------------------------------------------------- small defects
@pytest.fixture(scope="module")
def bomb_png(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (25_000, 25_000)).save(path, optimize=True)  # 625 MP, ~76 KB on disk
    return path.read_bytes()


def test_decompression_bomb_is_an_image_load_error(bomb_png):
    with pytest.raises(ImageLoadError, match="625,000,000 pixels, more than the 50,000,000 allowed"):
        load_image_bytes(bomb_png)


@pytest.mark.slow
def test_cli_bomb_and_empty_model_are_one_line_exit_2(bomb_png, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png)
    for args in (["nullspace", "--image", str(path)], ["info", "--model", ""], ["info", "--model", " "]):
        out = subprocess.run([sys.executable, "-m", "nullviz", *args], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("nullviz: error: "), out.stderr
        assert "Traceback" not in out.stderr


def test_bad_noise_upload_names_the_users_file():
    with pytest.raises(NoiseFileError, match=r"^'my noise\.pt' is not a nullviz noise file: it is not a PyTorch"):
        load_noise_bytes(b"this is not a torch file", "my noise.pt")
    buf = io.BytesIO()
    torch.save({"something": 1}, buf)
    with pytest.raises(NoiseFileError, match="'x.pt' holds no 'delta'"):
        load_noise_bytes(buf.getvalue(), "x.pt")
    with pytest.raises(NoiseFileError, match="empty"):
        load_noise_bytes(b"", "x.pt")


def test_streamlit_config_keeps_the_watcher_out_and_stats_off():
    import tomllib

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["runner"]["postScriptGC"] is False  # a full GC after every fragment run slowed watched jobs 20 %
    from streamlit.watcher.folder_black_list import FolderBlackList

    blacklist = FolderBlackList(cfg["server"]["folderWatchBlacklist"])
    for ignored in (".venv/lib/python3.11/site-packages/torch/__init__.py", "venv/lib/python3.11/site-packages/x.py",
                    "data/cifar10/batch.bin", "runs/finetune/log.jsonl", "assets/default_model/config.json"):
        assert blacklist.is_blacklisted(str(ROOT / ignored)), ignored
    for watched in ("app.py", "pages/home.py", "nullviz/models/loading.py", "nullviz/data/sets.py"):
        assert not blacklist.is_blacklisted(str(ROOT / watched)), watched


# --------------------------------------------------------------------------------- the app, shared mode
def app(page=None, query=None) -> AppTest:
    """A session of the app; on a shared server it joins with the class code (or the workspace link in ``query``)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params.update(query or {"code": CLASS_CODE})
    at.run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def test_shared_mode_offers_uploads_not_paths(shared_server):
    at = app("pages/finetune.py")
    assert "model_checkpoint" not in {w.key for w in at.text_input}
    assert "ft_folder" not in {w.key for w in at.text_input}
    assert "ImageFolder path" not in at.selectbox(key="ft_source").options
    ws = at.session_state["workspace_id"]
    assert len(ws) >= 16 and at.query_params["ws"] in (ws, [ws])


def test_shared_mode_refuses_a_server_path_carried_in_session_state(shared_server):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params["code"] = CLASS_CODE
    at.session_state["model_spec"] = ModelSpec("default", "/etc/passwd", "cpu")
    at.run()
    assert not at.exception
    assert "shared server" in at.sidebar.error[0].value and at.session_state["model_spec"].checkpoint is None
    at.switch_page("pages/robustness.py").run()
    at.selectbox(key="rob_other").set_value("a checkpoint")
    at.button[0].click().run()
    assert not at.exception
    assert "finetune a model first" in at.error[0].value


def test_two_shared_sessions_see_only_their_own_jobs(shared_server):
    a, b = app("pages/finetune.py"), app("pages/finetune.py")
    assert a.session_state["workspace_id"] != b.session_state["workspace_id"]
    a.multiselect(key="ft_methods").set_value(["baseline"])
    a.number_input(key="ft_steps").set_value(2)
    a.number_input(key="ft_epochs").set_value(1)
    a.button[0].click().run()
    assert not a.exception and not a.error
    job_id = a.session_state["ft_job_pick"]
    b.run()
    assert not b.exception
    assert "ft_job_pick" not in {w.key for w in b.selectbox}  # b has no jobs, sees none of a's
    # a reload of a's link (same ?ws=) finds a's job
    again = app("pages/finetune.py", query={"ws": a.session_state["workspace_id"]})
    assert again.selectbox(key="ft_job_pick").value == job_id
    a_stop = [x for x in a.button if x.label == "Stop"]
    if a_stop:
        a_stop[0].click().run()


def test_oversized_image_upload_is_a_message(shared_server):
    at = app("pages/nullspace.py")
    at.file_uploader[0].upload("big.bin", b"\0" * (2 * 2**20), "image/png")
    at.run()
    assert not at.exception and "at most 1 MB" in at.error[0].value


@pytest.mark.slow
def test_two_sessions_interleaved_on_attention_while_a_job_runs(jobs_dir):
    """Two sessions on the Attention page, their runs interleaved, while a finetuning job trains.

    AppTest patches module globals while it runs a script, so two AppTests must not run in threads of one
    process; real concurrency is in test_shared_model (library, 8 threads) and test_e2e_shared (two Chromium
    contexts against one server while a job trains)."""
    starter = app("pages/finetune.py")
    starter.multiselect(key="ft_methods").set_value(["nullspace"])
    starter.number_input(key="ft_steps").set_value(100_000)
    starter.button[0].click().run()
    sessions = [app("pages/attention.py"), app("pages/attention.py")]
    values = []
    for mag in (1.0, 3.0, 0.5):
        for at in sessions:
            at.number_input(key="att_mag").set_value(mag).run()
            assert not at.exception, at.exception
            values.append(at.markdown[0].value)
    [b for b in starter.button if b.label == "Stop"][0].click().run()
    assert len(values) == 6
    for v in values:  # exact noise: the prediction is unchanged and attention moves by rounding only
        assert "Prediction clean **3**, noised **3**" in v, v
    import app_state

    queue, job_id = app_state.job_queue(), starter.session_state["ft_job_pick"]
    wait_until(lambda: queue.get(job_id).finished, 60, 0.2)
    assert queue.get(job_id).state in ("stopped", "cancelled")


def test_attention_page_bad_noise_upload_names_the_users_file(jobs_dir):
    at = app("pages/attention.py")
    at.radio(key="att_source").set_value("upload a noise file").run()
    at.file_uploader(key="att_noise_file").upload("my δ.pt", b"not a torch file", "application/octet-stream")
    at.run()
    assert not at.exception
    assert shown(at.error[0].value).startswith("'my δ.pt' is not a nullviz noise file: it is not a PyTorch file")


def test_the_server_leaves_the_jobs_cores_to_the_jobs(monkeypatch, server_env):
    """Beside a running job, 2 server threads made one δ synthesis 30× slower than 1 (OpenMP pools spinning
    against each other on the same cores)."""
    from nullviz.server import process as deploy

    for cores, jobs, expected in ((2, 1, 1), (16, 4, 1), (16, 2, 1), (3, 2, 1), (1, 1, 1)):
        monkeypatch.setattr(deploy.os, "cpu_count", lambda cores=cores: cores)
        assert deploy.server_threads(jobs) == expected
        assert deploy.threads_per_job(jobs) * jobs + deploy.server_threads(jobs) <= max(cores, 1) + 1
    monkeypatch.setattr(deploy.os, "cpu_count", lambda: 8)
    assert (deploy.threads_per_job(3), deploy.server_threads(3)) == (2, 2)
    # with fewer jobs running than may run, the server takes what they leave: every core while none runs
    assert [deploy.server_threads(3, running) for running in (0, 1, 2, 3, 7)] == [8, 6, 4, 2, 2]
    monkeypatch.undo()
    before = torch.get_num_threads()
    try:
        import app_state

        server_env(NULLVIZ_MAX_JOBS="1")
        torch.set_num_threads(1)
        app_state.fit_threads_to_jobs()  # no job runs: every core
        assert torch.get_num_threads() == deploy.server_threads(1, 0) == (deploy.os.cpu_count() or 1)
        monkeypatch.setattr(app_state.JobQueue, "running", lambda self: 1)
        app_state.fit_threads_to_jobs()  # one job runs: the cores it leaves
        cores = deploy.os.cpu_count() or 1
        assert torch.get_num_threads() == deploy.server_threads(1, 1) == max(1, cores - deploy.threads_per_job(1))
    finally:
        torch.set_num_threads(before)
