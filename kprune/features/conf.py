"""Kaldi ``--name=value`` config files (``conf/mfcc.conf``, ``conf/model.conf``, ``splice.conf``...)."""

from __future__ import annotations

import os
from pathlib import Path

from kprune.errors import ConfigError


def read_kaldi_conf(path: str | os.PathLike) -> dict[str, str]:
    """``--name=value`` lines of a Kaldi config file (``#`` comments), names with ``_`` as ``-``."""
    values: dict[str, str] = {}
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the Kaldi config file ({e.strerror})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not line.startswith("--"):
            raise ConfigError(f"{path}, line {number}: expected --name=value, found {line!r}")
        key, sep, value = line[2:].partition("=")
        values[key.replace("_", "-")] = value.strip() if sep else "true"
    return values
