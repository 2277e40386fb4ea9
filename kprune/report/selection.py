"""Choosing a recipe without choosing noise: paired comparisons and cross-validation over utterances.

A recipe picked as the best of several on the set it is then reported on
looks better than it is: on a few hundred reference tokens the differences
between recipes are of the size of the noise, and the minimum of noisy numbers
is biased low.  Both functions here read the per-utterance counts that every
evaluated point keeps in ``metrics.json`` (``per_utt``), so nothing is decoded
again:

* :func:`compare` is ``compute-wer-bootci`` with two systems: both rates with
  their intervals, the paired interval of the difference and the probability
  that the second improves on the first.
* :func:`cross_validated_choice` splits the utterances into folds; for each
  fold the recipe with the lowest rate on the *other* folds is chosen, and its
  errors on this fold are kept.  Every utterance is then scored by a recipe
  chosen without it, so the pooled rate is an honest estimate of "the best
  recipe", to be read beside the in-sample best (the optimistic one).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from kprune.errors import ResultsError
from kprune.evaluate.bootstrap import (BootstrapConfig, UtteranceCounts, difference_interval,
                                       probability_of_improvement, rate_interval)
from kprune.report.summary import RunResult, format_threshold, rate_label


@dataclass(frozen=True)
class Comparison:
    """Two runs on the same utterances (``b`` against ``a``), as ``compute-wer-bootci`` reports them."""

    measure: str
    a: RunResult
    b: RunResult
    rate_a: float
    rate_b: float
    interval_a: tuple[float, float]
    interval_b: tuple[float, float]
    difference: float  # rate_b - rate_a, percentage points
    difference_interval: tuple[float, float]
    p_b_improves: float  # P(rate_b < rate_a) over the resamples
    level: float = 0.95

    def lines(self) -> list[str]:
        def name(run: RunResult) -> str:
            return f"{run.method} at {run.threshold} ({run.run_dir})"

        label, level = self.measure.upper(), f"{self.level:.0%}"
        return [
            f"Set1: %{label} {self.rate_a:.2f} {level} Conf Interval [ {self.interval_a[0]:.2f}, "
            f"{self.interval_a[1]:.2f} ]  {name(self.a)}",
            f"Set2: %{label} {self.rate_b:.2f} {level} Conf Interval [ {self.interval_b[0]:.2f}, "
            f"{self.interval_b[1]:.2f} ]  {name(self.b)}",
            f"Set2 - Set1: {self.difference:+.2f} points, paired interval [ {self.difference_interval[0]:+.2f}, "
            f"{self.difference_interval[1]:+.2f} ]",
            f"Probability of Set2 improving Set1: {100 * self.p_b_improves:.2f}",
        ]


def counts_of(run: RunResult, measure: str) -> UtteranceCounts:
    """A run's per-utterance counts of ``measure``; a clear error when it kept none."""
    counts = run.per_utt.get(measure)
    if counts is None:
        raise ResultsError(f"{run.run_dir}: metrics.json holds no per-utterance {measure} counts (per_utt); "
                           "evaluate it again with this version of kprune")
    return counts


def compare(a: RunResult, b: RunResult, measure: str = "cer",
            config: BootstrapConfig = BootstrapConfig()) -> Comparison:
    """``b`` against ``a`` on their common per-utterance counts of ``measure``."""
    ca, cb = counts_of(a, measure), counts_of(b, measure)
    return Comparison(measure, a, b, ca.rate, cb.rate, rate_interval(ca, config), rate_interval(cb, config),
                      cb.rate - ca.rate, difference_interval(cb, ca, config),
                      probability_of_improvement(ca, cb, config), config.level)


# --------------------------------------------------------------------------- cross-validation


@dataclass(frozen=True)
class Choice:
    """The cross-validated choice among candidate runs (one target sparsity, several recipes)."""

    measure: str
    candidates: tuple[RunResult, ...]
    folds: tuple[tuple[str, ...], ...]  # the held-out utterances of each fold
    chosen: tuple[int, ...]  # per fold, the index of the candidate chosen on the other folds
    held_out: UtteranceCounts  # each utterance's counts under the recipe chosen without it
    in_sample_best: int  # the candidate with the lowest rate on all utterances
    dense: UtteranceCounts | None

    @property
    def rate(self) -> float:
        """The pooled held-out rate: what choosing this way gives on utterances not used to choose."""
        return self.held_out.rate

    def rate_interval(self, config: BootstrapConfig = BootstrapConfig()) -> tuple[float, float]:
        return rate_interval(self.held_out, config)

    def delta_interval(self, config: BootstrapConfig = BootstrapConfig()) -> tuple[float, float] | None:
        """The paired interval of the held-out rate minus the dense model's."""
        return None if self.dense is None else difference_interval(self.held_out, self.dense, config)


def utterance_folds(utts: Sequence[str], folds: int | None = None) -> list[tuple[str, ...]]:
    """``folds`` folds of the utterances, dealt in turn (``utts[i::folds]``); None: one utterance each."""
    k = len(utts) if folds is None else folds
    if not 2 <= k <= len(utts):
        raise ResultsError(f"cross-validation over {len(utts)} utterances needs 2 ... {len(utts)} folds, found {k}")
    return [tuple(utts[i::k]) for i in range(k)]


def cross_validated_choice(candidates: Sequence[RunResult], measure: str = "cer",
                           folds: int | None = None) -> Choice:
    """Chooses among ``candidates`` on each fold's complement and scores the choice on the fold.

    Ties on the training folds go to the earlier candidate, so the result does
    not depend on chance.  All candidates must have been scored on the same
    utterances.
    """
    if len(candidates) < 1:
        raise ResultsError("no candidate run to choose from")
    counts = [counts_of(run, measure) for run in candidates]
    utts = counts[0].utts
    for run, c in zip(candidates, counts):
        if c.utts != utts:
            raise ResultsError(f"{run.run_dir}: scored on other utterances than {candidates[0].run_dir}")
    errors = np.stack([c.errors for c in counts])
    tokens = np.stack([c.ref_len for c in counts])
    position = {u: i for i, u in enumerate(utts)}
    parts = utterance_folds(list(utts), folds)
    chosen, held_errors, held_tokens = [], np.zeros(len(utts), np.int64), np.zeros(len(utts), np.int64)
    for part in parts:
        test = np.array([position[u] for u in part])
        train = np.setdiff1d(np.arange(len(utts)), test)
        rates = errors[:, train].sum(axis=1) / np.maximum(tokens[:, train].sum(axis=1), 1)
        best = int(np.argmin(rates))  # the first of equals
        chosen.append(best)
        held_errors[test], held_tokens[test] = errors[best, test], tokens[best, test]
    overall = errors.sum(axis=1) / np.maximum(tokens.sum(axis=1), 1)
    dense = candidates[0].baseline_per_utt.get(measure)
    if dense is not None and dense.utts != utts:
        dense = None
    return Choice(measure, tuple(candidates), tuple(parts), tuple(chosen),
                  UtteranceCounts(utts, held_errors, held_tokens), int(np.argmin(overall)), dense)




# --------------------------------------------------------------------------- tables

_PATTERN = re.compile(r"\b\d+:\d+\b")


def target_of(run: RunResult) -> str:
    """What a recipe is compared at: its N:M pattern (``2:4``), else its threshold."""
    match = _PATTERN.search(run.method)
    return match.group(0) if match else format_threshold(run.threshold)


def choices_by_target(runs: Sequence[RunResult], measure: str = "cer",
                      folds: int | None = None) -> list[tuple[str, Choice]]:
    """One cross-validated choice per target (threshold or N:M pattern) among the runs evaluated there."""
    by_target: dict[str, list[RunResult]] = defaultdict(list)
    for run in runs:
        if not run.failed and measure in run.per_utt:
            by_target[target_of(run)].append(run)
    return [(target, cross_validated_choice(members, measure, folds))
            for target, members in sorted(by_target.items()) if len(members) >= 2]


def format_choices(choices: Sequence[tuple[str, Choice]], config: BootstrapConfig = BootstrapConfig()) -> str:
    """A Markdown table: per target, the in-sample best and the cross-validated choice with intervals."""
    if not choices:
        return "No target has two or more evaluated recipes with per-utterance counts.\n"
    measure = rate_label(choices[0][1].measure)
    level = f"{config.level:.0%}"
    head = ["target", "recipes", f"in-sample best ({measure} %)", f"{measure} % [{level} CI]",
            "chosen on held-in folds (times)", f"held-out {measure} % [{level} CI]",
            f"held-out change from dense [{level} CI]"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---|---|---|---|---|"]
    for target, choice in choices:
        best = choice.candidates[choice.in_sample_best]
        counts = counts_of(best, choice.measure)
        low, high = rate_interval(counts, config)
        picked = defaultdict(int)
        for index in choice.chosen:
            picked[choice.candidates[index].method] += 1
        held_low, held_high = choice.rate_interval(config)
        delta = choice.delta_interval(config)
        change = "" if delta is None else \
            f"{choice.rate - choice.dense.rate:+.2f} [{delta[0]:+.2f}, {delta[1]:+.2f}]"
        lines.append("| " + " | ".join([
            target, str(len(choice.candidates)), best.method, f"{counts.rate:.2f} [{low:.2f}, {high:.2f}]",
            ", ".join(f"{m} ({n})" for m, n in sorted(picked.items(), key=lambda item: (-item[1], item[0]))),
            f"{choice.rate:.2f} [{held_low:.2f}, {held_high:.2f}]", change]) + " |")
    first = choices[0][1]
    dense = "" if first.dense is None else f" The dense model: {first.dense.rate:.2f} %."
    lines += ["", f"{len(first.folds)} folds over {len(first.held_out.utts)} utterances: in each, the recipe with the "
              f"lowest {measure} on the other folds is chosen and scored on this one.{dense}"]
    return "\n".join(lines) + "\n"


__all__ = ["Comparison", "compare", "Choice", "cross_validated_choice", "utterance_folds", "counts_of",
           "choices_by_target", "format_choices", "target_of"]
