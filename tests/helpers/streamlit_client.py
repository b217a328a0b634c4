"""A raw Streamlit client: a websocket speaking Streamlit's protobuf messages, with no browser, no cookie, no Origin
and no XSRF token unless asked for — what a hostile script on the class network can do (tests and bench/)."""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect


@dataclass
class Run:
    """What one script run sent: its elements as (kind, text of the element's message), the page names the
    server offered, the query string it set, and whether the run finished."""

    elements: list[tuple[str, str]] = field(default_factory=list)
    pages: list[str] = field(default_factory=list)
    query_string: str | None = None
    finished: bool = False
    widget_ids: dict[str, str] = field(default_factory=dict)  # user key → widget id

    def text(self) -> str:
        return "\n".join(body for _, body in self.elements)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.elements]


class RawClient:
    """One websocket session against a Streamlit server at ``url`` (http://host:port). ``headers`` replace or add
    to the handshake's (``Host``, ``Origin``)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 120):
        parsed = urlparse(url)
        self.timeout = timeout
        self.ws = connect(f"ws://{parsed.netloc}/_stcore/stream", subprotocols=["streamlit"],
                          additional_headers=headers or {}, open_timeout=timeout, max_size=None)
        self.session_id: str | None = None  # the server's id of this session, from its first run

    def send(self, msg: BackMsg) -> None:
        self.ws.send(msg.SerializeToString())

    def rerun(self, query_string: str = "", page_name: str = "", widgets: list | None = None) -> Run:
        """Ask for a script run of page ``page_name`` (its URL path, "" for the default) with ``query_string``
        (``code=…&ws=…``) and widget states; returns what the run sent once it finished."""
        msg = BackMsg()
        msg.rerun_script.query_string = query_string
        msg.rerun_script.page_name = page_name
        for state in widgets or []:
            msg.rerun_script.widget_states.widgets.append(state)
        self.send(msg)
        return self.collect()

    def send_kind(self, kind: str) -> None:
        """Send a bare message of a boolean kind (``clear_cache``, ``debug_shutdown_runtime`` …)."""
        msg = BackMsg()
        setattr(msg, kind, True)
        self.send(msg)

    def collect(self) -> Run:
        run = Run()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                data = self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            if isinstance(data, str):
                continue
            fwd = ForwardMsg()
            fwd.ParseFromString(data)
            kind = fwd.WhichOneof("type")
            if kind == "new_session":  # a new run (a rerun asked for by the script): what it draws replaces
                run.elements.clear()
                self.session_id = fwd.new_session.initialize.session_id or self.session_id
                run.pages = [p.url_pathname or p.page_name for p in fwd.new_session.app_pages]
            elif kind == "page_info_changed":
                run.query_string = fwd.page_info_changed.query_string
            elif kind == "delta" and fwd.delta.WhichOneof("type") == "new_element":
                element = fwd.delta.new_element
                name = element.WhichOneof("type")
                body = getattr(element, name)
                run.elements.append((name, str(body)))
                widget_id = getattr(body, "id", "")
                if widget_id and "-" in widget_id:
                    run.widget_ids[widget_id.rsplit("-", 1)[-1]] = widget_id
            elif kind == "script_finished":
                if fwd.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    continue  # the script asked for a rerun (st.rerun, st.switch_page): its next run follows
                run.finished = True
                break
        return run

    def close(self) -> None:
        try:
            self.ws.close()
        except ConnectionClosed:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def handshake_refused(url: str, headers: dict[str, str]) -> bool:
    """Whether the server refuses to open a websocket with these handshake headers."""
    try:
        client = RawClient(url, headers, timeout=10)
    except (InvalidStatus, ConnectionClosed, OSError):
        return True
    try:
        client.rerun()
        client.ws.recv(timeout=1)
    except ConnectionClosed:
        return True
    except TimeoutError:
        pass
    finally:
        client.close()
    return False


def xsrf_cookie(url: str) -> str:
    """The ``_streamlit_xsrf=…`` cookie the server at ``url`` hands any client (as a browser would be given)."""
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    conn.request("GET", "/_stcore/health")
    cookie = conn.getresponse().getheader("set-cookie").split(";")[0]
    conn.close()
    return cookie


def upload(url: str, session_id: str, size: int, cookie: str | None, timeout: float = 30) -> int:
    """PUT a ``size``-byte file to Streamlit's own upload route for ``session_id`` (with the XSRF cookie and its
    token when ``cookie`` is given); the HTTP status, or 0 if the server closed the connection without one."""
    parsed = urlparse(url)
    boundary = "nullviz-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"f.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + b"\0" * size + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if cookie:
        headers.update({"Cookie": cookie, "X-Xsrftoken": cookie.split("=", 1)[1]})
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
    try:
        conn.request("PUT", f"/_stcore/upload_file/{session_id}/file-{size}", body=body, headers=headers)
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()
