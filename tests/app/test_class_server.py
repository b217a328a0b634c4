"""The class server in the app (AppTest): the class-code gate, workspaces the server issued, the login that replaces
the code, model names and uploads that never reach a server path, and names shown as text."""

import pytest
from streamlit.testing.v1 import AppTest

from conftest import CLASS_CODE, ROOT, shown

TIMEOUT = 120


def session(query=None, user=None, secrets=None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params.update(query or {})
    if user is not None:
        at.user = user
    for key, value in (secrets or {}).items():
        at.secrets[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def let_in(at: AppTest) -> bool:
    return "model_spec" in at.session_state  # the app's session defaults exist only once a session is let in


def signer():
    import app_state

    return app_state.server_keys().signer


def test_without_the_code_only_the_prompt_renders(shared_server):
    at = session()
    assert not let_in(at)
    assert at.title[0].value == "nullviz · class server"
    assert [w.key for w in at.text_input] == ["access_code"] and "PASSWORD" in str(at.text_input[0].proto)
    assert len(at.button) == 1 and at.button[0].label == "Join"
    assert not at.sidebar.children  # no model sidebar
    assert not at.radio and not at.selectbox and not at.file_uploader and not at.get("plotly_chart")
    with pytest.raises(Exception):
        at.switch_page("pages/finetune.py").run()  # no page exists for this session but the prompt
    assert not list((shared_server / "jobs").glob("*/*"))


def test_the_join_link_lets_in_and_the_code_leaves_the_address(shared_server):
    at = session({"code": CLASS_CODE.lower()})
    assert let_in(at) and not at.sidebar.error
    assert "code" not in at.query_params
    assert signer().verify(at.query_params["ws"]) and at.query_params["ws"] == at.session_state["workspace_id"]


def test_the_prompt_form_lets_in(shared_server):
    at = session()
    at.text_input(key="access_code").input(CLASS_CODE)
    at.button[0].click().run()
    assert not at.exception and let_in(at)
    assert "code" not in at.query_params


def test_wrong_codes_are_slowed_then_even_the_right_one_waits(shared_server):
    at = session()
    for _ in range(5):
        at.text_input(key="access_code").input("WRONG-CODE")
        at.button[0].click().run()
        assert "not this class's code" in at.error[0].value
    at.text_input(key="access_code").input("WRONG-CODE")
    at.button[0].click().run()
    assert "try again in 30 s" in at.error[0].value
    at.text_input(key="access_code").input(CLASS_CODE)
    at.button[0].click().run()
    assert not let_in(at) and "Too many wrong codes" in at.error[0].value


def test_a_workspace_link_the_server_issued_lets_back_in_to_the_same_workspace(shared_server):
    first = session({"code": CLASS_CODE})
    ws = first.session_state["workspace_id"]
    again = session({"ws": ws})  # a reload or a bookmark: no code needed
    assert let_in(again) and again.session_state["workspace_id"] == ws


@pytest.mark.parametrize("forged", ["aaaaaaaaaaaaaaaa", "student01-------", "x" * 46])
def test_a_guessed_workspace_is_refused_never_opened(shared_server, forged):
    alone = session({"ws": forged})
    assert not let_in(alone)  # a guessed id is no key
    at = session({"code": CLASS_CODE, "ws": forged})
    assert let_in(at)
    assert at.session_state["workspace_id"] != forged and signer().verify(at.session_state["workspace_id"])
    assert at.query_params["ws"] == at.session_state["workspace_id"]
    assert "was not issued by this server" in at.sidebar.warning[0].value
    assert not (shared_server / "uploads" / forged).exists() and not (shared_server / "jobs" / forged).exists()


def test_an_open_server_says_so(server_env):
    server_env(NULLVIZ_SHARED="1", NULLVIZ_ACCESS_CODE="none")
    at = session()
    assert let_in(at)
    assert any("open to anyone" in c.value for c in at.sidebar.caption)


def test_without_a_configured_code_the_server_makes_one(server_env):
    server_env(NULLVIZ_SHARED="1")
    import app_state

    code = app_state.server_settings().access_code
    assert code and len(code) == 9
    assert not let_in(session())
    assert let_in(session({"code": code}))


AUTH = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "a-test-secret",
        "client_id": "nullviz", "client_secret": "x", "server_metadata_url": "https://login.example/.well-known"}


def test_a_configured_login_replaces_the_code_and_ties_the_workspace_to_the_user(shared_server):
    out = session({"code": CLASS_CODE}, user={"is_logged_in": False}, secrets={"auth": AUTH})
    assert not let_in(out)  # with a login configured, the code is not a way in
    assert [b.label for b in out.button] == ["Log in"]
    alice = session(user={"is_logged_in": True, "sub": "alice-1", "email": "alice@school.example"},
                    secrets={"auth": AUTH})
    assert let_in(alice)
    assert alice.session_state["workspace_id"] == signer().for_identity("alice-1")
    assert "ws" not in alice.query_params  # the login is the key, not a link
    again = session(user={"is_logged_in": True, "sub": "alice-1"}, secrets={"auth": AUTH})
    assert again.session_state["workspace_id"] == alice.session_state["workspace_id"]
    bob = session(user={"is_logged_in": True, "sub": "bob-2"}, secrets={"auth": AUTH})
    assert bob.session_state["workspace_id"] != alice.session_state["workspace_id"]


# ------------------------------------------------------------------------------------- names and paths
def with_spec(spec, ws: str | None = None) -> AppTest:
    """A session let in through a workspace link (``ws``, else a fresh one) whose model is ``spec`` from its first
    run (AppTest draws the sidebar on a session's first run only)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params["ws"] = ws or signer().issue()
    at.session_state["model_spec"] = spec
    at.run()
    assert not at.exception, at.exception
    return at


def test_hf_paths_are_refused_with_one_message_whether_the_folder_exists_or_not(shared_server, tmp_path):
    from nullviz.models import ModelSpec

    (tmp_path / "real-folder").mkdir(exist_ok=True)
    messages = set()
    for name in ("hf:assets/../../../../etc", "hf:/etc", "hf:~/.ssh", "hf:/no/such/folder", f"hf:{tmp_path}/real-folder",
                 "hf:assets/../../../../root/.ssh", "local-dir:/etc"):
        at = with_spec(ModelSpec(name, None, "cpu"))
        messages.add(shown(at.sidebar.error[0].value))
        assert at.session_state["model_spec"].name == "digits"  # back on the default model: nothing lost
    assert len(messages) == 1 and "not a path on the server" in messages.pop()


def test_a_header_only_checkpoint_naming_vit_l_is_refused_by_its_name(shared_server, tmp_path):
    from safetensors.torch import save_file

    from nullviz.models import ModelSpec
    from nullviz.server.settings import ServerSettings, Workspace

    ws = Workspace(signer().issue(), ServerSettings.from_env())
    header = tmp_path / "h.safetensors"
    save_file({}, str(header), metadata={"arch": "vit_large_patch16_224"})
    path = ws.save_upload("vit-l-header.safetensors", header.read_bytes(), (".safetensors",))
    at = with_spec(ModelSpec("default", str(path), "cpu"), ws.id)
    message = shown(at.sidebar.error[0].value)
    assert message.startswith("'vit-l-header.safetensors (vit_large_patch16_224)' has 304.3 M parameters")
    assert str(shared_server) not in message and ws.id not in message


def test_an_uploaded_model_folder_is_named_by_its_upload_never_its_path(shared_server, tmp_path):
    from test_access import tiny_model_folder_zip

    from nullviz.models import ModelSpec
    from nullviz.server.settings import ServerSettings, Workspace

    ws = Workspace(signer().issue(), ServerSettings.from_env())
    folder = ws.save_model_folder_zip("class-vit.zip", tiny_model_folder_zip(tmp_path))
    at = with_spec(ModelSpec(f"hf:{folder}", None, "cpu"), ws.id)
    assert not at.sidebar.error
    everything = " ".join(shown(c.value) for c in at.sidebar.caption)
    assert "hf:class-vit" in everything and str(shared_server) not in everything and ws.id not in everything
    at.switch_page("pages/model.py").run()
    assert shown(at.subheader[0].value) == "hf:class-vit"


def test_a_file_name_is_shown_as_text(shared_server):
    at = session({"code": CLASS_CODE})
    at.switch_page("pages/nullspace.py").run()
    name = "![t](http://127.0.0.1:9/x.png).png"
    at.file_uploader[0].upload(name, b"not an image", "image/png")
    at.run()
    assert not at.exception
    error = at.error[0].value
    assert error.startswith(r"!\[t\](http\://127.0.0.1:9/x.png).png: ") and shown(error).startswith(name)


def test_the_finetune_page_estimates_before_start_and_refuses_past_the_budget(shared_server):
    at = session({"code": CLASS_CODE})
    at.switch_page("pages/finetune.py").run()
    at.multiselect(key="ft_methods").set_value(["baseline"])
    [b for b in at.button if b.label == "Estimate time"][0].click().run()
    assert not at.exception and not at.error
    estimate = [c.value for c in at.caption if c.value.startswith("These settings: about")]
    assert estimate and "on this machine" in estimate[0] and "at most 60 minutes" in estimate[0]
    assert not list((shared_server / "jobs").glob("*/*"))  # nothing started
    at.number_input(key="ft_epochs").set_value(1000)
    at.number_input(key="ft_steps").set_value(100_000)
    [b for b in at.button if b.label == "Start"][0].click().run()
    assert "this server runs jobs of at most 60 minutes" in at.error[0].value
    assert not list((shared_server / "jobs").glob("*/*"))


def test_the_frontier_is_bounded_on_a_shared_server(shared_server):
    at = session({"code": CLASS_CODE})
    at.switch_page("pages/nullspace.py").run()
    at.radio(key="ns_mode").set_value("Approximate — encoder level").run()
    at.number_input(key="ns_steps").set_value(3)
    [b for b in at.button if b.label == "Make noise"][0].click().run()
    assert any("traces at most 12 syntheses and 3,000 synthesis steps" in c.value for c in at.caption)
    at.text_input(key="ns_sweep_steps").set_value("100000")
    [b for b in at.button if b.label == "Trace the frontier"][0].click().run()
    assert not at.exception and "at most 3,000 synthesis steps in all on this server" in at.error[0].value
    assert "ns_frontier" not in at.session_state  # refused before a synthesis ran


def test_work_in_the_server_stops_once_its_session_is_gone(monkeypatch):
    import types

    import streamlit.runtime as runtime_module
    import streamlit.runtime.scriptrunner as scriptrunner

    import app_state

    active = {"abc": True}
    fake = types.SimpleNamespace(is_active_session=lambda sid: active.get(sid, False))
    monkeypatch.setattr(runtime_module, "get_instance", lambda: fake)
    monkeypatch.setattr(scriptrunner, "get_script_run_ctx", lambda: types.SimpleNamespace(session_id="abc"))
    gone = app_state.session_gone()
    assert gone() is False
    active["abc"] = False  # the tab closed
    assert gone() is True
