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
