"""KL divergence, argmax agreement and SNR of pruned outputs against dense ones."""

from __future__ import annotations

import math

import pytest
import torch

from kprune.errors import EvaluationError
from kprune.nnet.signals import MAX_SNR_DB, output_signals


def test_identical_outputs():
    dense = [torch.randn(5, 7), torch.randn(3, 7)]
    s = output_signals(dense, [d.clone() for d in dense])
    assert s["kl"] == pytest.approx(0.0, abs=1e-12)
    assert s["argmax_agreement"] == 100.0 and s["snr_db"] == MAX_SNR_DB and s["signal_frames"] == 8


def test_known_values():
    dense = [torch.tensor([[0.0, math.log(3.0)], [1.0, 0.0]])]  # softmax rows (1/4, 3/4) and (e/(1+e), 1/(1+e))
    pruned = [torch.tensor([[0.0, 0.0], [1.0, 0.0]])]  # row 0 becomes (1/2, 1/2), row 1 unchanged
    s = output_signals(dense, pruned)
    kl0 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert s["kl"] == pytest.approx(kl0 / 2)
    assert s["argmax_agreement"] == 50.0  # row 0 ties at index 0 (argmax takes the first)
    # Centred rows: dense row 0 (-l/2, l/2) with l = log 3, pruned row 0 (0, 0); row 1 identical.
    l3 = math.log(3.0)
    signal = 2 * (l3 / 2) ** 2 + 2 * 0.5 ** 2
    noise = 2 * (l3 / 2) ** 2
    assert s["snr_db"] == pytest.approx(10 * math.log10(signal / noise))


def test_a_per_frame_constant_changes_nothing():
    dense = [torch.randn(4, 6)]
    s = output_signals(dense, [dense[0] + torch.arange(4.0).unsqueeze(1)])  # chain outputs: defined up to a constant
    assert s["kl"] == pytest.approx(0.0, abs=1e-9) and s["snr_db"] > 100


def test_mismatched_outputs_are_refused():
    with pytest.raises(EvaluationError, match="utterance 0: dense output \\[3, 2\\] and pruned output \\[2, 2\\] differ"):
        output_signals([torch.zeros(3, 2)], [torch.zeros(2, 2)])
    with pytest.raises(EvaluationError, match="outputs for 1 utterances, found 0"):
        output_signals([torch.zeros(3, 2)], [])
