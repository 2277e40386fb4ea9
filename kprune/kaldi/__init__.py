"""Kaldi I/O: nnet3 model files (``.mdl``, ``.raw``) in binary and text mode.

No torch here: this package turns bytes into numpy arrays and back, exactly.
"""

from kprune.kaldi.components import WEIGHT_FIELD, Component, Field, OpaqueComponent
from kprune.fileio import write_atomically
from kprune.kaldi.model_file import NnetFile, load_nnet_file, read_nnet_file, save_nnet_file
from kprune.kaldi.nnet3 import Nnet3, Node, parse_descriptor
from kprune.kaldi.transition import TransitionModel

__all__ = [
    "Component", "Field", "OpaqueComponent", "WEIGHT_FIELD", "NnetFile", "load_nnet_file",
    "read_nnet_file", "save_nnet_file", "write_atomically", "Nnet3", "Node", "parse_descriptor",
    "TransitionModel",
]
