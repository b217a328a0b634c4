"""Who may use a shared server, and what a name a browser sends may point at.

A class server is reachable by anyone on its network, so shared mode admits a session only once it shows it
was let in (Jupyter's token, here a short *class code* a teacher can read out): :func:`generate_access_code`,
compared in constant time by :func:`codes_match`, guessing slowed per client by :class:`AttemptLimiter`.
Once in, a session works in a workspace the server issued: :class:`WorkspaceSigner` signs workspace ids with a
secret kept in the data folder (:func:`server_secret`), so a guessed or chosen ``?ws=`` is refused rather than
opened, and a signed id in a link (a bookmark, a reload) lets its holder back in. :func:`allowed_hosts` is the
Host allow-list against DNS rebinding; :func:`lexically_inside` decides on a path's text alone whether it lies in
a folder (``Workspace.check_model_name`` uses it to tell a session's own uploads from a server path).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

#: Letters and digits that cannot be misread on a projector (no 0/O, 1/I/L).
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
#: ``NULLVIZ_ACCESS_CODE=none`` opens a shared server to anyone who reaches it, on purpose.
OPEN_ACCESS = "none"


def generate_access_code(groups: int = 2, size: int = 4) -> str:
    """A random class code such as ``K7QM-3XPA`` (31⁸ ≈ 8.5·10¹¹ codes; with :class:`AttemptLimiter`'s lockout a
    guesser gets a few hundred tries an hour)."""
    return "-".join("".join(secrets.choice(CODE_ALPHABET) for _ in range(size)) for _ in range(groups))


def normalise_code(code: object) -> str:
    """The form codes are compared in: case, spaces and dashes do not matter (``k7qm 3xpa`` = ``K7QM-3XPA``)."""
    return re.sub(r"[\s-]+", "", str(code or "")).upper()


def codes_match(given: object, expected: str) -> bool:
    """Whether ``given`` is the class code, compared in constant time (no timing oracle on its prefix)."""
    a, b = normalise_code(given).encode(), normalise_code(expected).encode()
    return bool(b) and hmac.compare_digest(hashlib.sha256(a).digest(), hashlib.sha256(b).digest())


class AttemptLimiter:
    """Wrong codes slowed per client: after ``free`` wrong tries within ``window`` seconds, a client (an IP
    address) must wait ``lockout`` seconds, doubled for each further wrong try, before it may try again; a right
    code clears its record. Thread-safe: every session thread of the server shares one."""

    def __init__(self, free: int = 5, window: float = 600.0, lockout: float = 30.0, max_lockout: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic):
        self.free, self.window, self.lockout, self.max_lockout, self.clock = free, window, lockout, max_lockout, clock
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait_seconds(self, client: str) -> float:
        """How long ``client`` must wait before its next try is even compared (0: it may try now)."""
        with self._lock:
            return max(0.0, self._locked_until.get(client, 0.0) - self.clock())

    def failed(self, client: str) -> float:
        """Record a wrong code; returns the wait it now has (0 while it has free tries left)."""
        now = self.clock()
        with self._lock:
            recent = [t for t in self._failures.get(client, []) if now - t < self.window] + [now]
            self._failures[client] = recent
            over = len(recent) - self.free
            if over > 0:
                self._locked_until[client] = now + min(self.max_lockout, self.lockout * 2 ** (over - 1))
            self._prune(now)
            return max(0.0, self._locked_until.get(client, 0.0) - now)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)
            self._locked_until.pop(client, None)

    def _prune(self, now: float) -> None:
        """Forget clients whose last failure left the window and who are not locked (bounded memory)."""
        if len(self._failures) < 10_000:
            return
        for key in [k for k, v in self._failures.items() if now - v[-1] >= self.window
                    and self._locked_until.get(k, 0.0) <= now]:
            self._failures.pop(key, None)
            self._locked_until.pop(key, None)


# ------------------------------------------------------------------------------------------ workspaces
SECRET_FILE = "server_secret"
_RANDOM_CHARS, _SIG_CHARS = 24, 22


def server_secret(data_root: str | Path) -> bytes:
    """The server's signing key, ``<data folder>/server_secret`` (32 random bytes, readable by the server's user
    only), made on first use. Kept across restarts, so workspace links stay valid; deleting it revokes them all."""
    path = Path(data_root) / SECRET_FILE
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    try:
        os.link(tmp, path)  # first writer wins: two threads starting at once read the same key
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()


class WorkspaceSigner:
    """Workspace ids the server issued: ``<24 random characters><22-character HMAC-SHA256 of them>``.

    :meth:`verify` tells an issued id from a guessed, chosen or altered one; :meth:`for_identity` gives a logged-in
    user (``st.user``) the same workspace on every device and visit."""

    def __init__(self, secret: bytes):
        if len(secret) < 16:
            raise ValueError("a workspace signing secret needs at least 16 bytes")
        self._secret = secret

    def _sign(self, body: str) -> str:
        mac = hmac.new(self._secret, b"nullviz-workspace:" + body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")[:_SIG_CHARS]

    def issue(self) -> str:
        body = secrets.token_urlsafe(18)[:_RANDOM_CHARS]
        return body + self._sign(body)

    def for_identity(self, identity: str) -> str:
        """The workspace of a logged-in user (their OIDC ``sub`` or e-mail), the same on every visit."""
        mac = hmac.new(self._secret, b"nullviz-user:" + identity.encode(), hashlib.sha256).digest()
        body = base64.urlsafe_b64encode(mac).decode().rstrip("=")[:_RANDOM_CHARS]
        return body + self._sign(body)

    def verify(self, value: object) -> bool:
        if not isinstance(value, str) or len(value) != _RANDOM_CHARS + _SIG_CHARS:
            return False
        body, sig = value[:_RANDOM_CHARS], value[_RANDOM_CHARS:]
        return hmac.compare_digest(sig, self._sign(body))


# ------------------------------------------------------------------------------------------------ hosts
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")


def machine_addresses() -> list[str]:
    """This machine's names and addresses as other machines reach it: its host name, fully qualified name,
    and every address those resolve to (what a student types when the server listens on all interfaces)."""
    names = {socket.gethostname(), socket.getfqdn()}
    found = set(names)
    for name in names:
        try:
            found.update(info[4][0] for info in socket.getaddrinfo(name, None))
        except OSError:
            continue
    try:  # the address of the interface that routes outwards (no packet is sent by a UDP connect)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            found.add(s.getsockname()[0])
    except OSError:
        pass
    return sorted(h for h in found if h)


def allowed_hosts(address: str | None, extra: Iterable[str] = ()) -> list[str]:
    """Host names a shared server answers to (Streamlit's ``server.allowedHosts``): the address it serves
    (``--server.address``; on all interfaces, every name and address of this machine), loopback, and ``extra``
    (``NULLVIZ_ALLOWED_HOSTS``, for a DNS name or a proxy in front of it). Anything else — ``evil.example``
    pointed at this machine by DNS rebinding — is refused."""
    address = (address or "").strip().strip("[]")
    hosts = list(LOOPBACK_NAMES)
    hosts += machine_addresses() if address in WILDCARD_ADDRESSES else [address]
    hosts += [h.strip().lower() for h in extra if h.strip()]
    return sorted(dict.fromkeys(h.lower() for h in hosts))


def host_allowed(host_header: str | None, allowed: Iterable[str]) -> bool:
    """Whether a request's ``Host`` header (port ignored) is one of ``allowed`` (``*.example.org`` matches its
    subdomains): the same rule Streamlit applies to its websocket."""
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8501
        host = host[1:host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.rstrip(".")
    if not host:
        return False
    for pattern in allowed:
        pattern = pattern.strip().lower().rstrip(".")
        if pattern == "*" or host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------ model names
def lexically_inside(path: str | Path, roots: Iterable[Path]) -> bool:
    """Whether ``path``, made absolute and normalised as text (``..`` folded, no link followed, no disk read),
    lies inside one of ``roots``."""
    p = Path(os.path.normpath(os.path.abspath(os.fspath(path))))
    return any(p.is_relative_to(Path(os.path.normpath(os.path.abspath(os.fspath(r))))) for r in roots)


# ------------------------------------------------------------------------------------------------- text
#: What makes markdown out of text mid-line: links and images (``[``, ``]``), autolinks and HTML (``<``, ``>``),
#: emphasis, code, strike-through, tables, headings, LaTeX (``$``) and the escape itself. Streamlit's directives
#: (``:red[…]``) need a ``[`` too.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>$~|#])")


#: What GitHub-flavoured markdown turns into a link without brackets: ``http://…``, ``https://…``, ``www.…``.
_AUTOLINK = re.compile(r"(?i)(?:https?:|www\.)")


def markdown_text(value: object) -> str:
    """``value`` as literal text inside Streamlit markdown: every character that could make a link, an image,
    emphasis, code or math is backslash-escaped (and a leading list marker), so a file named
    ``![t](http://host/x.png).png`` is shown as those characters and fetches nothing."""
    text = _MARKDOWN_SPECIAL.sub(r"\\\1", str(value)).replace("\n", " ")
    text = _AUTOLINK.sub(lambda m: m.group(0)[:-1] + "\\" + m.group(0)[-1], text)  # http\:// and www\. link nothing
    return "\\" + text if text[:1] in ("-", "+") else text
