"""Linear algebra for the calibrated rules and repairs, at float64 accuracy and float32 speed.

On CPUs, MKL's float64 triangular solves (``cholesky_solve``,
``solve_triangular``, ``cholesky_inverse``) on batches of mid-sized matrices
ran 100-200x slower than their float32 versions on this project's machine
(``tools/bench_calibrated.py``), so systems are factored in float32 and the
solution is brought back to float64 accuracy by iterative refinement (each step
a float64 matrix product, which is fast).
"""

from __future__ import annotations

import torch

#: Refinement steps after the float32 solve; two reach float64 accuracy for the damped systems solved here.
REFINEMENT_STEPS = 2


def solve_spd(a: torch.Tensor, b: torch.Tensor, chol: torch.Tensor | None = None) -> torch.Tensor:
    """``a⁻¹ b`` for symmetric positive definite float64 ``a`` (``[..., n, n]``, ``b`` ``[..., n, k]``).

    ``chol`` is a float32 Cholesky factor of ``a`` when the caller has one.  A
    system that float32 Cholesky cannot factor is solved by LU in float64.
    """
    if chol is None:
        chol, info = torch.linalg.cholesky_ex(a.float())
        if not bool((info == 0).all()):
            return torch.linalg.solve(a, b)
    x = torch.cholesky_solve(b.float(), chol).double()
    for _ in range(REFINEMENT_STEPS):
        x = x + torch.cholesky_solve((b - a @ x).float(), chol).double()
    return x


#: Memory for one batch of per-row systems (float64).
SOLVE_BYTES = 256 << 20


def solve_on_support(a: torch.Tensor, rhs: torch.Tensor, keep: torch.Tensor,
                     rows_per_solve: int | None = None) -> torch.Tensor:
    """Per row ``r``: ``x_S = a[S, S]⁻¹ rhs[r, S]`` on its support ``S = keep[r]``, 0 elsewhere.

    ``a`` is ``[n, n]`` symmetric positive definite (damped by the caller),
    ``rhs`` and ``keep`` ``[rows, n]``.  Rows are solved in batches, sorted by
    support size: each row's kept columns are gathered first (stable), padded
    to the batch's largest count with identity rows that solve to 0.
    ``rows_per_solve`` defaults to as many rows as fit in :data:`SOLVE_BYTES`.
    """
    rows = keep.shape[0]
    device = a.device
    out = torch.zeros(rhs.shape, dtype=a.dtype, device=device)
    if rows == 0:
        return out
    counts = keep.sum(dim=1)
    order = torch.argsort(counts, descending=True)
    if rows_per_solve is None:
        widest = max(int(counts.max()), 1)
        rows_per_solve = max(1, SOLVE_BYTES // (8 * widest * widest))
    zero = torch.zeros((), dtype=a.dtype, device=device)
    for start in range(0, rows, rows_per_solve):
        batch = order[start:start + rows_per_solve]
        k = int(counts[batch].max())
        if k == 0:
            continue
        idx = torch.sort((~keep[batch]).to(torch.int8), dim=1, stable=True).indices[:, :k]
        valid = torch.gather(keep[batch], 1, idx)
        pair = valid[:, :, None] & valid[:, None, :]
        sub = torch.where(pair, a[idx[:, :, None], idx[:, None, :]], zero)
        sub = sub + torch.diag_embed((~valid).to(a.dtype))  # padding: identity rows
        b = torch.where(valid, torch.gather(rhs[batch].to(a.dtype), 1, idx), zero)
        solution = torch.where(valid, solve_spd(sub, b[:, :, None])[:, :, 0], zero)
        out[batch[:, None], idx] = solution
    return out
