"""server.py's own pieces, without starting a server: the in-memory immutable assets, the start-up thread."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

import server

IMMUTABLE = [(b"content-type", b"text/javascript"), (b"cache-control", b"public, immutable, max-age=31536000")]


class FakeStreamlit:
    """An ASGI app that answers every request with ``headers`` and a body in two parts, and counts its calls."""

    def __init__(self, headers, status=200):
        self.headers, self.status, self.calls = headers, status, 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"export const a", "more_body": True})
        await send({"type": "http.response.body", "body": f" = {self.calls};".encode()})


def _run(coroutine):
    """``asyncio.run`` in a thread of its own: Playwright's sync API (the browser tests' session) keeps a loop
    running in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def get(app, path, headers=()):
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": list(headers)}
    _run(app(scope, None, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_an_immutable_asset_is_read_once_and_then_sent_from_memory():
    streamlit = FakeStreamlit(IMMUTABLE)
    app = server.ImmutableAssetsFromMemory(streamlit)
    first = get(app, "/static/js/index.abc.js")
    assert first == (200, b"export const a = 1;")
    assert get(app, "/static/js/index.abc.js") == first  # the same bytes, Streamlit not asked again
    assert streamlit.calls == 1
    assert app.size == len(first[1])
    assert get(app, "/static/js/other.def.js") == (200, b"export const a = 2;")  # each file its own entry
    assert streamlit.calls == 2


@pytest.mark.parametrize("path, headers, response_headers, status", [
    ("/static/js/index.abc.js", [(b"range", b"bytes=0-3")], IMMUTABLE, 200),  # part of a file
    ("/static/js/index.abc.js", [(b"if-none-match", b'"x"')], IMMUTABLE, 200),  # only if changed
    ("/static/js/index.abc.js", [], [(b"cache-control", b"no-cache")], 200),  # may change: index.html, health
    ("/static/js/missing.js", [], IMMUTABLE, 404),  # an error is never kept
    ("/_stcore/host-config", [], IMMUTABLE, 200),  # not a static file
])
def test_everything_else_goes_to_streamlit_every_time(path, headers, response_headers, status):
    streamlit = FakeStreamlit(response_headers, status)
    app = server.ImmutableAssetsFromMemory(streamlit)
    assert get(app, path, headers)[1] == b"export const a = 1;"
    assert get(app, path, headers)[1] == b"export const a = 2;"
    assert streamlit.calls == 2 and app.responses == {}


def test_the_memory_kept_has_a_bound():
    streamlit = FakeStreamlit(IMMUTABLE)
    app = server.ImmutableAssetsFromMemory(streamlit)
    app.MAX_BYTES = 30  # room for one 19-byte file, not two
    get(app, "/static/js/a.js")
    get(app, "/static/js/b.js")
    assert list(app.responses) == ["/static/js/a.js"] and app.size == 19


def _os_threads() -> set[int]:
    """The ids of this process's OS threads (OpenMP's workers included)."""
    import os

    return {int(t) for t in os.listdir("/proc/self/task")}


def _new_threads(before: set[int]) -> set[int]:
    """Threads alive now that were not in ``before``, less the job queue's reapers: earlier tests' jobs end and
    start in the background (a reaper per worker), and a thread of theirs that ends or starts is not this test's."""
    import threading

    reapers = {t.native_id for t in threading.enumerate() if t.name.startswith("reap-")}
    return _os_threads() - before - reapers


def test_start_up_work_runs_in_a_thread_that_ends_with_its_openmp_workers():
    """The server's start-up torch work ran in asyncio.to_thread's pool, whose idle thread kept its OpenMP worker:
    libgomp then counted more threads than cores and every later torch team slept at its barriers (the page's δ
    13–16 s instead of 11 s). Run in a thread that ends, the work leaves no thread behind."""
    import time

    import torch

    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread: no OpenMP team to leave behind")

    def parallel_work():
        return float((torch.ones(2**22) * 2).sum())  # large enough for a parallel region of every thread

    before = _os_threads()
    assert _run(server.in_a_thread_that_ends(parallel_work, "test-warm")) == 2.0 * 2**22
    deadline = time.monotonic() + 10
    while _new_threads(before) and time.monotonic() < deadline:
        time.sleep(0.05)  # (the worker unwinds after its master has returned)
    assert _new_threads(before) == set()

    async def with_to_thread():  # the old way, for contrast: its thread and its OpenMP worker stay
        loop = asyncio.get_running_loop()
        start = _os_threads()
        loop.set_default_executor(pool := ThreadPoolExecutor(1))
        await asyncio.to_thread(parallel_work)
        lingering = _new_threads(start)
        pool.shutdown()
        return lingering

    assert len(_run(with_to_thread())) >= 2  # the pool's thread and its OpenMP worker


def test_a_failure_in_the_start_up_thread_reaches_the_server():
    def fails():
        raise RuntimeError("no model")

    with pytest.raises(RuntimeError, match="no model"):
        _run(server.in_a_thread_that_ends(fails, "test-warm-fails"))


def test_the_servers_openmp_workers_spin_briefly_unless_the_operator_chose(monkeypatch):
    """server.py sets GOMP_SPINCOUNT before anything loads torch (libgomp reads it once), unless one is set."""
    import os
    import subprocess
    import sys

    import torch  # noqa: F401 (loaded, as in any test process)

    from nullviz.server.process import SERVER_OPENMP_SPIN, short_openmp_spin

    env: dict[str, str] = {}
    assert short_openmp_spin(env) is False and env == {}  # torch is loaded: too late to matter, so not set
    monkeypatch.delitem(sys.modules, "torch")  # as if torch were not loaded yet
    assert short_openmp_spin(env) is True and env == {"GOMP_SPINCOUNT": str(SERVER_OPENMP_SPIN)}
    for chosen in ({"GOMP_SPINCOUNT": "300000"}, {"OMP_WAIT_POLICY": "ACTIVE"}):
        assert short_openmp_spin(dict(chosen)) is False
    probe = ("import os, sys; import server; "
             "print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)")
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", probe], env=clean, capture_output=True, text=True, check=True,
                         cwd=server.ROOT).stdout.split()
    assert out == [str(SERVER_OPENMP_SPIN), "False"]  # set, and torch not yet loaded when it was
    out = subprocess.run([sys.executable, "-c", probe], env={**clean, "GOMP_SPINCOUNT": "123"}, capture_output=True,
                         text=True, check=True, cwd=server.ROOT).stdout.split()
    assert out == ["123", "False"]


# ------------------------------------------------------------------------------------------ shared mode
def test_shared_mode_configures_streamlit_and_prints_the_join_link(server_env, monkeypatch, capsys):
    from streamlit import config

    from conftest import CLASS_CODE

    server_env(NULLVIZ_SHARED="1", NULLVIZ_ACCESS_CODE=CLASS_CODE, NULLVIZ_MAX_UPLOAD_MB="7",
               NULLVIZ_ALLOWED_HOSTS="class.example.org")
    monkeypatch.setattr(server.SharedModeGuard, "hosts", None)
    before = {k: config.get_option(k) for k in ("server.allowedHosts", "client.showErrorDetails",
                                                 "server.maxUploadSize", "server.address", "server.port")}
    try:
        config.set_option("server.address", "127.0.0.1")
        config.set_option("server.port", 8611)
        server.configure_shared_mode()
        assert config.get_option("server.allowedHosts") == ["127.0.0.1", "::1", "class.example.org", "localhost"]
        assert config.get_option("client.showErrorDetails") == "none"  # no traceback on any screen
        assert config.get_option("server.maxUploadSize") == 7  # Streamlit's own upload route refuses more
        assert server.SharedModeGuard.hosts == config.get_option("server.allowedHosts")
        log = capsys.readouterr().err
        assert f"students join at http://127.0.0.1:8611/?code={CLASS_CODE}" in log
    finally:
        for key, value in before.items():
            config.set_option(key, value)


def test_an_open_shared_server_says_so_loudly(server_env, monkeypatch, capsys):
    server_env(NULLVIZ_SHARED="1", NULLVIZ_ACCESS_CODE="none")
    monkeypatch.setattr(server.SharedModeGuard, "hosts", None)
    from streamlit import config

    before = {k: config.get_option(k) for k in ("server.allowedHosts", "client.showErrorDetails", "server.maxUploadSize")}
    try:
        server.configure_shared_mode()
        assert "WARNING: NO CLASS CODE" in capsys.readouterr().err
    finally:
        for key, value in before.items():
            config.set_option(key, value)


def test_the_guard_refuses_foreign_hosts_and_cache_clearing_messages(monkeypatch):
    from streamlit.proto.BackMsg_pb2 import BackMsg

    monkeypatch.setattr(server.SharedModeGuard, "hosts", ["127.0.0.1", "localhost"])
    inner = FakeStreamlit([(b"content-type", b"text/plain")])
    guard = server.SharedModeGuard(inner)
    assert get(guard, "/", headers=[(b"host", b"evil.example:8501")])[0] == 403 and inner.calls == 0
    assert get(guard, "/", headers=[(b"host", b"127.0.0.1:8501")])[0] == 200

    def message(**kind) -> dict:
        msg = BackMsg()
        for k, v in kind.items():
            setattr(msg, k, v)
        return {"type": "websocket.receive", "bytes": msg.SerializeToString()}

    incoming = [message(clear_cache=True), message(debug_shutdown_runtime=True), message(stop_script=True),
                {"type": "websocket.disconnect"}]
    passed = []

    async def app(scope, receive, send):
        while (m := await receive())["type"] != "websocket.disconnect":
            msg = BackMsg()
            msg.ParseFromString(m["bytes"])
            passed.append(msg.WhichOneof("type"))

    async def receive():
        return incoming.pop(0)

    scope = {"type": "websocket", "path": "/_stcore/stream", "headers": [(b"host", b"localhost:8501")]}
    _run(server.SharedModeGuard(app)(scope, receive, None))
    assert passed == ["stop_script"]  # clear_cache and the debug message never reach Streamlit


def test_retention_is_swept_ten_times_per_retention_at_most_hourly():
    assert server.retention_interval(7) == server.RETENTION_EVERY_S == 3600  # a week: hourly
    assert server.retention_interval(0.01) == pytest.approx(86.4)  # a soak's quarter hour: every 86 s
