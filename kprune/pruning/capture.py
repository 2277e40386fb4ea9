"""The calibration core shared by :func:`~kprune.pruning.calibration.prune_model` and the sensitivity analysis.

* :func:`calibration_segments`: the calibration features cut into pieces of
  :data:`PIECE_FRAMES` output frames, the one batch every pass runs;
* :func:`statistics_needs` and :func:`new_statistics`: which layer statistics
  a pruning gathers, from what its rule and its repairs declare
  (``register_method(..., needs=...)``, :attr:`RepairConfig.needs`), never from
  their names;
* :func:`capture_statistics`: one pass of the network gathering them for a set
  of layers (an observer feeding :class:`InputStatistics`, as SparseGPT's
  ``add_batch`` hook does);
* :func:`solve_layer`: one layer's rule, then its repairs (refit, bias).

A new rule registered with its needs therefore works in both at once.
"""

from __future__ import annotations

from typing import Callable, Collection

import torch

from kprune.pruning.config import MethodConfig, RepairConfig
from kprune.pruning.repair import bias_correction, refit
from kprune.pruning.rules import LayerPruning, Method
from kprune.pruning.statistics import InputStatistics

#: Output frames per piece of an utterance in the calibration batch.
PIECE_FRAMES = 150


def calibration_segments(am, features) -> list:
    """The calibration batch of ``features`` for ``am``: each utterance in pieces of :data:`PIECE_FRAMES`."""
    from kprune.nnet.compute import Segment

    f = am.frame_subsampling_factor
    per_frame = bool(am.ivector_dim)
    out = []
    for i, feats in enumerate(features.feats):
        iv = features.per_frame_ivectors(i) if per_frame else None
        total = -(-len(feats) // f)
        for start in range(0, total, PIECE_FRAMES):
            out.append(Segment(feats, start, min(PIECE_FRAMES, total - start), iv, utt=i))
    return out


def statistics_needs(rule: Method, repair: RepairConfig | None = None) -> frozenset[str]:
    """The layer statistics a pruning reads: what its rule (if calibrated) and its repairs declare."""
    needs = set(rule.needs) if rule.calibrated else set()
    if repair is not None:
        needs |= repair.needs
    return frozenset(needs)


def new_statistics(dim: int, needs: Collection[str], device: torch.device | str) -> InputStatistics:
    """Empty statistics of a ``dim``-input layer holding what ``needs`` asks for (``Σ x xᵀ`` only for ``gram``)."""
    return InputStatistics(dim, device, full="gram" in needs)


def capture_statistics(am, segments: list, layers: Collection[str], needs: Collection[str],
                       device: torch.device | str,
                       target: Callable[[str, torch.Tensor], torch.Tensor] | None = None
                       ) -> dict[str, InputStatistics]:
    """One pass of ``am`` over ``segments``: the statistics of each layer's input, as ``needs`` asks.

    With ``target`` (and ``"target"`` in ``needs``), ``target(layer, x)`` gives
    the target output ``y*`` of the frames ``x``, for ``Σ y* xᵀ``.
    """
    stats: dict[str, InputStatistics] = {}
    wants_target = target is not None and "target" in needs

    def observe(name: str, x: torch.Tensor) -> None:
        if name not in stats:
            stats[name] = new_statistics(x.shape[1], needs, device)
        stats[name].add(x, target=target(name, x) if wants_target else None)

    am.compute_observed(segments, observe, frozenset(layers))
    return stats


def solve_layer(rule: Method, method: MethodConfig, weight: torch.Tensor, stats: InputStatistics,
                threshold: float, *, dense_weight: torch.Tensor, dense_bias: torch.Tensor | None,
                repair: RepairConfig | None = None, target: bool = False,
                mask: torch.Tensor | None = None) -> LayerPruning:
    """One layer: the rule's decision (or the given weight-only ``mask``), then the repairs.

    ``weight`` is the layer's current weight, ``dense_weight``/``dense_bias``
    the unpruned ones; ``target`` says that ``stats`` hold ``Σ y* xᵀ`` for the
    dense network's output at the layer.  The returned weight has the pruned
    entries at 0; the bias is the dense one where nothing changed it.
    """
    repair = repair or RepairConfig()
    if mask is None:
        decided = rule.rule(weight, stats, threshold, method, bias=dense_bias, target=target)
    else:
        decided = LayerPruning(mask)
    mask = decided.mask
    new_w = decided.weight if decided.weight is not None else weight.masked_fill(mask, 0.0)
    new_b = decided.bias if decided.bias is not None else dense_bias
    if "refit" in repair.steps:
        new_w, refit_b = refit(mask, stats, dense_weight=dense_weight, dense_bias=dense_bias,
                               bias=dense_bias is not None, target="network" if target else "layer",
                               dampening=repair.refit_dampening)
        new_b = refit_b if refit_b is not None else new_b
    if "bias" in repair.steps and dense_bias is not None:
        new_b = bias_correction(dense_weight, new_w, new_b, stats)
    new_w = new_w.masked_fill(mask, 0.0)
    return LayerPruning(mask, new_w, new_b, dict(decided.notes))


__all__ = ["PIECE_FRAMES", "calibration_segments", "statistics_needs", "new_statistics", "capture_statistics",
           "solve_layer"]
