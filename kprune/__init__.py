"""kprune: prune Kaldi nnet3 acoustic models without retraining, and measure what it costs."""

from kprune.errors import ConfigError, KaldiFormatError, KpruneError
from kprune.model import Layer, Model, load_model

__all__ = ["load_model", "Model", "Layer", "KpruneError", "KaldiFormatError", "ConfigError"]
__version__ = "0.1.0"
