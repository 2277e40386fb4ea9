"""Bootstrap intervals over utterances, against a plain NumPy bootstrap with the same seed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kprune.errors import ConfigError, ResultsError
from kprune.evaluate import bootstrap as bs
from kprune.evaluate.bootstrap import (BootstrapConfig, UtteranceCounts, counts_from_json, counts_to_json,
                                       difference_interval, probability_of_improvement, rate_interval)

UTTS = tuple(f"u{i}" for i in range(8))
#: Errors and reference characters of 8 utterances, like ko-dev's (352 characters).
ERRORS = [3, 0, 7, 2, 12, 5, 1, 4]
DENSE_ERRORS = [2, 1, 5, 2, 9, 5, 0, 4]
REF_LEN = [40, 31, 52, 38, 61, 49, 33, 48]


def numpy_bootstrap(errors, ref_len, seed, replications, others=()):
    """The textbook loop: resample utterance indices, recompute each corpus rate; one row per system."""
    rng = np.random.default_rng(seed)
    systems = [np.asarray(errors)] + [np.asarray(o) for o in others]
    n = np.asarray(ref_len)
    rates = np.empty((len(systems), replications))
    for r in range(replications):
        idx = rng.integers(0, len(n), size=len(n))
        for i, e in enumerate(systems):
            rates[i, r] = 100.0 * e[idx].sum() / n[idx].sum()
    return rates


def counts(errors, ref_len=REF_LEN):
    return UtteranceCounts.of(UTTS, errors, ref_len)


@pytest.mark.parametrize("seed", [0, 7])
def test_the_rate_interval_is_numpys_percentile_bootstrap(seed):
    config = BootstrapConfig(replications=2000, seed=seed)
    expected = np.quantile(numpy_bootstrap(ERRORS, REF_LEN, seed, 2000)[0], [0.025, 0.975])
    assert rate_interval(counts(ERRORS), config) == pytest.approx(tuple(expected), abs=1e-12)


def test_the_paired_difference_and_the_probability_of_improvement_are_numpys():
    config = BootstrapConfig(replications=3000, seed=3)
    rates = numpy_bootstrap(ERRORS, REF_LEN, 3, 3000, others=[DENSE_ERRORS])
    expected = np.quantile(rates[0] - rates[1], [0.025, 0.975])
    assert difference_interval(counts(ERRORS), counts(DENSE_ERRORS), config) == pytest.approx(tuple(expected),
                                                                                            abs=1e-12)
    # compute-wer-bootci: "probability of Set2 improving Set1" = share of resamples where Set2 has fewer errors.
    p = probability_of_improvement(counts(DENSE_ERRORS), counts(ERRORS), config)
    assert p == pytest.approx(float(np.mean(rates[0] < rates[1])))
    assert 0.0 < p < 0.5  # ERRORS has more errors than DENSE_ERRORS on the whole


def test_the_normal_kind_is_compute_wer_bootcis_mean_plus_minus_1_96_std():
    config = BootstrapConfig(replications=2000, seed=1, kind="normal")
    rates = numpy_bootstrap(ERRORS, REF_LEN, 1, 2000)[0]
    mean, std = rates.mean(), math.sqrt((rates ** 2).mean() - rates.mean() ** 2)
    low, high = rate_interval(counts(ERRORS), config)
    assert (low, high) == pytest.approx((mean - 1.959964 * std, mean + 1.959964 * std), rel=1e-6)


def test_drawing_in_blocks_gives_the_same_intervals(monkeypatch):
    config = BootstrapConfig(replications=1001, seed=5)
    whole = rate_interval(counts(ERRORS), config)
    monkeypatch.setattr(bs, "BLOCK_CELLS", 24)  # 3 resamples per block, the last block short
    assert rate_interval(counts(ERRORS), config) == whole


def test_known_answers():
    config = BootstrapConfig(replications=500)
    # one utterance: every resample is that utterance
    one = UtteranceCounts.of(["a"], [3], [20])
    assert rate_interval(one, config) == (15.0, 15.0)
    # a system against itself: the difference is 0 on every resample, and it never improves on itself
    assert difference_interval(counts(ERRORS), counts(ERRORS), config) == (0.0, 0.0)
    assert probability_of_improvement(counts(ERRORS), counts(ERRORS), config) == 0.0
    # fewer errors on every utterance: better on every resample
    fewer = [max(e - 1, 0) for e in ERRORS]
    assert fewer != ERRORS and probability_of_improvement(counts(ERRORS), counts(fewer), config) == 1.0
    # every utterance at the same rate: every resample has that rate
    same = UtteranceCounts.of(UTTS, [n // 10 for n in [10, 20, 30, 40, 50, 60, 70, 80]],
                              [10, 20, 30, 40, 50, 60, 70, 80])
    assert rate_interval(same, config) == pytest.approx((10.0, 10.0))
    low, high = rate_interval(counts(ERRORS), config)
    assert low < counts(ERRORS).rate < high


def test_systems_scored_on_other_utterances_are_refused():
    other = UtteranceCounts.of(("x",) + UTTS[1:], ERRORS, REF_LEN)
    with pytest.raises(ResultsError, match="different utterances.*u0.*x"):
        difference_interval(counts(ERRORS), other)


def test_counts_round_trip_through_json_and_a_malformed_record_is_named():
    doc = counts_to_json({"cer": counts(ERRORS), "wer": counts(DENSE_ERRORS)})
    assert doc["utts"] == list(UTTS) and doc["cer"]["errors"] == ERRORS
    back = counts_from_json(doc)
    assert back["cer"].utts == UTTS and back["wer"].errors.tolist() == DENSE_ERRORS
    assert back["cer"].rate == pytest.approx(100.0 * sum(ERRORS) / sum(REF_LEN))
    with pytest.raises(ResultsError, match=r"run/metrics.json: per_utt.cer: expected errors and ref_len"):
        counts_from_json({"utts": ["a", "b"], "cer": {"errors": [1], "ref_len": [3, 4]}}, "run/metrics.json")
    with pytest.raises(ResultsError, match="per_utt: expected"):
        counts_from_json([1, 2], "m.json")


@pytest.mark.parametrize("cfg, message", [
    ({"replications": 0}, "replications: expected a positive integer, found 0"),
    ({"seed": -1}, "seed: expected an integer >= 0"),
    ({"level": 1.0}, "level: expected a number between 0 and 1, found 1.0"),
    ({"kind": "bca"}, "kind: expected one of percentile, normal, found 'bca'"),
    ({"replication": 10}, "unknown setting.*replication"),
])
def test_bad_settings_are_one_line_errors(cfg, message):
    with pytest.raises(ConfigError, match=message):
        BootstrapConfig.from_config(cfg)
