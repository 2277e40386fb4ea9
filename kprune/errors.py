"""The one exception family of kprune.

Every expected mistake (a bad path, a malformed model file, an unknown layer, a
threshold out of range) raises a subclass of :class:`KpruneError`.  The command
line prints its message as one line, without a traceback.
"""

from __future__ import annotations

import os


class KpruneError(Exception):
    """Base class of every error kprune raises on purpose."""


class ConfigError(KpruneError):
    """A setting, a layer name or a threshold that cannot be used."""


class KaldiFormatError(KpruneError):
    """A Kaldi file that does not have the expected layout.

    The message names the file, the place (byte offset in binary files, line in
    text files) and what was expected there.
    """

    def __init__(self, path: str | os.PathLike | None, where: str, message: str):
        self.path = None if path is None else os.fspath(path)
        self.where = where
        self.reason = message
        location = self.path if self.path is not None else "<memory>"
        if where:
            location = f"{location}, {where}"
        super().__init__(f"{location}: {message}")


class EvaluationError(KpruneError):
    """A decode or a scoring step that could not be carried out."""


class ResultsError(KpruneError):
    """A run directory whose results (metrics.json, error.json) cannot be read."""
