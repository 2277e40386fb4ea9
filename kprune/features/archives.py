"""Features and i-vectors that Kaldi already computed: ``feats.scp`` and ``ivector_online.scp``.

A Kaldi recipe writes MFCCs to ``data/<set>_hires/feats.scp`` and online
i-vectors to ``exp/nnet3/ivectors_<set>_hires/ivector_online.scp``, one row
every ``ivector_period`` frames (the number is in the file ``ivector_period``
beside it).  Both are read with kaldiio.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kprune.errors import ConfigError


@dataclass
class UtteranceFeatures:
    """One utterance's input features and (online) i-vectors."""

    feats: np.ndarray  # [frames, dim]
    ivectors: np.ndarray | None = None  # [rows, ivector_dim], one every `ivector_period` frames
    ivector_period: int | None = None


def read_ivector_period(ivector_dir: str | os.PathLike) -> int:
    """The ``ivector_period`` file of a Kaldi i-vector directory."""
    path = Path(ivector_dir) / "ivector_period"
    try:
        text = path.read_text().strip()
    except OSError:
        raise ConfigError(f"{path}: missing; give the online i-vector period explicitly") from None
    try:
        period = int(text)
    except ValueError:
        raise ConfigError(f"{path}: expected a number of frames, found {text[:40]!r}") from None
    if period <= 0:
        raise ConfigError(f"{path}: expected a positive number of frames, found {period}")
    return period


def load_feature_archives(feats_scp: str | os.PathLike, ivector_scp: str | os.PathLike | None = None,
                          ivector_period: int | None = None) -> dict[str, UtteranceFeatures]:
    """Utterance id -> features (and i-vectors) from Kaldi ``.scp`` files, in ``feats.scp`` order.

    ``ivector_period`` defaults to the ``ivector_period`` file beside ``ivector_scp``.
    Every utterance of ``feats.scp`` must have i-vectors when ``ivector_scp`` is given.
    """
    import kaldiio

    feats_scp = Path(feats_scp)
    if not feats_scp.is_file():
        raise ConfigError(f"{feats_scp}: no such feature list (a Kaldi feats.scp)")
    try:
        feats = kaldiio.load_scp(str(feats_scp))
        out = {utt: UtteranceFeatures(np.asarray(feats[utt], dtype=np.float32)) for utt in feats}
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{feats_scp}: cannot read the features ({e})") from None
    if ivector_scp is None:
        return out
    ivector_scp = Path(ivector_scp)
    if not ivector_scp.is_file():
        raise ConfigError(f"{ivector_scp}: no such i-vector list (a Kaldi ivector_online.scp)")
    period = ivector_period if ivector_period is not None else read_ivector_period(ivector_scp.parent)
    try:
        ivectors = kaldiio.load_scp(str(ivector_scp))
        for utt, item in out.items():
            if utt not in ivectors:
                raise ConfigError(f"{ivector_scp}: no i-vectors for utterance {utt} of {feats_scp}")
            iv = np.asarray(ivectors[utt], dtype=np.float32)
            if iv.ndim != 2:
                raise ConfigError(f"{ivector_scp}: expected a matrix of online i-vectors for {utt}, found shape {iv.shape}")
            item.ivectors, item.ivector_period = iv, period
    except (OSError, ValueError) as e:
        raise ConfigError(f"{ivector_scp}: cannot read the i-vectors ({e})") from None
    return out
