"""``python -m kprune``: the Hydra app end to end, in subprocesses as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kprune.kaldi.build import build_tdnn

REPO = Path(__file__).resolve().parents[1]


def kprune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kprune", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=_env())


def _env() -> dict[str, str]:
    """This checkout's kprune, whatever the environment's editable install points to."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


@pytest.fixture
def tdnn(tmp_path):
    path = tmp_path / "final.mdl"
    path.write_bytes(build_tdnn(hidden_dim=24, num_pdfs=16))
    return path


def test_single_run_on_the_default_model(tmp_path):
    proc = kprune("method=pct", "threshold=0.15", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["method"] == "pct" and metrics["threshold"] == 0.15
    assert 14.0 < metrics["sparsity"] <= 15.0
    assert (run / "final.mdl").stat().st_size == 14_356_670
    assert "all  " in proc.stdout and "pct" in proc.stdout


def test_run_dir_is_honoured_and_errors_are_one_line(tdnn, tmp_path):
    proc = kprune(f"model={tdnn}", "layers=nope", "hydra.run.dir=custom/run", cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "layers=nope matches no weight layer" in lines[0] and "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "custom/run/error.json").read_text())["type"] == "ConfigError"


def test_sweep_survives_a_failed_point_and_resumes(tdnn, tmp_path):
    args = ("-m", f"model={tdnn}", "method=pct", "threshold=0.2,1.5,0.4", "hydra.sweep.dir=sweep")
    proc = kprune(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout + proc.stderr).count("loaded ") == 1  # parsed once for the whole sweep
    sweep = tmp_path / "sweep"
    ok = json.loads((sweep / "method=pct,threshold=0.4" / "metrics.json").read_text())
    assert ok["status"] == "ok" and ok["group"] == "default"
    failed = sweep / "method=pct,threshold=1.5"
    assert json.loads((failed / "metrics.json").read_text())["status"] == "failed"
    assert "must be in [0, 1]" in json.loads((failed / "error.json").read_text())["error"]
    stamp = (sweep / "method=pct,threshold=0.2" / "final.mdl").stat().st_mtime_ns

    again = kprune(*args, cwd=tmp_path)
    assert again.returncode == 0
    assert (again.stdout + again.stderr).count("complete for these settings, skipped") == 2
    assert (sweep / "method=pct,threshold=0.2" / "final.mdl").stat().st_mtime_ns == stamp


def test_per_layer_experiment_reads_the_layers_from_the_model(tdnn, tmp_path):
    proc = kprune("-m", "+experiment=layer_sweep", f"model={tdnn}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sweep = tmp_path / "outputs" / "sweeps" / "layer_sweep"
    points = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert points == sorted(f"layers={n}" for n in
                            ["affine1", "affine2", "affine3", "affine4", "affine5", "affine6", "final-affine"])
    metrics = json.loads((sweep / "layers=affine3" / "metrics.json").read_text())
    assert metrics["method"] == "abs" and metrics["threshold"] == 0.15 and metrics["group"] == "layer_sweep"


@pytest.mark.parametrize("name, method, count", [("abs_sweep", "abs", 7), ("pos_sweep", "pos", 16),
                                                 ("neg_sweep", "neg", 13), ("pct_sweep", "pct", 11)])
def test_experiment_presets_hold_the_original_thresholds(name, method, count):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "kprune" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={name}"], return_hydra_config=True)
    assert cfg.method.name == method and cfg.group == name
    assert len(str(cfg.hydra.sweeper.params.threshold).split(",")) == count


def test_point_directory_names():
    from kprune.app import point_dir_name

    assert point_dir_name(["method=abs", "threshold=0.10", "eval=vosk", "eval.command=a b/c {nj}",
                           "+experiment=abs_sweep", "layers=tdnnf*.linear", "model=/x/final.mdl"]) \
        == "layers=tdnnf*.linear,method=abs,threshold=0.1"
    assert point_dir_name(["exclude=[a/b,c d]"]) == "exclude=[a_b,c_d]"
    assert point_dir_name([]) == "default"
    long = point_dir_name([f"layers=[{','.join(f'layer{i}' for i in range(40))}]"])
    assert len(long) <= 120 and "/" not in long


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    return lines[0]


def test_a_run_directory_above_the_model_is_refused_before_hydra_writes(tmp_path):
    vm = tmp_path / "vm"
    model = vm / "am" / "final.mdl"
    model.parent.mkdir(parents=True)
    model.write_bytes(build_tdnn(hidden_dim=16, num_pdfs=8))
    (vm / "conf").mkdir()
    (vm / "notes.txt").write_text("mine\n")
    before = sorted(p.relative_to(vm) for p in vm.rglob("*"))
    for args in (("threshold=0.01", f"hydra.run.dir={vm}"), ("threshold=0.02", f"hydra.run.dir={vm}"),
                 ("threshold=0.02", "hydra.run.dir=."), ("threshold=0.1,0.2", "hydra.sweep.dir=.", "-m")):
        line = _one_error_line(kprune(*args[2:], f"model={model}", *args[:2], cwd=vm))
        assert "holds the input model" in line
    assert sorted(p.relative_to(vm) for p in vm.rglob("*")) == before  # no .hydra, no log, nothing moved


def test_an_unwritable_run_directory_is_one_line(tdnn, tmp_path):
    (tmp_path / "file").write_text("x")
    line = _one_error_line(kprune(f"model={tdnn}", "hydra.run.dir=file/run", cwd=tmp_path))
    assert "cannot create the run directory" in line and "not a directory" in line


@pytest.mark.slow
def test_two_copies_of_a_sweep_share_its_points(tdnn, tmp_path):
    args = [sys.executable, "-m", "kprune", "-m", f"model={tdnn}", "threshold=0.1,0.2,0.3,0.4,0.5,0.6",
            "hydra.sweep.dir=sweep"]
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_env())
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    points = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.startswith("threshold=")]
    assert len(points) == 6
    for point in points:
        assert len(list(point.glob("events.out.tfevents.*"))) == 1, (point, outputs)
        assert json.loads((point / "metrics.json").read_text())["status"] == "ok"
    text = "".join(outputs)
    assert "taken by another process" in text or text.count("complete for these settings, skipped") == 6, text
    assert text.count("skipped") == 6, text  # of 12 visits, each point was computed once


def test_what_a_run_returns_to_an_optimising_sweeper():
    from kprune.app import PointFailed, objective_value

    metrics = {"status": "ok", "cer": 12.5, "wer": 80.0, "sparsity": 40.0}
    assert objective_value(metrics, None) == 12.5
    assert objective_value({"sparsity": 40.0}, None) == 40.0  # eval=none: the sparse rate
    assert objective_value(metrics, "sparsity") == 40.0
    assert objective_value(metrics, ["cer", "sparsity"]) == [12.5, 40.0]
    failed = {"status": "failed", "error": "decode timed out"}
    assert objective_value(failed, None) != objective_value(failed, None)  # NaN: kprune's sweeps go on
    with pytest.raises(PointFailed, match=r"run/3 failed \(decode timed out\)"):  # a failed trial, not a score
        objective_value(failed, ["cer", "sparsity"], "run/3")
    with pytest.raises(PointFailed, match="has no cer in its metrics.json .it has sparsity."):
        objective_value({"status": "ok", "sparsity": 40.0}, ["cer", "sparsity"])
    with pytest.raises(PointFailed, match="being computed by another process"):
        objective_value({"status": "taken"}, "cer")
    # Under a sweeper that reads no scores (Hydra's basic one), a grid sweep goes on past a failed point.
    lenient = objective_value(failed, ["cer", "sparsity"], strict=False)
    assert len(lenient) == 2 and all(v != v for v in lenient)
    assert objective_value({"status": "ok", "sparsity": 40.0}, ["cer", "sparsity"], strict=False)[1] == 40.0


def test_a_grid_sweep_with_an_objective_goes_on_past_a_failed_point(tdnn):
    proc = kprune("-m", f"model={tdnn}", "method=pct", "threshold=0.1,7,0.2", "objective=[cer,sparsity]",
                  "hydra.sweep.dir=grid", cwd=tdnn.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    statuses = sorted(json.loads(p.read_text())["status"] for p in (tdnn.parent / "grid").glob("*/metrics.json"))
    assert statuses == ["failed", "ok", "ok"]


def test_a_malformed_objective_is_refused_in_one_line(tdnn):
    proc = kprune("-m", f"model={tdnn}", "objective=[cer,3]", "hydra.sweep.dir=objective", cwd=tdnn.parent)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: objective: expected null, a metrics.json key")
