"""Pruning rules: hand-made tensors with known answers, and the CPU path against the CUDA design."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest
import torch

from kprune.pruning import rules as methods
from kprune.errors import ConfigError
from kprune.pruning.rules import compute_masks, fraction_count, get_method, kth_smallest_quantile, select_ranks

ALL = ["abs", "pos", "neg", "pct", "global_pct", "std"]
F32 = torch.float32


def t32(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F32)


def masks_of(method: str, weights: list[torch.Tensor], t: float, impl: str = "auto") -> list[torch.Tensor]:
    return compute_masks(method, weights, t, impl=impl)


def as_list(mask: torch.Tensor) -> list[bool]:
    return mask.tolist()


# ----------------------------------------------------------------------------
# Reference implementations, written from the docstrings with sorting


def decimal_count(t: float, n: int) -> int:
    return math.floor(Decimal(repr(float(t))) * n)


def ref_pct(w: torch.Tensor, t: float) -> torch.Tensor:
    x = w.double().reshape(-1).numpy()
    pos = np.sort(x[x > 0])
    neg = np.sort(-x[x < 0])
    kp, kn = decimal_count(t, pos.size), decimal_count(t, neg.size)
    prune_pos = (x > 0) & ((x < pos[kp]) if kp < pos.size else True)
    prune_neg = (x < 0) & ((-x < neg[kn]) if kn < neg.size else True)
    return torch.from_numpy(prune_pos | prune_neg).reshape(w.shape)


def ref_global_pct(ws: list[torch.Tensor], t: float) -> list[torch.Tensor]:
    mags = np.sort(np.concatenate([w.double().abs().reshape(-1).numpy() for w in ws]))
    mags = mags[~np.isnan(mags)]
    k = decimal_count(t, mags.size)
    out = []
    for w in ws:
        a = w.double().abs().numpy()
        out.append(torch.from_numpy(~np.isnan(a) if k == mags.size else a < mags[k]))
    return out


def random_layer(n: int, seed: int, levels: int | None = None, zeros: float = 0.0) -> torch.Tensor:
    """Laplace weights; ``levels`` rounds them to a few values (many ties)."""
    g = np.random.default_rng(seed)
    x = g.laplace(scale=0.05, size=n).astype(np.float32)
    if levels:
        x = np.round(x * levels / 0.2) / levels
    if zeros:
        x[g.random(n) < zeros] = 0.0
    return torch.from_numpy(x.astype(np.float32))


# ----------------------------------------------------------------------------
# Registry and thresholds


def test_registry_lists_every_rule_with_aliases():
    assert methods.available_methods()[:6] == ALL
    assert get_method("+").name == "pos"
    assert get_method("-").name == "neg"
    assert get_method("pct").fraction and get_method("global_pct").fraction
    assert not any(get_method(n).fraction for n in ("abs", "pos", "neg", "std"))
    assert get_method("+").summary == "Prunes the positive weights below t: 0 < w < t, in every layer."
    assert get_method("pct").summary.endswith("the fraction t of its negative weights with the smallest magnitudes.")


def test_unknown_method_lists_known_ones():
    with pytest.raises(ConfigError) as e:
        get_method("movement")
    msg = str(e.value)
    assert "'movement'" in msg
    for name in ALL:
        assert name in msg
    assert "pos (+)" in msg and "neg (-)" in msg


def test_aliases_give_the_same_masks():
    w = [random_layer(1000, 1)]
    assert torch.equal(masks_of("+", w, 0.03)[0], masks_of("pos", w, 0.03)[0])
    assert torch.equal(masks_of("-", w, 0.03)[0], masks_of("neg", w, 0.03)[0])


def test_registering_a_taken_name_is_refused():
    with pytest.raises(ConfigError, match="'abs' is already registered"):
        methods.register_method("abs")(lambda ws, t: [])
    with pytest.raises(ConfigError, match="'\\+' is already registered"):
        methods.register_method("plus", aliases=("+",))(lambda ws, t: [])
    assert "plus" not in methods.available_methods()


def test_a_registered_rule_is_reachable(monkeypatch):
    monkeypatch.setattr(methods, "_METHODS", dict(methods._METHODS))
    monkeypatch.setattr(methods, "_ALIASES", dict(methods._ALIASES))

    @methods.register_method("largest", aliases=("big",), fraction=True)
    def largest(weights, threshold):
        """Prunes everything above the fraction."""
        return [w > threshold for w in weights]

    assert get_method("big").rule is largest
    assert compute_masks("largest", [t32(0.1, 0.9)], 0.5)[0].tolist() == [False, True]
    with pytest.raises(ConfigError, match="'largest'.*got 2"):
        compute_masks("big", [t32(0.1)], 2)


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("-inf")])
def test_bad_thresholds_are_refused(method, bad):
    with pytest.raises(ConfigError) as e:
        compute_masks(method, [t32(1.0)], bad)
    assert repr(bad) in str(e.value) and f"'{method}'" in str(e.value)


@pytest.mark.parametrize("method", ["abs", "pos", "neg", "std"])
def test_infinite_threshold_is_refused(method):
    with pytest.raises(ConfigError, match=f"'{method}' must be a finite number >= 0, got inf"):
        compute_masks(method, [t32(1.0)], float("inf"))


@pytest.mark.parametrize("method", ["pct", "global_pct"])
@pytest.mark.parametrize("bad", [1.0000001, 2, float("inf")])
def test_fractions_above_one_are_refused(method, bad):
    with pytest.raises(ConfigError) as e:
        compute_masks(method, [t32(1.0)], bad)
    assert "[0, 1]" in str(e.value) and repr(bad) in str(e.value) and f"'{method}'" in str(e.value)


@pytest.mark.parametrize("bad", ["0.1", None, True, [0.1]])
def test_non_numbers_are_refused(bad):
    with pytest.raises(ConfigError, match=f"'abs' must be a number, got {bad!r}".replace("[", r"\[")):
        compute_masks("abs", [t32(1.0)], bad)


def test_threshold_types_accepted():
    assert methods.validate_threshold("abs", 3) == 3.0
    assert methods.validate_threshold("pct", np.float32(0.5)) == 0.5
    assert methods.validate_threshold("pct", 1) == 1.0
    assert methods.validate_threshold("abs", 12.5) == 12.5  # no upper bound for magnitudes


def test_integer_weights_are_refused():
    with pytest.raises(ConfigError, match="floating-point weight tensors, got torch.int64 at position 1"):
        compute_masks("abs", [t32(1.0), torch.tensor([1, 2])], 0.1)


def test_unknown_impl_is_refused():
    with pytest.raises(ConfigError, match="impl must be one of auto, numpy, torch, got 'cuda'"):
        compute_masks("abs", [t32(1.0)], 0.1, impl="cuda")


# ----------------------------------------------------------------------------
# Common properties of every rule


def sample_layers() -> list[torch.Tensor]:
    return [random_layer(3000, 3, zeros=0.05).reshape(50, 60), random_layer(17, 4),
            torch.zeros(0, 5), torch.zeros(4, 4), torch.tensor([[0.5, 0.25], [1.0, 2.0]])]


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_threshold_zero_prunes_nothing(method, impl):
    for mask in masks_of(method, sample_layers(), 0, impl):
        assert not mask.any()


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_masks_are_bool_like_their_weights_and_inputs_are_untouched(method, impl):
    layers = sample_layers() + [random_layer(600, 5).reshape(20, 30).t()]  # a non-contiguous view
    before = [w.clone() for w in layers]
    masks = masks_of(method, layers, 0.3, impl)
    assert len(masks) == len(layers)
    for w, b, m in zip(layers, before, masks):
        assert m.dtype == torch.bool and m.shape == w.shape and m.device == w.device
        assert torch.equal(w, b)
    assert any(m.any() for m in masks)  # the threshold did prune something
    # Masks are new tensors: writing to one leaves the weights alone.
    masks[0].fill_(True)
    assert torch.equal(layers[0], before[0])


@pytest.mark.parametrize("method", ALL)
def test_empty_weight_list(method):
    assert masks_of(method, [], 0.5) == []


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.bfloat16])
def test_other_float_dtypes_agree_between_paths(method, dtype):
    layers = [random_layer(5000, 6, zeros=0.02).to(dtype), random_layer(300, 7).to(dtype)]
    a = masks_of(method, layers, 0.2, "numpy")
    b = masks_of(method, layers, 0.2, "torch")
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert any(x.any() for x in a)


# ----------------------------------------------------------------------------
# abs, pos, neg


def test_abs_is_strict():
    w = t32(-0.5, -0.25, 0.0, 0.25, 0.5, 0.1, -0.1)
    assert as_list(masks_of("abs", [w], 0.25)[0]) == [False, False, True, False, False, True, True]


def test_abs_compares_with_the_exact_threshold_not_its_float32_rounding():
    # float32(0.7) = 0.699999988... < 0.7, so it is below the threshold 0.7;
    # a naive float32 comparison (w.abs() < 0.7) rounds 0.7 down and keeps it.
    w = t32(0.7, -0.7)
    assert not (w.abs() < 0.7).any()
    assert as_list(masks_of("abs", [w], 0.7)[0]) == [True, True]
    assert as_list(masks_of("pos", [w], 0.7)[0]) == [True, False]
    assert as_list(masks_of("neg", [w], 0.7)[0]) == [False, True]
    # float32(0.1) = 0.100000001... > 0.1: kept at t = 0.1.
    assert as_list(masks_of("abs", [t32(0.1)], 0.1)[0]) == [False]


def test_abs_threshold_beyond_float32_range_prunes_every_finite_weight():
    w = t32(3e38, -1.0, float("inf"), float("nan"))
    assert as_list(masks_of("abs", [w], 1e300)[0]) == [True, True, False, False]


def test_pos_prunes_only_small_positive_weights():
    w = t32(-0.5, -0.0625, 0.0, -0.0, 0.0625, 0.125, 0.25, 0.5)
    assert as_list(masks_of("pos", [w], 0.25)[0]) == [False, False, False, False, True, True, False, False]


def test_neg_prunes_only_small_negative_weights():
    w = t32(-0.5, -0.25, -0.125, -0.0625, 0.0, -0.0, 0.0625, 0.5)
    assert as_list(masks_of("neg", [w], 0.25)[0]) == [False, False, True, True, False, False, False, False]


def test_nan_weights_are_never_pruned():
    w = t32(float("nan"), 0.01, -0.01)
    for method in ("abs", "pos", "neg"):
        assert not masks_of(method, [w], 1.0)[0][0]


# ----------------------------------------------------------------------------
# pct


def test_fraction_count_reads_the_threshold_as_a_decimal():
    assert 0.29 * 100 < 29  # what float arithmetic would give
    assert fraction_count(0.29, 100) == 29
    assert fraction_count(0.3993, 10_000) == 3993
    assert fraction_count(0.2665, 1000) == 266
    assert fraction_count(0.15, 7) == 1
    assert fraction_count(1.0, 12345) == 12345
    assert fraction_count(0.0, 12345) == 0


def test_pct_prunes_the_fraction_of_each_sign():
    w = t32(3, 1, 2, 5, 4, -1, -2, -3, -4, 0, 0)
    # P = 5 positives, floor(0.5 * 5) = 2: 1 and 2.  N = 4, floor(0.5 * 4) = 2: -1 and -2.
    assert as_list(masks_of("pct", [w], 0.5)[0]) == [False, True, True, False, False,
                                                     True, True, False, False, False, False]


def test_pct_counts_exactly_floor_t_times_n_without_ties():
    x = torch.arange(1, 101, dtype=F32)
    w = torch.cat([x, -x[:40], torch.zeros(7)])[torch.randperm(147, generator=torch.Generator().manual_seed(0))]
    for t in (0.01, 0.1, 0.13, 0.15, 0.2665, 0.29, 0.3993, 0.5, 0.99):
        m = masks_of("pct", [w], t)[0]
        assert int((m & (w > 0)).sum()) == decimal_count(t, 100), t
        assert int((m & (w < 0)).sum()) == decimal_count(t, 40), t
        assert not (m & (w == 0)).any()
        # The smallest ones go first.
        assert w[m & (w > 0)].max() < w[~m & (w > 0)].min()


def test_pct_keeps_a_tie_at_the_boundary():
    w = t32(1, 1, 1, 2, 3)
    # floor(0.5 * 5) = 2, but the 2nd and 3rd smallest are both 1: all three 1s are kept.
    assert not masks_of("pct", [w], 0.5)[0].any()
    # floor(0.6 * 5) = 3: the cut falls between 1 and 2.
    assert as_list(masks_of("pct", [w], 0.6)[0]) == [True, True, True, False, False]
    n = t32(-1, -1, -2, -2, -2)
    assert as_list(masks_of("pct", [n], 0.2)[0]) == [False] * 5
    assert as_list(masks_of("pct", [n], 0.4)[0]) == [True, True, False, False, False]


def test_pct_one_prunes_every_nonzero_weight():
    w = t32(0.3, -0.2, 0.0, -0.0, float("inf"), float("-inf"), float("nan"))
    assert as_list(masks_of("pct", [w], 1)[0]) == [True, True, False, False, True, True, False]


def test_pct_zeros_and_nan_are_not_counted():
    # -0.0 is not negative: N = 2, floor(0.5 * 2) = 1 prunes -1 (if -0.0 counted, nothing would be).
    assert as_list(masks_of("pct", [t32(-0.0, -1, -2)], 0.5)[0]) == [False, True, False]
    assert as_list(masks_of("pct", [t32(float("nan"), 1, 2, 3, 4)], 0.5)[0]) == [False, True, True, False, False]


def test_pct_small_and_one_sided_layers():
    assert as_list(masks_of("pct", [t32(0.5)], 0.99)[0]) == [False]
    assert as_list(masks_of("pct", [t32(0.5)], 1.0)[0]) == [True]
    assert as_list(masks_of("pct", [t32(0.5, 0.25)], 0.5)[0]) == [False, True]
    all_pos = torch.arange(1, 11, dtype=F32)
    assert int(masks_of("pct", [all_pos], 0.3)[0].sum()) == 3
    assert not masks_of("pct", [torch.zeros(3, 3)], 0.9)[0].any()
    assert masks_of("pct", [torch.zeros(0, 3)], 0.9)[0].shape == (0, 3)


def test_pct_works_per_layer():
    a, b = torch.arange(1, 11, dtype=F32), torch.arange(100, 120, dtype=F32)
    ma, mb = masks_of("pct", [a, b], 0.5)
    assert int(ma.sum()) == 5 and int(mb.sum()) == 10


SIZES = [1, 2, 3, 5, 17, 100, 1001, 16_384, 16_385, 50_001, 300_007]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("levels", [None, 3, 40])
def test_pct_selection_matches_quantile_path_and_reference(n, levels):
    w = random_layer(n, n, levels=levels, zeros=0.01)
    if n > 10:
        w[::7] = -w[::7]
        w[3] = -0.0
    for t in (0.0, 0.1, 0.15, 0.2665, 0.5, 0.9, 0.999, 1.0):
        fast = masks_of("pct", [w], t, "numpy")[0]
        assert torch.equal(fast, masks_of("pct", [w], t, "torch")[0]), t
        assert torch.equal(fast, ref_pct(w, t)), t


def test_pct_on_a_matrix_with_row_structure():
    # Rows of very different scales, and a row length that divides the sample stride.
    g = torch.Generator().manual_seed(1)
    w = torch.randn(512, 256, generator=g) * torch.logspace(-3, 1, 512).unsqueeze(1)
    for t in (0.05, 0.5, 0.95):
        assert torch.equal(masks_of("pct", [w], t, "numpy")[0], ref_pct(w, t))


# ----------------------------------------------------------------------------
# torch.quantile path: exact ranks, and the fallback for large tensors


def test_quantile_rank_is_exact_near_the_quantile_limit():
    # torch computes the rank q * (n - 1) in the input's dtype.  In float32, with
    # interpolation="lower", torch 2.14 returns the (k-1)-th value for about half
    # of the k at this n (k = 8586940 is one); the float64 path must not.
    n = (1 << 24) - 3
    values = torch.from_numpy(np.random.default_rng(0).permutation(n).astype(np.float32))
    for k in (8_586_940, n - 2):
        assert kth_smallest_quantile(values, k) == k
    assert kth_smallest_quantile(values[:1], 0) == float(values[0])


def test_kthvalue_fallback_above_the_quantile_limit():
    n = methods.QUANTILE_MAX_NUMEL + 5
    rng = np.random.default_rng(1)
    values = torch.from_numpy(np.round(rng.laplace(size=n), 3).astype(np.float32))
    ref = np.partition(values.numpy(), [7, n // 3, n - 1])
    for k in (7, n // 3, n - 1):
        assert kth_smallest_quantile(values, k) == float(ref[k])


def test_pct_with_a_quantile_that_refuses_large_inputs(monkeypatch):
    # Older torch versions raise for inputs above a size limit; emulate one at 1000.
    real_quantile = torch.quantile
    calls = {"quantile": 0}

    def limited_quantile(x, q, *args, **kwargs):
        if x.numel() > 1000:
            raise RuntimeError("quantile() input tensor is too large")
        calls["quantile"] += 1
        return real_quantile(x, q, *args, **kwargs)

    monkeypatch.setattr(torch, "quantile", limited_quantile)
    monkeypatch.setattr(methods, "QUANTILE_MAX_NUMEL", 1000)
    layers = [random_layer(5001, 8, levels=50), random_layer(1500, 9), random_layer(301, 10)]
    for t in (0.1, 0.5):
        for w, a, b in zip(layers, masks_of("pct", layers, t, "torch"), masks_of("pct", layers, t, "numpy")):
            assert torch.equal(a, b)
            assert torch.equal(a, ref_pct(w, t))
        for a, b in zip(masks_of("global_pct", layers[2:], t, "torch"), ref_global_pct(layers[2:], t)):
            assert torch.equal(a, b)
    assert calls["quantile"] > 0  # the small tensors still went through torch.quantile


def test_kth_smallest_quantile_rejects_out_of_range_ranks():
    with pytest.raises(IndexError, match="rank 3 out of range for 3 values"):
        kth_smallest_quantile(t32(1, 2, 3), 3)


# ----------------------------------------------------------------------------
# global_pct


def test_global_pct_uses_one_threshold_for_all_layers():
    a, b = t32(0.1, -0.2), t32(0.3, -0.4, 0.5)
    # n = 5, floor(0.4 * 5) = 2: the cut is the 3rd smallest magnitude, 0.3.
    ma, mb = masks_of("global_pct", [a, b], 0.4)
    assert as_list(ma) == [True, True] and as_list(mb) == [False, False, False]


def test_global_pct_counts_zeros_and_keeps_ties():
    a, b = t32(0.0, 0.0, 0.2), t32(0.2, -0.2, 0.4)
    # n = 6; floor(0.5 * 6) = 3 -> 4th smallest magnitude is 0.2, tied with the 3rd: only zeros go.
    ma, mb = masks_of("global_pct", [a, b], 0.5)
    assert as_list(ma) == [True, True, False] and not mb.any()
    ma, mb = masks_of("global_pct", [a, b], 0.9)  # k = 5: cut at 0.4
    assert as_list(ma) == [True, True, True] and as_list(mb) == [True, True, False]
    ma, mb = masks_of("global_pct", [a, b], 1.0)
    assert ma.all() and mb.all()


def test_global_pct_prunes_exactly_k_without_ties():
    layers = [torch.arange(1, 51, dtype=F32).reshape(5, 10), -torch.arange(51, 101, dtype=F32), torch.zeros(0)]
    for t in (0.01, 0.29, 0.5, 0.77):
        assert sum(int(m.sum()) for m in masks_of("global_pct", layers, t)) == decimal_count(t, 100)


@pytest.mark.parametrize("levels", [None, 5])
def test_global_pct_is_abs_at_the_implied_threshold(levels):
    layers = [random_layer(n, n, levels=levels, zeros=0.01).reshape(-1, 1) for n in (40_000, 3000, 77, 1)]
    mags = np.sort(np.concatenate([w.abs().reshape(-1).numpy() for w in layers]))
    for t in (0.05, 0.3, 0.8):
        cut = float(mags[decimal_count(t, mags.size)])
        fast = masks_of("global_pct", layers, t, "numpy")
        for x, y, z in zip(fast, masks_of("abs", layers, cut), masks_of("global_pct", layers, t, "torch")):
            assert torch.equal(x, y) and torch.equal(x, z)
        for x, y in zip(fast, ref_global_pct(layers, t)):
            assert torch.equal(x, y)


def test_global_pct_ignores_nan_and_mixed_dtypes_agree():
    layers = [t32(float("nan"), 0.1, -0.3), torch.tensor([0.2, 0.4], dtype=torch.float64)]
    # 4 non-NaN magnitudes, floor(0.5 * 4) = 2: cut at 0.3.
    for impl in ("numpy", "torch"):
        ma, mb = masks_of("global_pct", layers, 0.5, impl)
        assert as_list(ma) == [False, True, False] and as_list(mb) == [True, False]


# ----------------------------------------------------------------------------
# std


def test_std_uses_the_population_deviation():
    w = t32(-3, -1.2, 1.2, 3)
    sigma = float(np.std(w.double().numpy()))  # ddof=0: 2.2847; the sample deviation is 2.638
    assert methods.layer_std(w) == pytest.approx(sigma, rel=1e-15)
    # 0.5 sigma = 1.142 keeps +-1.2 (the sample deviation would give 1.319 and prune them).
    assert not masks_of("std", [w], 0.5)[0].any()
    assert as_list(masks_of("std", [w], 0.53)[0]) == [False, True, True, False]


def test_std_is_per_layer_and_around_the_mean():
    a = t32(10.0, 10.5, 9.5, 10.0)      # sigma = 0.3536 around 10, not around 0
    b = t32(-1.0, 1.0, 0.2, -0.2)       # sigma = 0.7211
    ma, mb = masks_of("std", [a, b], 1.0)
    assert not ma.any()
    assert as_list(mb) == [False, False, True, True]
    assert as_list(masks_of("std", [t32(0.0, 0.0)], 5.0)[0]) == [False, False]  # sigma = 0
    assert as_list(masks_of("std", [t32(1.0)], 5.0)[0]) == [False]


def test_std_boundary_is_strict():
    w = t32(-1, 1, -1, 1)  # sigma = 1 exactly
    assert not masks_of("std", [w], 1.0)[0].any()
    assert masks_of("std", [w], 1.0000001)[0].all()


def test_std_with_nan_prunes_nothing_in_that_layer():
    assert not masks_of("std", [t32(float("nan"), 0.001, 2.0)], 1.0)[0].any()


# ----------------------------------------------------------------------------
# Selection


@pytest.mark.parametrize("seed", range(6))
def test_select_ranks_is_exact(seed):
    rng = np.random.default_rng(seed)
    chunks = [rng.integers(-50 if seed % 2 else -2**31, 50 if seed % 2 else 2**31 - 1, size=n, dtype=np.int32)
              for n in rng.integers(0, 60_000, size=1 + seed)]
    keys = np.sort(np.concatenate(chunks))
    if keys.size == 0:
        return
    ranks = sorted({0, keys.size - 1, keys.size // 2, int(rng.integers(keys.size)), int(rng.integers(keys.size))})
    assert select_ranks(chunks, ranks) == [int(keys[r]) for r in ranks]


def test_select_ranks_when_the_sample_misses(caplog):
    # A period equal to the sample stride: every sampled key is the same, so the
    # bracket is empty around the rank and the full partition must answer.
    n = 200_000
    m = int(methods._SAMPLE_FACTOR * n ** (2 / 3))
    step = n // m
    keys = np.tile(np.arange(step, dtype=np.int64), n // step + 1)[:n]
    ranks = [5, n // 2, n - 1]
    with caplog.at_level("DEBUG", logger="kprune.pruning.rules"):
        assert select_ranks([keys], ranks) == [int(x) for x in np.sort(keys)[ranks]]
    assert "window missed rank" in caplog.text


def test_select_ranks_checks_ranks():
    with pytest.raises(IndexError, match="out of range for 3 keys"):
        select_ranks([np.arange(3, dtype=np.int32)], [3])
    assert select_ranks([np.arange(3, dtype=np.int32)], []) == []


# ----------------------------------------------------------------------------
# The real model


def test_real_model_paths_agree(real_model_path):
    from kprune.model import load_model

    model = load_model(real_model_path)
    weights = [layer.weight for layer in model.layers.values()]
    before = [w.clone() for w in weights]
    for method, t in (("pct", 0.15), ("global_pct", 0.3993)):
        for a, b in zip(masks_of(method, weights, t, "numpy"), masks_of(method, weights, t, "torch")):
            assert torch.equal(a, b), (method, t)
    for w, m in zip(weights, masks_of("pct", weights, 0.3993)):
        assert torch.equal(m, ref_pct(w, 0.3993))
    assert all(torch.equal(a, b) for a, b in zip(weights, before))
