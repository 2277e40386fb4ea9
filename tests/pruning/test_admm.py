"""``method=admm`` on layers with known answers, against a NumPy transcription of the reference loop
(``fmfi-compbio/admm-pruning``, ``lib/admm.py``), and against SparseGPT's reconstruction error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kprune.errors import ConfigError
from kprune.pruning.admm import admm_rule, cubic_sparsity
from kprune.pruning.calibrated import sparsegpt_rule
from kprune.pruning.config import MethodConfig
from kprune.pruning.rules import compute_masks, fraction_count
from kprune.pruning.statistics import InputStatistics


def stats_of(x: np.ndarray, target: np.ndarray | None = None) -> InputStatistics:
    st = InputStatistics(x.shape[1])
    st.add(torch.from_numpy(x), None if target is None else torch.from_numpy(target))
    return st


def config(**kw) -> MethodConfig:
    return MethodConfig.from_config({"name": "admm", **kw})


def correlated_layer(rows=6, cols=16, frames=400, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(frames, cols)) @ rng.normal(size=(cols, cols))).astype(np.float32)
    w = rng.normal(size=(rows, cols)).astype(np.float32)
    return x, w


def relu_layer(rows=32, cols=128, frames=3000, seed=0):
    """A layer fed by a ReLU layer: non-negative, correlated inputs (a low-rank mix plus noise), with a bias."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(frames, 32)) @ rng.normal(size=(32, cols)) + 0.3 * rng.normal(size=(frames, cols))
    x = np.maximum(h, 0.0).astype(np.float32)
    w = (rng.normal(size=(rows, cols)) / np.sqrt(cols)).astype(np.float32)
    b = rng.normal(size=rows).astype(np.float32)
    return x, w, b


# -- the knobs ------------------------------------------------------------------------


def test_the_knobs_are_validated_and_described():
    cfg = config(iterations=10, ramp_iterations=5, rho_growth=1.0)
    assert cfg.describe() == {"name": "admm", "pattern": None, "iterations": 10, "ramp_iterations": 5, "rho": 1.2,
                              "rho_growth": 1.0, "rho_every": 3, "dampening": 0.1, "per_row": True,
                              "final_solve": True}
    with pytest.raises(ConfigError, match=r"method.ramp_iterations: expected at most method.iterations \(10\)"):
        config(iterations=10, ramp_iterations=15)
    with pytest.raises(ConfigError, match="method.rho: expected a finite number > 0, found 0"):
        config(rho=0)
    with pytest.raises(ConfigError, match="method.rho_growth: expected a finite number >= 1, found 0.5"):
        config(rho_growth=0.5)
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) block_size"):
        config(block_size=128)


def test_the_cubic_schedule_ends_at_the_target():
    values = [cubic_sparsity(0.5, t, 15) for t in range(15)]
    assert values[-1] == 0.5 and all(a < b for a, b in zip(values, values[1:]))
    assert values[0] == pytest.approx(0.5 - 0.5 * (14 / 15) ** 3)


# -- known answers --------------------------------------------------------------------


def identity_layer():
    x = np.sqrt(50.0) * np.eye(32, dtype=np.float32)  # H = 50 I
    w = torch.from_numpy(np.random.default_rng(1).normal(size=(8, 32)).astype(np.float32))
    return x, w


@pytest.mark.parametrize("knobs", [{}, {"rho_growth": 1.3, "rho": 1.0}, {"rho_growth": 1.3, "rho_every": 5, "rho": 1.0}])
def test_an_identity_hessian_gives_the_magnitude_mask_and_keeps_the_weights(knobs):
    x, w = identity_layer()
    result = admm_rule(w, stats_of(x), 0.5, config(**knobs))
    assert torch.equal(result.mask, compute_masks("magnitude", [w], 0.5)[0])
    torch.testing.assert_close(result.weight, w.masked_fill(result.mask, 0.0), rtol=1e-6, atol=1e-6)


def test_the_reference_s_fixed_rho_below_one_plus_the_dampening_can_miss_the_magnitude_mask():
    # Why rho starts above 1 + lam by default: on H = I a pruned weight's |W + U| tends to (1 + lam) / rho |w|, above
    # the kept weights' |w| when rho = 1 < 1 + lam, so a weight pruned early in the ramp can come back
    # in place of a larger one.  With rho above 1 + lam (from the start, or grown past it) it cannot.
    x, w = identity_layer()
    result = admm_rule(w, stats_of(x), 0.5, config(rho_growth=1.0, rho=1.0))
    assert not torch.equal(result.mask, compute_masks("magnitude", [w], 0.5)[0])


def test_a_diagonal_hessian_gives_wanda_s_mask_and_keeps_the_weights():
    rng = np.random.default_rng(2)
    scale = rng.uniform(0.5, 3.0, size=24)
    x = np.diag(scale).astype(np.float32)  # H = diag(scale²): uncorrelated inputs of different norms
    w = torch.from_numpy(rng.normal(size=(6, 24)).astype(np.float32))
    result = admm_rule(w, stats_of(x), 0.5, config())
    want = (w.abs().double() * torch.from_numpy(scale)[None, :]).argsort(dim=1, stable=True)[:, :12]
    assert torch.equal(result.mask, torch.zeros_like(result.mask).scatter_(1, want, True))
    torch.testing.assert_close(result.weight, w.masked_fill(result.mask, 0.0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
def test_the_kept_weights_are_the_least_squares_solution_on_the_final_support(bias):
    x, w = correlated_layer(seed=3)
    x = x + 1.0
    b = np.linspace(-1, 1, w.shape[0]).astype(np.float32)
    damp = 0.1
    result = admm_rule(torch.from_numpy(w), stats_of(x), 0.5, config(dampening=damp),
                       bias=torch.from_numpy(b) if bias else None)
    # Per row: min ||(v - v0) X~||^2 + lam ||(v - v0) d||^2 over the kept columns, in the raw coordinates
    # (the normalised damping lam I is lam diag(H) here).
    xa = np.hstack([x, np.ones((len(x), 1))]).astype(np.float64) if bias else x.astype(np.float64)
    v0 = np.hstack([w, b[:, None]]).astype(np.float64) if bias else w.astype(np.float64)
    h = xa.T @ xa
    hd = h + damp * np.mean(np.ones(len(h))) * np.diag(np.diag(h))
    keep = np.hstack([~result.mask.numpy(), np.ones((len(w), 1), bool)]) if bias else ~result.mask.numpy()
    want = np.zeros_like(v0)
    for r in range(len(w)):
        s = np.flatnonzero(keep[r])
        want[r, s] = np.linalg.lstsq(hd[np.ix_(s, s)], (v0 @ hd)[r, s], rcond=None)[0]
    np.testing.assert_allclose(result.weight.numpy(), want[:, :w.shape[1]], rtol=1e-4, atol=1e-5)
    if bias:
        np.testing.assert_allclose(result.bias.numpy(), want[:, -1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("threshold", [0.0, 0.29, 0.5, 0.7, 1.0])
def test_each_row_loses_exactly_the_requested_fraction(threshold):
    x, w, b = relu_layer(rows=8, cols=100, frames=800)
    result = admm_rule(torch.from_numpy(w), stats_of(x), threshold, config(), bias=torch.from_numpy(b))
    assert result.mask.sum(dim=1).tolist() == [fraction_count(threshold, 100)] * 8  # 0.29 of 100 is 29
    assert (result.weight[result.mask] == 0).all() and result.bias is not None
    whole = admm_rule(torch.from_numpy(w), stats_of(x), threshold, config(per_row=False))
    assert int(whole.mask.sum()) == fraction_count(threshold, 800)


def test_two_of_four():
    x, w, b = relu_layer(rows=8, cols=64, frames=800)
    result = admm_rule(torch.from_numpy(w), stats_of(x), 0.0, config(pattern="2:4"), bias=torch.from_numpy(b))
    assert (result.mask.reshape(8, 16, 4).sum(dim=2) == 2).all()


def test_with_a_target_and_nothing_pruned_it_is_ridge_regression_toward_the_target():
    x, w = correlated_layer(seed=5)
    rng = np.random.default_rng(5)
    y = (x @ rng.normal(size=w.shape).T).astype(np.float32)  # the target: another layer's output
    result = admm_rule(torch.from_numpy(w), stats_of(x, y), 0.0, config(), target=True)
    x64 = x.astype(np.float64)
    h = x64.T @ x64
    want = np.linalg.solve(h + 0.1 * np.diag(np.diag(h)), x64.T @ y).T
    np.testing.assert_allclose(result.weight.numpy(), want, rtol=1e-4, atol=1e-5)


# -- the reference loop ---------------------------------------------------------------


def reference_admm(w: np.ndarray, xx: np.ndarray, sparsity: float, percdamp=0.1, iterative_prune=15, iters=20,
                   rho=1.0) -> np.ndarray:
    """``AdmmPruner.fasterprune`` (per_out=True, no N:M), line by line in NumPy (float64); returns the weights."""
    norm = np.sqrt(np.diag(xx)) + 1e-8
    xx = xx / norm
    xx = (xx.T / norm).T
    W = (w * norm).T
    rho0 = percdamp * np.diag(xx).mean()
    xx = xx + np.eye(len(xx)) * rho0
    XY = xx @ W
    xx = xx + np.eye(len(xx)) * rho
    XXinv = np.linalg.inv(xx)
    U = np.zeros_like(W)
    mask = None
    for itt in range(iters):
        if itt < iterative_prune:
            cur_sparsity = sparsity - sparsity * (1 - (itt + 1) / iterative_prune) ** 3
            thres = np.sort(np.abs(W + U), axis=0)[int(W.shape[0] * cur_sparsity)]
            mask = np.abs(W + U) >= thres[None, :]
        Z = (W + U) * mask
        U = U + (W - Z)
        W = XXinv @ (XY + rho * (Z - U))
    Z = (W + U) * mask
    return Z.T / norm


@pytest.mark.parametrize("sparsity, iters, ramp", [(0.5, 20, 15), (0.7, 12, 6)])
def test_the_rule_follows_the_reference_loop(sparsity, iters, ramp):
    x, w = correlated_layer(rows=10, cols=40, frames=600, seed=7)
    st = stats_of(x)
    result = admm_rule(torch.from_numpy(w), st, sparsity,
                       config(rho=1.0, rho_growth=1.0, final_solve=False, iterations=iters, ramp_iterations=ramp))
    want = reference_admm(w.astype(np.float64), st.gram.numpy(), sparsity, iterative_prune=ramp, iters=iters)
    assert torch.equal(result.mask, torch.from_numpy(want == 0))
    np.testing.assert_allclose(result.weight.numpy(), want, rtol=1e-4, atol=1e-5)


# -- against SparseGPT ----------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_admm_reconstructs_a_relu_layer_better_than_sparsegpt(sparsity):
    x, w, b = relu_layer()
    st = stats_of(x)
    x64 = x.astype(np.float64)
    dense = x64 @ w.T + b

    def error(result):
        return np.linalg.norm(x64 @ result.weight.numpy().astype(np.float64).T + result.bias.numpy() - dense)

    sgpt = sparsegpt_rule(torch.from_numpy(w), st, sparsity, MethodConfig.from_config("sparsegpt"),
                          bias=torch.from_numpy(b))
    admm = admm_rule(torch.from_numpy(w), st, sparsity, config(), bias=torch.from_numpy(b))
    assert int(admm.mask.sum()) <= int(sgpt.mask.sum()) + w.shape[0]  # no fewer pruned weights to spend
    assert error(admm) < 0.9 * error(sgpt)


# -- a whole model --------------------------------------------------------------------


def test_admm_prunes_a_model_through_prune_model(tmp_path):
    from kprune.features.pipeline import FeatureSet
    from kprune.kaldi.build import build_tdnn
    from kprune.model import load_model
    from kprune.pruning.calibration import prune_model

    path = tmp_path / "final.mdl"
    path.write_bytes(build_tdnn(hidden_dim=16, num_pdfs=8, feat_dim=8, splices=((-1, 0, 1), (-1, 0, 1))))
    model = load_model(path)
    rng = np.random.default_rng(0)
    feats = [torch.from_numpy(rng.normal(size=(n, 8)).astype(np.float32)) for n in (70, 40)]
    features = FeatureSet(["u0", "u1"], feats, [None, None], 10)
    result = prune_model(model, model.default_layers, config(), 0.5, features=features)
    for name in model.default_layers:
        cols = model.layers[name].weight.shape[1]
        assert result.masks[name].sum(dim=1).tolist() == [cols // 2] * model.layers[name].weight.shape[0]
        assert (model.layers[name].weight[result.masks[name]] == 0).all()
    assert result.weights and result.biases  # the kept weights and the biases were solved
