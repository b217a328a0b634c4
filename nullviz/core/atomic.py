"""Files that readers see whole or not at all: write a temporary file beside the target, then rename it.

``os.replace`` is atomic on POSIX, so a job's status, a checkpoint or a noise file is never read half-written,
and the temporary file is removed when the writer fails. Every file nullviz writes for another process or a
later session goes through here.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(temporary_path)`` and rename it into place (the temporary file is
    removed whether or not ``write`` succeeds)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")  # two threads never share one
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    replace_atomically(path, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, default=str))
