"""Pruning rules and evaluation backends from outside kprune.

A rule (:func:`kprune.pruning.register_method`) or a backend
(:func:`kprune.evaluate.register_evaluator`) registers itself when its module
is imported.  Imported by hand, it exists in that process only; the points of a
sweep run by ``hydra/launcher=joblib`` or ``submitit_*`` start in fresh
processes, which must import it too.  Two ways make that happen in every
process that runs a point:

* **An entry point** of group ``kprune.plugins`` in an installed package::

      # the plugin package's pyproject.toml
      [project.entry-points."kprune.plugins"]
      mylab = "mylab.kprune_plugin"

  kprune imports the group's modules the first time a ``method=`` or ``eval=``
  name is not one of its own, in whatever process asks.

* **The ``plugins`` setting**, a list of modules importable in every process
  (installed, or on ``PYTHONPATH``; a launcher's workers inherit the
  environment): ``kprune -m plugins=[mylab_backend] eval=mylab ...``.  Each
  point imports them before it reads its method and evaluation.

Importing the same module again is free, so both may name it.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import Sequence

from kprune.errors import ConfigError

log = logging.getLogger(__name__)

#: The entry-point group of plugin modules.
GROUP = "kprune.plugins"

_entry_points_loaded = False


def load_entry_points() -> list[str]:
    """Imports the module of every ``kprune.plugins`` entry point, once per process; their names.

    A module that cannot be imported raises :class:`ConfigError` naming the
    entry point and its distribution: a broken plugin should not look like an
    unknown method or backend.
    """
    global _entry_points_loaded
    found = sorted(entry_points(group=GROUP), key=lambda ep: ep.name)
    if _entry_points_loaded:
        return [ep.name for ep in found]
    for ep in found:  # a failure leaves the flag down: the next point reports the same broken plugin
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001 -- any failure of a third-party import is reported the same way
            dist = getattr(ep.dist, "name", None) or "an unknown distribution"
            raise ConfigError(f"entry point {ep.name!r} of group {GROUP} (from {dist}): expected an importable "
                              f"module, found {ep.value!r} failing with {type(e).__name__}: {e}") from e
        log.debug("plugin %s (%s) loaded", ep.name, ep.value)
    _entry_points_loaded = True
    return [ep.name for ep in found]


def import_plugins(modules: Sequence[str] | str | None) -> None:
    """Imports the modules of the ``plugins`` setting (a list of module names, or one)."""
    if modules is None:
        return
    if isinstance(modules, str):
        modules = [modules]
    if not isinstance(modules, Sequence):  # a list, or a config's ListConfig
        raise ConfigError(f"plugins: expected a list of module names, found {modules!r}")
    for name in modules:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"plugins: expected a list of module names, found {name!r} in it")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            raise ConfigError(f"plugins: cannot import {name!r} ({e}); expected a module installed or on "
                              f"PYTHONPATH, which every worker process of a launcher inherits") from e
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"plugins: importing {name!r} failed with {type(e).__name__}: {e}") from e
