"""The web server `bash run.sh` starts: Streamlit serving app.py, plus one fix for links into a page.

Opened at a page's own address (``/learn?present=1&step=4``, or a reload of ``/attention``), Streamlit's
browser code looks for its server first under that page's path: ``/learn/_stcore/health`` and ``/learn/_stcore/
host-config`` both answered 404 on every such load (streamlit/streamlit#7074), a log full of errors in a
classroom's browsers. The pages' HTML now names the server's root as the place to connect to
(``window.__streamlit.BACKEND_BASE_URL``, Streamlit's documented hook for hosts), so the browser asks the root
only. Streamlit's hashed, immutable script and font files are kept in memory once sent
(:class:`ImmutableAssetsFromMemory`), and its chart library is imported while the first page sits idle
(:func:`idle_import_script`). Everything else is Streamlit's own server: ``streamlit run server.py``
finds ``app`` below.

In shared mode (a class) it also guards the door (:class:`SharedModeGuard`): requests whose Host is not one
this server answers to are refused (DNS rebinding), and no client message can clear the shared caches or reach
Streamlit's developer actions; :func:`configure_shared_mode` sets Streamlit's own options to match and prints
the class code's join link.

It also starts warm: before it reports ready, it imports the library, loads the default model and the Home
page's picture into the shared caches and prepares the default model's training images for the Nullspace
page's approximate δ (in a worker thread), so no visitor waits for them or shares the cores with them.
"""

import asyncio
import contextlib
import functools
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nullviz.server.process import short_openmp_spin

short_openmp_spin()  # before anything loads torch (libgomp reads it once)

import streamlit as st  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

ROOT = Path(__file__).resolve().parent


def base_url_script() -> bytes:
    """Before Streamlit's own scripts: the server is at this origin's root (or at ``server.baseUrlPath`` when
    one is set), whatever the page's path."""
    base = "/" + str(st.config.get_option("server.baseUrlPath") or "").strip("/")
    base = base if base.endswith("/") else base + "/"
    return ("<script>window.__streamlit = Object.assign(window.__streamlit || {}, "
            f"{{BACKEND_BASE_URL: window.location.origin + {base!r}}});</script>").encode()


#: Streamlit chunks the first page loads lazily (the sidebar's widgets, the Home picture, the style sheets),
#: preloaded from the page's HTML: they then arrive while the browser is still parsing the main bundle instead of
#: queuing six at a time (HTTP/1.1) behind each other once the page asks for them.
FIRST_PAGE_CHUNKS = ("Radio", "Selectbox", "TextInput", "ImageList", "Html", "Button")


def chunk_files(chunks: tuple[str, ...]) -> list[str]:
    """The file names of Streamlit's script chunks ``chunks`` (``Radio`` → ``Radio.<hash>.js``)."""
    js = Path(st.__file__).resolve().parent / "static" / "static" / "js"
    return sorted(p.name for p in js.glob("*.js") if p.name.split(".", 1)[0] in chunks)


@functools.cache
def preload_links() -> bytes:
    return "".join(f'<link rel="modulepreload" crossorigin href="./static/js/{n}">'
                   for n in chunk_files(FIRST_PAGE_CHUNKS)).encode()


#: Streamlit's chart chunk (Plotly, 4.7 MB), imported once the page has drawn and the browser is idle: every page
#: but Home draws Plotly figures, and the first one paid ~1.5 s of a core to load it — on the Nullspace page, in
#: the middle of the default δ, on the two cores the δ ran on (with it imported first: the δ 13.1/14.1 s in
#: Chromium instead of 14.2/15.3 s, Chromium 2.5 instead of 3.6–4.0 CPU-s).
IDLE_CHUNKS = ("PlotlyChart",)
#: After the page's load event; the first page's own figure comes first.
IDLE_IMPORT_AFTER_MS = 3000


@functools.cache
def idle_import_script() -> bytes:
    """Imports :data:`IDLE_CHUNKS` from the same address Streamlit's own code imports them from (the module is
    then evaluated once and the first chart only renders); a failed import costs nothing but the request."""
    imports = "".join(f"import('./static/js/{n}').catch(() => {{}});" for n in chunk_files(IDLE_CHUNKS))
    return ("<script>addEventListener('load', () => setTimeout(() => (self.requestIdleCallback || setTimeout)"
            f"(() => {{ {imports} }}), {IDLE_IMPORT_AFTER_MS}));</script>").encode()


ASSET_PARTS = ("/_stcore/", "/static/", "/media/", "/component/", "/app/static/")


def _is_asset(path: str) -> bool:
    """Streamlit's own files and endpoints (scripts, fonts, media, the websocket): never a page."""
    return any(part in path for part in ASSET_PARTS) or path.rsplit("/", 1)[-1].count(".") > 0


class ImmutableAssetsFromMemory:
    """ASGI middleware: Streamlit's hashed, immutable script, style and font files (``Cache-Control: immutable``),
    kept in memory after their first request and sent in one message from then on.

    A page load asks for ~100 of them, six at a time. Streamlit's file response reads each in 64-KB chunks, one
    worker-thread hop (and one turn of the GIL) per chunk, so while the server computes anything else (another
    visitor's page) every file waits on it again; from memory, a second visitor's first figure came 0.2 s sooner
    (2.03 s against 2.24 s, mean of 4 interleaved runs on 2 cores). Requests that ask for part of a file or only
    for changes go to Streamlit as before."""

    MAX_BYTES = 64 * 2**20  # Streamlit's whole static folder is ~20 MB; a page load uses ~6 MB of it

    def __init__(self, app):
        self.app = app
        self.responses: dict[str, tuple[dict, bytes]] = {}
        self.size = 0

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") != "GET" or "/static/" not in path or any(
                k.lower() in (b"range", b"if-none-match", b"if-modified-since") for k, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        if path in self.responses:
            start, body = self.responses[path]
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        start, body = None, []

        async def keep(message):
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if not message.get("more_body"):
                    self._remember(path, start, b"".join(body))
            await send(message)

        await self.app(scope, receive, keep)

    def _remember(self, path: str, start: dict | None, body: bytes) -> None:
        headers = dict((start or {}).get("headers") or [])
        if (start is None or start.get("status") != 200 or b"immutable" not in headers.get(b"cache-control", b"")
                or b"content-encoding" in headers or path in self.responses or self.size + len(body) > self.MAX_BYTES):
            return
        self.responses[path] = (start, body)
        self.size += len(body)


class ServerAtRoot:
    """ASGI middleware: puts :func:`base_url_script` at the top of every HTML page the server sends."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "GET" or _is_asset(scope["path"]):
            await self.app(scope, receive, send)
            return
        # a page's HTML (8 KB) uncompressed, so the script can go in: Streamlit's gzip sits inside this middleware
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]}
        start, body = None, []

        async def capture(message):
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                if not headers.get(b"content-type", b"").startswith(b"text/html"):
                    start = False  # not a page: pass everything through untouched
                    await send(message)
                    return
                start = message
                return
            if start is False:
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            html = b"".join(body).replace(b"<head>", b"<head>" + base_url_script(), 1)
            html = html.replace(b"</head>", preload_links() + idle_import_script() + b"</head>", 1)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(html)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": html})

        await self.app(scope, receive, capture)


class SharedModeGuard:
    """ASGI middleware, active once :func:`configure_shared_mode` has run for a shared server.

    - Host: an HTTP request or websocket whose ``Host`` header is not in the allow-list gets 403 (Streamlit
      checks its websocket against ``server.allowedHosts`` too; this covers every route).
    - Client messages: ``clear_cache`` (the developer menu's action: it drops the cached model, job queue and
      settings for every session), ``set_run_on_save`` and the ``debug_*`` messages are dropped, with one log
      line; every other message passes untouched."""

    REFUSED_MESSAGES = frozenset({"clear_cache", "set_run_on_save", "debug_disconnect_websocket",
                                  "debug_shutdown_runtime"})
    hosts: list[str] | None = None  # None: not a shared server, nothing is checked

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        hosts = SharedModeGuard.hosts
        if hosts is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        from nullviz.server.access import host_allowed

        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if not host_allowed(host, hosts):
            sys.stderr.write(f"nullviz: refused a {scope['type']} request for Host {host[:80]!r}\n")
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            body = b"This server does not answer to that host name."
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "websocket":
            receive = self._filtered(receive)
        await self.app(scope, receive, send)

    def _filtered(self, receive):
        from streamlit.proto.BackMsg_pb2 import BackMsg

        async def next_message():
            while True:
                message = await receive()
                data = message.get("bytes") if message.get("type") == "websocket.receive" else None
                if data:
                    msg = BackMsg()
                    try:
                        msg.ParseFromString(data)
                        kind = msg.WhichOneof("type")
                    except Exception:  # noqa: BLE001 — not ours to judge: Streamlit answers a malformed message
                        kind = None
                    if kind in self.REFUSED_MESSAGES:
                        sys.stderr.write(f"nullviz: refused a client's {kind!r} message (shared mode)\n")
                        continue
                return message

        return next_message


def configure_shared_mode() -> None:
    """For a shared server, before it serves anyone: Streamlit's Host allow-list (the address it serves, this
    machine's names, ``NULLVIZ_ALLOWED_HOSTS``), no error details on screen, Streamlit's own upload limit set to
    nullviz's, :class:`SharedModeGuard` on, and the class code's join link (or a loud note that there is no code)
    in the log. A local server is left as it was."""
    import app_state
    from streamlit import config
    from nullviz.server.access import WILDCARD_ADDRESSES, allowed_hosts, is_ip_address, machine_addresses

    settings = app_state.server_settings()
    if not settings.shared:
        return
    address = str(config.get_option("server.address") or "")
    hosts = allowed_hosts(address, settings.extra_allowed_hosts)
    where = "nullviz shared mode"
    config.set_option("server.allowedHosts", hosts, where)
    config.set_option("client.showErrorDetails", "none", where)
    config.set_option("server.maxUploadSize", settings.max_upload_mb, where)
    SharedModeGuard.hosts = hosts
    port = config.get_option("server.port")
    host = address
    if address in WILDCARD_ADDRESSES:
        outward = [h for h in machine_addresses() if is_ip_address(h) and not h.startswith(("127.", "::1"))]
        host = (settings.extra_allowed_hosts or outward or ["localhost"])[0]
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    sys.stderr.write(f"nullviz: shared mode; answers to {', '.join(hosts)} (more: NULLVIZ_ALLOWED_HOSTS)\n")
    if app_state.login_configured():
        sys.stderr.write(f"nullviz: students log in (Streamlit [auth] in secrets.toml) at {base}\n")
    elif settings.open_access:
        sys.stderr.write("nullviz: WARNING: NO CLASS CODE (NULLVIZ_ACCESS_CODE=none): anyone who reaches "
                         f"{base} can use this server, upload files and start jobs\n")
    else:
        sys.stderr.write(f"nullviz: class code {settings.access_code}; students join at {base}?code="
                         f"{settings.access_code}\n")


def _warm() -> None:
    t0 = time.perf_counter()
    try:
        import app_state  # torch, timm, plotly and the library: what every page imports
        import pandas  # noqa: F401 — plotly imports it lazily on a figure's first arrays: the first figures of
        # five sessions at once raced on that import (two tracebacks, "partially initialized module 'pandas'")
        from nullviz.server.process import keep_freed_memory

        keep_freed_memory()  # process tuning, once, at start: requests reuse freed memory instead of faulting it in
        name = app_state.warm_start()
        sys.stderr.write(f"nullviz: default model {name!r} and the Home picture ready "
                         f"{time.perf_counter() - t0:.1f} s after start\n")
    except Exception:  # the first visitor then loads it and sees the error as a message, as without warming
        sys.stderr.write("nullviz: warming the default model failed:\n" + traceback.format_exc())


def _warm_synthesis_pool() -> None:
    t0 = time.perf_counter()
    try:
        import app_state

        app_state.warm_synthesis_pool()
        seconds = time.perf_counter() - t0
        sys.stderr.write(f"nullviz: the default model's training images for δ ready in {seconds:.1f} s\n")
    except Exception:  # the page then prepares them on its first δ and shows any error there
        sys.stderr.write("nullviz: preparing the training images failed:\n" + traceback.format_exc())


async def in_a_thread_that_ends(fn, name: str):
    """``await fn()`` run in a thread started for it, which ends with it.

    A thread that has run torch keeps its OpenMP workers for as long as it lives, and the one asyncio.to_thread
    runs in lives on, idle, in asyncio's pool. libgomp then counts more of its threads than the machine has cores
    and makes every team wait at its barriers by sleeping instead of spinning: the page's default δ, in a script
    thread of its own, took 13.1–15.9 s with a fifth of the 2 cores idle during it, and takes 11.0–11.1 s now."""
    with ThreadPoolExecutor(1, thread_name_prefix=name) as pool:  # leaving it joins the thread: it has ended
        return await asyncio.get_running_loop().run_in_executor(pool, fn)


#: How often the server starts waiting jobs whose slot came free without a worker to hand it on (a killed one,
#: a restart), and records jobs whose worker died; at most how long between two deletions of what is older than
#: the retention.
SWEEP_EVERY_S, RETENTION_EVERY_S = 2.0, 3600.0


def retention_interval(retention_days: float, longest: float = RETENTION_EVERY_S) -> float:
    """Seconds between retention sweeps: a tenth of the retention, at most ``longest`` — nothing outlives the
    retention by more than a tenth of it (a short retention, as a soak test sets, is swept as often)."""
    return min(longest, retention_days * 86400 / 10)


def sweep(stop: threading.Event, every: float = SWEEP_EVERY_S, retention_every: float = RETENTION_EVERY_S) -> None:
    """The server's housekeeping thread: the job queue's dispatcher, and retention on a shared server. It reads
    only the index of active jobs (an idle server with thousands of old jobs pays nothing for them)."""
    import app_state
    from nullviz.jobs.retention import clean_old

    next_clean = 0.0
    while not stop.wait(every):
        try:
            app_state.job_queue().dispatch()
            settings = app_state.server_settings()
            if settings.retention_days and time.monotonic() >= next_clean:
                next_clean = time.monotonic() + retention_interval(settings.retention_days, retention_every)
                report = clean_old(settings, settings.retention_days)
                if report.jobs or report.uploads:
                    sys.stderr.write(f"nullviz: retention deleted {len(report.jobs)} jobs and {len(report.uploads)} "
                                     f"uploads older than {settings.retention_days:g} days "
                                     f"({report.bytes / 2**20:,.0f} MB)\n")
        except Exception:  # noqa: BLE001 — housekeeping must outlive a bad folder; the next sweep tries again
            sys.stderr.write("nullviz: housekeeping failed:\n" + traceback.format_exc())


@contextlib.asynccontextmanager
async def warm_start(_app):
    await in_a_thread_that_ends(configure_shared_mode, "nullviz-configure")  # before anyone is served
    await in_a_thread_that_ends(_warm, "nullviz-warm")  # before the server says it is ready: its first visitor
    # gets a figure at once, and the Nullspace page's training images (~4 s): prepared after ready, they ran beside
    # the first visitors' pages, and a second visitor's first page waited on their Python (1.9–2.4 s, not 1.4–1.7 s)
    await in_a_thread_that_ends(_warm_synthesis_pool, "nullviz-warm-synthesis")
    stop = threading.Event()
    housekeeping = threading.Thread(target=sweep, args=(stop,), name="nullviz-housekeeping", daemon=True)
    housekeeping.start()
    yield None
    stop.set()


app = st.App(ROOT / "app.py", middleware=[Middleware(SharedModeGuard), Middleware(ServerAtRoot),
                                         Middleware(ImmutableAssetsFromMemory)],
             lifespan=warm_start)
