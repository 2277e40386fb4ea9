"""Repairs (bias, refit, bn), each against a NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kprune.pruning.repair import bias_correction, refit, update_batchnorm
from kprune.pruning.statistics import InputStatistics, MomentStatistics


def layer(seed=0, rows=5, cols=9, frames=300):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(frames, cols)) @ rng.normal(size=(cols, cols)) + 1.5).astype(np.float32)
    w = rng.normal(size=(rows, cols)).astype(np.float32)
    b = rng.normal(size=rows).astype(np.float32)
    mask = rng.random(size=(rows, cols)) < 0.5
    return x, w, b, mask


def stats_of(x, target=None):
    st = InputStatistics(x.shape[1])
    st.add(torch.from_numpy(x), None if target is None else torch.from_numpy(target))
    return st


def ridge_rows(x, y, keep, lam_frac, bias):
    """Per row: min ||y_r - X_S w_S (- c)||^2 + lam ||w||^2 over the kept columns (and a constant-1 column)."""
    xa = np.hstack([x, np.ones((len(x), 1))]) if bias else x
    gram = xa.T @ xa
    lam = lam_frac * np.mean(np.diag(gram))
    out = np.zeros((y.shape[1], xa.shape[1]))
    for r in range(y.shape[1]):
        s = np.flatnonzero(np.append(keep[r], True) if bias else keep[r])
        a = gram[np.ix_(s, s)] + lam * np.eye(len(s))
        out[r, s] = np.linalg.solve(a, xa[:, s].T @ y[:, r])
    return out


def test_bias_correction_keeps_the_mean_output():
    x, w, b, mask = layer()
    x64 = x.astype(np.float64)
    pruned = np.where(mask, 0.0, w)
    new_b = bias_correction(torch.from_numpy(w), torch.from_numpy(pruned.astype(np.float32)), torch.from_numpy(b),
                            stats_of(x))
    want = b + (w - pruned) @ x64.mean(0)
    np.testing.assert_allclose(new_b.numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose((x64 @ pruned.T + new_b.numpy()).mean(0), (x64 @ w.T + b).mean(0), atol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows_per_solve", [64, 2])
def test_refit_toward_the_layer_output_is_ridge_regression(bias, rows_per_solve):
    x, w, b, mask = layer(seed=1)
    x64 = x.astype(np.float64)
    y = x64 @ w.T + (b if bias else 0)
    new_w, new_b = refit(torch.from_numpy(mask), stats_of(x), dense_weight=torch.from_numpy(w),
                         dense_bias=torch.from_numpy(b) if bias else None, bias=bias, target="layer",
                         dampening=0.01, rows_per_solve=rows_per_solve)
    want = ridge_rows(x64, y, ~mask, 0.01, bias)
    np.testing.assert_allclose(new_w.numpy(), want[:, :9], rtol=1e-4, atol=1e-4)
    assert (new_w.numpy()[mask] == 0).all()
    if bias:
        np.testing.assert_allclose(new_b.numpy(), want[:, 9], rtol=1e-4, atol=1e-4)
    else:
        assert new_b is None


def test_refit_toward_a_recorded_target():
    x, w, b, mask = layer(seed=2)
    rng = np.random.default_rng(9)
    target = (x @ w.T + b + rng.normal(scale=0.3, size=(len(x), 5))).astype(np.float32)  # another network's output
    new_w, new_b = refit(torch.from_numpy(mask), stats_of(x, target), dense_weight=torch.from_numpy(w),
                         dense_bias=torch.from_numpy(b), bias=True, target="network", dampening=0.001)
    want = ridge_rows(x.astype(np.float64), target.astype(np.float64), ~mask, 0.001, True)
    np.testing.assert_allclose(new_w.numpy(), want[:, :9], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new_b.numpy(), want[:, 9], rtol=1e-4, atol=1e-4)


def test_refit_with_nothing_kept_gives_zeros_and_the_mean_bias():
    x, w, b, _ = layer(seed=3)
    mask = np.ones_like(w, dtype=bool)
    new_w, new_b = refit(torch.from_numpy(mask), stats_of(x), dense_weight=torch.from_numpy(w),
                         dense_bias=torch.from_numpy(b), bias=True, target="layer", dampening=0.0)
    assert (new_w == 0).all()
    np.testing.assert_allclose(new_b.numpy(), (x.astype(np.float64) @ w.T + b).mean(0), rtol=1e-4, atol=1e-4)


def test_batchnorm_updates_plain_and_delta():
    rng = np.random.default_rng(4)
    dense_x = rng.normal(loc=1.0, scale=2.0, size=(200, 6)).astype(np.float32)
    pruned_x = rng.normal(loc=0.5, scale=1.0, size=(200, 6)).astype(np.float32)
    dense, pruned = MomentStatistics(3), MomentStatistics(3)
    dense.add(torch.from_numpy(dense_x))  # block_dim 3: each row holds two blocks
    pruned.add(torch.from_numpy(pruned_x))
    d, p = dense_x.reshape(-1, 3).astype(np.float64), pruned_x.reshape(-1, 3).astype(np.float64)
    stored_mean, stored_var = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([4.0, 5.0, 6.0])
    mean, var = update_batchnorm(stored_mean, stored_var, pruned, None, "plain")
    np.testing.assert_allclose(mean.numpy(), p.mean(0), rtol=1e-5)
    np.testing.assert_allclose(var.numpy(), p.var(0), rtol=1e-5)
    mean, var = update_batchnorm(stored_mean, stored_var, pruned, dense, "delta")
    np.testing.assert_allclose(mean.numpy(), stored_mean.numpy() + p.mean(0) - d.mean(0), rtol=1e-5)
    np.testing.assert_allclose(var.numpy(), stored_var.numpy() * p.var(0) / d.var(0), rtol=1e-5)
    assert mean.dtype == torch.float32
    with pytest.raises(ValueError, match="needs the dense network's calibration moments"):
        update_batchnorm(stored_mean, stored_var, pruned, None, "delta")
