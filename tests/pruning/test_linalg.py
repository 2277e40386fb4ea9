"""Per-row least squares on a support: the batched direct solve and the preconditioned CG, against NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kprune.pruning.linalg import pcg_on_support, solve_on_support


def system(rows=7, n=30, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, n)) @ rng.normal(size=(n, n))
    a = x.T @ x + 0.1 * np.eye(n)
    rhs = rng.normal(size=(rows, n))
    keep = rng.random(size=(rows, n)) < 0.6
    keep[0] = False  # an empty support solves to 0
    keep[1] = True  # a full one to a⁻¹ rhs
    want = np.zeros((rows, n))
    for r in range(rows):
        s = np.flatnonzero(keep[r])
        if len(s):
            want[r, s] = np.linalg.solve(a[np.ix_(s, s)], rhs[r, s])
    return torch.from_numpy(a), torch.from_numpy(rhs), torch.from_numpy(keep), want


@pytest.mark.parametrize("rows_per_solve", [None, 2])
def test_solve_on_support_matches_numpy(rows_per_solve):
    a, rhs, keep, want = system()
    np.testing.assert_allclose(solve_on_support(a, rhs, keep, rows_per_solve).numpy(), want, rtol=1e-9, atol=1e-10)


def test_pcg_on_support_matches_numpy_from_any_start():
    a, rhs, keep, want = system(seed=1)
    for start in (torch.zeros_like(rhs), torch.from_numpy(want) + 0.01):
        x, iterations = pcg_on_support(a, rhs, keep, start)
        np.testing.assert_allclose(x.numpy(), want, rtol=1e-7, atol=1e-8)
        assert 0 < iterations < 100  # converged: no row left to the direct solve


def test_pcg_on_support_falls_back_to_the_direct_solve():
    a, rhs, keep, want = system(seed=2)
    x, iterations = pcg_on_support(a, rhs, keep, torch.zeros_like(rhs), max_iterations=1)
    assert iterations == 1
    np.testing.assert_allclose(x.numpy(), want, rtol=1e-9, atol=1e-10)
