"""``eval=signals``: the pruned network's outputs against the dense network's, with no decoder.

The pruned ``final.mdl`` is run in PyTorch on the data directory's audio
(MFCCs and online i-vectors every ``ivector_period`` frames, as ``eval=torch``
computes them, once per process) and compared frame by frame with the
unpruned model's outputs (computed once): ``kl``, ``argmax_agreement`` and
``snr_db`` (:mod:`kprune.nnet.signals`).  There is no graph and no search, and
no transcripts are read (``text`` is optional).  The metrics are those that
``eval=torch`` adds to its decodes, from the same code
(:class:`kprune.evaluate.outputs.OutputComparison`).
"""

from __future__ import annotations

import logging
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Mapping

from kprune.errors import ConfigError, EvaluationError, KpruneError
from kprune.evaluate.base import CACHE_FORMAT, Evaluator, absolute_path, check_keys, positive_number, \
    register_evaluator
from kprune.fileio import file_digest

log = logging.getLogger(__name__)


@register_evaluator("signals")
class SignalsEvaluator(Evaluator):
    """Compares a pruned network's outputs with the dense network's on a data set (no decoding)."""

    SETTINGS = {"data", "model_dir", "device", "ivector_period", "batch_frames", "cache_dir", "per_frame_ivectors"}

    def __init__(self, model_path: Path, data_dir: Path, *, model_dir: Path | None = None, device: str = "auto",
                 ivector_period: int = 10, batch_frames: int | None = None, cache_dir: Path | None = None,
                 per_frame_ivectors: bool = False):
        super().__init__(cache_dir)
        from kprune.data import datadir
        from kprune.features.pipeline import FeaturePipeline, feature_model_dir
        from kprune.evaluate.outputs import OutputComparison
        from kprune.evaluate.staging import remove_staged
        from kprune.device import resolve_device

        self.model_path = Path(model_path).resolve()
        if not self.model_path.is_file():
            raise EvaluationError(f"{self.model_path}: the original model does not exist")
        self.model_dir = Path(model_dir).resolve() if model_dir else feature_model_dir(self.model_path)
        self.device = resolve_device(device)
        conf = self.model_dir / "conf" / "model.conf"
        self.model_conf = conf if conf.is_file() else None
        start = time.perf_counter()
        dense = self._load(self.model_path)
        pipeline = FeaturePipeline(self.model_dir, ivector_dim=dense.ivector_dim, ivector_period=ivector_period,
                                   input_dim=dense.input_dim, model=str(self.model_path))
        self.data = datadir.read_data_dir(Path(data_dir), transcripts=False, key="eval.data")
        work = Path(tempfile.mkdtemp(prefix="kprune-signals-"))
        self._cleanup = weakref.finalize(self, remove_staged, work)
        try:
            audio = datadir.prepare_audio(self.data, pipeline.audio_conf(), work / "audio")
            features = pipeline.feature_set(audio)
        finally:
            self._cleanup()
        self.audio_digest, self.seconds = audio.digest, audio.seconds
        self.comparison = OutputComparison(features.feats, features.ivectors, ivector_period, dense,
                                           device=self.device, batch_frames=batch_frames,
                                           per_frame_ivectors=per_frame_ivectors)
        self.per_frame_ivectors = per_frame_ivectors
        from kprune.device import single_cpu_thread

        with single_cpu_thread(self.device):
            self.comparison.dense_outputs()
        self.ivector_period = ivector_period
        self.prepare_seconds = time.perf_counter() - start
        log.info("eval=signals: %d utterances (%.1f s) from %s ready in %.1f s", len(features.utts), self.seconds,
                 self.data.path, self.prepare_seconds)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], model_path: Path) -> SignalsEvaluator:
        check_keys(cfg, cls.SETTINGS, "signals")
        if not cfg.get("data"):
            raise ConfigError("eval.data is required for eval=signals: a Kaldi data directory with wav.scp")
        return cls(
            Path(model_path), absolute_path(cfg["data"]),
            model_dir=absolute_path(cfg["model_dir"]) if cfg.get("model_dir") else None,
            device=str(cfg.get("device", "auto")),
            ivector_period=positive_number(cfg, "ivector_period", 10, integer=True),
            batch_frames=positive_number(cfg, "batch_frames", 1, integer=True) if cfg.get("batch_frames") else None,
            cache_dir=absolute_path(cfg["cache_dir"]) if cfg.get("cache_dir") else None,
            per_frame_ivectors=_boolean(cfg, "per_frame_ivectors"),
        )

    def _load(self, path: Path):
        from kprune.nnet.compute import AcousticModel

        try:
            return AcousticModel.load(path, model_conf=self.model_conf, device=self.device)
        except KpruneError as e:
            raise EvaluationError(f"{path}: cannot run the model in torch: {e}") from e

    # ------------------------------------------------------------ Evaluator

    def cache_key(self) -> dict[str, Any]:
        return {"backend": "signals", "format": CACHE_FORMAT, "model": file_digest(self.model_path),
                "audio": self.audio_digest, "ivector_period": self.ivector_period,
                "per_frame_ivectors": self.per_frame_ivectors}

    def _decode_baseline(self) -> dict[str, Any]:
        return {"audio_seconds": self.seconds}  # the dense model against itself: nothing to decode

    def _baseline_metrics(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"audio_seconds": record.get("audio_seconds")}

    def _evaluate(self, model: Path, out_dir: Path) -> dict[str, Any]:
        start = time.perf_counter()
        pruned = self._load(model)
        dense = self.comparison.dense_model
        if (pruned.input_dim, pruned.ivector_dim, pruned.num_pdfs) != (dense.input_dim, dense.ivector_dim,
                                                                       dense.num_pdfs):
            raise EvaluationError(f"{model}: its inputs/outputs differ from the original model's")
        from kprune.device import single_cpu_thread

        with single_cpu_thread(self.device):
            metrics: dict[str, Any] = dict(self.comparison.signals(pruned))
        metrics["signal_seconds"] = time.perf_counter() - start
        metrics["audio_seconds"] = self.seconds
        return metrics

    def close(self) -> None:
        self._cleanup()


def _boolean(cfg: Mapping[str, Any], key: str) -> bool:
    value = cfg.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"eval.{key}: expected true or false, found {value!r}")
    return value
