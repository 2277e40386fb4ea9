"""File locks for what sweep points share: caches, archives, directories.

Points of one sweep may run at the same time, in processes of one machine
(``hydra/launcher=joblib``) or on several machines over a shared file system
(``submitit_slurm``).  Whatever they share is written under a lock and renamed
into place, so that no two points compute the same entry at once and no point
ever reads a half-written one:

* :func:`file_lock` holds an exclusive lock (``filelock``: ``flock`` on
  POSIX, honoured over NFS by Linux) while a block runs;
* :func:`locked_cache_entry` is the pattern of every cache: look, and if the
  entry is missing, take its lock, look again (another process may have made
  it meanwhile), make it into a temporary file or directory beside it and
  rename that into place (:func:`kprune.fileio.write_atomically`, or
  :meth:`CacheEntry.temporary_dir` + :meth:`CacheEntry.commit_dir`).

The lock files are left in place (``<entry>.lock``, a few bytes): removing one
while another process waits on it would let a third take a different lock.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from filelock import FileLock, Timeout

from kprune.errors import KpruneError

log = logging.getLogger(__name__)
T = TypeVar("T")


class LockTimeout(KpruneError):
    """A lock was still held by another process when the wait ran out."""


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of ``path``: ``<path>.lock`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextmanager
def file_lock(path: str | os.PathLike, *, timeout: float | None = None, what: str | None = None) -> Iterator[None]:
    """Holds an exclusive lock on the file ``path`` (created if missing) while the block runs.

    ``timeout`` (seconds; None waits as long as it takes, 0 tries once) ends in
    :class:`LockTimeout` naming the lock file.  A wait longer than a second is
    logged, with ``what`` (default: the lock file) saying what is waited for.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=-1 if timeout is None else timeout, thread_local=False)
    start = time.monotonic()
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for %s (held by another process)", what or path)
        try:
            lock.acquire()
        except Timeout:
            raise LockTimeout(f"{path}: still locked by another process after {timeout:g} s") from None
        log.info("got %s after %.1f s", what or path, time.monotonic() - start)
    try:
        yield
    finally:
        lock.release()


@dataclass
class CacheEntry:
    """A cache entry whose lock is held: make it here if it is missing, then rename it into place."""

    path: Path

    def exists(self) -> bool:
        return self.path.exists()

    def temporary_dir(self) -> Path:
        """A new directory beside the entry, to fill and then :meth:`commit_dir`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent))

    def commit_dir(self, tmp: Path) -> None:
        """Renames a filled :meth:`temporary_dir` to the entry (replacing an older one)."""
        if self.path.is_dir():  # os.replace cannot replace a non-empty directory
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
            os.replace(tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, self.path)


@contextmanager
def locked_cache_entry(path: str | os.PathLike, *, timeout: float | None = None) -> Iterator[CacheEntry]:
    """Holds the lock of the cache entry ``path`` (``<path>.lock``) while the block looks at it and makes it.

    ::

        with locked_cache_entry(cache / "features" / f"{key}.pt") as entry:
            if not entry.exists():
                write_atomically(entry.path, compute_features())
        features = torch.load(entry.path)

    Readers that find the entry complete need no lock: entries only appear by rename.
    """
    path = Path(path)
    with file_lock(lock_path(path), timeout=timeout, what=f"the cache entry {path}"):
        yield CacheEntry(path)


def load_or_make(path: str | os.PathLike, load: Callable[[Path], T | None], make: Callable[[Path], T], *,
                 timeout: float | None = None) -> T:
    """``load(path)``, or else ``make(path)`` (which writes the entry atomically) under the entry's lock.

    ``load`` returns None for a missing or unusable entry.  It is tried without
    the lock first, and again under it, so an entry is made once however many
    processes ask for it together.
    """
    path = Path(path)
    value = load(path)
    if value is not None:
        return value
    with locked_cache_entry(path, timeout=timeout):
        value = load(path)
        if value is None:
            value = make(path)
    return value
