"""A hostile client against a real shared server (`NULLVIZ_SHARED=1 streamlit run server.py`): raw websocket
sessions with no cookie, no Origin and no XSRF token, forged workspace links, foreign Host headers, developer
messages, and Chromium for the prompt and for names that try to be markdown.

The wrong-code test runs last: it locks 127.0.0.1 out of the server for half a minute."""

import http.client
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest
from PIL import Image
from playwright.sync_api import expect

from conftest import CLASS_CODE, streamlit_server, wait_until
from helpers.streamlit_client import RawClient, handshake_refused, upload, xsrf_cookie

PAGES = ["", "model", "nullspace", "attention", "finetune", "robustness", "learn"]
PROMPT_ONLY = {"heading", "text_input", "button"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("class-server")
    with streamlit_server({"NULLVIZ_SHARED": "1", "NULLVIZ_ACCESS_CODE": CLASS_CODE, "NULLVIZ_DATA_DIR": str(data),
                           "NULLVIZ_MAX_UPLOAD_MB": "2"}) as url:
        url.data = data
        yield url


def joined(url, page="", query=f"code={CLASS_CODE}"):
    client = RawClient(url)
    return client, client.rerun(query_string=query, page_name=page)


def http_status(url: str, host: str) -> int:
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    conn.request("GET", "/", headers={"Host": host})
    status = conn.getresponse().status
    conn.close()
    return status


# --------------------------------------------------------------------------------------- raw clients
@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_without_the_code_every_page_is_the_prompt_only(server, page):
    with RawClient(server) as client:
        run = client.rerun(page_name=page)
        assert run.finished and set(run.kinds()) == PROMPT_ONLY, run.kinds()
        assert "Class code" in run.text() and "Join" in run.text()
        assert run.pages == [run.pages[0]] and len(run.pages) == 1  # no page but the prompt is offered
    assert not list((server.data / "jobs").glob("*/*")) and not list((server.data / "uploads").glob("*/*"))


@pytest.mark.slow
def test_the_code_lets_a_raw_client_in_and_leaves_the_address(server):
    client, run = joined(server, "finetune")
    with client:
        assert "radio" in run.kinds() and "file_uploader" in run.kinds()  # the app, its sidebar and the page
        assert run.query_string and run.query_string.startswith("ws=") and "code" not in run.query_string


@pytest.mark.slow
@pytest.mark.parametrize("forged", ["aaaaaaaaaaaaaaaa", "student01-------", "A" * 46])
def test_a_guessed_workspace_link_opens_nothing(server, forged):
    with RawClient(server) as client:
        run = client.rerun(query_string=f"ws={forged}", page_name="finetune")
        assert set(run.kinds()) == PROMPT_ONLY
    client, run = joined(server, "finetune", f"code={CLASS_CODE}&ws={forged}")
    with client:
        assert forged not in (run.query_string or "") and run.query_string.startswith("ws=")
        assert "was not issued by this server" in run.text()
    assert not (server.data / "uploads" / forged).exists() and not (server.data / "jobs" / forged).exists()


@pytest.mark.slow
def test_an_issued_workspace_link_lets_back_in(server):
    client, run = joined(server)
    client.close()
    again, run2 = joined(server, "finetune", run.query_string)
    with again:
        assert "radio" in run2.kinds() and run2.query_string in (None, run.query_string)  # None: left as it was


@pytest.mark.slow
def test_a_foreign_host_is_refused_and_the_own_is_not(server):
    port = urlparse(server).port
    assert handshake_refused(server, {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"})
    assert http_status(server, f"evil.example:{port}") == 403
    assert not handshake_refused(server, {})
    assert http_status(server, f"127.0.0.1:{port}") == 200
    assert http_status(server, f"localhost:{port}") == 200


@pytest.mark.slow
def test_no_client_message_empties_the_shared_caches(server):
    loads = "model 'nullviz_digits_vit' loaded into the shared cache"
    client, run = joined(server, "attention")
    assert run.finished
    before = server.output().count(loads)
    for kind in ("clear_cache", "clear_cache", "set_run_on_save", "debug_shutdown_runtime"):
        client.send_kind(kind)
    client.close()
    wait_until(lambda: server.output().count("refused a client's") >= 4, 30)
    other, run2 = joined(server, "attention")
    with other:
        assert "radio" in run2.kinds()
    assert server.output().count(loads) == before == 1  # the default model was built once, at start
    assert http_status(server, urlparse(server).netloc) == 200  # the runtime is still up


@pytest.mark.slow
def test_the_upload_cap_is_enforced_by_the_server_not_only_the_browser(server):
    """NULLVIZ_MAX_UPLOAD_MB=2 is Streamlit's own server.maxUploadSize too: a client that skips the browser's check
    is refused by the upload route."""
    client, run = joined(server, "nullspace")
    with client:
        assert client.session_id and "file_uploader" in run.kinds()
        cookie = xsrf_cookie(server)
        assert upload(server, client.session_id, 3 * 2**20, cookie) == 413
        assert upload(server, client.session_id, 100, cookie) == 204
        assert upload(server, client.session_id, 100, None) == 403  # and never without the XSRF token


# ------------------------------------------------------------------------------------------- Chromium
@pytest.mark.browser
def test_a_student_joins_with_the_code_in_chromium(server, browser):
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(server + "/attention")
    page.get_by_label("Class code", exact=True).fill(CLASS_CODE.lower())
    page.get_by_role("button", name="Join").click()
    expect(page.locator("[data-testid='stSidebar']").get_by_text("Shared server")).to_be_visible(timeout=90_000)
    wait_until(lambda: "ws=" in page.url, 30)
    assert "code" not in page.url
    page.reload()  # the workspace link lets the same student back in
    expect(page.locator("[data-testid='stSidebar']").get_by_text("Shared server")).to_be_visible(timeout=90_000)
    assert page.get_by_label("Class code", exact=True).count() == 0


class Counter(BaseHTTPRequestHandler):
    hits: list = []

    def do_GET(self):  # noqa: N802 — http.server's name
        Counter.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.browser
def test_a_markdown_image_file_name_fetches_nothing(server, browser):
    listener = ThreadingHTTPServer(("127.0.0.1", 0), Counter)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    port = listener.server_address[1]
    try:
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        requested = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(server + f"/nullspace?code={CLASS_CODE}")
        uploader = page.locator("[data-testid='stMain'] input[type='file']").first
        uploader.wait_for(state="attached", timeout=90_000)
        name = f"![t](http://127.0.0.1:{port}/x.png)[c](javascript:alert(1)).png"
        uploader.set_input_files(files=[{"name": name, "mimeType": "image/png", "buffer": b"not an image"}])
        expect(page.get_by_text(name + ": The file is not an image").first).to_be_visible(timeout=60_000)  # as text
        uploader.set_input_files(files=[{"name": name, "mimeType": "image/png", "buffer": png_bytes()}])
        expect(page.get_by_text(name + ": The file is not an image")).to_have_count(0, timeout=60_000)  # taken
        time.sleep(3)
        assert Counter.hits == [] and not [u for u in requested if f":{port}/" in u]
        assert page.locator("a[href^='javascript']").count() == 0
        assert page.locator(f"img[src*=':{port}/']").count() == 0
    finally:
        listener.shutdown()


@pytest.mark.browser
def test_an_uploaded_model_folder_loads_and_is_named_by_its_upload(server, browser, tmp_path):
    from test_access import tiny_model_folder_zip

    data = tiny_model_folder_zip(tmp_path)
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(server + f"/model?code={CLASS_CODE}")
    sidebar = page.locator("[data-testid='stSidebar']")
    sidebar.get_by_text("Upload a checkpoint").click(timeout=90_000)
    sidebar.locator("input[type='file']").set_input_files(
        files=[{"name": "class-vit.zip", "mimeType": "application/zip", "buffer": data}])
    expect(sidebar.get_by_text("class-vit.zip")).to_be_visible(timeout=30_000)
    sidebar.get_by_role("button", name="Load model").click()
    expect(sidebar.get_by_text("hf:class-vit")).to_be_visible(timeout=90_000)
    expect(page.get_by_role("heading", name="hf:class-vit")).to_be_visible(timeout=30_000)
    text = page.locator("body").inner_text()
    assert str(server.data) not in text and "/uploads/" not in text


# ----------------------------------------------------------------------------- last: it locks us out
@pytest.mark.slow
def test_wrong_codes_are_slowed_per_client(server):
    with RawClient(server) as client:
        messages = [client.rerun(query_string="code=WRONG-CODE-0").text() for _ in range(6)]
        assert all("is not this class" in m for m in messages), messages
        assert "try again in 30 s" in messages[-1]
        right = client.rerun(query_string=f"code={CLASS_CODE}")
        assert "Too many wrong codes" in right.text() and set(right.kinds()) <= PROMPT_ONLY | {"alert"}
