"""Rules and backends from outside kprune (``kprune.plugins``) in every process of a sweep, launcher workers too.

The plugin is the tests' own backend, ``tests/frame_error.py`` (a real frame
error rate of kprune's torch forward), made importable with ``PYTHONPATH``
the way a user's module would be.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kprune.kaldi.build import build_tdnn

TESTS = Path(__file__).resolve().parent
THRESHOLDS = "0.2,0.5,0.8"


def kprune(cwd: Path, *args: str, pythonpath: list[Path] = (), check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in [*pythonpath, TESTS.parent])}  # this checkout
    proc = subprocess.run([sys.executable, "-m", "kprune", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def results(sweep: Path) -> dict[str, tuple[float, str]]:
    """Point -> (its frame error rate, the sha256 of its final.mdl)."""
    found = {}
    for metrics in sorted(sweep.glob("*/metrics.json")):
        doc = json.loads(metrics.read_text())
        assert doc["status"] == "ok", doc
        found[metrics.parent.name] = (doc["cer"], hashlib.sha256(metrics.with_name("final.mdl").read_bytes()).hexdigest())
    assert len(found) == 3, sorted(found)
    return found


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("plugins")
    (cwd / "final.mdl").write_bytes(build_tdnn(hidden_dim=48, num_pdfs=32))
    return cwd


def sweep(name: str, *extra: str) -> list[str]:
    return ["-m", "model=final.mdl", "method=global_pct", f"threshold={THRESHOLDS}", "eval.name=frame_error",
            "+eval.cache_dir=cache", "tensorboard.histograms=false", f"hydra.sweep.dir={name}", *extra]


@pytest.fixture(scope="module")
def sequential(workdir):
    kprune(workdir, *sweep("sequential", "plugins=[frame_error]"), pythonpath=[TESTS])
    return results(workdir / "sequential")


def test_the_plugins_setting_imports_a_backend_in_each_sequential_point(sequential):
    rates = [rate for rate, _ in sequential.values()]
    assert len(set(rates)) > 1  # the backend really measured the pruned models


@pytest.mark.slow
def test_a_plugin_backend_runs_in_joblib_workers(workdir, sequential):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[cluster]'")
    kprune(workdir, *sweep("joblib", "plugins=[frame_error]", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
           pythonpath=[TESTS])
    assert results(workdir / "joblib") == sequential


def write_distribution(root: Path, entry_points: str) -> None:
    """An installed distribution as importlib.metadata finds it on sys.path: a .dist-info folder."""
    info = root / "kprune_frame_error-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kprune-frame-error\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.mark.slow
def test_an_entry_point_backend_runs_in_submitit_workers_without_any_setting(workdir, sequential, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")
    write_distribution(tmp_path / "site", "[kprune.plugins]\nframe_error = frame_error\n")
    kprune(workdir, *sweep("submitit", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"),
           pythonpath=[tmp_path / "site", TESTS])
    assert results(workdir / "submitit") == sequential


def test_an_unknown_backend_is_still_refused_when_entry_points_are_looked_at(workdir):
    proc = kprune(workdir, "model=final.mdl", "eval.name=no_such_backend", "hydra.run.dir=unknown", check=False)
    assert proc.returncode == 2
    assert "unknown evaluator 'no_such_backend'" in proc.stderr


def test_a_broken_entry_point_is_named_in_one_line(workdir, tmp_path):
    write_distribution(tmp_path / "site", "[kprune.plugins]\nbroken = no_such_module_anywhere\n")
    proc = kprune(workdir, "model=final.mdl", "method.name=no_such_rule", "hydra.run.dir=broken",
                  pythonpath=[tmp_path / "site"], check=False)
    assert proc.returncode == 2
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "entry point 'broken' of group kprune.plugins (from kprune-frame-error)" in line
    assert "no_such_module_anywhere" in line


def test_a_plugins_module_that_cannot_be_imported_is_named(workdir):
    proc = kprune(workdir, "model=final.mdl", "plugins=[no_such_module_anywhere]", "hydra.run.dir=missing",
                  check=False)
    assert proc.returncode == 2
    assert "plugins: cannot import 'no_such_module_anywhere'" in proc.stderr
    assert not (workdir / "missing" / "final.mdl").exists()


def test_the_plugins_setting_is_not_part_of_a_point_name(workdir, sequential):
    assert all("plugins" not in name for name in sequential)


def test_a_broken_entry_point_is_reported_again_at_the_next_point(monkeypatch):
    from importlib.metadata import EntryPoint

    import kprune.plugins as plugins
    from kprune.errors import ConfigError

    broken = EntryPoint("broken", "no_such_module_anywhere", plugins.GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [broken] if group == plugins.GROUP else [])
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    for _ in range(2):  # a later point in the same process must not take it for an unknown name
        with pytest.raises(ConfigError, match="entry point 'broken' of group kprune.plugins"):
            plugins.load_entry_points()


@pytest.mark.parametrize("setting, found", [(3, "3"), ([""], "''"), ({"a": 1}, "{'a': 1}")])
def test_a_plugins_setting_that_is_not_module_names_is_refused(setting, found):
    from kprune.errors import ConfigError
    from kprune.plugins import import_plugins

    with pytest.raises(ConfigError, match="plugins: expected a list of module names, found " + re.escape(found)):
        import_plugins(setting)
