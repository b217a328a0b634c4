"""Shared fixtures: the embedded default model and small seeded random ViTs (no network anywhere)."""

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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


@pytest.fixture
def shared_server(server_env):
    """A shared-mode server (NULLVIZ_SHARED=1) with a small upload cap, its files in a temporary folder."""
    return server_env(NULLVIZ_SHARED="1", NULLVIZ_MAX_UPLOAD_MB="1")
