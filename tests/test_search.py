"""``kprune.search`` and ``hydra/sweeper=kprune_search``: the largest threshold within an error budget."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kprune.errors import ConfigError
from kprune.kaldi.build import build_tdnn
from kprune.search import (Budget, SearchPoint, crossings, largest_within, point_from_metrics, replay_search,
                           search_threshold)

TESTS = Path(__file__).resolve().parent


# -- the bisection, on a rising error with a known boundary ---------------------------------------

def rising(boundary: float, baseline: float = 10.0, budget: Budget = Budget()):
    """Points whose error exceeds the budget exactly above ``boundary`` (and a log of what was asked)."""
    asked: list[float] = []

    def evaluate(thresholds):
        asked.extend(thresholds)
        limit = budget.limit(baseline)
        return [SearchPoint(t, limit - 0.1 if t <= boundary else limit + 1 + t, baseline, 100 * t,
                            t <= boundary, "evaluated") for t in thresholds]

    return evaluate, asked


@pytest.mark.parametrize("boundary", [0.0, 0.01, 0.37, 0.5, 0.99, 1.0])
def test_bisection_finds_the_boundary_in_log2_evaluations(boundary):
    evaluate, asked = rising(boundary)
    result = search_threshold(evaluate, Budget(), resolution=0.01)
    assert result.threshold == boundary
    assert result.grid_points == 100 and result.evaluations == len(asked) <= math.ceil(math.log2(101))
    assert all(round(t * 100) == pytest.approx(t * 100) for t in asked)  # grid thresholds: 0.37, not 0.3700001
    assert (result.answer is None) == (boundary == 0.0)
    if boundary < 1.0:
        assert result.bracket == (boundary, round(boundary + 0.01, 12))


def test_parallel_rounds_find_the_same_boundary():
    evaluate, asked = rising(0.63)
    result = search_threshold(evaluate, Budget(), resolution=0.01, points_per_round=3)
    assert result.threshold == 0.63 and result.evaluations == len(asked) <= 4 * 3


def test_known_points_narrow_the_bracket_first():
    evaluate, asked = rising(0.42)
    known = [SearchPoint(0.4, 10.0, 10.0, 40.0, True, "reused"), SearchPoint(0.45, 30.0, 10.0, 45.0, False, "reused")]
    result = search_threshold(evaluate, Budget(), resolution=0.01, known=known)
    assert result.threshold == 0.42 and all(0.4 < t < 0.45 for t in asked) and len(asked) <= 3
    assert result.to_dict()["reused"] == 2


def test_without_monotony_the_largest_threshold_within_the_budget_wins():
    # Noise: 0.3 measured over the budget, 0.6 within; the true boundary of the rest is 0.62.
    known = [SearchPoint(0.3, 99.0, 10.0, 30.0, False, "reused"), SearchPoint(0.6, 10.0, 10.0, 60.0, True, "reused")]
    evaluate, asked = rising(0.62)
    result = search_threshold(evaluate, Budget(), resolution=0.01, known=known)
    assert result.threshold == 0.62 and all(t > 0.6 for t in asked)
    assert any("not monotone: 0.3 over the budget below 0.62" in note for note in result.notes)


def test_budgets():
    assert Budget().limit(12.0) == pytest.approx(12.6)
    assert Budget(max_abs_increase=0.5).limit(12.0) == 12.5  # the absolute budget replaces the relative one
    metrics = {"status": "ok", "cer": 12.6, "baseline": {"cer": 12.0}, "sparsity": 40.0}
    assert point_from_metrics(0.4, metrics, Budget(), "evaluated").within
    assert not point_from_metrics(0.4, {**metrics, "cer": 12.61}, Budget(), "evaluated").within
    failed = point_from_metrics(0.4, {"status": "failed", "error": "decode timed out"}, Budget(), "evaluated")
    assert not failed.within and "decode timed out" in failed.note
    with pytest.raises(ConfigError, match="max_rel_increase: expected a number >= 0, found -0.1"):
        Budget(max_rel_increase=-0.1)
    with pytest.raises(ConfigError, match="give max_rel_increase or max_abs_increase"):
        Budget(max_rel_increase=None)
    with pytest.raises(ConfigError, match="has no 'cer' with a baseline"):
        point_from_metrics(0.4, {"status": "ok", "sparsity": 1.0}, Budget(), "evaluated", "/x/run")


def test_the_budget_in_errors_of_the_test_set():
    metrics = {"status": "ok", "cer": 12.5, "baseline": {"cer": 11.93}, "sparsity": 40.0,
               "cer_report": "%CER 12.50 [ 44 / 352, 1 ins, 4 del, 39 sub ]"}
    point = point_from_metrics(0.4, metrics, Budget(), "evaluated")
    assert point.tokens == 352
    result = search_threshold(lambda ts: [point_from_metrics(t, metrics, Budget(), "evaluated") for t in ts],
                              Budget(), resolution=0.25)
    errors, tokens = result.budget_in_errors()
    assert tokens == 352 and errors == pytest.approx(0.05 * 11.93 / 100 * 352)  # 2.1 characters
    assert "budget: 2.1 errors of the test set's 352 reference tokens" in result.format()
    assert point_from_metrics(0.4, {**metrics, "cer_report": None}, Budget(), "evaluated").tokens is None


# -- the search replayed against a grid, with noise bigger than the budget ------------------------

def grid_points(values: dict[float, float], baseline: float = 10.0) -> list[SearchPoint]:
    limit = Budget().limit(baseline)
    return [SearchPoint(t, v, baseline, 100 * t, v <= limit, "grid") for t, v in values.items()]


def test_a_replayed_search_asks_the_grid_and_finds_its_answer():
    # Within the budget (<= 10.5) up to 0.6, over from 0.7; nothing is evaluated, only looked up.
    grid = grid_points({round(0.1 * i, 1): 10.0 if i <= 6 else 20.0 + i for i in range(1, 11)})
    result = replay_search(grid, Budget(), resolution=0.1)
    assert result.threshold == 0.6 == largest_within(grid).threshold
    assert result.evaluations <= 4 and all(p.source == "evaluated" for p in result.points)
    assert crossings(grid) == [(0.6, 0.7)]


def test_noise_bigger_than_the_budget_misleads_the_bisection_and_shows_as_crossings():
    # The shape of ko-dev's global_pct grid: a noisy plateau, one point over the budget below the real rise.
    values = {0.1: 10.2, 0.2: 10.4, 0.3: 10.0, 0.4: 10.1, 0.5: 11.0, 0.6: 10.3, 0.7: 10.4, 0.8: 15.0, 0.9: 30.0, 1.0: 90.0}
    grid = grid_points(values)
    result = replay_search(grid, Budget(), resolution=0.1)
    assert largest_within(grid).threshold == 0.7
    assert result.threshold == 0.4  # bisection asked 0.5, met the noise, and never looked above it
    assert crossings(grid) == [(0.4, 0.5), (0.7, 0.8)]


def test_a_replayed_search_names_the_threshold_the_grid_lacks():
    grid = grid_points({0.1: 10.0, 0.2: 10.0})
    with pytest.raises(ConfigError, match=r"asks for threshold 0.5, which the grid does not hold"):
        replay_search(grid, Budget(), resolution=0.1)


# -- the Hydra sweeper, on a synthetic model with a real evaluation -------------------------------

def kprune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``kprune`` with the test backend ``eval.name=frame_error`` registered (tests/frame_error.py)."""
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import frame_error; from kprune.app import main; main()"
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


SEARCH = ("-m", "hydra/sweeper=kprune_search", "model=final.mdl", "method=global_pct", "eval.name=frame_error",
          "+eval.cache_dir=cache", "tensorboard.histograms=false", "hydra.sweeper.max_rel_increase=0.5",
          "hydra.sweep.dir=sweep")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A small TDNN and the breaking point of its frame error, found by brute force on the 0.01 grid."""
    import frame_error
    from kprune.runner import prune
    from kprune.session import load_model_once

    cwd = tmp_path_factory.mktemp("search")
    model = cwd / "final.mdl"
    model.write_bytes(build_tdnn(hidden_dim=32, num_pdfs=24))
    evaluator = frame_error.FrameErrorEvaluator(model, cache_dir=cwd / "unused")
    baseline = evaluator.error_rate(model)
    limit = Budget(max_rel_increase=0.5).limit(baseline)
    loaded = load_model_once(model)
    grid = {}
    for i in range(15, 40):  # the breaking point lies in (0.15, 0.40)
        prune(loaded, "global_pct", i / 100)
        loaded.model.save(cwd / "grid.mdl")
        loaded.model.restore(loaded.snapshot)
        grid[i / 100] = evaluator.error_rate(cwd / "grid.mdl")
    first_over = min(t for t, e in grid.items() if e > limit)
    assert grid[0.15] <= limit and all(e > limit for t, e in grid.items() if t >= first_over)  # monotone here
    return cwd, round(first_over - 0.01, 2), grid


@pytest.mark.slow
def test_the_sweeper_finds_the_breaking_point_and_resumes(synthetic):
    cwd, expected, grid = synthetic
    # A coarse grid sweep already in the sweep directory: the search reads it instead of evaluating again.
    kprune("-m", "model=final.mdl", "method=global_pct", "eval.name=frame_error", "+eval.cache_dir=cache",
           "tensorboard.histograms=false", "threshold=0.1,0.6", "hydra.sweep.dir=sweep", cwd=cwd)
    proc = kprune(*SEARCH, cwd=cwd)
    report = json.loads((cwd / "sweep" / "search.json").read_text())
    assert report["threshold"] == expected
    assert report["answer"]["value"] == pytest.approx(grid[expected])
    assert report["reused"] == 2 and report["evaluations"] <= 6 and report["grid_points"] == 100
    evaluated = [p for p in report["points"] if p["source"] == "evaluated"]
    assert len(evaluated) == report["evaluations"]
    assert all(p["value"] == pytest.approx(grid[p["threshold"]]) for p in evaluated if p["threshold"] in grid)
    assert f"answer: threshold {expected:g}" in proc.stdout
    assert (cwd / "sweep" / f"method=global_pct,threshold={expected!r}" / "metrics.json").is_file()

    again = kprune(*SEARCH, cwd=cwd)  # everything is in the sweep directory now
    report2 = json.loads((cwd / "sweep" / "search.json").read_text())
    assert report2["threshold"] == expected and report2["evaluations"] == 0
    assert "Launching" not in again.stdout + again.stderr

    # tools/search_vs_grid.py reads the same points as a grid: its answer is the search's.  Replayed from an
    # empty directory the search asks for other points than the real one (which started from 0.1 and 0.6):
    # evaluate each it names as missing, until it replays.
    for _ in range(8):
        tool = subprocess.run([sys.executable, str(TESTS.parent / "tools" / "search_vs_grid.py"), str(cwd / "sweep"),
                               "--max-rel-increase", "0.5"], capture_output=True, text=True, timeout=600)
        assert tool.returncode == 0, tool.stderr
        assert f"grid answer: {expected:g} " in tool.stdout
        missing = re.search(r"1 point\(s\) per round: not replayed: .*?threshold=([0-9.]+)\)", tool.stdout)
        if missing is None:
            break
        kprune("-m", "model=final.mdl", "method=global_pct", "eval.name=frame_error", "+eval.cache_dir=cache",
               "tensorboard.histograms=false", f"threshold={missing.group(1)}", "hydra.sweep.dir=sweep", cwd=cwd)
    assert f"search, 1 point(s) per round: {expected:g} after " in tool.stdout


def test_the_sweeper_refuses_a_swept_threshold(synthetic):
    cwd = synthetic[0]
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import frame_error; from kprune.app import main; main()"
    proc = subprocess.run([sys.executable, "-c", code, *SEARCH, "threshold=0.1,0.2"], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0 and "threshold" in proc.stderr and "chooses" in proc.stderr


def test_a_search_whose_first_points_fail_stops_with_their_error(synthetic):
    cwd = synthetic[0]
    proc = subprocess.run([sys.executable, "-m", "kprune", "-m", "hydra/sweeper=kprune_search", "model=final.mdl",
                           "method=global_pct", "eval=vosk", "hydra.sweep.dir=failing"], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: the first points of the search failed: ") and "error.json" in line
    assert len(list((cwd / "failing").glob("*/error.json"))) == 1  # stopped after the first point


@pytest.mark.slow
def test_the_sweeper_runs_rounds_of_parallel_points_under_joblib(synthetic, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[cluster]'")
    import os

    cwd, expected, _ = synthetic
    # joblib's workers are fresh interpreters: plugins= imports the test backend in each (from PYTHONPATH).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    args = [a if a != "hydra.sweep.dir=sweep" else "hydra.sweep.dir=parallel" for a in SEARCH]
    proc = subprocess.run([sys.executable, "-m", "kprune", *args, "plugins=[frame_error]", "hydra/launcher=joblib",
                           "hydra.launcher.n_jobs=2", "hydra.sweeper.points_per_round=2"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((cwd / "parallel" / "search.json").read_text())
    assert report["threshold"] == expected and report["reused"] == 0
    rounds = (proc.stdout + proc.stderr).count("search: bracket")
    assert rounds < report["evaluations"] <= 2 * rounds and rounds <= 5  # 3x narrower per round: log3(100) < 5
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
