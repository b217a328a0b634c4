"""Shared fixtures: the embedded default model and small seeded random ViTs (no network anywhere)."""

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

from nullviz.models import create_random_vit, load_model  # noqa: E402

#: The app's pages are tested on the fastest embedded model (the digits ViT); tests of the cluttered model, the
#: app's shipped default, set NULLVIZ_DEFAULT_MODEL themselves. Set before app_state reads the settings.
os.environ.setdefault("NULLVIZ_DEFAULT_MODEL", "digits")

#: CI runs everything on CPU; on a GPU machine, NULLVIZ_TEST_DEVICE=cuda runs the model fixtures there.
DEVICE = os.environ.get("NULLVIZ_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def default_lm():
    return load_model("default", device=DEVICE)


@pytest.fixture(scope="session")
def tiny_lm():
    """A seeded 32×32 ViT with 8×8 patches and D = 64 (nullity ≥ 128), 2 blocks, 2 heads."""
    return create_random_vit("vit_tiny_patch16_224", seed=0, img_size=32, patch_size=8, embed_dim=64, depth=2,
                             num_heads=2, num_classes=5, device=DEVICE)


@pytest.fixture
def digit_x(default_lm):
    from nullviz.data import sample_image

    return default_lm.preprocess(sample_image("digit-3"))


def shown(markdown: str) -> str:
    """What a reader sees of Streamlit markdown source that escapes names (``nullviz\\_digits`` → ``nullviz_digits``):
    the app shows every file, class and model name as text, so AppTest's ``.value`` holds it escaped."""
    return re.sub(r"\\(.)", r"\1", markdown)


def wait_until(condition, timeout: float = 120, interval: float = 0.1, describe=lambda: "timed out"):
    """Poll ``condition()`` until it returns something true (returned) or ``timeout`` seconds pass
    (AssertionError with ``describe()``): the one wait of the tests on other processes (jobs, servers, ranks)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(describe())
        time.sleep(interval)


def state_snapshot(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: torch.nn.Module, snap: dict) -> None:
    now = model.state_dict()
    assert now.keys() == snap.keys()
    for k in snap:
        assert torch.equal(now[k], snap[k]), k


def _fresh_server(monkeypatch, data_dir, **env):
    """Point the app's cached server settings and job queue at ``data_dir`` (and extra NULLVIZ_* env)."""
    import app_state

    monkeypatch.setenv("NULLVIZ_DATA_DIR", str(data_dir))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    app_state.server_settings.clear()
    app_state.server_keys.clear()
    app_state.job_queue.clear()


@pytest.fixture
def server_env(tmp_path, monkeypatch):
    """Call with NULLVIZ_* settings: the app's server then keeps its files under tmp_path with those settings;
    restored to the default server afterwards."""
    def configure(**env):
        _fresh_server(monkeypatch, tmp_path, **env)
        return tmp_path

    yield configure
    monkeypatch.undo()
    _fresh_server(monkeypatch, Path(tempfile.gettempdir()) / "nullviz")
    monkeypatch.undo()


@pytest.fixture
def jobs_dir(server_env):
    """A local-mode server whose jobs live under a temporary folder."""
    return server_env() / "jobs"


#: The class code of the tests' shared servers (a session passes it as ?code=, as a join link does).
CLASS_CODE = "TEST-CODE-42"


@pytest.fixture
def shared_server(server_env):
    """A shared-mode server (NULLVIZ_SHARED=1) with a small upload cap and the class code :data:`CLASS_CODE`, its
    files in a temporary folder."""
    return server_env(NULLVIZ_SHARED="1", NULLVIZ_MAX_UPLOAD_MB="1", NULLVIZ_ACCESS_CODE=CLASS_CODE)


# -- Checkpoints and caches made on the spot (no network)

def fake_hub_cache(root, repo: str, state: dict) -> None:
    """A Hugging Face hub cache holding ``repo``'s model.safetensors, in the hub's own layout."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "snapshots" / commit / "model.safetensors"))


def imagenet_like_checkpoint(tmp_path) -> str:
    """A small random 1,000-class timm ViT saved as a checkpoint its sidecar describes (no network)."""
    from safetensors.torch import save_file

    from nullviz.models import create_random_vit

    arch_kwargs = dict(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2)
    lm = create_random_vit("vit_tiny_patch16_224", seed=0, num_classes=1000, **arch_kwargs)
    path = tmp_path / "imagenet_like.safetensors"
    save_file({k: v.contiguous() for k, v in lm.model.state_dict().items()}, str(path))
    import json

    path.with_suffix(".json").write_text(json.dumps({"arch": "vit_tiny_patch16_224", "arch_kwargs": arch_kwargs}))
    return str(path)


# -- A real server and a real browser (tests marked `browser`)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class ServerURL(str):
    """A running test server's address; ``log`` is the path of everything the server printed."""
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def streamlit_server(env: dict | None = None):
    """`streamlit run server.py` (as run.sh starts it) on a free local port, with extra environment variables;
    yields its URL once it answers its health check."""
    port = _free_port()
    log = Path(tempfile.mkdtemp(prefix="nullviz-server-")) / "server.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "server.py"), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
    url = ServerURL(f"http://127.0.0.1:{port}")
    url.log = log
    try:
        wait_until(lambda: _healthy(url) or proc.poll() is not None, 90, 0.3)
        started = proc.poll() is None  # it answered, rather than exited
    except AssertionError:  # no answer within 90 s
        started = False
    try:
        if not started:
            proc.kill()
            pytest.fail("streamlit did not start: " + url.output())
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(log.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def browser():
    """Debian's headless Chromium through Playwright (never `playwright install`); one for the whole run."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            raise RuntimeError("Chromium is required for the browser tests in CI (apt-get install -y chromium)")
        pytest.skip("Debian chromium is not installed here")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
