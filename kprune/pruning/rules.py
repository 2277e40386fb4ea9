"""Pruning rules: pure functions from layer weight tensors and a threshold to prune masks.

A rule takes the weight tensors of the selected layers and a threshold and
returns one bool mask per tensor, True where the weight is pruned, with the
tensor's shape and device.  Rules never modify their inputs.  They sit behind a
small registry, like ``torch.nn.utils.prune``'s ``compute_mask`` methods::

    masks = compute_masks("pct", [layer.weight for layer in layers], 0.15)

Conventions shared by every rule:

* Comparisons are exact: ``|w| < t`` means the real number ``t``, not ``t``
  rounded to float32.  (The threshold is rounded up to the weights' precision,
  which prunes exactly the same weights.)
* ``t = 0`` prunes nothing.
* Weights are expected to be finite.  NaN weights are never pruned, and ``pct``
  and ``global_pct`` leave them out of their counts.
* Masks are identical on CPU and CUDA.  On CPU the rules run on NumPy views of
  the tensors (no copy), which beats torch's per-operation overhead on layers of
  ~100 K weights, and the fraction rules find their order statistics with an
  exact selection on the float bits (:func:`select_ranks`), 5-10x faster than
  ``torch.quantile`` there.  Elsewhere the rules run with torch operations, and
  ``pct`` and ``global_pct`` take their order statistics from ``torch.quantile``.

Fraction rules (``pct``, ``global_pct``) count with ``k = floor(t * n)``, where
``t`` is read as the decimal number it prints as (so ``0.29`` of 100 weights is
29, where float arithmetic would give 28), and prune the weights strictly below
the ``(k+1)``-th smallest value.  A weight's fate therefore depends on its value
only: when the ``k``-th and ``(k+1)``-th smallest are tied, the whole tie is
kept, so a rule prunes at most ``k`` weights, exactly ``k`` when there is no tie
at the boundary, and all of them when ``t = 1``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Sequence

import numpy as np
import torch

from kprune.errors import ConfigError

log = logging.getLogger(__name__)

#: ``rule(weights, threshold) -> masks``; built-in rules also take ``impl=``.
Rule = Callable[..., "list[torch.Tensor]"]

#: torch.quantile refuses larger inputs on some torch versions
#: ("quantile() input tensor is too large"); above it the torch path uses
#: torch.kthvalue, which has no such limit.
QUANTILE_MAX_NUMEL = 1 << 24

_IMPLS = ("auto", "numpy", "torch")


#: What a calibrated rule (or a repair) may ask of the calibration capture
#: (:mod:`kprune.pruning.capture`): ``mean`` (Σx, with the frame count) and
#: ``column_norms`` (per-column Σx²) are always gathered, being cheap; ``gram``
#: is ``Σ x xᵀ``; ``target`` is ``Σ y* xᵀ`` for the dense network's output
#: ``y*`` at the layer.
STATISTICS = ("mean", "column_norms", "gram", "target")

#: The modules whose rules are kprune's own, imported when the registry is first read.
BUILTIN_MODULES = ("kprune.pruning.calibrated", "kprune.pruning.admm")


@dataclass(frozen=True)
class Method:
    """A registered rule, how its threshold is read, what it needs and which knobs it takes."""

    name: str
    rule: Rule
    aliases: tuple[str, ...] = ()
    fraction: bool = False
    #: Needs calibration statistics (:mod:`kprune.pruning.calibrated`); its rule is
    #: ``rule(weight, stats, threshold, config, *, bias, target) -> LayerPruning``, one layer at a time.
    calibrated: bool = False
    #: Has an N:M form (``method.pattern``).
    supports_pattern: bool = False
    #: The statistics the rule reads (a subset of :data:`STATISTICS`).
    needs: frozenset[str] = frozenset()
    #: The dataclass of the rule's own knobs (``method.<knob>``), or None; an
    #: instance is ``config.options`` in the rule.
    options: type | None = None

    @property
    def summary(self) -> str:
        """The first paragraph of the rule's docstring, on one line."""
        doc = (self.rule.__doc__ or "").strip()
        return " ".join(doc.split("\n\n")[0].split())

    @property
    def knobs(self) -> tuple[str, ...]:
        """The names of the rule's own knobs."""
        import dataclasses

        return tuple(f.name for f in dataclasses.fields(self.options)) if self.options is not None else ()


@dataclass
class LayerPruning:
    """What a calibrated rule decided for one layer: the mask (True = pruned) and, if it changed them,
    new weights and bias."""

    mask: torch.Tensor
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    notes: dict[str, Any] = field(default_factory=dict)


_METHODS: dict[str, Method] = {}
_ALIASES: dict[str, str] = {}


def register_method(name: str, aliases: Sequence[str] = (), fraction: bool = False, *,
                    calibrated: bool = False, supports_pattern: bool = False, needs: Sequence[str] = (),
                    options: type | None = None) -> Callable[[Rule], Rule]:
    """Registers ``rule(weights, threshold) -> masks`` under ``name`` and ``aliases``.

    ``fraction=True`` restricts the threshold to [0, 1].  The rule must return
    one bool mask per weight tensor (same shape and device), True where pruned,
    and must not modify the weights.  ``calibrated=True`` registers a rule that
    works one layer at a time from calibration statistics (see :class:`Method`);
    ``needs`` names the statistics it reads (:data:`STATISTICS`), so that only
    those are gathered.  ``options`` is a dataclass of the rule's own knobs: its
    fields are read from ``method.<knob>``, checked by type
    (:func:`kprune.validate.options_from_config`), and enter ``point.json`` and
    every cache key.
    """
    unknown = sorted(set(needs) - set(STATISTICS))
    if unknown:
        raise ConfigError(f"pruning method {name!r}: unknown statistics {', '.join(unknown)} in needs; "
                          f"known: {', '.join(STATISTICS)}")
    if options is not None:
        import dataclasses

        if not dataclasses.is_dataclass(options):
            raise ConfigError(f"pruning method {name!r}: options must be a dataclass, found {options!r}")

    def decorate(rule: Rule) -> Rule:
        for key in (name, *aliases):
            if key in _METHODS or key in _ALIASES:
                raise ConfigError(f"pruning method name {key!r} is already registered "
                                  f"(for {_ALIASES.get(key, key)!r})")
        _METHODS[name] = Method(name, rule, tuple(aliases), fraction, calibrated, supports_pattern,
                                frozenset(needs), options)
        for alias in aliases:
            _ALIASES[alias] = name
        return rule

    return decorate


def _load_builtins() -> None:
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def method_names(*, fraction: bool | None = None, supports_pattern: bool | None = None) -> list[str]:
    """Registered names with the given properties (None: either), in registration order; for hints in messages."""
    _load_builtins()
    return [m.name for m in _METHODS.values()
            if (fraction is None or m.fraction == fraction)
            and (supports_pattern is None or m.supports_pattern == supports_pattern)]


def available_methods() -> list[str]:
    """Registered method names, in registration order (aliases not included)."""
    _load_builtins()
    return list(_METHODS)


def get_method(name: str | Method) -> Method:
    """The method registered as ``name`` or as one of its aliases (``+`` is ``pos``)."""
    if isinstance(name, Method):
        return name
    key = _ALIASES.get(str(name), str(name))
    if key not in _METHODS:
        _load_builtins()
        key = _ALIASES.get(str(name), str(name))
    if key not in _METHODS:  # perhaps a plugin's (kprune.plugins entry points), not yet imported here
        from kprune.plugins import load_entry_points

        load_entry_points()
        key = _ALIASES.get(str(name), str(name))
    if key not in _METHODS:
        known = ", ".join(f"{m.name} ({'/'.join(m.aliases)})" if m.aliases else m.name for m in _METHODS.values())
        raise ConfigError(f"unknown pruning method {name!r}; known methods: {known}")
    return _METHODS[key]


def validate_threshold(method: str | Method, threshold: object) -> float:
    """Returns ``threshold`` as a float, or raises ConfigError naming the value and the method.

    Every threshold must be a finite number >= 0; fraction rules also need <= 1.
    """
    m = get_method(method)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise ConfigError(f"threshold for method {m.name!r} must be a number, got {threshold!r}")
    t = float(threshold)
    if m.fraction:
        if not 0.0 <= t <= 1.0:  # also catches NaN
            raise ConfigError(f"threshold for method {m.name!r} is a fraction and must be in [0, 1], got {threshold!r}")
    elif not (math.isfinite(t) and t >= 0.0):
        raise ConfigError(f"threshold for method {m.name!r} must be a finite number >= 0, got {threshold!r}")
    return t


def compute_masks(method: str | Method, weights: Sequence[torch.Tensor], threshold: float,
                  **kwargs: object) -> list[torch.Tensor]:
    """Validates ``threshold`` once and applies the rule: one bool prune mask per tensor.

    ``impl=`` (built-in rules only) picks the code path: ``"auto"`` (NumPy for CPU
    tensors, torch otherwise), ``"numpy"`` or ``"torch"``.  ``"torch"`` is the CUDA
    path, torch.quantile included; the tests run it on the CPU against the NumPy one.
    """
    m = get_method(method)
    if m.calibrated:
        raise ConfigError(f"method {m.name!r} needs calibration statistics; prune with kprune.pruning.prune_model")
    t = validate_threshold(m, threshold)
    weights = list(weights)
    for i, w in enumerate(weights):
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            found = w.dtype if isinstance(w, torch.Tensor) else type(w).__name__
            raise ConfigError(f"method {m.name!r} expects floating-point weight tensors, got {found} at position {i}")
    return m.rule(weights, t, **kwargs)


# ----------------------------------------------------------------------------
# The rules


@register_method("abs", supports_pattern=True)
def abs_rule(weights: Sequence[torch.Tensor], threshold: float, *, impl: str = "auto") -> list[torch.Tensor]:
    """Prunes |w| < t (strictly), in every layer.

    Zeros are pruned too (they stay zero) once t > 0; t = 0 prunes nothing.
    """
    return [_map(w, impl, lambda x, t=threshold: abs(x) < _ceil_to(t, x.dtype)) for w in weights]


@register_method("pos", aliases=("+",))
def pos_rule(weights: Sequence[torch.Tensor], threshold: float, *, impl: str = "auto") -> list[torch.Tensor]:
    """Prunes the positive weights below t: 0 < w < t, in every layer."""
    return [_map(w, impl, lambda x, t=threshold: _interval(x, 0.0, _ceil_to(t, x.dtype))) for w in weights]


@register_method("neg", aliases=("-",))
def neg_rule(weights: Sequence[torch.Tensor], threshold: float, *, impl: str = "auto") -> list[torch.Tensor]:
    """Prunes the negative weights above -t: -t < w < 0, in every layer."""
    return [_map(w, impl, lambda x, t=threshold: _interval(x, -_ceil_to(t, x.dtype), 0.0)) for w in weights]


@register_method("pct", fraction=True)
def pct_rule(weights: Sequence[torch.Tensor], threshold: float, *, impl: str = "auto") -> list[torch.Tensor]:
    """Prunes, in each layer, the fraction t of its positive weights with the smallest values and
    the fraction t of its negative weights with the smallest magnitudes.

    Of a layer's ``P`` positive weights, sorted ascending as ``p_1 <= ... <= p_P``,
    ``kp = floor(t * P)`` is the count aimed at, and the rule prunes ``0 < w < p_(kp+1)``
    (every positive weight when ``kp = P``).  Likewise for the ``N`` negative weights by
    magnitude: ``kn = floor(t * N)``, prune ``-m_(kn+1) < w < 0``.  Ties at the boundary are
    kept, so at most ``kp`` and ``kn`` weights are pruned, exactly that many without a tie.
    Zeros (+0.0 and -0.0) are neither positive nor negative: not counted, not pruned.
    ``t`` is read as its decimal value (``floor(0.29 * 100) = 29``).

    On CUDA the order statistics ``p_(kp+1)`` and ``m_(kn+1)`` come from ``torch.quantile``
    (in float64, ``interpolation="nearest"``, so the rank is exact); on CPU from an exact
    selection on the float bits, which gives the same values many times faster.
    """
    frac = _decimal_fraction(threshold)
    return [_map(w, impl, _pct_numpy, _pct_torch, frac) for w in weights]


@register_method("global_pct", fraction=True, supports_pattern=True)
def global_pct_rule(weights: Sequence[torch.Tensor], threshold: float, *, impl: str = "auto") -> list[torch.Tensor]:
    """Prunes the fraction t of all given weights with the smallest magnitudes, with one
    threshold for all layers: the ``abs`` rule reached through a target sparsity.

    Over the ``n`` weights of all layers together, with magnitudes sorted ascending as
    ``a_1 <= ... <= a_n`` (zeros included, as magnitude 0), ``k = floor(t * n)`` and the rule
    prunes ``|w| < a_(k+1)`` in every layer (every weight when ``k = n``).  Ties at the
    boundary are kept, so at most ``k`` weights are pruned, exactly ``k`` without a tie.
    Weights that are already zero count among the ``k``.  ``t`` is read as its decimal value.
    """
    frac = _decimal_fraction(threshold)
    weights = list(weights)
    if not weights:
        return []
    impl = _resolve_impl(impl, weights[0])
    if impl == "numpy":
        return _global_pct_numpy(weights, frac)
    return _global_pct_torch(weights, frac)


@register_method("std")
def std_rule(weights: Sequence[torch.Tensor], threshold: float, *, impl: str = "auto") -> list[torch.Tensor]:
    """Prunes |w| < t * sigma in each layer, sigma being that layer's standard deviation
    (Han et al. 2015; Distiller's sensitivity pruner).

    sigma is the population standard deviation (divisor n, around the layer's mean), computed
    in float64 on the CPU (so CPU and CUDA agree to the bit).  Distiller uses the sample
    deviation (divisor n - 1); the two differ by a factor sqrt(n / (n - 1)), under 1e-5 for
    any real layer.  A layer with NaN weights has sigma = NaN and nothing pruned.
    """
    return [_map(w, impl, lambda x, t=threshold, w=w: abs(x) < _ceil_to(t * layer_std(w), x.dtype))
            for w in weights]


def layer_std(weight: torch.Tensor) -> float:
    """Population standard deviation of a tensor, in float64, computed the same way on every device."""
    a = _host_flat(weight)
    if a.size == 0:
        return math.nan
    # Pairwise summation in NumPy, always on the host: a torch reduction's order
    # (and so its last bit) depends on the device and the thread count.
    x = a.astype(np.float64)
    x -= np.add.reduce(x) / x.size
    np.square(x, out=x)
    return math.sqrt(float(np.add.reduce(x)) / x.size)


@register_method("magnitude", fraction=True, supports_pattern=True)
def magnitude_rule(weights: Sequence[torch.Tensor], threshold: float, *, impl: str = "auto") -> list[torch.Tensor]:
    """Prunes, in every output row of every layer, the fraction t of its weights with the smallest
    magnitudes (uniform per-row magnitude pruning; Wanda's selection with the weights as scores).

    Of a row's ``n`` weights, exactly ``k = floor(t * n)`` are pruned: the ``k`` smallest
    magnitudes, ties broken by position (the lower input index goes first), so every row
    has the same sparsity.  ``t`` is read as its decimal value.
    """
    return [row_fraction_mask(w.detach().abs(), threshold) for w in weights]


def row_fraction_mask(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """True at the ``floor(t * n)`` lowest scores of each row of ``scores`` ``[rows, n]``.

    Ties are broken by position (a stable sort), so each row gets exactly that
    many; NaN scores sort last.
    """
    if scores.numel() == 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    k = fraction_count(threshold, scores.shape[1])
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k:
        order = torch.sort(scores.nan_to_num(nan=math.inf), dim=1, stable=True).indices[:, :k]
        mask.scatter_(1, order, True)
    return mask


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M semi-structured mask: in every group of ``m`` consecutive inputs of a row, the ``n`` lowest scores.

    ``scores`` is ``[rows, inputs]``.  A trailing group shorter than ``m`` prunes
    ``floor(n * len / m)`` of its entries.  Ties go to the lower input index.
    """
    rows, cols = scores.shape
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    full = cols - cols % m
    if full:
        groups = scores[:, :full].reshape(rows, full // m, m).nan_to_num(nan=math.inf)
        order = torch.sort(groups, dim=2, stable=True).indices[:, :, :n]
        mask[:, :full] = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, order, True).reshape(rows, full)
    rest = cols - full
    if rest and n * rest // m:
        tail = scores[:, full:].nan_to_num(nan=math.inf)
        order = torch.sort(tail, dim=1, stable=True).indices[:, :n * rest // m]
        mask[:, full:] = torch.zeros_like(tail, dtype=torch.bool).scatter_(1, order, True)
    return mask


# ----------------------------------------------------------------------------
# Per-layer dispatch


def _resolve_impl(impl: str, w: torch.Tensor) -> str:
    if impl not in _IMPLS:
        raise ConfigError(f"impl must be one of {', '.join(_IMPLS)}, got {impl!r}")
    if impl == "auto":
        return "numpy" if w.device.type == "cpu" else "torch"
    return impl


def _map(w: torch.Tensor, impl: str, fn_numpy: Callable, fn_torch: Callable | None = None, *args) -> torch.Tensor:
    """Applies a per-layer mask function to a NumPy view (CPU) or to the tensor itself.

    ``fn_torch`` defaults to ``fn_numpy``: element-wise comparisons read the same on both.
    """
    if w.numel() == 0:
        return torch.zeros(w.shape, dtype=torch.bool, device=w.device)
    if _resolve_impl(impl, w) == "numpy":
        mask = fn_numpy(_host_array(w), *args)
        return torch.from_numpy(np.ascontiguousarray(mask)).to(w.device)
    x = w.detach()
    if x.dtype not in _NP_FLOAT:
        x = x.float()  # bfloat16 and the like: exact in float32
    return (fn_torch or fn_numpy)(x, *args)


_NP_FLOAT = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
_NP_INT = {np.dtype(np.float16): (np.int16, np.uint16), np.dtype(np.float32): (np.int32, np.uint32),
           np.dtype(np.float64): (np.int64, np.uint64)}


def _host_array(w: torch.Tensor) -> np.ndarray:
    """A NumPy array of the weights: a view for CPU float16/32/64 tensors, else a copy."""
    x = w.detach()
    if x.dtype not in _NP_FLOAT:
        x = x.float()
    return x.cpu().numpy()


def _host_flat(w: torch.Tensor) -> np.ndarray:
    """The weights as a contiguous 1-D NumPy array, in C order."""
    return np.ascontiguousarray(_host_array(w)).reshape(-1)


def _ceil_to(t: float, dtype) -> float:
    """The smallest value of ``dtype`` >= t, as a float.

    For any weight w of that dtype, ``w < t`` exactly when ``w < _ceil_to(t)``, and the
    comparison with this value is exact in both NumPy and torch (no rounding of t).
    """
    np_dtype = _NP_FLOAT.get(dtype, dtype)
    ftype = np.dtype(np_dtype).type
    with np.errstate(over="ignore"):
        y = ftype(t)
    if float(y) < t:
        y = np.nextafter(y, ftype(np.inf))
    return float(y)


def _interval(x, lo: float | None, hi: float | None, drop_zeros: bool = False):
    """lo < x < hi as a bool array or tensor (None: unbounded; NaN is never inside)."""
    if lo is None and hi is None:
        m = x == x
    elif lo is None:
        m = x < hi
    else:
        m = x > lo
        if hi is not None:
            m &= x < hi
    if drop_zeros:
        m &= x != 0
    return m


# ----------------------------------------------------------------------------
# Counting for the fraction rules


def _decimal_fraction(t: float) -> Fraction:
    """t as the decimal number it prints as: 0.29 is 29/100, not 0.28999999999999998."""
    return Fraction(repr(float(t)))


def fraction_count(t: float | Fraction, n: int) -> int:
    """How many of ``n`` weights a fraction ``t`` aims at: ``floor(t * n)``, exactly."""
    f = t if isinstance(t, Fraction) else _decimal_fraction(t)
    return (f.numerator * n) // f.denominator


# ----------------------------------------------------------------------------
# pct


def _pct_numpy(a: np.ndarray, frac: Fraction) -> np.ndarray:
    flat = a.reshape(-1)
    n = flat.size
    n_pos = int(np.count_nonzero(flat > 0))
    n_neg = int(np.count_nonzero(flat < 0))
    kp, kn = fraction_count(frac, n_pos), fraction_count(frac, n_neg)
    itype = _NP_INT[flat.dtype][0]
    keys = flat.view(itype)
    # As signed integers the float bits sort as: -0.0, negatives by increasing
    # magnitude, (-NaN), +0.0, positives by increasing value, (+NaN).
    clean = n_pos + n_neg == n  # no zeros, no NaN
    neg_zeros = 0 if clean else int(np.count_nonzero(keys == np.iinfo(itype).min))
    above_zero = n_pos if clean else int(np.count_nonzero(keys > 0))
    ranks = []
    if kn < n_neg:
        ranks.append(neg_zeros + kn)
    if kp < n_pos:
        ranks.append(n - above_zero + kp)
    values = np.array(select_ranks([keys], ranks), dtype=itype).view(flat.dtype)
    lo = float(values[0]) if kn < n_neg else None
    hi = float(values[-1]) if kp < n_pos else None
    return _interval(a, lo, hi, drop_zeros=not clean)


def _pct_torch(x: torch.Tensor, frac: Fraction) -> torch.Tensor:
    flat = x.reshape(-1)
    pos = flat[flat > 0]
    neg_mag = -flat[flat < 0]
    kp, kn = fraction_count(frac, pos.numel()), fraction_count(frac, neg_mag.numel())
    hi = kth_smallest_quantile(pos, kp) if kp < pos.numel() else None
    lo = -kth_smallest_quantile(neg_mag, kn) if kn < neg_mag.numel() else None
    clean = pos.numel() + neg_mag.numel() == flat.numel()
    return _interval(x, lo, hi, drop_zeros=not clean)


def kth_smallest_quantile(values: torch.Tensor, k: int) -> float:
    """The k-th smallest (0-based) of a 1-D tensor, through torch.quantile on its device.

    The rank ``q * (n - 1)`` is computed by torch in the input's dtype; in float32 it
    is off by more than 0.5 for large n, so the values go through float64 (exact for
    float32 data), where ``q = k / (n - 1)`` lands within a few ulps of ``k`` and
    ``interpolation="nearest"`` rounds it to ``k``.  Beyond ``QUANTILE_MAX_NUMEL``
    elements torch.kthvalue is used instead.
    """
    n = values.numel()
    if not 0 <= k < n:
        raise IndexError(f"rank {k} out of range for {n} values")
    if n > QUANTILE_MAX_NUMEL:
        return float(torch.kthvalue(values, k + 1).values)
    q = k / (n - 1) if n > 1 else 0.0
    return float(torch.quantile(values.double(), q, interpolation="nearest"))


# ----------------------------------------------------------------------------
# global_pct


def _global_pct_numpy(weights: list[torch.Tensor], frac: Fraction) -> list[torch.Tensor]:
    flats = [_host_flat(w) for w in weights]
    dtypes = {f.dtype for f in flats}
    if len(dtypes) > 1:  # mixed precisions: compare everything in float64 (exact)
        flats = [f.astype(np.float64) for f in flats]
    ftype = flats[0].dtype
    itype = _NP_INT[ftype][0]
    inf_key = int(np.array(np.inf, dtype=ftype).view(itype))
    # The magnitude's bits, as integers, sort like the magnitudes; NaN sorts above inf.
    keys = [np.bitwise_and(f.view(itype), np.iinfo(itype).max) for f in flats]
    n = sum(k.size for k in keys) - sum(int(np.count_nonzero(k > inf_key)) for k in keys)
    k = fraction_count(frac, n)
    if k >= n:
        masks = [key <= inf_key for key in keys]
    else:
        cut = select_ranks(keys, [k])[0]
        masks = [key < cut for key in keys]
    return [torch.from_numpy(m).view(w.shape).to(w.device) for m, w in zip(masks, weights)]


def _global_pct_torch(weights: list[torch.Tensor], frac: Fraction) -> list[torch.Tensor]:
    device = weights[0].device
    mags = torch.cat([w.detach().reshape(-1).to(device, torch.float64).abs() for w in weights])
    nan = torch.isnan(mags)
    if bool(nan.any()):
        mags = mags[~nan]
    n = mags.numel()
    k = fraction_count(frac, n)
    cut = None if k >= n else kth_smallest_quantile(mags, k)
    masks = []
    for w in weights:
        if w.numel() == 0:
            masks.append(torch.zeros(w.shape, dtype=torch.bool, device=w.device))
            continue
        x = w.detach() if w.dtype in _NP_FLOAT else w.detach().float()
        masks.append(~torch.isnan(x) if cut is None else x.abs() < _ceil_to(cut, x.dtype))
    return masks


# ----------------------------------------------------------------------------
# Exact selection on the CPU

#: Below this many keys a plain np.partition is as fast as anything else.
_DIRECT_SELECT = 1 << 14
#: Sample size ~ 2 n^(2/3) and brackets of +-2.5 sampling deviations balance
#: the cost of the sample against the cost of gathering the window (measured
#: on the real model); a bracket that misses (~1%) costs one full partition.
_SAMPLE_FACTOR = 2.0
_BRACKET_SIGMAS = 2.5


def select_ranks(chunks: Sequence[np.ndarray], ranks: Sequence[int]) -> list[int]:
    """Exact order statistics (0-based ``ranks``) of the union of 1-D integer arrays.

    Floyd-Rivest style: a strided sample brackets each rank, one sweep over the
    chunks counts the keys below the bracket and gathers those inside, and only
    that window is partitioned.  If the bracket misses, a full np.partition
    answers.  Either way the result is exact; the sample only decides the speed.
    """
    ranks = [int(r) for r in ranks]
    if not ranks:
        return []
    n = sum(c.size for c in chunks)
    if not all(0 <= r < n for r in ranks):
        raise IndexError(f"ranks {ranks} out of range for {n} keys")
    if n <= _DIRECT_SELECT:
        return _partition_select(chunks, ranks)
    m = min(n, max(2048, int(_SAMPLE_FACTOR * n ** (2 / 3))))
    step = max(1, n // m)
    sample = np.concatenate([c[::step] for c in chunks]) if len(chunks) > 1 else chunks[0][::step].copy()
    m = sample.size
    spans = []
    for k in ranks:
        p = (k + 0.5) / n
        half = _BRACKET_SIGMAS * math.sqrt(m * p * (1 - p)) + 2.0
        spans.append((math.floor(p * m - half), math.ceil(p * m + half)))
    cuts = sorted({i for span in spans for i in span if 0 <= i < m})
    if cuts:
        sample.partition(cuts)
    out = []
    for k, (lo, hi) in zip(ranks, spans):
        value = _select_in_window(chunks, k, sample[lo] if lo >= 0 else None, sample[hi] if hi < m else None)
        if value is None:
            log.debug("selection window missed rank %d of %d; full partition", k, n)
            value = _partition_select(chunks, [k])[0]
        out.append(value)
    return out


def _partition_select(chunks: Sequence[np.ndarray], ranks: list[int]) -> list[int]:
    keys = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    part = np.partition(keys, ranks)
    return [int(part[r]) for r in ranks]


_UNSIGNED = {np.dtype(s): np.dtype(u) for s, u in ((np.int16, np.uint16), (np.int32, np.uint32), (np.int64, np.uint64))}


def _select_in_window(chunks: Sequence[np.ndarray], k: int, lo, hi) -> int | None:
    """The k-th smallest key if it lies in [lo, hi] (None: open), else None."""
    if lo is None and hi is None:
        return None
    below = 0
    window = []
    for c in chunks:
        if lo is None:
            inside = c <= hi
        else:
            below += int(np.count_nonzero(c < lo))
            if hi is None:
                inside = c >= lo
            else:
                # One unsigned comparison tests lo <= c <= hi (the difference wraps around).
                utype = _UNSIGNED[c.dtype]
                inside = (c - lo).view(utype) <= utype.type(int(hi) - int(lo))
        window.append(np.compress(inside, c))
    j = k - below
    window = np.concatenate(window) if len(window) > 1 else window[0]
    if not 0 <= j < window.size:
        return None
    window.partition(j)
    return int(window[j])
