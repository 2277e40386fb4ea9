"""How far an error rate can be trusted: bootstrap intervals over utterances.

An error rate measured on a few hundred reference tokens moves by whole points
when one utterance is decoded differently.  The bootstrap of Bisani and Ney
(2004, "Bootstrap estimates for confidence intervals in ASR performance
evaluation"), as Kaldi's ``compute-wer-bootci`` does it, resamples the
*utterances* of the test set with replacement, ``replications`` times, and
recomputes the corpus rate ``100 * sum(errors) / sum(reference tokens)`` on each
resample:

* :func:`rate_interval`: the interval of one system's rate;
* :func:`difference_interval`: the interval of ``rate(a) - rate(b)`` when both
  systems decoded the same utterances (*paired*: each resample takes the same
  utterances for both, so what the two share, such as hard utterances, cancels);
* :func:`probability_of_improvement`: the share of resamples in which ``b`` has
  a lower rate than ``a`` (``compute-wer-bootci``'s "probability of Set2
  improving Set1").

``kind="percentile"`` (the default) takes the ``(1 - level) / 2`` and
``(1 + level) / 2`` quantiles of the resampled rates (NumPy's linear
interpolation); ``kind="normal"`` is ``compute-wer-bootci``'s own
``mean +- 1.96 * std`` of the resampled rates (for ``level=0.95``), which can
reach below 0 on a small set.  The resamples come from
``numpy.random.default_rng(seed)`` drawn in blocks, ``(replications, n)``
indices in row order, so a fixed seed gives the same intervals on every
machine, and every system scored with the same seed and utterance count is
resampled identically.

Per-utterance counts travel as :class:`UtteranceCounts`; ``metrics.json``
keeps them under ``per_utt`` (:func:`counts_to_json`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from kprune.errors import ConfigError, ResultsError

#: Resampled index cells drawn at once (bounds the memory for large test sets).
BLOCK_CELLS = 1 << 22
KINDS = ("percentile", "normal")


@dataclass(frozen=True)
class BootstrapConfig:
    """``eval.bootstrap.*``: how intervals are drawn.

    * ``replications``: resamples of the utterances (Kaldi's default 10000);
    * ``seed``: of NumPy's ``default_rng``; the same seed resamples every system
      alike;
    * ``level``: the coverage of the intervals (0.95);
    * ``kind``: ``percentile`` or ``normal`` (mean +- z * std, Kaldi's).
    """

    replications: int = 10000
    seed: int = 0
    level: float = 0.95
    kind: str = "percentile"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> BootstrapConfig:
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - {"replications", "seed", "level", "kind"})
        if unknown:
            raise ConfigError(f"eval.bootstrap: unknown setting(s) {', '.join(unknown)}; "
                              "known: kind, level, replications, seed")
        replications = cfg.get("replications", 10000)
        if isinstance(replications, bool) or not isinstance(replications, int) or replications < 1:
            raise ConfigError(f"eval.bootstrap.replications: expected a positive integer, found {replications!r}")
        seed = cfg.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"eval.bootstrap.seed: expected an integer >= 0, found {seed!r}")
        level = cfg.get("level", 0.95)
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
            raise ConfigError(f"eval.bootstrap.level: expected a number between 0 and 1, found {level!r}")
        kind = cfg.get("kind", "percentile")
        if kind not in KINDS:
            raise ConfigError(f"eval.bootstrap.kind: expected one of {', '.join(KINDS)}, found {kind!r}")
        return cls(replications, seed, float(level), kind)

    def describe(self) -> dict[str, Any]:
        return {"replications": self.replications, "seed": self.seed, "level": self.level, "kind": self.kind}


@dataclass(frozen=True)
class UtteranceCounts:
    """Errors and reference tokens of one measure (``cer``, ``wer``, ``cer_to_dense``) per utterance."""

    utts: tuple[str, ...]
    errors: np.ndarray
    ref_len: np.ndarray

    @classmethod
    def of(cls, utts: Sequence[str], errors: Sequence[int], ref_len: Sequence[int]) -> UtteranceCounts:
        e, n = np.asarray(errors, dtype=np.int64), np.asarray(ref_len, dtype=np.int64)
        if not (len(utts) == len(e) == len(n)):
            raise ValueError(f"{len(utts)} utterances, {len(e)} error counts, {len(n)} reference lengths")
        return cls(tuple(utts), e, n)

    @property
    def rate(self) -> float:
        total = int(self.ref_len.sum())
        return math.inf if total == 0 else 100.0 * int(self.errors.sum()) / total

    def to_json(self) -> dict[str, list[int]]:
        return {"errors": self.errors.tolist(), "ref_len": self.ref_len.tolist()}


def counts_to_json(counts: Mapping[str, UtteranceCounts]) -> dict[str, Any]:
    """``per_utt`` of ``metrics.json``: ``{"utts": [...], "cer": {"errors": [...], "ref_len": [...]}, ...}``."""
    if not counts:
        return {}
    utts = next(iter(counts.values())).utts
    out: dict[str, Any] = {"utts": list(utts)}
    for name, c in counts.items():
        out[name] = c.to_json() if c.utts == utts else {"utts": list(c.utts), **c.to_json()}
    return out


def counts_from_json(doc: Any, where: str = "metrics.json") -> dict[str, UtteranceCounts]:
    """The inverse of :func:`counts_to_json`; raises :class:`ResultsError` naming ``where`` on a malformed one."""
    if not doc:
        return {}
    if not isinstance(doc, Mapping) or not isinstance(doc.get("utts"), list):
        raise ResultsError(f"{where}: per_utt: expected {{'utts': [...], measure: {{errors, ref_len}}}}, "
                           f"found {type(doc).__name__}")
    utts = tuple(str(u) for u in doc["utts"])
    out = {}
    for name, value in doc.items():
        if name == "utts":
            continue
        try:  # a measure scored on other utterances than the first lists its own
            own = tuple(str(u) for u in value["utts"]) if "utts" in value else utts
            out[name] = UtteranceCounts.of(own, value["errors"], value["ref_len"])
        except (TypeError, KeyError, ValueError) as e:
            raise ResultsError(f"{where}: per_utt.{name}: expected errors and ref_len for each of the "
                               f"{len(utts)} utterances ({e})") from None
    return out


# --------------------------------------------------------------------------- resampling


def resample_blocks(n: int, config: BootstrapConfig) -> Iterator[np.ndarray]:
    """``config.replications`` rows of ``n`` utterance indices drawn with replacement, in blocks of rows."""
    if n < 1:
        raise ValueError("a bootstrap needs at least one utterance")
    rng = np.random.default_rng(config.seed)
    rows = max(1, BLOCK_CELLS // n)
    done = 0
    while done < config.replications:
        k = min(rows, config.replications - done)
        yield rng.integers(0, n, size=(k, n))
        done += k


def resampled_rates(counts: Sequence[UtteranceCounts], config: BootstrapConfig) -> np.ndarray:
    """Rates (%) of each system on every resample: shape ``(len(counts), replications)``.

    Every system is resampled with the same indices (they must cover the same
    utterances, in the same order).  A resample without reference tokens gives NaN.
    """
    _check_same_utterances(counts)
    out = np.empty((len(counts), config.replications))
    done = 0
    for idx in resample_blocks(len(counts[0].utts), config):
        for i, c in enumerate(counts):
            errors, tokens = c.errors[idx].sum(axis=1), c.ref_len[idx].sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                out[i, done:done + len(idx)] = np.where(tokens > 0, 100.0 * errors / np.maximum(tokens, 1), np.nan)
        done += len(idx)
    return out


def interval_of(samples: np.ndarray, config: BootstrapConfig) -> tuple[float, float]:
    """The ``config.level`` interval of resampled values (NaN resamples left out)."""
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return (math.nan, math.nan)
    if config.kind == "normal":
        z = _normal_quantile(0.5 + config.level / 2)
        mean, std = float(samples.mean()), float(samples.std())  # Kaldi: sqrt(E[x^2] - E[x]^2)
        return (mean - z * std, mean + z * std)
    tail = (1.0 - config.level) / 2
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return (float(low), float(high))


def rate_interval(counts: UtteranceCounts, config: BootstrapConfig = BootstrapConfig()) -> tuple[float, float]:
    """The interval of one system's corpus rate (%)."""
    return interval_of(resampled_rates([counts], config)[0], config)


def difference_interval(a: UtteranceCounts, b: UtteranceCounts,
                        config: BootstrapConfig = BootstrapConfig()) -> tuple[float, float]:
    """The paired interval of ``rate(a) - rate(b)`` (percentage points), same utterances resampled for both."""
    rates = resampled_rates([a, b], config)
    return interval_of(rates[0] - rates[1], config)


def probability_of_improvement(a: UtteranceCounts, b: UtteranceCounts,
                               config: BootstrapConfig = BootstrapConfig()) -> float:
    """The share of resamples in which ``b`` has a lower rate than ``a`` (``b`` improves ``a``)."""
    rates = resampled_rates([a, b], config)
    valid = np.isfinite(rates).all(axis=0)
    return float(np.mean(rates[1, valid] < rates[0, valid])) if valid.any() else math.nan


def _check_same_utterances(counts: Sequence[UtteranceCounts]) -> None:
    if not counts:
        raise ValueError("no system to resample")
    first = counts[0].utts
    for c in counts[1:]:
        if c.utts != first:
            only_a = sorted(set(first) - set(c.utts))[:3]
            only_b = sorted(set(c.utts) - set(first))[:3]
            raise ResultsError("paired bootstrap: the two systems were scored on different utterances "
                               f"(only in the first: {only_a or '-'}, only in the second: {only_b or '-'})")


def _normal_quantile(p: float) -> float:
    """The standard normal quantile (1.959964 for 0.975), by bisection on erf: no SciPy needed."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


__all__ = ["BootstrapConfig", "UtteranceCounts", "counts_to_json", "counts_from_json", "rate_interval",
           "difference_interval", "probability_of_improvement", "resampled_rates", "interval_of"]
