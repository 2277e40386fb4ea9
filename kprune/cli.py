"""What the Hydra entries (``python -m kprune``, ``python -m kprune.sensitivity``) share.

Where the configs are, config nodes as plain Python, and the evaluator that
``eval=`` selects.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

#: The configs ship inside the package (``kprune/conf``), so a wheel works anywhere;
#: users add their own presets with ``--config-dir DIR`` or ``hydra.searchpath``.
CONF_DIR = "pkg://kprune.conf"


def to_plain(value):
    """A config node as plain Python (lists and dicts resolved), anything else as it is."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def evaluator_for(cfg: DictConfig, model: Path):
    """The evaluator of ``eval=`` (None for ``none``); the same settings give the same one back,
    so a multirun decodes the baseline and prepares the data once."""
    if cfg.eval.get("name", "none") == "none":
        return None
    from kprune.evaluate import build_evaluator

    return build_evaluator(cfg.eval, model)
