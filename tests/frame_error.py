"""``eval=frame_error``: a real, cheap evaluation of small synthetic models, for tests of sweeps and search.

It decodes nothing, but what it measures is honest: the frame classification
error of the (pruned) network, run with kprune's own torch forward
(:class:`kprune.nnet.AcousticModel`), on fixed random features with a little
noise added, against the labels that the unpruned network gives to the clean
features.  The unpruned network already errs on some noisy frames (the
baseline); pruning moves its outputs and the error rises, steeply once too
many weights are gone.  Every frame is a token, so the rate is reported as
both ``wer`` and ``cer``.

Importing this module registers the backend (``eval.name=frame_error``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kprune.evaluate import Evaluator, register_evaluator
from kprune.evaluate.base import write_json_atomic
from kprune.fileio import file_digest


@register_evaluator("frame_error")
class FrameErrorEvaluator(Evaluator):
    def __init__(self, model: Path, *, utts: int = 4, frames: int = 300, noise: float = 0.15, seed: int = 0,
                 cache_dir: Path | None = None):
        super().__init__(cache_dir)
        from kprune.nnet import AcousticModel

        self.model, self.utts, self.frames, self.noise, self.seed = model, utts, frames, noise, seed
        rng = np.random.default_rng(seed)
        dense = AcousticModel.load(model, device="cpu")
        clean = [rng.standard_normal((frames, dense.input_dim)).astype(np.float32) for _ in range(utts)]
        self.noisy = [f + noise * rng.standard_normal(f.shape).astype(np.float32) for f in clean]
        self.labels = [out.argmax(-1) for out in dense.compute(clean)]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], model_path: Path) -> FrameErrorEvaluator:
        keys = ("utts", "frames", "noise", "seed")
        cache = cfg.get("cache_dir")
        return cls(Path(model_path), cache_dir=Path(cache) if cache else None,
                   **{k: cfg[k] for k in keys if cfg.get(k) is not None})

    def cache_key(self) -> dict[str, Any]:
        return {"model": file_digest(self.model), "utts": self.utts, "frames": self.frames, "noise": self.noise,
                "seed": self.seed}

    def error_rate(self, model: Path) -> float:
        """% of noisy frames whose best output differs from the unpruned network's label for the clean frame."""
        from kprune.nnet import AcousticModel

        outputs = AcousticModel.load(model, device="cpu").compute(self.noisy)
        wrong = sum(int((out.argmax(-1) != label).sum()) for out, label in zip(outputs, self.labels))
        return 100.0 * wrong / sum(len(label) for label in self.labels)

    def _decode_baseline(self) -> dict[str, Any]:
        return {"frame_error": self.error_rate(self.model)}

    def _baseline_metrics(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"wer": record["frame_error"], "cer": record["frame_error"]}

    def _evaluate(self, model: Path, out_dir: Path) -> dict[str, Any]:
        rate = self.error_rate(model)
        write_json_atomic(out_dir / "frame_error.json", {"frame_error": rate})
        return {"wer": rate, "cer": rate}
