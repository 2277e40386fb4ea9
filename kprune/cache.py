"""Where kprune keeps what it computes once and reads again: baselines, graphs, features, curves.

Each user of a cache takes its own folder below :func:`default_cache_dir`
(``baseline/``, ``graphs/``, ``calib/``, ``sensitivity/``) unless a setting
names another; :mod:`kprune.locks` makes the entries safe to share.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$KPRUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/kprune``, else ``~/.cache/kprune``."""
    if os.environ.get("KPRUNE_CACHE_DIR"):
        return Path(os.environ["KPRUNE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "kprune"
