"""Sweeps under Hydra's joblib and submitit_local launchers: the same outputs as a sequential run, and resumable."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kprune.kaldi.build import build_tdnn

THRESHOLDS = "0.1,0.2,0.3,0.4,0.5,0.6"
pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[cluster]'")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")


def sweep_args(model: Path, sweep_dir: str, *launcher: str) -> list[str]:
    return [sys.executable, "-m", "kprune", "-m", f"model={model}", "method=pct", f"threshold={THRESHOLDS}",
            f"hydra.sweep.dir={sweep_dir}", *launcher]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def hashes(sweep: Path) -> dict[str, str]:
    """sha256 of every point's sparsity.json and final.mdl."""
    found = {f"{p.parent.name}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(sweep.glob("*/sparsity.json")) + sorted(sweep.glob("*/final.mdl"))}
    assert len(found) == 12, sorted(found)
    return found


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """A 6-point sweep run the usual way, one point after another."""
    cwd = tmp_path_factory.mktemp("launchers")
    model = cwd / "final.mdl"
    model.write_bytes(build_tdnn(hidden_dim=48, num_pdfs=32))
    run(sweep_args(model, "sequential"), cwd)
    return cwd, model, hashes(cwd / "sequential")


JOBLIB = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
SUBMITIT = ("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")


@pytest.mark.slow
@pytest.mark.parametrize("name, launcher", [("joblib", JOBLIB), ("submitit_local", SUBMITIT)])
def test_a_parallel_sweep_gives_the_sequential_outputs(sequential, name, launcher):
    cwd, model, expected = sequential
    proc = run(sweep_args(model, name, *launcher), cwd)
    assert hashes(cwd / name) == expected
    for point in (cwd / name).glob("method=*"):
        assert json.loads((point / "metrics.json").read_text())["status"] == "ok"
    if name == "joblib":
        assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name, launcher", [("joblib", JOBLIB), ("submitit_local", SUBMITIT)])
def test_a_killed_parallel_sweep_resumes(sequential, name, launcher):
    cwd, model, expected = sequential
    sweep = cwd / f"killed_{name}"
    proc = subprocess.Popen(sweep_args(model, sweep.name, *launcher), cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list(sweep.glob("*/metrics.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers, mid-sweep
    proc.wait()
    done_before = {p.parent.name: p.parent.joinpath("final.mdl").stat().st_mtime_ns
                   for p in sweep.glob("*/metrics.json") if json.loads(p.read_text())["status"] == "ok"}
    assert 1 <= len(done_before) < 6  # killed mid-sweep: something is left to resume

    again = run(sweep_args(model, sweep.name, *launcher), cwd)
    assert hashes(sweep) == expected
    for point, stamp in done_before.items():  # completed points were not redone
        assert (sweep / point / "final.mdl").stat().st_mtime_ns == stamp
    skipped = (again.stdout + again.stderr).count("complete for these settings, skipped")
    if name == "joblib":  # submitit keeps each job's log in its own folder
        assert skipped == len(done_before)
