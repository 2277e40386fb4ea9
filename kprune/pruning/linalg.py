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



def pcg_on_support(a: torch.Tensor, rhs: torch.Tensor, keep: torch.Tensor, start: torch.Tensor, *,
                   tolerance: float = 1e-8, max_iterations: int = 100) -> tuple[torch.Tensor, int]:
    """:func:`solve_on_support` by preconditioned conjugate gradients, all rows at once, from ``start``.

    The preconditioner is the full ``a⁻¹`` restricted to each row's support
    (one float32 Cholesky factor of ``a`` for all rows): by the Schur
    complement ``(a_SS)⁻¹ = (a⁻¹)_SS - (a⁻¹)_SP ((a⁻¹)_PP)⁻¹ (a⁻¹)_PS``, so it
    misses a term of the rank of the pruned set only, and a few tens of
    iterations, each two ``[rows, n] x [n, n]`` products, reach ``tolerance``
    where one ``|S| x |S|`` factorisation per row costs far more.  A row whose
    residual is not below ``tolerance`` x its right-hand side's norm after
    ``max_iterations`` is solved exactly by :func:`solve_on_support`.
    Returns the solution and the number of iterations run.
    """
    keep_f = keep.to(a.dtype)
    rhs = rhs.to(a.dtype) * keep_f
    chol, info = torch.linalg.cholesky_ex(a.float())
    if int(info) != 0:
        return solve_on_support(a, rhs, keep), 0

    def precondition(r: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(r.T.float(), chol).double().T.to(a.dtype) * keep_f

    x = start.to(a.dtype) * keep_f
    r = rhs - (x @ a) * keep_f
    z = precondition(r)
    p = z.clone()
    rz = (r * z).sum(dim=1)
    limit = tolerance * rhs.norm(dim=1)
    tiny = torch.finfo(a.dtype).tiny
    iterations = 0
    for iterations in range(max_iterations + 1):
        active = r.norm(dim=1) > limit
        if not bool(active.any()) or iterations == max_iterations:
            break
        ap = (p @ a) * keep_f
        alpha = torch.where(active, rz / (p * ap).sum(dim=1).clamp_min(tiny), 0.0)
        x += alpha[:, None] * p
        r -= alpha[:, None] * ap
        z = precondition(r)
        rz_new = (r * z).sum(dim=1)
        p = z + torch.where(active, rz_new / rz.clamp_min(tiny), 0.0)[:, None] * p
        rz = rz_new
    late = r.norm(dim=1) > limit
    if bool(late.any()):
        x[late] = solve_on_support(a, rhs[late], keep[late])
    return x, iterations
