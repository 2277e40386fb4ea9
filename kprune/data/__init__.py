"""Data: Kaldi data directories and their audio (:mod:`kprune.data.datadir`)."""
