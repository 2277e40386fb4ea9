"""Decode network outputs without Kaldi or Vosk binaries (what ``eval=torch`` uses).

* :mod:`kprune.decode.decoder`: Kaldi's decoder (``kaldi-decoder``) over the model's static graph;
* :mod:`kprune.decode.lattice`: word lattices and minimum-Bayes-risk decoding, Vosk's transcript step;
* :mod:`kprune.decode.streaming`: Vosk's online decoding replayed with the torch network
  (:mod:`kprune.nnet`).
"""
