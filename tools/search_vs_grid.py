#!/usr/bin/env python3
"""The search checked against a grid sweep, without a decode: what it would answer, and at what cost.

    python tools/search_vs_grid.py SWEEP_DIR [--max-rel-increase 0.05 | --max-abs-increase 0.5]
                                   [--metric cer] [--lower 0] [--upper 1] [--resolution 0.01]

``SWEEP_DIR`` holds a grid sweep of one setting (e.g. ``global_pct`` at every
0.01 up to where the error has clearly left the budget, plus the points the
search asks for above it).  The tool reads its complete points, finds the
grid's answer (the largest threshold within the budget) and replays
``hydra/sweeper=kprune_search`` against the points (each threshold it asks for
is looked up, not decoded), for 1 and 2 points per round.  It prints both
answers, the distance between them, the number of evaluations the search made,
and where the error leaves the budget: more than one such crossing means the
test set's noise between neighbouring points is larger than the budget.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kprune.errors import KpruneError  # noqa: E402
from kprune.search import (Budget, budget_in_errors, crossings, largest_within, replay_search,  # noqa: E402
                           sweep_settings_groups)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metric", default="cer")
    parser.add_argument("--max-rel-increase", type=float, default=0.05)
    parser.add_argument("--max-abs-increase", type=float, default=None)
    parser.add_argument("--lower", type=float, default=0.0)
    parser.add_argument("--upper", type=float, default=1.0)
    parser.add_argument("--resolution", type=float, default=0.01)
    args = parser.parse_args(argv)
    try:
        budget = Budget(args.metric, args.max_rel_increase, args.max_abs_increase)
        groups = sweep_settings_groups(args.sweep_dir, budget)
        if not groups:
            raise KpruneError(f"{args.sweep_dir}: expected complete sweep points (point.json, metrics.json), "
                              "found none")
        settings, points = groups[0]
        if len(groups) > 1:
            print(f"note: {len(groups)} settings in {args.sweep_dir}; using the largest "
                  f"({settings.get('method')}, {len(points)} points)")
        baseline = next(p.baseline for p in points if p.baseline is not None)
        print(f"grid: {len(points)} points of {settings.get('method')} in {args.sweep_dir}; "
              f"{budget.describe()} ({baseline:.2f} -> at most {budget.limit(baseline):.2f})")
        print("  " + "  ".join(f"{p.threshold:g}:{p.value:.2f}{'' if p.within else '*'}"
                               for p in sorted(points, key=lambda p: p.threshold)) + "   (* over)")
        errors = budget_in_errors(budget, points)
        if errors is not None:
            print(f"budget: {errors[0]:.1f} errors of the test set's {errors[1]} reference tokens")
        grid = largest_within(points, args.lower)
        cross = crossings(points)
        print(f"grid answer: {'none' if grid is None else f'{grid.threshold:g} ({args.metric} {grid.value:.2f})'}; "
              f"the error leaves the budget {len(cross)} times: "
              + ", ".join(f"{a:g}->{b:g}" for a, b in cross))
        for per_round in (1, 2):
            try:
                result = replay_search(points, budget, lower=args.lower, upper=args.upper,
                                       resolution=args.resolution, points_per_round=per_round)
            except KpruneError as e:
                print(f"search, {per_round} point(s) per round: not replayed: {e}")
                continue
            asked = ", ".join(f"{p.threshold:g}" for p in sorted(result.points, key=lambda p: p.threshold))
            gap = "" if grid is None else f", {result.threshold - grid.threshold:+.2f} from the grid's answer"
            print(f"search, {per_round} point(s) per round: {result.threshold:g} after {result.evaluations} "
                  f"evaluations ({asked}){gap}; the grid has {result.grid_points} points")
    except KpruneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
