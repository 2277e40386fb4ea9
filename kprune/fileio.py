"""Files: every file kprune writes goes through :func:`write_atomically`; :func:`file_digest` names one by its content.

A file is written to a temporary file in its own directory, flushed to disk
and renamed over the target, so a crash or a failed run never leaves a
half-written file where a complete one was.  New files get the usual
permissions (0666 less the umask), not the 0600 of a bare temporary file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from kprune.errors import KpruneError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: str | os.PathLike, data: bytes | str | Iterable[bytes | memoryview], *,
                     protect: str | os.PathLike | None = None) -> None:
    """Writes ``data`` (bytes, text as UTF-8, or pieces of bytes) to ``path`` via a rename.

    ``protect`` is a file that must never be overwritten (the user's model):
    if ``path`` is that file, nothing is written and :class:`KpruneError` is raised.
    """
    path = Path(path)
    if protect is not None and path.exists() and Path(protect).exists() and os.path.samefile(path, protect):
        raise KpruneError(f"{path}: refusing to write over the input model; choose another output path")
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            for piece in ([data] if isinstance(data, (bytes, bytearray, memoryview)) else data):
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomically(path: str | os.PathLike, value: Any) -> None:
    """JSON, UTF-8, indented, through :func:`write_atomically`."""
    write_atomically(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Content hash of a file, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
