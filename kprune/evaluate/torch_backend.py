"""``eval=torch``: decode with the network run in PyTorch and Kaldi's decoder from PyPI.

No Kaldi or Vosk binary runs.  For every point the pruned ``final.mdl`` is
read into :class:`kprune.nnet.AcousticModel` (CPU or GPU), its log-likelihoods
are decoded with ``kaldi-decoder`` over the model directory's own graph made
static (:mod:`kprune.decode.decoder`; a Vosk lookahead graph is composed once and
cached), and the hypotheses are scored like every other backend
(:mod:`kprune.evaluate.normalize`, :mod:`kprune.evaluate.scoring`).

What does not depend on the pruned model is prepared once per evaluator: the
data directory and its audio, the MFCCs (``conf/mfcc.conf``), the i-vector
extractor, the graph, the references.  Two modes (``eval.mode``):

* ``vosk`` (default): replays Vosk's online decoding (:mod:`kprune.decode.streaming`):
  i-vectors per looped chunk, silence weighting from the decoder's best path,
  audio arriving in ``chunk_seconds`` pieces as ``eval=vosk`` feeds it;
* ``offline``: Kaldi's ``nnet3-latgen-faster`` with online i-vectors: i-vectors
  every ``ivector_period`` frames, computed once without silence weighting,
  whole utterances in chunks of 50 frames (faster, and the same for every point).

The words (``eval.result``) are Vosk's minimum-Bayes-risk path over the lattice
(``mbr``, :mod:`kprune.decode.lattice`; the default in ``vosk`` mode) or the best
path (``best_path``, the default in ``offline`` mode).

With ``signals: true`` every point also gets ``kl``, ``argmax_agreement`` and
``snr_db``: its network outputs against the dense model's on the same inputs
(:mod:`kprune.nnet.signals`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import weakref
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from kprune.errors import ConfigError, EvaluationError, KpruneError
from kprune.data import datadir
from kprune.evaluate.base import (
    CACHE_FORMAT,
    Evaluator,
    TranscriptScoring,
    absolute_path,
    bool_setting,
    check_keys,
    positive_number,
    register_evaluator,
    write_text_atomic,
)
from kprune.fileio import file_digest
from kprune.evaluate.normalize import Normalizer

log = logging.getLogger(__name__)

MODES = ("vosk", "offline")

#: Revision of what the decode of a given model produces (features, i-vectors, replay, decoder, result).
#: Part of the baseline cache key: bump it with any change that moves the unpruned model's transcripts,
#: so that no sweep compares its points with a baseline decoded by older code.
DECODE_REVISION = 3
_HASH_BELOW = 1 << 20


def find_model_dir(model_path: Path) -> Path:
    """``<dir>`` for ``<dir>/am/final.mdl`` with ``<dir>/conf`` and ``<dir>/graph`` (the Vosk layout)."""
    top = model_path.parent.parent
    if model_path.parent.name == "am" and (top / "graph").is_dir() and (top / "conf").is_dir():
        return top
    raise ConfigError(f"eval.model_dir: cannot find the model directory of {model_path}; expected "
                      "<dir>/am/final.mdl beside <dir>/conf/ and <dir>/graph/; set eval.model_dir=DIR")


def _signature(root: Path, names: tuple[str, ...]) -> list[list[Any]]:
    """Relative path, size and (small files) content hash of the files that decide a decode."""
    out = []
    for name in names:
        base = root / name
        paths = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base] if base.is_file() else []
        for path in paths:
            size = path.stat().st_size
            entry: list[Any] = [str(path.relative_to(root)), size]
            if size < _HASH_BELOW:
                entry.append(file_digest(path))
            out.append(entry)
    return out


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@register_evaluator("torch")
class TorchEvaluator(TranscriptScoring, Evaluator):
    """Decodes with the network in torch and ``kaldi-decoder``; scores WER and CER."""

    SETTINGS = {"data", "model_dir", "device", "mode", "result", "ivector_period", "chunk_seconds", "batch_frames",
                "jobs", "timeout", "cache_dir", "graph_cache", "signals", "normalize", "allow_pipes"}

    def __init__(self, model_path: Path, data_dir: Path, *, model_dir: Path | None = None, device: str = "auto",
                 mode: str = "vosk", result: str | None = None, ivector_period: int = 10, chunk_seconds: float = 0.5,
                 batch_frames: int | None = None, jobs: int = 0, timeout: float = 3600.0, cache_dir: Path | None = None,
                 graph_cache: Path | None = None, signals: bool = True, normalizer: Normalizer | None = None,
                 allow_pipes: bool = True):
        super().__init__(cache_dir)
        from kprune.features.pipeline import FeaturePipeline
        from kprune.features.conf import read_kaldi_conf
        from kprune.device import resolve_device

        if mode not in MODES:
            raise ConfigError(f"eval.mode: expected one of {', '.join(MODES)}, found {mode!r}")
        from kprune.decode.decoder import RESULTS

        result = result or ("mbr" if mode == "vosk" else "best_path")
        if result not in RESULTS:
            raise ConfigError(f"eval.result: expected one of {', '.join(RESULTS)} (or null: by eval.mode), "
                              f"found {result!r}")
        self.result = result
        self.model_path = Path(model_path).resolve()
        if not self.model_path.is_file():
            raise EvaluationError(f"{self.model_path}: the original model does not exist")
        self.model_dir = Path(model_dir).resolve() if model_dir else find_model_dir(self.model_path)
        self.device = resolve_device(device)
        self.mode, self.ivector_period, self.chunk_seconds = mode, ivector_period, chunk_seconds
        self.batch_frames, self.timeout, self.signals = batch_frames, float(timeout), signals
        self.jobs = jobs or os.cpu_count() or 1
        self.graph_cache = graph_cache
        self.normalizer = normalizer or Normalizer()
        conf_dir = self.model_dir / "conf"
        self.model_conf = read_kaldi_conf(conf_dir / "model.conf") if (conf_dir / "model.conf").is_file() else {}
        self.dense = self._load_model(self.model_path)
        self.features = FeaturePipeline(self.model_dir, ivector_dim=self.dense.ivector_dim,
                                        ivector_period=ivector_period, input_dim=self.dense.input_dim,
                                        model=str(self.model_path))
        self.mfcc_options, self.extractor = self.features.mfcc_options, self.features.extractor

        self.data = datadir.read_data_dir(Path(data_dir), transcripts=(Path(data_dir) / "text").is_file())
        feature_conf = self.features.audio_conf()
        from kprune.evaluate.staging import remove_staged

        self.work_dir = Path(tempfile.mkdtemp(prefix="kprune-torch-"))
        self._cleanup = weakref.finalize(self, remove_staged, self.work_dir)
        self.audio = datadir.prepare_audio(self.data, feature_conf, self.work_dir / "audio", allow_pipes)
        self._read_references()
        start = time.perf_counter()
        self.utts, self.feats, self.num_samples = self.features.mfcc(self.audio)
        self.feature_seconds = time.perf_counter() - start
        self._offline_ivectors: list[np.ndarray] | None = None
        self._decoder = None
        self._comparison = None
        log.info("eval=torch (%s): %d utterances (%.1f s) from %s, model directory %s, device %s",
                 mode, len(self.utts), self.audio.seconds, self.data.path, self.model_dir, self.device)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], model_path: Path) -> TorchEvaluator:
        check_keys(cfg, cls.SETTINGS, "torch")
        if not cfg.get("data"):
            raise ConfigError("eval.data is required for eval=torch: a Kaldi data directory with wav.scp and text")
        signals = cfg.get("signals", True)
        if not isinstance(signals, bool):
            raise ConfigError(f"eval.signals: expected true or false, found {signals!r}")
        jobs = cfg.get("jobs", 0)
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0:
            raise ConfigError(f"eval.jobs: expected a number of decoding threads >= 0 (0: one per core), found {jobs!r}")
        mode = cfg.get("mode", "vosk")
        if mode not in MODES:
            raise ConfigError(f"eval.mode: expected one of {', '.join(MODES)}, found {mode!r}")
        return cls(
            Path(model_path),
            absolute_path(cfg["data"]),
            model_dir=absolute_path(cfg["model_dir"]) if cfg.get("model_dir") else None,
            device=str(cfg.get("device", "auto")),
            mode=mode,
            result=cfg.get("result"),
            ivector_period=positive_number(cfg, "ivector_period", 10, integer=True),
            chunk_seconds=positive_number(cfg, "chunk_seconds", 0.5),
            batch_frames=positive_number(cfg, "batch_frames", 1, integer=True) if cfg.get("batch_frames") else None,
            jobs=jobs,
            timeout=positive_number(cfg, "timeout", 3600.0),
            cache_dir=absolute_path(cfg["cache_dir"]) if cfg.get("cache_dir") else None,
            graph_cache=absolute_path(cfg["graph_cache"]) if cfg.get("graph_cache") else None,
            signals=signals,
            normalizer=Normalizer.from_config(cfg.get("normalize")),
            allow_pipes=bool_setting(cfg, "allow_pipes", True),
        )

    # ------------------------------------------------------------ preparation

    def _load_model(self, path: Path):
        from kprune.nnet.compute import AcousticModel

        conf = self.model_dir / "conf" / "model.conf"
        try:
            return AcousticModel.load(path, model_conf=conf if conf.is_file() else None, device=self.device)
        except KpruneError as e:
            raise EvaluationError(f"{path}: cannot run the model in torch: {e}") from e

    def _ivectors_offline(self) -> list[np.ndarray | None]:
        if self.extractor is None:
            return [None] * len(self.feats)
        if self._offline_ivectors is None:
            self._offline_ivectors = self.features.ivectors(self.feats)
        return self._offline_ivectors

    def decoder(self):
        """The graph decoder, loaded on first use (composing the static graph if needed)."""
        if self._decoder is None:
            from kprune.decode.decoder import DecoderOptions, GraphDecoder, static_graph

            graph = static_graph(self.model_dir / "graph", self.graph_cache or self.cache_dir)
            tm = self.dense.file.transition_model
            if tm is None:
                raise EvaluationError(f"{self.model_path}: decoding needs a .mdl with a transition model")
            self._decoder = GraphDecoder(graph, tm.transition_id_to_pdf(),
                                         DecoderOptions.from_conf(self.model_conf, self.result))
            log.info("decoding graph %s loaded in %.1f s", graph.fst, self._decoder.load_seconds)
        return self._decoder

    # ------------------------------------------------------------ Evaluator

    def cache_key(self) -> dict[str, Any]:
        return {
            "backend": "torch",
            "format": CACHE_FORMAT,
            "decode_revision": DECODE_REVISION,
            "model": file_digest(self.model_path),
            "model_dir": _signature(self.model_dir, ("conf", "graph", "ivector")),
            "audio": self.audio.digest,
            "text": file_digest(self.data.path / "text") if self.refs is not None else None,
            "mode": self.mode,
            "result": self.result,
            "ivector_period": self.ivector_period,
            "chunk_seconds": self.chunk_seconds,
            "versions": {p: _version(p) for p in ("torch", "torchaudio", "kaldi-decoder", "kaldifst")},
        }

    def _decode_baseline(self) -> dict[str, Any]:
        hyps, timing, _ = self._decode(self.dense, "baseline")
        return {"hyps": hyps, **timing}

    def _baseline_metrics(self, record: dict[str, Any]) -> dict[str, Any]:
        metrics = self._transcript_metrics(record["hyps"])
        metrics.update({k: record[k] for k in ("load_seconds", "decode_seconds", "audio_seconds") if k in record})
        if record.get("audio_seconds"):
            metrics["rtf"] = record["decode_seconds"] / record["audio_seconds"]
        return metrics

    def _evaluate(self, model: Path, out_dir: Path) -> dict[str, Any]:
        start = time.perf_counter()
        pruned = self._load_model(model)
        if pruned.input_dim != self.dense.input_dim or pruned.ivector_dim != self.dense.ivector_dim \
                or pruned.num_pdfs != self.dense.num_pdfs:
            raise EvaluationError(f"{model}: its inputs/outputs differ from the original model's")
        load_seconds = time.perf_counter() - start
        hyps, timing, details = self._decode(pruned, model.parent.name or str(model))
        timing["load_seconds"] = load_seconds
        metrics = self._transcript_metrics(hyps, out_dir)
        write_text_atomic(out_dir / "decode.log", self._log_text(model, timing, details))
        metrics.update(timing)
        metrics["rtf"] = timing["decode_seconds"] / timing["audio_seconds"]
        if self.signals:
            start = time.perf_counter()
            metrics.update(self.comparison().signals(pruned))
            metrics["signal_seconds"] = time.perf_counter() - start
        return metrics

    def close(self) -> None:
        self._cleanup()
        self._decoder = None

    # ------------------------------------------------------------ decoding

    def _log_text(self, model: Path, timing: Mapping[str, float], details: list[str]) -> str:
        head = [f"eval=torch mode={self.mode} result={self.result} device={self.device} model={model}",
                f"graph={self.decoder().fst_path}",
                " ".join(f"{k}={v:.3f}" for k, v in timing.items())]
        return "\n".join(head + details) + "\n"

    def _decode(self, model, label: str) -> tuple[dict[str, str], dict[str, float], list[str]]:
        decoder = self.decoder()
        start = time.perf_counter()
        deadline = start + self.timeout
        if self.mode == "vosk" and model.ivector_dim:
            from kprune.decode.streaming import StreamingOptions, VoskReplay, parse_phone_list

            rate = self.mfcc_options.sample_frequency
            options = StreamingOptions(
                piece_samples=max(1, int(self.chunk_seconds * rate)),
                step_samples=int(rate * 0.2),
                frames_per_chunk=int(self.model_conf.get("frames-per-chunk", StreamingOptions.frames_per_chunk)),
                silence_phones=frozenset(parse_phone_list(self.model_conf.get("endpoint.silence-phones", ""))),
                frame_length_samples=int(rate * self.mfcc_options.kwargs["frame_length"] / 1000),
                frame_shift_samples=int(rate * self.mfcc_options.kwargs["frame_shift"] / 1000))
            results = self._replay(VoskReplay(model, self.extractor, decoder, options), model, deadline, label)
        else:
            ivectors = self._ivectors_offline()
            results = []
            for i in range(0, len(self.feats), 16):
                iv = ivectors[i:i + 16] if self.extractor is not None else None
                loglikes = model.compute(self.feats[i:i + 16], iv, batch_frames=self.batch_frames,
                                         online_ivector_period=self.ivector_period if iv is not None else None)
                results += [decoder.decode(l.numpy()) for l in loglikes]
                self._check_deadline(deadline, label, len(results))
        hyps = {utt: " ".join(r.words) for utt, r in zip(self.utts, results)}
        timing = {"decode_seconds": time.perf_counter() - start, "audio_seconds": self.audio.seconds,
                  "load_seconds": 0.0}
        details = [f"{utt} frames={len(r.transition_ids)} cost={r.cost:.3f} final={r.reached_final}"
                   + (f" ({r.note})" if r.note else "") for utt, r in zip(self.utts, results)]
        return hyps, timing, details

    def _replay(self, replay, model, deadline: float, label: str) -> list:
        """Utterances decoded by ``jobs`` threads; each step is small, so torch runs one thread per job."""
        from concurrent.futures import ThreadPoolExecutor

        from kprune.device import single_cpu_thread

        order = sorted(range(len(self.feats)), key=lambda i: -len(self.feats[i]))  # longest first
        results: dict[int, Any] = {}
        # tiny steps: thread sync would cost more than the work
        with single_cpu_thread(model.device), \
                ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="kprune-torch") as pool:
            futures = {pool.submit(replay.decode, [self.feats[i]], [self.num_samples[i]]): i for i in order}
            for future in futures:
                results[futures[future]] = future.result()[0]
                self._check_deadline(deadline, label, len(results))
        return [results[i] for i in range(len(self.feats))]

    def _check_deadline(self, deadline: float, label: str, done: int) -> None:
        if time.perf_counter() > deadline:
            raise EvaluationError(f"torch decode of {label} ran past eval.timeout={self.timeout:g} s "
                                  f"({done} of {len(self.feats)} utterances decoded)")

    def comparison(self):
        """The dense model's raw outputs on the offline inputs, and the comparison with them (built once)."""
        if self._comparison is None:
            from kprune.evaluate.outputs import OutputComparison

            self._comparison = OutputComparison(self.feats, self._ivectors_offline(), self.ivector_period, self.dense,
                                                device=self.device, batch_frames=self.batch_frames)
        return self._comparison

    def _raw_outputs(self, model) -> list[torch.Tensor]:
        """Network outputs before priors and acoustic scale, on the offline inputs."""
        return self.comparison().raw_outputs(model)

    def dense_outputs(self) -> list[torch.Tensor]:
        """The unpruned model's raw outputs (computed once)."""
        return self.comparison().dense_outputs()
