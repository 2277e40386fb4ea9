"""Network inputs of a data set: MFCCs and online i-vectors, as the model's own configuration makes them.

A :class:`FeaturePipeline` is built from a Vosk-style model directory
(``conf/mfcc.conf``, ``ivector/``) and turns the audio of a data directory
into a :class:`FeatureSet`: per utterance, the MFCC matrix and the online
i-vectors every ``ivector_period`` frames (Kaldi's ``ivector_online.scp``
layout).  ``eval=torch`` decodes from it and calibrated pruning
(:mod:`kprune.pruning.calibration`) runs the network on it.

Features that Kaldi computed already (``feats.scp``, ``ivector_online.scp``)
become a :class:`FeatureSet` through :func:`feature_set_from_archives`.

:func:`load_calibration_features` adds the on-disk cache that makes a sweep
compute the calibration features once: the key is the audio's digest and the
model's feature configuration (every file of ``conf/`` and ``ivector/``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from kprune.errors import ConfigError, EvaluationError

log = logging.getLogger(__name__)

#: Revision of what :class:`FeaturePipeline` computes; part of the cache key.
FEATURE_REVISION = 1
#: Vosk sets --max-count=100 for its i-vector extractor.
VOSK_IVECTOR_MAX_COUNT = 100


@dataclass
class FeatureSet:
    """Per-utterance network inputs.

    ``feats[i]`` is ``[T_i, input_dim]`` float32; ``ivectors[i]`` is None (a
    model without i-vector input) or ``[ceil(T_i / ivector_period), dim]``,
    row k for frame ``k * ivector_period``; ``num_samples[i]`` the samples of
    the audio at the feature rate (0 when the features came from archives).
    """

    utts: list[str]
    feats: list[torch.Tensor]
    ivectors: list[np.ndarray | None]
    ivector_period: int
    num_samples: list[int] = field(default_factory=list)
    frame_shift_seconds: float = 0.01

    @property
    def seconds(self) -> float:
        return sum(len(f) for f in self.feats) * self.frame_shift_seconds

    @property
    def num_frames(self) -> int:
        return sum(len(f) for f in self.feats)

    def per_frame_ivectors(self, i: int) -> np.ndarray | None:
        """Utterance ``i``'s online i-vector at every frame ``[T_i, dim]`` (each frame reads the latest row)."""
        iv = self.ivectors[i]
        if iv is None:
            return None
        rows = np.minimum(np.arange(len(self.feats[i])) // self.ivector_period, len(iv) - 1)
        return iv[rows]

    def limited(self, max_seconds: float | None) -> FeatureSet:
        """The first utterances up to ``max_seconds`` of audio; the last one kept is cut to fit."""
        if max_seconds is None:
            return self
        budget = int(round(max_seconds / self.frame_shift_seconds))
        out = FeatureSet([], [], [], self.ivector_period, [], self.frame_shift_seconds)
        for i, utt in enumerate(self.utts):
            if budget <= 0:
                break
            feats = self.feats[i][:budget]
            iv = self.ivectors[i]
            out.utts.append(utt)
            out.feats.append(feats)
            out.ivectors.append(None if iv is None else iv[:-(-len(feats) // self.ivector_period)])
            if self.num_samples:
                out.num_samples.append(self.num_samples[i] if len(feats) == len(self.feats[i]) else 0)
            budget -= len(feats)
        return out

    # -- storage ----------------------------------------------------------------
    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save({"utts": self.utts, "feats": self.feats,
                    "ivectors": [None if v is None else torch.from_numpy(v) for v in self.ivectors],
                    "ivector_period": self.ivector_period, "num_samples": self.num_samples,
                    "frame_shift_seconds": self.frame_shift_seconds}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_file(cls, path: Path) -> FeatureSet:
        d = torch.load(path, weights_only=True)
        return cls(list(d["utts"]), list(d["feats"]), [None if v is None else v.numpy() for v in d["ivectors"]],
                   int(d["ivector_period"]), list(d["num_samples"]), float(d["frame_shift_seconds"]))


class FeaturePipeline:
    """MFCCs and online i-vectors as a Vosk model directory configures them.

    ``model_dir`` holds ``conf/mfcc.conf`` (Kaldi's defaults when absent) and,
    for models with an i-vector input, ``ivector/`` (Vosk's extractor files).
    """

    def __init__(self, model_dir: Path, *, ivector_dim: int, ivector_period: int = 10, input_dim: int | None = None,
                 model: str = "the model"):
        from kprune.features.ivector import OnlineIvectorExtractor
        from kprune.features.mfcc import MfccOptions, check_mfcc_dim

        self.model_dir = Path(model_dir)
        conf_dir = self.model_dir / "conf"
        mfcc_conf = conf_dir / "mfcc.conf"
        self.mfcc_options = MfccOptions.from_file(mfcc_conf if mfcc_conf.is_file() else None)
        if input_dim is not None:
            check_mfcc_dim(self.mfcc_options, input_dim, model)
        self.ivector_period = ivector_period
        self.extractor = None
        if ivector_dim:
            self.extractor = OnlineIvectorExtractor.load(self.model_dir / "ivector", max_count=VOSK_IVECTOR_MAX_COUNT,
                                                         ivector_period=ivector_period)
            if self.extractor.ivector_dim != ivector_dim:
                raise ConfigError(f"{self.model_dir / 'ivector'}: the extractor gives {self.extractor.ivector_dim}-dim "
                                  f"i-vectors, but {model} reads {ivector_dim}")

    def signature(self) -> list[list[Any]]:
        """What decides the features: the files of ``conf/`` and ``ivector/``, with the revision."""
        from kprune.fileio import file_digest

        out: list[list[Any]] = [["revision", FEATURE_REVISION], ["ivector_period", self.ivector_period]]
        for name in ("conf", "ivector"):
            base = self.model_dir / name
            for path in sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else []:
                out.append([str(path.relative_to(self.model_dir)), file_digest(path)])
        return out

    def audio_conf(self):
        """The sample-rate rules of ``prepare_audio``, from ``mfcc.conf``."""
        from kprune.data.datadir import FeatureConf

        o = self.mfcc_options
        return FeatureConf(o.sample_frequency, o.allow_upsample, o.allow_downsample, o.source)

    def mfcc(self, audio) -> tuple[list[str], list[torch.Tensor], list[int]]:
        """Utterance ids, MFCC matrices and sample counts (at the feature rate) of prepared audio."""
        from kprune.features.mfcc import compute_mfcc

        utts, feats, samples = [], [], []
        for item in audio.items:
            with open(item.path, "rb") as f:
                f.seek(item.offset)
                raw = np.frombuffer(f.read(item.nbytes), dtype="<i2")
            mfcc = compute_mfcc(raw, item.rate, self.mfcc_options)
            if len(mfcc) == 0:
                raise EvaluationError(f"{item.path}: utterance {item.utt_id} is shorter than one feature frame")
            utts.append(item.utt_id)
            feats.append(mfcc)
            samples.append(int(round(len(raw) * self.mfcc_options.sample_frequency / item.rate)))
        return utts, feats, samples

    def ivectors(self, feats: Sequence[torch.Tensor]) -> list[np.ndarray | None]:
        """Online i-vectors every ``ivector_period`` frames (no silence weighting), per utterance."""
        if self.extractor is None:
            return [None] * len(feats)
        return [self.extractor.online_ivectors(f.numpy(), self.ivector_period) for f in feats]

    def feature_set(self, audio) -> FeatureSet:
        utts, feats, samples = self.mfcc(audio)
        return FeatureSet(utts, feats, self.ivectors(feats), self.ivector_period, samples,
                          self.mfcc_options.frame_shift_seconds)


def feature_set_from_archives(feats_scp: Path, ivectors_scp: Path | None, *, input_dim: int,
                              ivector_dim: int) -> FeatureSet:
    """A :class:`FeatureSet` from Kaldi's ``feats.scp`` and ``ivector_online.scp`` (read with kaldiio)."""
    from kprune.features.archives import load_feature_archives

    if ivector_dim and ivectors_scp is None:
        raise ConfigError(f"calib.feats={feats_scp}: the model reads {ivector_dim}-dim i-vectors; "
                          "give calib.ivectors=ivector_online.scp too")
    table = load_feature_archives(feats_scp, ivectors_scp)
    if not table:
        raise ConfigError(f"{feats_scp}: no utterances")
    utts = list(table)
    period = next(iter(table.values())).ivector_period or 1
    for utt, item in table.items():
        if item.feats.ndim != 2 or item.feats.shape[1] != input_dim:
            raise ConfigError(f"{feats_scp}: expected [frames, {input_dim}] features for {utt} (the model's input), "
                              f"found {list(item.feats.shape)}")
        if ivector_dim and item.ivectors.shape[1] != ivector_dim:
            raise ConfigError(f"{ivectors_scp}: expected {ivector_dim}-dim i-vectors for {utt}, "
                              f"found {item.ivectors.shape[1]}")
    return FeatureSet(utts, [torch.tensor(table[u].feats) for u in utts],
                      [table[u].ivectors if ivector_dim else None for u in utts], period)


# ----------------------------------------------------------------------------- calibration data


@dataclass(frozen=True)
class CalibrationData:
    """Where the calibration audio comes from (``calib.*``)."""

    data: Path | None = None
    feats: Path | None = None
    ivectors: Path | None = None
    max_seconds: float | None = None
    cache_dir: Path | None = None

    KEYS = ("data", "feats", "ivectors", "max_seconds", "cache_dir")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> CalibrationData:
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - set(cls.KEYS))
        if unknown:
            raise ConfigError(f"calib: unknown setting(s) {', '.join(unknown)}; known: {', '.join(cls.KEYS)}")

        def path(key: str) -> Path | None:
            value = cfg.get(key)
            return None if value in (None, "", "null") else Path(os.path.expanduser(str(value))).resolve()

        max_seconds = cfg.get("max_seconds")
        if max_seconds is not None:
            if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not max_seconds > 0:
                raise ConfigError(f"calib.max_seconds: expected a number of seconds > 0 or null, found {max_seconds!r}")
            max_seconds = float(max_seconds)
        out = cls(path("data"), path("feats"), path("ivectors"), max_seconds, path("cache_dir"))
        if out.feats is None and out.data is None:
            raise ConfigError("calib: expected calib.data=DIR (a Kaldi data directory with wav.scp) "
                              "or calib.feats=feats.scp, found neither")
        return out

    def describe(self) -> dict[str, Any]:
        """The settings as they enter ``point.json``."""
        return {"data": None if self.feats else str(self.data), "feats": str(self.feats) if self.feats else None,
                "ivectors": str(self.ivectors) if self.ivectors else None, "max_seconds": self.max_seconds}


def load_calibration_features(calib: CalibrationData, model_path: Path, *, input_dim: int, ivector_dim: int,
                              model_dir: Path | None = None, ivector_period: int = 10) -> FeatureSet:
    """The calibration :class:`FeatureSet`, computed once and then read from the cache.

    From ``calib.feats`` (+ ``calib.ivectors``) when given, else from the
    audio of ``calib.data`` with the model directory's feature configuration
    (``model_dir``: the directory above ``am/`` by default).
    """
    if calib.feats is not None:
        return feature_set_from_archives(calib.feats, calib.ivectors, input_dim=input_dim,
                                         ivector_dim=ivector_dim).limited(calib.max_seconds)
    from kprune.data.datadir import prepare_audio, read_data_dir
    from kprune.cache import default_cache_dir
    from kprune.locks import load_or_make

    model_dir = Path(model_dir) if model_dir else feature_model_dir(model_path)
    pipeline = FeaturePipeline(model_dir, ivector_dim=ivector_dim, ivector_period=ivector_period,
                               input_dim=input_dim, model=str(model_path))
    data = read_data_dir(calib.data, transcripts=False, key="calib.data")
    work = Path(tempfile.mkdtemp(prefix="kprune-calib-"))
    try:
        audio = prepare_audio(data, pipeline.audio_conf(), work / "audio")
        key = {"audio": audio.digest, "features": pipeline.signature(), "input_dim": input_dim}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        cache = (calib.cache_dir or default_cache_dir()) / "calib" / f"{digest}.pt"

        def load(path: Path) -> FeatureSet | None:
            if not path.is_file():
                return None
            try:
                features = FeatureSet.from_file(path)
            except Exception as e:  # a damaged cache entry is made again
                log.warning("%s: unreadable calibration cache (%s); computing again", path, e)
                return None
            log.info("calibration features of %s read from %s", calib.data, path)
            return features

        def make(path: Path) -> FeatureSet:
            from kprune.fileio import write_atomically

            start = time.perf_counter()
            features = pipeline.feature_set(audio)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, features.to_bytes())
            log.info("calibration features of %s (%d utterances, %.0f s) computed in %.1f s, cached in %s",
                     calib.data, len(features.utts), features.seconds, time.perf_counter() - start, path)
            return features

        # Under the entry's lock: points of a parallel sweep compute the features once.
        features = load_or_make(cache, load, make)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # its own temporary folder
    return features.limited(calib.max_seconds)


def feature_model_dir(model_path: Path) -> Path:
    """``<dir>`` for ``<dir>/am/final.mdl`` beside ``<dir>/conf/``: where the features' settings are."""
    top = model_path.parent.parent
    if model_path.parent.name == "am" and (top / "conf").is_dir():
        return top
    raise ConfigError(f"calib.data: cannot find the model directory (conf/, ivector/) of {model_path}; expected "
                      "<dir>/am/final.mdl beside <dir>/conf/; give calib.feats=feats.scp and "
                      "calib.ivectors=ivector_online.scp computed by Kaldi instead")
