"""The Nullspace page on the cluttered model synthesizes with every measured setting of that model."""

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT, _fresh_server
from nullviz.noise.approximate import default_synthesis_config


@pytest.mark.slow
def test_the_page_uses_the_cluttered_models_measured_selection_margin(monkeypatch, tmp_path):
    """The page once rebuilt its config from the form alone and lost the model's ε/2 margin: δ was kept inside ε
    on validation and came out outside ε on the unseen scenes (seen in Chromium)."""
    _fresh_server(monkeypatch, tmp_path, NULLVIZ_DEFAULT_MODEL="cluttered")
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
        at.switch_page("pages/nullspace.py").run()
        at.radio(key="ns_mode").set_value("Approximate — encoder level").run()
        at.number_input(key="ns_steps").set_value(3)
        at.button[0].click().run()
        assert not at.exception and not at.error
        res = at.session_state["current_noise"].synthesis
        measured = default_synthesis_config("nullviz_cluttered_vit")
        assert measured.selection_margin == 0.5
        assert (res.config.selection_margin, res.config.lam, res.config.check_every) == (
            measured.selection_margin, measured.lam, measured.check_every)
    finally:
        import app_state

        app_state.server_settings.clear()
