"""Calibrated rules (wanda, sparsegpt), N:M patterns and per-row fractions, on small layers with known answers."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from kprune.errors import ConfigError
from kprune.pruning.calibrated import sparsegpt_rule, wanda_rule
from kprune.pruning.config import MethodConfig, NMPattern, RepairConfig
from kprune.pruning.rules import compute_masks, get_method, nm_mask, row_fraction_mask
from kprune.pruning.statistics import InputStatistics


def stats_of(x: np.ndarray, target: np.ndarray | None = None) -> InputStatistics:
    st = InputStatistics(x.shape[1])
    st.add(torch.from_numpy(x), None if target is None else torch.from_numpy(target))
    return st


def config(**kw) -> MethodConfig:
    return MethodConfig.from_config(kw)


# -- statistics -----------------------------------------------------------------------


def test_statistics_match_numpy_over_blocks(monkeypatch):
    import kprune.pruning.statistics as statistics

    monkeypatch.setattr(statistics, "BLOCK_FRAMES", 7)  # several float32 blocks summed in float64
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    y = rng.normal(size=(50, 3)).astype(np.float32)
    st = stats_of(x[:20], y[:20])
    st.add(torch.from_numpy(x[20:]), torch.from_numpy(y[20:]))
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    assert st.count == 50
    np.testing.assert_allclose(st.gram.numpy(), x64.T @ x64, rtol=1e-6)
    np.testing.assert_allclose(st.mean.numpy(), x64.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(st.column_norms.numpy(), np.linalg.norm(x64, axis=0), rtol=1e-6)
    gram, cross = st.augmented()
    xa = np.hstack([x64, np.ones((50, 1))])
    np.testing.assert_allclose(gram.numpy(), xa.T @ xa, rtol=1e-6)
    np.testing.assert_allclose(cross.numpy(), y64.T @ xa, rtol=1e-6, atol=1e-5)  # float32 within a block


# -- masks ----------------------------------------------------------------------------


def test_row_fraction_mask_prunes_exactly_k_per_row_ties_by_position():
    scores = torch.tensor([[3.0, 1.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    mask = row_fraction_mask(scores, 0.5)
    assert mask.tolist() == [[False, True, False, True], [True, True, False, False]]
    assert not row_fraction_mask(scores, 0.0).any()
    assert row_fraction_mask(scores, 1.0).all()
    assert row_fraction_mask(torch.zeros(0, 4), 0.5).shape == (0, 4)


def test_nm_mask_two_of_four_and_a_short_tail():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 9.0, 8.0, 7.0, 6.0, 5.0, 1.0]])
    mask = nm_mask(scores, 2, 4)
    assert mask.tolist() == [[False, True, False, True, False, False, True, True, False, True]]
    # The tail of 2 columns prunes floor(2 * 2 / 4) = 1.
    assert int(mask[0, 8:].sum()) == 1


def test_magnitude_rule_is_per_row_and_has_an_nm_form():
    w = torch.tensor([[0.1, -0.5, 0.3, -0.2], [1.0, 2.0, -3.0, 0.5]])
    (mask,) = compute_masks("magnitude", [w], 0.5)
    assert mask.tolist() == [[True, False, False, True], [True, False, False, True]]
    assert get_method("magnitude").supports_pattern and not get_method("pct").supports_pattern


def test_pattern_parsing_and_where_it_applies():
    assert NMPattern.parse("2:4") == NMPattern(2, 4) and NMPattern.parse(None) is None
    for bad in ("4:2", "2/4", "0:4", "a:b"):
        with pytest.raises(ConfigError, match="method.pattern: expected N:M"):
            NMPattern.parse(bad)
    with pytest.raises(ConfigError, match="method 'pct' has no N:M form"):
        MethodConfig.from_config({"name": "pct", "pattern": "2:4"})
    with pytest.raises(ConfigError, match="method: unknown setting.*percdamp"):
        MethodConfig.from_config({"name": "sparsegpt", "percdamp": 0.01})
    with pytest.raises(ConfigError, match="method.block_size: expected a positive integer, found 0"):
        MethodConfig.from_config({"name": "sparsegpt", "block_size": 0})


def test_repair_config_is_validated_and_ordered():
    assert RepairConfig.from_config(["bn", "refit"]).steps == ("refit", "bn")
    with pytest.raises(ConfigError, match="unknown repair.*retrain"):
        RepairConfig.from_config(["retrain"])
    with pytest.raises(ConfigError, match="refit_target: expected one of network, layer"):
        RepairConfig.from_config(["refit"], {"refit_target": "output"})


def test_calibrated_rules_refuse_the_weight_only_entry_point():
    with pytest.raises(ConfigError, match="needs calibration statistics"):
        compute_masks("wanda", [torch.ones(2, 2)], 0.5)


# -- wanda ----------------------------------------------------------------------------


def test_wanda_scores_weights_by_input_norms():
    # Column norms 1, 10, 0.1: |w| * ||x|| = [1, 10, 0.1] * |w|.
    x = np.array([[1.0, 10.0, 0.1]], dtype=np.float32)
    w = torch.tensor([[1.0, 0.5, 2.0], [0.2, 0.01, 5.0]])
    result = wanda_rule(w, stats_of(x), 0.34, config(name="wanda"))
    # Row 0 scores [1, 5, 0.2]: prune col 2.  Row 1 scores [0.2, 0.1, 0.5]: prune col 1.
    assert result.mask.tolist() == [[False, False, True], [False, True, False]]
    assert result.weight is None and result.bias is None
    # Equal input norms: wanda is per-row magnitude.
    flat = stats_of(np.ones((4, 3), dtype=np.float32))
    assert torch.equal(wanda_rule(w, flat, 0.34, config(name="wanda")).mask, compute_masks("magnitude", [w], 0.34)[0])


def test_wanda_two_of_four():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    w = torch.from_numpy(rng.normal(size=(5, 8)).astype(np.float32))
    mask = wanda_rule(w, stats_of(x), 0.0, config(name="wanda", pattern="2:4")).mask
    assert (mask.reshape(5, 2, 4).sum(dim=2) == 2).all()


# -- sparsegpt ------------------------------------------------------------------------


def reference_sparsegpt(w: np.ndarray, h: np.ndarray, sparsity: float, blocksize: int, percdamp: float,
                        prunen: int = 0, prunem: int = 0) -> np.ndarray:
    """IST-DASLab/sparsegpt's fasterprune, transcribed to NumPy in float64 (k = floor(sparsity * n) per block)."""
    w = w.astype(np.float64).copy()
    h = h.astype(np.float64).copy()
    rows, cols = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h[np.diag_indices(cols)] += percdamp * np.mean(np.diag(h))
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper Cholesky factor of H^-1
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].copy()
        q1 = np.zeros_like(w1)
        err1 = np.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = w1 ** 2 / np.diag(hinv1)[None, :] ** 2
            k = int(np.floor(sparsity * tmp.size + 1e-9))
            mask1 = np.zeros(tmp.size, dtype=bool)
            mask1[np.argsort(tmp.ravel(), kind="stable")[:k]] = True
            mask1 = mask1.reshape(tmp.shape)
        else:
            mask1 = np.zeros_like(w1, dtype=bool)
        for i in range(i2 - i1):
            col = w1[:, i]
            d = hinv1[i, i]
            if prunen and i % prunem == 0:
                tmp = w1[:, i:i + prunem] ** 2 / np.diag(hinv1)[i:i + prunem][None, :] ** 2
                idx = np.argsort(tmp, axis=1, kind="stable")[:, :prunen]
                np.put_along_axis(mask1[:, i:i + prunem], idx, True, axis=1)
            q = col.copy()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            err = (col - q) / d
            w1[:, i:] -= np.outer(err, hinv1[i, i:])
            err1[:, i] = err
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w


def correlated_layer(rows=6, cols=12, frames=400, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(cols, cols))
    x = (rng.normal(size=(frames, cols)) @ mix).astype(np.float32)
    w = rng.normal(size=(rows, cols)).astype(np.float32)
    return x, w


@pytest.mark.parametrize("pattern, blocksize", [(None, 5), (None, 128), ("2:4", 8)])
def test_sparsegpt_matches_the_reference_algorithm(pattern, blocksize):
    x, w = correlated_layer()
    st = stats_of(x)
    cfg = config(name="sparsegpt", pattern=pattern, block_size=blocksize, dampening=0.01)
    result = sparsegpt_rule(torch.from_numpy(w), st, 0.5, cfg)
    n, m = (2, 4) if pattern else (0, 0)
    want = reference_sparsegpt(w, st.gram.numpy(), 0.5, blocksize, 0.01, n, m)
    np.testing.assert_allclose(result.weight.numpy(), want, rtol=2e-4, atol=2e-4)
    assert torch.equal(result.mask, torch.from_numpy(want == 0))
    if pattern:
        assert (result.mask.reshape(6, 3, 4).sum(dim=2) == 2).all()
    else:
        assert int(result.mask.sum()) == 36


def test_sparsegpt_with_uncorrelated_inputs_is_magnitude_pruning():
    # H diagonal and equal: the OBS update moves nothing and the saliency is w^2.
    x = np.sqrt(50.0) * np.eye(8, dtype=np.float32)
    w = torch.tensor([[0.1, -0.5, 0.3, -0.2, 0.9, 0.05, -0.7, 0.6]])
    result = sparsegpt_rule(w, stats_of(x), 0.5, config(name="sparsegpt", dampening=0.0))
    assert torch.equal(result.mask, compute_masks("magnitude", [w], 0.5)[0])
    torch.testing.assert_close(result.weight, w.masked_fill(result.mask, 0.0))


def test_sparsegpt_reconstructs_better_than_masking():
    x, w = correlated_layer(seed=3)
    st = stats_of(x)
    result = sparsegpt_rule(torch.from_numpy(w), st, 0.5, config(name="sparsegpt"))
    masked = torch.from_numpy(w).masked_fill(result.mask, 0.0).numpy()
    dense_out = x @ w.T
    err_obs = np.linalg.norm(x @ result.weight.numpy().T - dense_out)
    err_mask = np.linalg.norm(x @ masked.T - dense_out)
    assert err_obs < 0.7 * err_mask


def test_sparsegpt_bias_column_compensates_and_is_never_pruned():
    x, w = correlated_layer(seed=4)
    x = x + 3.0  # a mean the bias can absorb
    bias = torch.full((6,), 0.5)
    st = stats_of(x)
    with_bias = sparsegpt_rule(torch.from_numpy(w), st, 0.5, config(name="sparsegpt"), bias=bias)
    assert with_bias.bias is not None and not torch.equal(with_bias.bias, bias)
    dense_out = x @ w.T + 0.5
    err = np.linalg.norm(x @ with_bias.weight.numpy().T + with_bias.bias.numpy() - dense_out)
    plain = sparsegpt_rule(torch.from_numpy(w), st, 0.5, config(name="sparsegpt"))
    err_plain = np.linalg.norm(x @ plain.weight.numpy().T + 0.5 - dense_out)
    assert err < err_plain


def test_sparsegpt_raises_the_dampening_when_cholesky_fails(caplog):
    x = np.zeros((10, 4), dtype=np.float32)
    x[:, 0] = 1.0
    x[:, 1] = 1.0  # two identical columns: H is singular
    w = torch.ones(2, 4)
    with caplog.at_level(logging.WARNING, logger="kprune.pruning.calibrated"):
        result = sparsegpt_rule(w, stats_of(x), 0.5, config(name="sparsegpt", dampening=0.0))
    assert "Cholesky factorisation of the Hessian failed" in caplog.text
    assert result.notes["dampening"] > 0 and result.notes["dampening_raised"]
    assert int(result.mask.sum()) == 4
