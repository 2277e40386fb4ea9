"""Network outputs on a data set's offline inputs, and how far a pruned network's are from the dense one's.

:class:`OutputComparison` holds the features of a data set (MFCCs and online
i-vectors every ``ivector_period`` frames, computed once), runs a network on
them (raw outputs: no priors, acoustic scale 1) and compares with the dense
network's outputs, computed once (:func:`kprune.nnet.signals.output_signals`).
``eval=torch`` adds these signals to its decodes; ``eval=signals`` reports
nothing else.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


class OutputComparison:
    """Raw outputs of networks on fixed inputs, against the dense network's (cached)."""

    def __init__(self, feats: Sequence[torch.Tensor], ivectors: Sequence[np.ndarray | None] | None,
                 ivector_period: int, dense, *, device: torch.device, batch_frames: int | None = None,
                 per_frame_ivectors: bool = False):
        self.feats, self.ivectors, self.ivector_period = list(feats), ivectors, ivector_period
        self.per_frame_ivectors = per_frame_ivectors
        self.dense_model, self.device, self.batch_frames = dense, device, batch_frames
        self._dense: list[torch.Tensor] | None = None

    def raw_outputs(self, model) -> list[torch.Tensor]:
        """``model``'s outputs before priors and acoustic scale (an :class:`~kprune.nnet.AcousticModel`)."""
        from kprune.nnet.compute import AcousticModel

        raw = AcousticModel(model.file, frame_subsampling_factor=model.frame_subsampling_factor, acoustic_scale=1.0,
                            device=self.device, use_priors=False)
        iv = self.ivectors if raw.ivector_dim else None
        if iv is not None and self.per_frame_ivectors:  # each frame reads the latest i-vector: whole utterances
            iv = [v[np.minimum(np.arange(len(f)) // self.ivector_period, len(v) - 1)]
                  for f, v in zip(self.feats, iv)]
            return raw.compute(self.feats, iv, batch_frames=self.batch_frames)
        return raw.compute(self.feats, iv, batch_frames=self.batch_frames,
                           online_ivector_period=self.ivector_period if iv is not None else None)

    def dense_outputs(self) -> list[torch.Tensor]:
        """The dense model's raw outputs (computed once)."""
        if self._dense is None:
            self._dense = self.raw_outputs(self.dense_model)
        return self._dense

    def signals(self, model) -> dict[str, float]:
        """``kl``, ``argmax_agreement``, ``snr_db`` and ``signal_frames`` of ``model`` against the dense model."""
        from kprune.nnet.signals import output_signals

        return output_signals(self.dense_outputs(), self.raw_outputs(model))
