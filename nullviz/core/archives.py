"""Unpacking an uploaded zip safely: one place for the checks every upload kind needs.

Everything is checked before a byte is written: every member's path must stay inside the destination
(``Path.is_relative_to``, not a string prefix), no links, at most ``max_files`` members, a declared total of at
most ``max_bytes``, and whatever ``check`` says of each kept member. The copy then counts the real bytes too, so a
zip that lies about its sizes stops at the limit; on any failure nothing is left behind.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path
from typing import Callable

from .errors import DataError, UploadTooLargeError


def unpack_zip(data: bytes, dest: str | Path, *, max_bytes: int, max_files: int,
               keep: Callable[[str], bool] = lambda name: True,
               check: Callable[[zipfile.ZipFile, zipfile.ZipInfo], None] | None = None) -> Path:
    """Unpack the members of zip ``data`` that ``keep(name)`` accepts into ``dest`` (made if needed); returns
    ``dest``. Members not kept are neither counted nor written."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise DataError("The upload is not a valid zip file.") from exc
    with zf:
        for m in zf.infolist():
            target = (root / m.filename).resolve()
            if not target.is_relative_to(root) or target == root and not m.is_dir():
                raise DataError(f"The zip contains an unsafe path {m.filename!r}.")
            if (m.external_attr >> 16) & 0o170000 == 0o120000:
                raise DataError(f"The zip contains a link ({m.filename!r}); links are not accepted.")
        members = [m for m in zf.infolist() if not m.is_dir() and keep(m.filename)]
        if len(members) > max_files:
            raise UploadTooLargeError(f"The zip holds {len(members):,} files; at most {max_files:,} are accepted.")
        declared = sum(m.file_size for m in members)
        if declared > max_bytes:
            raise UploadTooLargeError(f"The zip unpacks to {declared / 2**20:,.0f} MB; at most "
                                      f"{max_bytes / 2**20:,.0f} MB are accepted.")
        for m in members:
            if check is not None:
                try:
                    check(zf, m)
                except (zipfile.BadZipFile, EOFError) as exc:
                    raise DataError(f"The zip is damaged ({m.filename!r} cannot be read back: "
                                    f"{type(exc).__name__}).") from exc
        written = 0
        try:
            for m in members:
                target = root / m.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_bytes:
                            raise UploadTooLargeError(f"The zip unpacks to more than {max_bytes / 2**20:,.0f} MB "
                                                      f"(its headers understate its size).")
                        out.write(chunk)
        except (UploadTooLargeError, zipfile.BadZipFile, OSError) as exc:
            for child in root.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
            if isinstance(exc, UploadTooLargeError):
                raise
            raise DataError(f"The zip could not be unpacked ({type(exc).__name__}).") from exc
    return dest
