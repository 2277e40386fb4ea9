"""Repairs after a rule: mend what the pruning disturbed, from calibration statistics.

All three are closed-form and run one layer (or BatchNorm) at a time:

* :func:`bias_correction`: ``b += (W - Ŵ) E[x]``, the expected contribution of
  the removed (and changed) weights on the inputs the layer sees.
* :func:`refit`: with the mask fixed, each output row's kept weights (and the
  bias, as a constant-1 input) are the damped least-squares solution
  ``(H̃_SS + λI) w_S = c_S`` where ``H̃ = Σ x̃ x̃ᵀ`` over the calibration frames
  (``x̃ = [x; 1]``) and ``c = Σ y* x̃ᵀ`` for the target ``y*``: the dense
  layer's own output on these inputs (``c = W̃ H̃``) or the dense network's
  output at that layer (recorded by the calibration pass).  ``λ`` is
  ``dampening`` x the mean of ``diag H̃``.
* :func:`update_batchnorm`: new ``<StatsMean>``/``<StatsVar>`` from the
  calibration moments of the BatchNorm's input in the pruned network,
  ``plain`` (those moments) or ``delta`` (the stored statistics moved by the
  change the pruning caused: ``mean + (pruned - dense)``, ``var x pruned / dense``).
"""

from __future__ import annotations

import torch

from kprune.pruning.linalg import SOLVE_BYTES, solve_on_support
from kprune.pruning.statistics import InputStatistics, MomentStatistics

__all__ = ["bias_correction", "refit", "update_batchnorm", "SOLVE_BYTES"]


def bias_correction(dense_weight: torch.Tensor, new_weight: torch.Tensor, bias: torch.Tensor,
                    stats: InputStatistics) -> torch.Tensor:
    """The bias that keeps the layer's mean output on these inputs: ``b + (W - Ŵ) E[x]``."""
    delta = (dense_weight.double() - new_weight.double()) @ stats.mean.to(dense_weight.device)
    return (bias.double() + delta).to(bias.dtype)


def refit(mask: torch.Tensor, stats: InputStatistics, *, dense_weight: torch.Tensor,
          dense_bias: torch.Tensor | None, bias: bool, target: str = "layer", dampening: float = 0.01,
          rows_per_solve: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Least-squares kept weights (and bias) for a fixed mask; returns the new weight and bias.

    ``target`` is ``layer`` (``y* = W x + b``, the dense layer on the inputs
    it now sees) or ``network`` (the target recorded in ``stats.cross``).
    ``bias`` says whether the layer has a bias to refit.  Rows are solved in
    batches (:func:`~kprune.pruning.linalg.solve_on_support`); ``rows_per_solve``
    defaults to as many rows as fit in :data:`SOLVE_BYTES` of systems.
    """
    rows, cols = mask.shape
    device = dense_weight.device
    if bias:
        gram, cross = stats.augmented()
        w_dense = torch.cat([dense_weight.double(), dense_bias.double()[:, None]], dim=1)
        keep = torch.cat([~mask, torch.ones(rows, 1, dtype=torch.bool, device=mask.device)], dim=1)
    else:
        gram, cross = stats.gram, stats.cross
        w_dense = dense_weight.double()
        keep = ~mask
    gram = gram.to(device)
    if target == "network":
        if cross is None:
            raise ValueError("refit toward the network's output: the statistics hold no target")
        rhs = cross.to(device)
    else:
        rhs = w_dense @ gram
    lam = dampening * float(gram.diagonal().mean()) if gram.numel() else 0.0
    damped = gram.clone()
    damped.diagonal().add_(lam)
    out = solve_on_support(damped, rhs, keep, rows_per_solve)
    new_weight = out[:, :cols].to(dense_weight.dtype)
    new_weight[mask] = 0.0
    new_bias = out[:, cols].to(dense_bias.dtype) if bias else None
    return new_weight, new_bias


def update_batchnorm(stored_mean: torch.Tensor, stored_var: torch.Tensor, pruned: MomentStatistics,
                     dense: MomentStatistics | None, mode: str = "delta") -> tuple[torch.Tensor, torch.Tensor]:
    """New ``(<StatsMean>, <StatsVar>)`` of a BatchNormComponent (float32, like the stored ones).

    ``plain``: the pruned network's calibration mean and variance.  ``delta``:
    the stored ones shifted by the pruned-minus-dense calibration mean and
    scaled by the pruned-over-dense calibration variance (a dense variance of 0
    leaves the stored variance as it is).
    """
    if mode == "plain":
        mean, var = pruned.mean, pruned.var
    elif mode == "delta":
        if dense is None:
            raise ValueError("the delta BatchNorm update needs the dense network's calibration moments")
        mean = stored_mean.double() + (pruned.mean - dense.mean).to(stored_mean.device)
        ratio = torch.where(dense.var > 0, pruned.var / dense.var.clamp_min(1e-30), torch.ones_like(dense.var))
        var = stored_var.double() * ratio.to(stored_var.device)
    else:
        raise ValueError(f"BatchNorm update mode: expected delta or plain, found {mode!r}")
    return mean.to(stored_mean.dtype), var.to(stored_var.dtype)
