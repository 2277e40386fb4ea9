"""Calibrated rules: the mask (and, for SparseGPT, the kept weights) chosen from the layer's inputs.

Each rule works on one layer ``y = W x + b`` at a time, with the
:class:`~kprune.pruning.statistics.InputStatistics` of the inputs that layer
sees on the calibration audio, and returns a
:class:`~kprune.pruning.rules.LayerPruning`.  Each declares at registration the
statistics it reads (``needs``), so the capture gathers only those, and its own
knobs as a dataclass (``options``).

* ``wanda`` (Sun et al. 2023, "A Simple and Effective Pruning Approach for
  Large Language Models"; reference code ``locuslab/wanda``): the score of
  ``W_ij`` is ``|W_ij| * ‖X_j‖₂``, the norm of input column ``j`` over the
  calibration frames, and each output row loses the fraction ``t`` of its
  weights with the lowest scores (Wanda's per-output comparison group).  The
  kept weights are not changed.  It is :func:`row_fraction_mask` fed other
  scores: ``magnitude`` with ``‖X_j‖ = 1``.
* ``sparsegpt`` (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models
  Can Be Accurately Pruned in One-Shot"; ``IST-DASLab/sparsegpt``): layer-wise
  Optimal Brain Surgeon.  With ``H = Σ x xᵀ`` damped by ``dampening`` x its mean
  diagonal, the columns are visited left to right in blocks of ``block_size``;
  in each block the fraction ``t`` of weights with the lowest
  ``w² / [H⁻¹]_jj²`` is pruned (for ``N:M``, the ``N`` lowest of every ``M``
  columns of a row), and each pruned column's error is spread over the
  columns to its right through the Cholesky factor of ``H⁻¹`` (lazy batch
  updates), so the kept weights compensate.  Where the layer has a bias it
  takes part as a last, never-pruned column with constant input 1, so the
  bias compensates too.  If the Cholesky factorisation fails the dampening is
  multiplied by 10 (and logged) until it succeeds.

With ``target=True`` (the statistics hold ``Σ y* xᵀ`` for a target output
``y*``, such as the dense network's output at that layer) SparseGPT starts from the unpruned
least-squares weights for that target, ``W' = C H⁻¹``, rather than from
``W``: the OBS loss on ``W' x`` then equals the loss on ``y*`` up to a constant.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from kprune.pruning.config import MethodConfig
from kprune.pruning.linalg import solve_spd
from kprune.pruning.rules import LayerPruning, nm_mask, register_method, row_fraction_mask
from kprune.pruning.statistics import InputStatistics

__all__ = ["LayerPruning", "SparseGPTOptions", "sparsegpt_rule", "wanda_rule", "wanda_mask"]

log = logging.getLogger(__name__)

#: How often the dampening may be multiplied by 10 after a failed Cholesky factorisation.
MAX_DAMPENING_RETRIES = 8


@dataclass(frozen=True)
class SparseGPTOptions:
    """SparseGPT's knobs (``method.dampening``, ``method.block_size``)."""

    #: Added to the Hessian's diagonal, as a fraction of its mean (SparseGPT's ``percdamp``).
    dampening: float = 0.01
    #: Columns per lazy batch update.
    block_size: int = 128


@register_method("wanda", fraction=True, calibrated=True, supports_pattern=True, needs=("column_norms",))
def wanda_rule(weight: torch.Tensor, stats: InputStatistics, threshold: float, config: MethodConfig, *,
               bias: torch.Tensor | None = None, target: bool = False) -> LayerPruning:
    """Prunes, in each output row, the fraction t of weights with the lowest |W_ij| * ||X_j||_2
    (Sun et al. 2023); with method.pattern=N:M, the N lowest of every M inputs of a row."""
    scores = weight.detach().abs().double() * stats.column_norms.to(weight.device)[None, :]
    return LayerPruning(wanda_mask(scores, threshold, config))


def wanda_mask(scores: torch.Tensor, threshold: float, config: MethodConfig) -> torch.Tensor:
    if config.pattern is not None:
        return nm_mask(scores, config.pattern.n, config.pattern.m)
    return row_fraction_mask(scores, threshold)


@register_method("sparsegpt", fraction=True, calibrated=True, supports_pattern=True, needs=("gram",),
                 options=SparseGPTOptions)
def sparsegpt_rule(weight: torch.Tensor, stats: InputStatistics, threshold: float, config: MethodConfig, *,
                   bias: torch.Tensor | None = None, target: bool = False) -> LayerPruning:
    """Layer-wise OBS reconstruction with lazy batch updates (Frantar & Alistarh 2023): prunes the
    fraction t of each block of columns with the lowest w^2 / [H^-1]_jj^2 and updates the kept weights."""
    rows, cols = weight.shape
    has_bias = bias is not None
    if has_bias:
        hessian, cross = stats.augmented()
        w = torch.cat([weight.double(), bias.double()[:, None]], dim=1)
    else:
        hessian, cross = stats.gram.clone(), stats.cross
        w = weight.double().clone()
    hessian = hessian.to(weight.device)
    dead = hessian.diagonal() == 0
    hessian[dead, dead] = 1.0
    w[:, dead] = 0.0
    damp0 = config.options.dampening * float(hessian.diagonal().mean())
    chol, damp = _damped_cholesky(hessian, damp0)
    notes: dict[str, Any] = {"dampening": damp / float(hessian.diagonal().mean())}
    if damp > damp0:
        notes["dampening_raised"] = True
    if target:
        if cross is None:
            raise ValueError("sparsegpt: a target was asked for, but the statistics hold none")
        # W' = C H^-1: the unpruned least-squares weights for the target.
        damped = hessian.clone()
        damped.diagonal().add_(damp)
        w = solve_spd(damped, cross.to(hessian).T, chol).T.contiguous()
    # The upper Cholesky factor of H^-1, in float32 like the reference implementation.
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True).double()
    mask = torch.zeros(rows, w.shape[1], dtype=torch.bool, device=weight.device)
    block = config.options.block_size
    for i1 in range(0, cols, block):  # the bias column (last, if any) is never pruned
        i2 = min(i1 + block, cols)
        w1 = w[:, i1:i2].clone()
        hinv1 = hinv[i1:i2, i1:i2]
        mask1, err1 = _obs_block(w1, hinv1, threshold, config)
        w[:, i1:i2] = w1.masked_fill(mask1, 0.0)
        mask[:, i1:i2] = mask1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]  # the lazy batch update of the columns to the right
    new_weight = w[:, :cols].to(weight.dtype)
    new_weight[mask[:, :cols]] = 0.0
    new_bias = w[:, cols].to(bias.dtype) if has_bias else None
    return LayerPruning(mask[:, :cols], new_weight, new_bias, notes)


def _obs_block(w1: torch.Tensor, hinv1: torch.Tensor, threshold: float,
               config: MethodConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of SparseGPT's column loop, in place on ``w1``; returns the block's mask and errors.

    After column ``i`` is visited, ``w1[:, i]`` holds its pruned value ``q``
    (the update ``w1[:, i:] -= err * Hinv[i, i:]`` with ``err = (w - q) / d``
    turns ``w`` into ``q`` there), so the block's result is ``w1`` with the
    masked entries set to 0.  The errors ``(w - q) / d`` of its columns are
    returned for the update of the columns to the block's right.
    """
    count = w1.shape[1]
    d1 = hinv1.diagonal()
    mask1 = torch.zeros_like(w1, dtype=torch.bool)
    if config.pattern is None:
        saliency = w1 ** 2 / d1[None, :] ** 2
        k = _fraction_count(threshold, saliency.numel())
        if k:
            mask1.view(-1)[torch.sort(saliency.flatten(), stable=True).indices[:k]] = True
    n, m = (config.pattern.n, config.pattern.m) if config.pattern is not None else (0, 0)
    err1 = torch.zeros_like(w1)
    scaled = mask1.to(w1.dtype) / d1[None, :]  # err = w * mask / d
    for i in range(count):
        if n and i % m == 0:
            span = min(m, count - i)
            prune = n * span // m
            if prune:
                saliency = w1[:, i:i + span] ** 2 / d1[i:i + span][None, :] ** 2
                mask1[:, i:i + span] = nm_mask(saliency, prune, span)
                scaled[:, i:i + span] = mask1[:, i:i + span].to(w1.dtype) / d1[i:i + span][None, :]
        err = w1[:, i] * scaled[:, i]
        err1[:, i] = err
        w1[:, i:].addr_(err, hinv1[i, i:], alpha=-1.0)
    return mask1, err1


def _fraction_count(threshold: float, n: int) -> int:
    from kprune.pruning.rules import fraction_count

    return fraction_count(threshold, n)


def _damped_cholesky(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """The float32 Cholesky factor of ``H + damp I``; ``damp`` is multiplied by 10 until it succeeds."""
    scale = float(hessian.diagonal().mean()) or 1.0
    damp = damp if damp > 0 else 0.0
    for attempt in range(MAX_DAMPENING_RETRIES + 1):
        damped = hessian.clone()
        damped.diagonal().add_(damp)
        chol, info = torch.linalg.cholesky_ex(damped.float())
        if int(info) == 0:
            return chol, damp
        new = damp * 10 if damp > 0 else 1e-6 * scale
        log.warning("Cholesky factorisation of the Hessian failed with dampening %.3g (%.3g of the mean diagonal); "
                    "retrying with %.3g", damp, damp / scale, new)
        damp = new
    raise torch.linalg.LinAlgError(f"the Hessian is not positive definite even with dampening {damp:.3g}")
