"""Model directories staged with symbolic links around a pruned ``final.mdl``.

A decoder wants a directory (Vosk: ``am/ conf/ graph/ ivector/``; a Kaldi
recipe: the experiment directory) whose model file is the pruned one.  Copying
the 200 MB of graph for every sweep point is what this avoids: the staged
directory holds links to the original's entries, real directories only along
the paths that are replaced, a link to the pruned model, and small generated
files (a config with one option changed).  Nothing is written into the
original directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping

from kprune.errors import EvaluationError


def _check_relative(rel: str, source: Path) -> tuple[str, ...]:
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise EvaluationError(f"staged path {rel!r}: expected a relative path inside {source}")
    return parts


def stage_model_dir(
    source: Path,
    dest: Path,
    links: Mapping[str, Path],
    files: Mapping[str, str] | None = None,
    skip: Callable[[str], bool] = lambda name: False,
) -> None:
    """Mirror ``source`` into ``dest`` with symbolic links, replacing some paths.

    ``links`` maps relative paths (``am/final.mdl``) to the files they should
    point at instead (the pruned model); ``files`` maps relative paths to the
    text they should hold.  Every other entry of ``source``, and of the
    directories on the way to a replaced path, becomes a link to the
    original, except top-level names for which ``skip`` is true.  ``dest``
    must not exist.
    """
    source = Path(source).resolve()
    if not source.is_dir():
        raise EvaluationError(f"{source}: expected a model directory to stage, found none")
    files = dict(files or {})
    tree: dict = {}
    replacements = [(r, ("link", Path(t).resolve())) for r, t in links.items()]
    replacements += [(r, ("file", c)) for r, c in files.items()]
    for rel, value in replacements:
        node = tree
        parts = _check_relative(rel, source)
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise EvaluationError(f"staged path {rel!r} goes through a replaced file")
        node[parts[-1]] = value
    try:
        dest.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise EvaluationError(f"{dest}: staging directory exists already; refusing to write into it")
    _mirror(source, dest, tree, skip)


def _mirror(source: Path, dest: Path, tree: dict, skip: Callable[[str], bool]) -> None:
    if source.is_dir():
        for entry in sorted(os.listdir(source)):
            if entry not in tree and not skip(entry):
                os.symlink(source / entry, dest / entry)
    for name, node in tree.items():
        if isinstance(node, dict):
            (dest / name).mkdir()
            _mirror(source / name, dest / name, node, lambda _: False)
        elif node[0] == "link":
            os.symlink(node[1], dest / name)
        else:
            (dest / name).write_text(node[1], encoding="utf-8")


def remove_staged(dest: Path) -> None:
    """Remove a staged directory; links are unlinked, their targets left alone."""
    if dest.is_symlink():
        dest.unlink()
    elif dest.exists():
        # rmtree does not follow symbolic links to directories: it unlinks them.
        shutil.rmtree(dest)
