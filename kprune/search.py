"""The largest threshold whose error stays within a budget: bisection on the sparsity axis.

A rule's sparsity grows with its threshold, and the error rate with the
sparsity (a model pruned harder decodes worse).  So the largest threshold
whose point stays within an error budget can be found by bisection, in about
log2(N) evaluations where a grid of the same resolution needs N.

:func:`search_threshold` is the search, over any ``evaluate(thresholds)``
callback (the style of Distiller's sensitivity analysis).  The thresholds it
asks for lie on the grid ``lower + i * resolution``, so the points it leaves
are those a grid sweep of the same resolution would make, and the points a
sweep already holds (:func:`reusable_points`) narrow the bracket before
anything is evaluated: a search run again, or after a grid sweep, resumes.

``kprune -m hydra/sweeper=kprune_search ...`` runs it as a Hydra sweeper
(``hydra_plugins/kprune_search``); each point is an ordinary sweep point, run
by whatever launcher is configured.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from kprune.errors import ConfigError

log = logging.getLogger(__name__)

SEARCH = "search.json"


@dataclass(frozen=True)
class Budget:
    """How much the error metric may rise over the unpruned model's.

    ``max_abs_increase`` (points of the metric, e.g. 0.5 for +0.5 % CER), when
    given, is the budget; otherwise ``max_rel_increase`` (a fraction of the
    baseline: 0.05 allows 12.0 % to become 12.6 %).
    """

    metric: str = "cer"
    max_rel_increase: float | None = 0.05
    max_abs_increase: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_rel_increase", "max_abs_increase"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise ConfigError(f"{name}: expected a number >= 0, found {value!r}")
        if self.max_rel_increase is None and self.max_abs_increase is None:
            raise ConfigError("give max_rel_increase or max_abs_increase: the search needs an error budget")
        if not isinstance(self.metric, str) or not self.metric:
            raise ConfigError(f"metric: expected a metric name such as cer or wer, found {self.metric!r}")

    def limit(self, baseline: float) -> float:
        """The largest value of the metric within the budget."""
        if self.max_abs_increase is not None:
            return baseline + self.max_abs_increase
        return baseline * (1.0 + self.max_rel_increase)

    def describe(self) -> str:
        if self.max_abs_increase is not None:
            return f"{self.metric} at most {self.max_abs_increase:g} points above the unpruned model's"
        return f"{self.metric} at most {100 * self.max_rel_increase:g} % above the unpruned model's"


@dataclass
class SearchPoint:
    """One evaluated point: its threshold, sparse rate and error, and whether it is within the budget."""

    threshold: float
    value: float | None
    baseline: float | None
    sparsity: float | None
    within: bool
    source: str  # "reused" (found complete in the sweep) | "evaluated" (by this search) | "failed" | "grid" (read by replay)
    run_dir: str | None = None
    note: str | None = None
    error: str | None = None  # why a failed point failed
    tokens: int | None = None  # reference words or characters the metric counts over (from "<metric>_report")


def point_from_metrics(threshold: float, metrics: Mapping[str, Any] | None, budget: Budget, source: str,
                       run_dir: str | None = None) -> SearchPoint:
    """A :class:`SearchPoint` from a point's ``metrics.json``; a failed or unevaluated point is over the budget."""
    if not metrics or metrics.get("status") != "ok":
        error = (metrics or {}).get("error", "no metrics.json")
        return SearchPoint(threshold, None, None, (metrics or {}).get("sparsity"), False, "failed", run_dir,
                           f"failed ({error}); counted as over the budget", error)
    value = metrics.get(budget.metric)
    baseline = (metrics.get("baseline") or {}).get(budget.metric)
    if value is None or baseline is None:
        raise ConfigError(f"{run_dir}: metrics.json has no {budget.metric!r} with a baseline; the search needs "
                          f"an evaluation that reports it (eval=vosk, torch or kaldi)")
    return SearchPoint(threshold, float(value), float(baseline), metrics.get("sparsity"),
                       float(value) <= budget.limit(float(baseline)) + 1e-9, source, run_dir,
                       tokens=_reference_tokens(metrics.get(f"{budget.metric}_report")))


def _reference_tokens(report: Any) -> int | None:
    """N of a compute-wer line, ``%CER 13.07 [ 46 / 352, 1 ins, 4 del, 41 sub ]``; None if absent."""
    match = re.search(r"\[\s*\d+\s*/\s*(\d+)", report) if isinstance(report, str) else None
    return int(match.group(1)) if match else None


def budget_in_errors(budget: Budget, points: Iterable[SearchPoint]) -> tuple[float, int] | None:
    """(the budget as a number of errors on the test set, its reference tokens); None if unknown.

    A budget of a few errors is within the noise between neighbouring points
    of a small test set: the error rate then leaves it more than once.
    """
    points = list(points)
    baseline = next((p.baseline for p in points if p.baseline is not None), None)
    tokens = next((p.tokens for p in points if p.tokens), None)
    if baseline is None or tokens is None:
        return None
    return (budget.limit(baseline) - baseline) / 100.0 * tokens, tokens


@dataclass
class SearchResult:
    """What :func:`search_threshold` found, and what it cost."""

    budget: Budget
    lower: float
    upper: float
    resolution: float
    answer: SearchPoint | None  # None: even the first grid step is over the budget
    bracket: tuple[float, float]
    points: list[SearchPoint] = field(default_factory=list)
    evaluations: int = 0
    grid_points: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def threshold(self) -> float:
        return self.answer.threshold if self.answer is not None else self.lower

    def budget_in_errors(self) -> tuple[float, int] | None:
        """:func:`budget_in_errors` of this search's points."""
        return budget_in_errors(self.budget, self.points)

    def to_dict(self) -> dict[str, Any]:
        baseline = next((p.baseline for p in self.points if p.baseline is not None), None)
        errors = self.budget_in_errors()
        return {
            "threshold": self.threshold,
            "answer": asdict(self.answer) if self.answer is not None else None,
            "bracket": list(self.bracket),
            "budget": {**asdict(self.budget), "baseline": baseline,
                       "limit": self.budget.limit(baseline) if baseline is not None else None,
                       "errors": errors[0] if errors else None, "reference_tokens": errors[1] if errors else None},
            "lower": self.lower, "upper": self.upper, "resolution": self.resolution,
            "evaluations": self.evaluations,
            "reused": sum(p.source == "reused" for p in self.points),
            "grid_points": self.grid_points,
            "points": [asdict(p) for p in sorted(self.points, key=lambda p: p.threshold)],
            "notes": self.notes,
        }

    def format(self) -> str:
        """The report printed at the end of a search."""
        d = self.to_dict()
        lines = [f"search: largest threshold with {self.budget.describe()}"]
        if d["budget"]["baseline"] is not None:
            lines[0] += f" ({d['budget']['baseline']:.2f} -> at most {d['budget']['limit']:.2f})"
        lines.append(f"{'threshold':>10}  {'sparse %':>8}  {self.budget.metric + ' %':>8}  within  source")
        for p in sorted(self.points, key=lambda p: p.threshold):
            value = "-" if p.value is None else f"{p.value:.2f}"
            sparsity = "-" if p.sparsity is None else f"{p.sparsity:.2f}"
            lines.append(f"{p.threshold:>10g}  {sparsity:>8}  {value:>8}  {'yes' if p.within else 'no':>6}  {p.source}")
        if self.answer is None:
            lines.append(f"answer: none above {self.lower:g} (the first step, {self.bracket[1]:g}, is over the budget)")
        else:
            a = self.answer
            sparsity = "" if a.sparsity is None else f", sparse rate {a.sparsity:.2f} %"
            lines.append(f"answer: threshold {a.threshold:g}{sparsity}, {self.budget.metric} {a.value:.2f} %; "
                         f"the next step ({self.bracket[1]:g}) is over the budget")
        if d["budget"]["errors"] is not None:
            lines.append(f"budget: {d['budget']['errors']:.1f} errors of the test set's "
                         f"{d['budget']['reference_tokens']} reference tokens; a budget of a few errors is within "
                         f"the noise between neighbouring points (docs/sweeps.md: How far can I prune?)")
        lines.append(f"cost: {self.evaluations} evaluations ({d['reused']} points reused); "
                     f"a grid of the same resolution ({self.resolution:g}) has {self.grid_points} points")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _grid_value(lower: float, resolution: float, i: int) -> float:
    return round(lower + i * resolution, 12)  # 0.3, not 0.30000000000000004: point names stay readable


def search_threshold(evaluate: Callable[[list[float]], list[SearchPoint]], budget: Budget, *, lower: float = 0.0,
                     upper: float = 1.0, resolution: float = 0.01, points_per_round: int = 1,
                     known: Iterable[SearchPoint] = ()) -> SearchResult:
    """The largest threshold on the grid ``lower + i * resolution`` (up to ``upper``) within ``budget``.

    ``lower`` counts as within the budget (at threshold 0 nothing is pruned)
    and is not evaluated; ``upper`` is evaluated only if every point below it
    is within.  ``known`` points (from an earlier run) narrow the bracket
    first.  Each round evaluates ``points_per_round`` thresholds spread over
    the bracket (1: bisection; k: the bracket shrinks k+1 times per round,
    for k parallel workers).  Ends when no grid point is left strictly inside
    the bracket, so the answer is within ``resolution`` of the boundary.
    """
    for name, value in (("lower", lower), ("upper", upper), ("resolution", resolution)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name}: expected a number, found {value!r}")
    if not (upper > lower and resolution > 0):
        raise ConfigError(f"expected lower < upper and resolution > 0, found lower={lower}, upper={upper}, "
                          f"resolution={resolution}")
    if isinstance(points_per_round, bool) or not isinstance(points_per_round, int) or points_per_round < 1:
        raise ConfigError(f"points_per_round: expected a positive integer, found {points_per_round!r}")
    steps = math.ceil((upper - lower) / resolution - 1e-9)
    points: dict[float, SearchPoint] = {}
    notes: list[str] = []
    for p in known:
        if lower < p.threshold <= upper:
            points[p.threshold] = p
    evaluations = 0
    while True:
        lo, hi, hi_known = _bracket(points, lower, upper)
        # Grid indices strictly inside (lo, hi), and hi itself while it is only assumed over the budget.
        first = math.floor((lo - lower) / resolution + 1e-9) + 1
        last = math.ceil((hi - lower) / resolution - 1e-9) - (1 if hi_known else 0)
        last = min(last, steps)
        if last < first:
            break
        count = min(points_per_round, last - first + 1)
        chosen = sorted({first + (last - first) * (j + 1) // (count + 1) for j in range(count)}
                        if last - first + 1 > count else set(range(first, last + 1)))
        if count == 1 and last > first:  # bisection proper: the middle of the bracket, not of the grid inside it
            chosen = [first + (last - first) // 2]
        thresholds = [_grid_value(lower, resolution, i) if i < steps else float(upper) for i in chosen]
        log.info("search: bracket (%g, %g]; evaluating %s", lo, hi, ", ".join(f"{t:g}" for t in thresholds))
        for p in evaluate(thresholds):
            points[p.threshold] = p
            evaluations += 1
    lo, hi, hi_known = _bracket(points, lower, upper)
    stray = sorted(t for t, p in points.items() if not p.within and t < lo)
    if stray:
        notes.append(f"not monotone: {', '.join(f'{t:g}' for t in stray)} over the budget below {lo:g}, "
                     f"which is within; the answer is the largest threshold within the budget")
    notes += [f"{p.threshold:g}: {p.note}" for p in points.values() if p.note]
    answer = points.get(lo)
    return SearchResult(budget, float(lower), float(upper), float(resolution), answer, (lo, hi),
                        list(points.values()), evaluations, steps, notes)


def _bracket(points: Mapping[float, SearchPoint], lower: float, upper: float) -> tuple[float, float, bool]:
    """(largest within-budget threshold, smallest over-budget threshold above it, whether hi was evaluated).

    When the error does not rise monotonically (a small test set, where one
    character moves the CER by a few tenths), the bracket is the last crossing:
    the answer is the largest threshold within the budget that was seen.
    """
    within = [t for t, p in points.items() if p.within]
    lo = max(within) if within else lower
    over = [t for t, p in points.items() if not p.within and t > lo]
    hi = min(over) if over else upper
    return lo, hi, bool(over) or (upper in points)


# -- points a sweep already holds -----------------------------------------------

def _complete_points(sweep_dir: Path) -> Iterator[tuple[dict[str, Any], float, dict[str, Any], Path]]:
    """(settings of ``point.json`` but the threshold, the threshold, ``metrics.json``, run dir) of each complete point.

    Complete: both files readable, a threshold in ``point.json``, ``metrics.json`` status ok.
    """
    for point_file in sorted(Path(sweep_dir).glob("*/point.json")):
        try:
            point = json.loads(point_file.read_text())
            metrics = json.loads((point_file.parent / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(point, dict) and "threshold" in point and metrics.get("status") == "ok":
            settings = {k: v for k, v in point.items() if k != "threshold"}
            yield settings, float(point["threshold"]), metrics, point_file.parent


def reusable_points(sweep_dir: Path, fingerprint: Mapping[str, Any], budget: Budget) -> list[SearchPoint]:
    """The complete points under ``sweep_dir`` computed with ``fingerprint``'s settings but any threshold.

    ``fingerprint`` is :meth:`kprune.runner.PointSettings.fingerprint`.  A
    point whose outputs are complete (``metrics.json`` status ok, the same
    settings in ``point.json``) is read, never run again.
    """
    wanted = {k: v for k, v in json.loads(json.dumps(fingerprint)).items() if k != "threshold"}
    return [point_from_metrics(threshold, metrics, budget, "reused", str(run_dir))
            for settings, threshold, metrics, run_dir in _complete_points(sweep_dir) if settings == wanted]


# -- a search replayed against a grid sweep ---------------------------------------

def sweep_settings_groups(sweep_dir: Path, budget: Budget) -> list[tuple[dict[str, Any], list[SearchPoint]]]:
    """The complete points under ``sweep_dir`` with the budget's metric, grouped by their settings but the threshold.

    Each group is (the settings of ``point.json`` without the threshold, its
    points), largest group first.
    """
    groups: dict[str, tuple[dict[str, Any], list[SearchPoint]]] = {}
    for settings, threshold, metrics, run_dir in _complete_points(sweep_dir):
        try:
            found = point_from_metrics(threshold, metrics, budget, "grid", str(run_dir))
        except ConfigError:  # not evaluated with the budget's metric (eval=none, a WER-only backend): not a grid point
            continue
        groups.setdefault(json.dumps(settings, sort_keys=True), (settings, []))[1].append(found)
    return sorted(groups.values(), key=lambda g: -len(g[1]))


def replay_search(points: Iterable[SearchPoint], budget: Budget, *, lower: float = 0.0, upper: float = 1.0,
                  resolution: float = 0.01, points_per_round: int = 1) -> SearchResult:
    """What :func:`search_threshold` answers, and at what cost, when its points are looked up, not evaluated.

    ``points`` are a grid sweep's (:func:`sweep_settings_groups`); each
    threshold the search asks for must be among them, or :class:`ConfigError`
    names the first one missing.  With the grid's own answer
    (:func:`largest_within`), this checks the search against the grid without
    a single decode.
    """
    table = {round(p.threshold, 9): p for p in points}

    def evaluate(thresholds: list[float]) -> list[SearchPoint]:
        missing = [t for t in thresholds if round(t, 9) not in table]
        if missing:
            raise ConfigError(f"the search asks for threshold {missing[0]:g}, which the grid does not hold; "
                              f"evaluate it in the same sweep directory (threshold={missing[0]:g}) and replay")
        return [replace(table[round(t, 9)], source="evaluated") for t in thresholds]

    return search_threshold(evaluate, budget, lower=lower, upper=upper, resolution=resolution,
                            points_per_round=points_per_round)


def largest_within(points: Iterable[SearchPoint], lower: float = 0.0) -> SearchPoint | None:
    """The largest threshold within the budget (the answer a grid of these points gives); None if there is none."""
    within = [p for p in points if p.within and p.threshold > lower]
    return max(within, key=lambda p: p.threshold) if within else None


def crossings(points: Iterable[SearchPoint]) -> list[tuple[float, float]]:
    """(within, over) pairs of neighbouring thresholds where the error leaves the budget.

    A monotone error leaves it once; more crossings mean the metric's noise on
    this test set is larger than the budget between neighbouring points.
    """
    ordered = sorted(points, key=lambda p: p.threshold)
    return [(a.threshold, b.threshold) for a, b in zip(ordered, ordered[1:]) if a.within and not b.within]
