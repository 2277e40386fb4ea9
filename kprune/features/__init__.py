"""Inputs of nnet3 acoustic models, without Kaldi binaries.

* :mod:`kprune.features.mfcc`: MFCCs from audio with the options of a model's ``conf/mfcc.conf``
  (``torchaudio.compliance.kaldi``);
* :mod:`kprune.features.ivector`: online i-vectors from a model's ``ivector/`` directory,
  as Kaldi's ``OnlineIvectorFeature`` computes them;
* :mod:`kprune.features.archives`: ``feats.scp`` and ``ivector_online.scp`` read with kaldiio;
* :mod:`kprune.features.conf`: Kaldi ``--name=value`` config files;
* :mod:`kprune.features.pipeline`: a data set's network inputs as a model's own configuration makes them
  (``FeaturePipeline``, ``FeatureSet``), and the cached calibration features (``CalibrationData``).
"""
