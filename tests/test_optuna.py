"""``+experiment=optuna_pareto``: Optuna's multi-objective sweeper over the threshold, error rate against sparse rate.

The evaluation is the tests' frame error backend (``tests/frame_error.py``,
imported with ``plugins=``), on a small synthetic TDNN.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kprune.kaldi.build import build_tdnn

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[optuna]'")
yaml = pytest.importorskip("yaml")

TESTS = Path(__file__).resolve().parent
STUDY = ("-m", "+experiment=optuna_pareto", "model=final.mdl", "eval=none", "eval.name=frame_error",
         "+eval.cache_dir=cache", "plugins=[frame_error]", "tensorboard.histograms=false", "hydra.sweeper.n_trials=4",
         "hydra.sweep.dir=study")


def kprune(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    proc = subprocess.run([sys.executable, "-m", "kprune", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_the_pareto_front_is_made_of_sweep_points_and_a_rerun_resumes(tmp_path):
    (tmp_path / "final.mdl").write_bytes(build_tdnn(hidden_dim=32, num_pdfs=24))
    kprune(tmp_path, *STUDY)
    points = {}
    for metrics_file in (tmp_path / "study").glob("*/metrics.json"):
        metrics = json.loads(metrics_file.read_text())
        assert metrics["status"] == "ok"
        points[metrics["threshold"]] = (metrics["cer"], metrics["sparsity"])
    assert len(points) == 4 and all(0.0 <= t <= 0.6 for t in points)
    results = yaml.safe_load((tmp_path / "study" / "optimization_results.yaml").read_text())
    front = {s["params"]["threshold"]: tuple(s["values"]) for s in results["solutions"]}
    assert front and all(points[t] == pytest.approx(values) for t, values in front.items())
    for t in front:  # no point of the study dominates a point of the front (lower error and sparser)
        cer, sparsity = points[t]
        assert not any(c <= cer and s >= sparsity and (c, s) != (cer, sparsity) for c, s in points.values())

    again = kprune(tmp_path, *STUDY)  # the seeded sampler asks the same thresholds: every point is complete
    assert (again.stdout + again.stderr).count("complete for these settings, skipped") == 4
