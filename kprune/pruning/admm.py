"""``method=admm``: layer-wise pruning by ADMM with gradual sparsity, then an exact solve on the support.

Boža 2024, "Fast and Effective Weight Update for Pruned Large Language
Models" (arXiv 2401.02938; reference code ``fmfi-compbio/admm-pruning``,
``lib/admm.py``, ``AdmmPruner.fasterprune``), with ALPS's growing penalty
(Meng et al. 2024, ``mazumder-lab/ALPS``) as an option.

For one layer ``y = W x + b`` with ``H = Σ x xᵀ`` (the bias, where there is
one, a last never-pruned column with constant input 1, as in ``sparsegpt``):

1. *Normalise*: ``d = sqrt(diag H)``, ``H ← H / d / dᵀ``, ``W ← W · d``, so
   every column has a unit Hessian diagonal and ``|W|`` compares like
   Wanda's scores.  Dead columns (``d = 0``: an input never active) get
   ``d = 1`` and weight 0, so they are pruned first at no cost.
2. *Damp*: ``H_d = H + λ I`` with ``λ = dampening`` x the mean diagonal
   (0.1, the reference's ``percdamp``: on the unit diagonal that is 10 %).
   The target is ``XY = W H_d`` (the reference's ``XX.matmul(W)`` after
   damping), so the objective is ``‖(Ŵ - W) X‖² + λ ‖Ŵ - W‖²``: the
   damping pulls toward the dense weights, not toward 0.
3. *ADMM*, ``iterations`` times, with ``Z`` the sparse copy and ``U`` the
   scaled dual: during the first ``ramp_iterations`` the mask is re-chosen
   from ``|W + U|`` at the cubic sparsity ``s - s (1 - (t+1)/R)³`` (per output
   row when ``per_row``, else over the whole layer, the schedule honoured in
   both; the reference's layer-wide branch selects at ``s`` throughout);
   then ``Z = (W + U) ⊙ keep``, ``U ← U + W - Z``,
   ``W ← (XY + ρ (Z - U)) (H_d + ρ I)⁻¹``.
4. *ρ*: starts at ``rho`` and is multiplied by ``rho_growth`` every
   ``rho_every`` iterations (``U`` rescaled by the ratio, as scaled ADMM
   needs; ALPS grows it x1.1 ... 1.3 every 3 iterations so that ``W`` and
   ``Z`` agree and the support settles).  Each change refactors
   ``H_d + ρ I`` (one float32 Cholesky factorisation); each iteration is one
   float32 solve with it for the layer's rows, never an explicit inverse.

   The defaults, ``rho=1.2`` fixed (``rho_growth=1``), and why: on
   ``H = I`` a pruned weight's ``|W + U|`` tends to ``(1 + λ)/ρ · |w|``, so
   with the reference's ``ρ = 1 < 1 + λ`` a weight pruned early in the ramp
   outgrows kept ones and comes back: the mask is not the magnitude mask,
   the known optimum there (``tests/pruning/test_admm.py`` shows both).  Any
   ``ρ > 1 + λ`` at the end of the ramp fixes that; a growing ρ does it too
   but costs a factorisation per step and, on the real model
   (``tools/bench_admm.py``, all layers, ko-calib, layer-wise relative
   error at 50 / 70 %), was no better: ρ = 1 fixed 0.01414 / 0.05536,
   ρ = 1.2 fixed 0.01422 / 0.05594, x1.3 every 5 0.01426 / 0.05613, x1.3
   every 3 0.01436 / 0.05657 (sparsegpt: 0.02547 / 0.11126), with points
   1.6 / 1.8, 1.6 / 1.8, 1.7 / 1.9 and 1.9 / 2.2 times sparsegpt's.
5. *Exact solve* (``final_solve``, default true): with the last mask fixed,
   each row's kept weights (and the bias) are the least-squares solution
   through the damped Hessian restricted to the kept columns,
   ``H_d[S, S] ŵ_S = XY[S]``, by conjugate gradients on all rows at once from
   ``Z``, preconditioned by ``H_d⁻¹`` restricted to the support, to a
   relative residual of 1e-8, about the float32 precision the weights are
   stored in (:func:`~kprune.pruning.linalg.pcg_on_support`; a row that has
   not converged in 100 iterations is factored and solved directly).  On a
   synthetic 64 x 1536 layer of spliced ReLU inputs (the real model's widest)
   it took 0.85 s against 2-6 s for one Cholesky factorisation per row
   (shared 2-core machine); the real model's 64 x 1536 layers take 60-80
   iterations, its 768 x 128 ones ~25 (``solve_iterations`` in the layer's
   notes).  False returns the reference's ``Z``.  Then ``Ŵ ← Ŵ / d``.

``method.pattern=N:M``: while sparsity ramps, the ``N`` lowest of every ``M``
inputs are pruned first, then the lowest of the rest up to the scheduled
count; from the end of the ramp the mask is exactly N:M.

With ``target=True`` (``Σ y* xᵀ`` for the dense network's output at the
layer) the ADMM starts from the unpruned least-squares weights for that target,
``W' = C H_d⁻¹``, as ``sparsegpt`` does.

Each row prunes exactly ``floor(t · cols)`` of its weights (``per_row``), or
the layer ``floor(t · rows · cols)``, ties broken by position.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from kprune.errors import ConfigError
from kprune.pruning.calibrated import _damped_cholesky
from kprune.pruning.config import MethodConfig
from kprune.pruning.linalg import pcg_on_support, solve_spd
from kprune.pruning.rules import LayerPruning, fraction_count, nm_mask, register_method
from kprune.pruning.statistics import InputStatistics

log = logging.getLogger(__name__)

__all__ = ["AdmmOptions", "admm_rule", "cubic_sparsity"]


@dataclass(frozen=True)
class AdmmOptions:
    """ADMM's knobs (``method.<knob>``; see the module docstring)."""

    #: ADMM iterations in all.
    iterations: int = 20
    #: Iterations over which the sparsity ramps up (cubically) and the mask is re-chosen; <= iterations.
    ramp_iterations: int = 15
    #: The penalty ρ at the start (on the unit-diagonal Hessian).
    rho: float = field(default=1.2, metadata={"minimum": 0.0, "strict": True})
    #: ρ is multiplied by this every ``rho_every`` iterations (1: fixed, as in the reference).
    rho_growth: float = field(default=1.0, metadata={"minimum": 1.0})
    #: Iterations between two increases of ρ.
    rho_every: int = 3
    #: Added to the normalised Hessian's diagonal, as a fraction of its mean.
    dampening: float = 0.1
    #: The mask chosen per output row (true) or over the whole layer (false).
    per_row: bool = True
    #: The kept weights solved exactly on the final support (false: ADMM's Z, as the reference returns).
    final_solve: bool = True

    def __post_init__(self):
        if self.ramp_iterations > self.iterations:
            raise ConfigError(f"method.ramp_iterations: expected at most method.iterations ({self.iterations}), "
                              f"found {self.ramp_iterations}")


def cubic_sparsity(target: float, step: int, ramp: int) -> float:
    """The sparsity at iteration ``step`` (0-based) of a cubic ramp to ``target`` over ``ramp`` iterations."""
    if step >= ramp - 1:
        return target
    return target - target * (1.0 - (step + 1) / ramp) ** 3


@register_method("admm", fraction=True, calibrated=True, supports_pattern=True, needs=("gram",),
                 options=AdmmOptions)
def admm_rule(weight: torch.Tensor, stats: InputStatistics, threshold: float, config: MethodConfig, *,
              bias: torch.Tensor | None = None, target: bool = False) -> LayerPruning:
    """Layer-wise ADMM with a cubic sparsity ramp (Boža 2024): the mask re-chosen from |W + U| as sparsity grows,
    then the kept weights solved exactly through the damped Hessian on the final support."""
    opts: AdmmOptions = config.options
    rows, cols = weight.shape
    device = weight.device
    has_bias = bias is not None
    if has_bias:
        hessian, cross = stats.augmented()
        w = torch.cat([weight.double(), bias.double()[:, None]], dim=1)
    else:
        hessian, cross = stats.gram.clone(), stats.cross
        w = weight.double().clone()
    hessian = hessian.to(device)
    n = hessian.shape[0]
    dead = hessian.diagonal() == 0
    hessian[dead, dead] = 1.0
    w[:, dead] = 0.0
    norm = hessian.diagonal().sqrt()
    hessian = hessian / norm[:, None] / norm[None, :]
    w = w * norm[None, :]
    lam = opts.dampening * float(hessian.diagonal().mean())
    damped = hessian.clone()
    damped.diagonal().add_(lam)
    notes: dict[str, Any] = {}
    if target:
        if cross is None:
            raise ValueError("admm: a target was asked for, but the statistics hold none")
        # W' = C H_d^-1 in the normalised coordinates (C / d): the unpruned least-squares weights for the target.
        w = solve_spd(damped, (cross.to(device) / norm[None, :]).T).T.contiguous()
    xy = w @ damped
    select = _Selector(rows, cols, n, threshold, config, opts, device)
    rho = opts.rho
    chol = _shifted_cholesky(damped, rho)
    u = torch.zeros_like(w)
    mask = None
    for t in range(opts.iterations):
        if t < opts.ramp_iterations:
            mask = select((w + u).abs(), t)
        z = (w + u).masked_fill(mask, 0.0)
        u += w - z
        # (XY + ρ (Z - U)) (H_d + ρ I)⁻¹, one float32 solve: the iterates need not be exact, the final solve is.
        w = torch.cholesky_solve((xy + rho * (z - u)).T.float(), chol).T.to(w.dtype)
        if opts.rho_growth > 1.0 and (t + 1) % opts.rho_every == 0 and t + 1 < opts.iterations:
            u *= 1.0 / opts.rho_growth  # the scaled dual y / ρ, for the new ρ
            rho *= opts.rho_growth
            chol = _shifted_cholesky(damped, rho)
    notes["rho"] = rho
    z = (w + u).masked_fill(mask, 0.0)
    if opts.final_solve:
        w, notes["solve_iterations"] = pcg_on_support(damped, xy, ~mask, z)
    else:
        w = z
    w = w / norm[None, :]
    new_weight = w[:, :cols].to(weight.dtype).masked_fill(mask[:, :cols], 0.0)
    new_bias = w[:, cols].to(bias.dtype) if has_bias else None
    return LayerPruning(mask[:, :cols].clone(), new_weight, new_bias, notes)


def _shifted_cholesky(damped: torch.Tensor, rho: float) -> torch.Tensor:
    """The float32 Cholesky factor of ``H_d + ρ I`` (ρ raised x10, logged, if it fails)."""
    chol, _ = _damped_cholesky(damped, rho)
    return chol


class _Selector:
    """The mask (True = pruned) at each iteration of the ramp, from scores ``|W + U|`` ``[rows, n]``.

    The bias column (``n > cols``) is never pruned.
    """

    def __init__(self, rows: int, cols: int, n: int, threshold: float, config: MethodConfig, opts: AdmmOptions,
                 device):
        self.rows, self.cols, self.n = rows, cols, n
        self.threshold, self.pattern, self.opts = threshold, config.pattern, opts
        self.device = device

    def __call__(self, scores: torch.Tensor, step: int) -> torch.Tensor:
        scores = scores[:, :self.cols]
        ramp = self.opts.ramp_iterations
        if self.pattern is not None:
            final = nm_mask(scores, self.pattern.n, self.pattern.m)
            if step >= ramp - 1:
                return self._pad(final)
            # The N:M-kept entries are out of reach; the lowest of the rest up to the scheduled count.
            fraction = cubic_sparsity(self.pattern.fraction, step, ramp)
            return self._pad(_lowest(scores.masked_fill(~final, float("inf")), fraction, True))
        fraction = cubic_sparsity(self.threshold, step, ramp)
        return self._pad(_lowest(scores, fraction, self.opts.per_row))

    def _pad(self, mask: torch.Tensor) -> torch.Tensor:
        if self.n == self.cols:
            return mask
        return torch.cat([mask, torch.zeros(self.rows, self.n - self.cols, dtype=torch.bool, device=mask.device)], 1)


def _lowest(scores: torch.Tensor, fraction: float, per_row: bool) -> torch.Tensor:
    """True at the ``floor(fraction · count)`` lowest scores, per row or over the whole tensor (ties by position)."""
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if scores.numel() == 0:
        return mask
    if per_row:
        k = fraction_count(fraction, scores.shape[1])
        if k:
            mask.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :k], True)
    else:
        k = fraction_count(fraction, scores.numel())
        if k:
            mask.view(-1)[torch.sort(scores.flatten(), stable=True).indices[:k]] = True
    return mask
