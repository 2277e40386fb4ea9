"""kprune: prune Kaldi nnet3 acoustic models without retraining, and measure what it costs.

``kprune.load_model`` and the model classes import torch; they are loaded on
first use, so tools that only read results (``tools/summarize``) start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kprune.errors import ConfigError, KaldiFormatError, KpruneError

if TYPE_CHECKING:
    from kprune.model import Layer, Model, load_model

__all__ = ["load_model", "Model", "Layer", "KpruneError", "KaldiFormatError", "ConfigError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("load_model", "Model", "Layer"):
        from kprune import model

        return getattr(model, name)
    raise AttributeError(f"module 'kprune' has no attribute {name!r}")
