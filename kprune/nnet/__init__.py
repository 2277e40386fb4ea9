"""Run Kaldi nnet3 acoustic models in PyTorch (CPU or GPU), in test mode.

>>> from kprune.nnet import AcousticModel
>>> am = AcousticModel.load("model/am/final.mdl")           # reads model/conf/model.conf if there
>>> loglikes = am.compute([mfcc], [ivectors], online_ivector_period=10)  # [ceil(T/3), pdfs] per utterance

* :mod:`kprune.nnet.components`: every component type the I/O layer parses, as a torch function;
* :mod:`kprune.nnet.graph`: the node graph planned over time indexes (descriptors,
  context, frame subsampling) and evaluated batch-wise, optionally looped;
* :mod:`kprune.nnet.compute`: whole utterances as Kaldi's simple decodable computes them
  (edge padding, subsampling, priors, chunking, batching, devices);
* :mod:`kprune.nnet.signals`: KL, argmax agreement and SNR of a pruned model's outputs.

Decoding from the outputs is :mod:`kprune.decode`.
"""

from kprune.nnet.compute import AcousticModel, Segment
from kprune.nnet.graph import NnetGraph
from kprune.nnet.signals import output_signals

__all__ = ["AcousticModel", "Segment", "NnetGraph", "output_signals"]
