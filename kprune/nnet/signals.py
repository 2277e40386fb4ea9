"""Cheap quality signals: how far a pruned network's outputs are from the dense network's.

Computed on the raw network output (before priors and acoustic scale), frame
by frame, over every output frame of a data set:

* ``kl``: mean over frames of KL(softmax(dense) || softmax(pruned)), in nats;
* ``argmax_agreement``: % of frames whose best pdf is the same;
* ``snr_db``: ``10 log10(sum dense^2 / sum (pruned - dense)^2)``, with each frame
  centred first (a chain output is defined up to a per-frame constant);
  identical outputs give :data:`MAX_SNR_DB` (JSON has no infinity).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from kprune.errors import EvaluationError

#: The SNR reported for outputs identical to the dense ones.
MAX_SNR_DB = 200.0


def output_signals(dense: Sequence[torch.Tensor], pruned: Sequence[torch.Tensor]) -> dict[str, float]:
    """``{"kl", "argmax_agreement", "snr_db", "signal_frames"}`` of pruned outputs against dense ones."""
    if len(dense) != len(pruned):
        raise EvaluationError(f"expected outputs for {len(dense)} utterances, found {len(pruned)}")
    kl_sum = 0.0
    agree = 0
    frames = 0
    signal = 0.0
    noise = 0.0
    for i, (d, p) in enumerate(zip(dense, pruned)):
        if d.shape != p.shape:
            raise EvaluationError(f"utterance {i}: dense output {list(d.shape)} and pruned output {list(p.shape)} differ")
        d, p = d.double(), p.double()
        log_pd, log_pp = torch.log_softmax(d, dim=-1), torch.log_softmax(p, dim=-1)
        kl_sum += float((log_pd.exp() * (log_pd - log_pp)).sum())
        agree += int((d.argmax(dim=-1) == p.argmax(dim=-1)).sum())
        frames += d.shape[0]
        dc = d - d.mean(dim=-1, keepdim=True)
        pc = p - p.mean(dim=-1, keepdim=True)
        signal += float((dc * dc).sum())
        noise += float(((pc - dc) ** 2).sum())
    if frames == 0:
        raise EvaluationError("expected at least one output frame to compare, found none")
    if noise == 0.0:
        snr = MAX_SNR_DB
    elif signal == 0.0:
        snr = -MAX_SNR_DB
    else:
        snr = min(MAX_SNR_DB, 10.0 * math.log10(signal / noise))
    return {"kl": kl_sum / frames, "argmax_agreement": 100.0 * agree / frames, "snr_db": snr,
            "signal_frames": frames}
