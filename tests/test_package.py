"""The built wheel installs into a fresh virtual environment and runs outside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from kprune.kaldi.build import build_tdnn

REPO = Path(__file__).resolve().parents[1]


def test_the_configs_are_package_data():
    """``pkg://kprune.conf`` is what the app loads, and the wheel's manifest carries the YAML and the plugin."""
    import tomllib

    from kprune.app import CONF_DIR

    assert CONF_DIR == "pkg://kprune.conf"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["kprune"] == "kprune.app:main"
    patterns = project["tool"]["setuptools"]["package-data"]["kprune.conf"]
    conf = REPO / "kprune" / "conf"
    shipped = {p for pattern in patterns for p in conf.glob(pattern)}
    assert shipped == set(conf.rglob("*.yaml")) and (conf / "config.yaml") in shipped
    assert "hydra_plugins*" in project["tool"]["setuptools"]["packages"]["find"]["include"]


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.slow
def test_wheel_runs_from_an_unrelated_directory_with_a_user_preset(tmp_path):
    # Nothing of the checkout on the path: pip would take its kprune.egg-info for an installed kprune.
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    wheels = tmp_path / "wheels"
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                  str(REPO)], cwd=tmp_path, env=clean)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("kprune-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = _run([str(python), "-m", "pip", "install", "-q", str(wheel)], cwd=tmp_path, env=clean)
    assert install.returncode == 0, install.stderr
    assert (env_dir / "bin" / "kprune").is_file(), install.stdout

    # A user's presets live outside the package: a model of their own and a group name.
    work = tmp_path / "elsewhere"
    presets = work / "my_presets" / "experiment"
    presets.mkdir(parents=True)
    model = work / "models" / "final.mdl"
    model.parent.mkdir()
    model.write_bytes(build_tdnn(hidden_dim=24, num_pdfs=16))
    (presets / "mine.yaml").write_text(f"# @package _global_\nmodel: {model}\ngroup: mine\nlayers: affine*\n")

    proc = _run([str(env_dir / "bin" / "kprune"), "--config-dir", "my_presets", "method=pct", "threshold=0.15",
                 "+experiment=mine", "hydra.run.dir=run"], cwd=work, env=clean)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["group"] == "mine" and metrics["layers"] == "affine*"
    assert metrics["method"] == "pct" and metrics["threshold"] == 0.15
    where = _run([str(python), "-c", "import kprune; print(kprune.__file__)"], cwd=work, env=clean)
    assert str(env_dir) in where.stdout and str(REPO) not in where.stdout  # the wheel, not the checkout
    # The search sweeper ships in the wheel as a Hydra plugin (hydra_plugins/kprune_search).
    cfg = _run([str(env_dir / "bin" / "kprune"), "hydra/sweeper=kprune_search", "--cfg", "hydra"], cwd=work, env=clean)
    assert cfg.returncode == 0, cfg.stderr
    assert "hydra_plugins.kprune_search.search_sweeper.KpruneSearchSweeper" in cfg.stdout
