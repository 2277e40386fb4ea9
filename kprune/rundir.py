"""A point's run directory: what kprune may write, move or lock there.

A run directory holds a point's outputs (its output schema: the pruned model,
``masks.pt``, ``sparsity.json``, ``metrics.json``, ``error.json``,
``point.json``, the TensorBoard record, the evaluators' files) next to what
Hydra writes (``.hydra/``, the log) and possibly the user's own files.  Only
the output schema is ever moved (:func:`archive_previous`) or cleaned
(:func:`remove_stale_temporaries`); a directory that holds the input model is
refused (:func:`check_run_dir`); one process at a time works in a directory
(:class:`PointLock`).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Iterable

from kprune.errors import ConfigError

log = logging.getLogger(__name__)

METRICS = "metrics.json"
SPARSITY = "sparsity.json"
ERROR = "error.json"
POINT = "point.json"
MASKS = "masks.pt"
ALLOCATION = "allocation.json"
EVENTS = "events.out.tfevents.*"
LOCK = ".kprune.lock"
#: What the evaluators write into a point's directory (kprune.evaluate).
EVAL_FILES = ("hyp.txt", "per_utt", "per_utt.tsv", "score.txt", "decode.log")
#: The mark eval=kaldi leaves in the experiment directory it stages in a point's directory.
STAGED_MARK = ".kprune-staged"


def check_run_dir(model: Path, run_dir: Path) -> None:
    """Refuses a run directory that holds the input model, in it or in a directory below it.

    A run writes the pruned model under the input's name and moves a point's
    earlier outputs aside: neither may reach the user's model or its neighbours.
    """
    run_dir = Path(os.path.abspath(run_dir))
    targets = {Path(os.path.abspath(model))}
    try:
        targets.add(Path(model).resolve(strict=True))
    except OSError:
        pass
    resolved_run = run_dir.resolve()
    for target in targets:
        for where in (run_dir, resolved_run):
            if where == target.parent or where in target.parents:
                raise ConfigError(f"the run directory {run_dir} holds the input model {model} (in it or below "
                                  "it); choose another hydra.run.dir / hydra.sweep.dir outside the model's tree")



def ensure_writable_dir(run_dir: Path) -> None:
    """Creates ``run_dir`` or raises one clear ConfigError when it cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the run directory {run_dir}: {e.strerror or e}") from None
    if not run_dir.is_dir():
        raise ConfigError(f"the run directory {run_dir} is not a directory")
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write in the run directory {run_dir}: permission denied")


def check_can_write_dir(run_dir: Path) -> None:
    """Raises one clear ConfigError when ``run_dir`` could not be created or written; creates nothing."""
    run_dir = Path(os.path.abspath(run_dir))
    for place in (run_dir, *run_dir.parents):
        if place.exists():
            break
    if not place.is_dir():
        raise ConfigError(f"cannot create the run directory {run_dir}: {place} is not a directory")
    if not os.access(place, os.W_OK | os.X_OK):
        if place == run_dir:
            raise ConfigError(f"cannot write in the run directory {run_dir}: permission denied")
        raise ConfigError(f"cannot create the run directory {run_dir}: {place} is not writable (permission denied)")


def point_outputs(run_dir: Path, model_names: Iterable[str] = ()) -> list[Path]:
    """The files (and staged experiment directories) a point wrote in ``run_dir``: its output schema.

    Anything else in the directory (Hydra's ``.hydra/`` and log, the user's
    files) is not kprune's to move.
    """
    names = {METRICS, SPARSITY, ERROR, POINT, MASKS, ALLOCATION, *EVAL_FILES, *model_names}
    found = [run_dir / n for n in sorted(names) if _is_regular(run_dir / n)]
    found += sorted(p for p in run_dir.glob(EVENTS) if _is_regular(p))
    try:
        found += sorted(p for p in run_dir.iterdir()
                        if p.is_dir() and not p.is_symlink() and (p / STAGED_MARK).is_file())
    except OSError:
        pass
    return found


def remove_stale_temporaries(run_dir: Path, model_name: str) -> list[Path]:
    """Removes the temporary files an interrupted write of this point left (the caller holds its lock)."""
    names = {METRICS, SPARSITY, ERROR, POINT, MASKS, ALLOCATION, *EVAL_FILES, model_name}
    stale = [p for n in names for p in run_dir.glob(f".{_glob_escape(n)}.*.tmp")]
    stale += list(run_dir.glob(".*.events.partial"))
    for p in stale:
        if _is_regular(p):
            p.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted write", p)
    return stale


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def archive_previous(run_dir: Path, model_name: str) -> None:
    """Moves a completed run's outputs aside (they are for other settings), so nothing is lost.

    Only the point's own outputs move (:func:`point_outputs`), never other files.
    """
    try:
        if json.loads((run_dir / METRICS).read_text()).get("status") != "ok":
            return
    except (OSError, ValueError, AttributeError):
        return
    names = {model_name}
    try:
        names.add(Path(json.loads((run_dir / POINT).read_text())["model"]["model"]).name)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    outputs = point_outputs(run_dir, names)
    if not outputs:
        return
    keep = run_dir / ".previous" / time.strftime("%Y%m%d-%H%M%S")
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep = Path(tempfile.mkdtemp(prefix=keep.name + "-", dir=keep.parent)) if keep.exists() else keep
    keep.mkdir(exist_ok=True)
    for p in outputs:
        os.replace(p, keep / p.name)  # same file system: a rename, never a copy
    log.warning("%s held a run with other settings; moved its %d outputs to %s", run_dir, len(outputs), keep)


class PointLock:
    """An exclusive lock on a point's directory (``flock`` on ``.kprune.lock``), released when the process ends.

    The lock file holds the pid of its holder, for the messages of the others.
    """

    def __init__(self, run_dir: Path, *, wait: bool):
        self.path = Path(run_dir) / LOCK
        self.wait = wait
        self.acquired = False
        self.holder: str | None = None
        self._fd: int | None = None

    def __enter__(self) -> "PointLock":
        import fcntl

        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ConfigError(f"cannot write in the run directory {self.path.parent}: {e.strerror or e}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.holder = self._read_holder()
            if not self.wait:
                return self
            log.warning("%s: taken by another process (%s); waiting for it", self.path.parent,
                        self.holder or "unknown pid")
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.acquired = True
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()}\n".encode(), 0)
        return self

    def _read_holder(self) -> str | None:
        try:
            return os.pread(self._fd, 100, 0).decode(errors="replace").strip() or None
        except OSError:
            return None

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            if self.acquired:
                try:
                    os.ftruncate(self._fd, 0)
                except OSError:
                    pass
            os.close(self._fd)  # releases the flock
            self._fd = None
