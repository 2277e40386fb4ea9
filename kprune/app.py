"""The Hydra entry point: ``python -m kprune [overrides]`` (``-m`` for sweeps).

This module only wires configuration to :mod:`kprune.runner`; see
``kprune/conf/config.yaml`` for the settings.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from pathlib import Path
from typing import Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from kprune.cli import CONF_DIR, evaluator_for, to_plain
from kprune.errors import ConfigError, KpruneError
from kprune.plugins import import_plugins
from kprune.rundir import check_can_write_dir, check_run_dir
from kprune.runner import PointSettings, run_point
from kprune.session import load_model_once, resolve_model_path

log = logging.getLogger(__name__)


def _model_layers(model: str | None = None) -> str:
    """``${kprune_layers:${model}}``: the model's default layers, for per-layer sweeps."""
    try:
        path = resolve_model_path(model, Path(hydra.utils.get_original_cwd()) if HydraConfig.initialized() else None)
        return ",".join(load_model_once(path).model.default_layers)
    except KpruneError as e:  # OmegaConf would wrap it in a traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


# Overrides that do not name a sweep point: where and how it runs, what evaluates it.
_NOT_IN_POINT_NAME = {"eval", "hydra", "model", "group", "device", "save_masks", "tensorboard", "experiment",
                      "plugins", "objective"}


def point_dir_name(overrides: Sequence[str]) -> str:
    """``${kprune_point:${hydra.overrides.task}}``: a sweep point's directory name.

    Like Hydra's ``override_dirname`` (``method=abs,threshold=0.05``), but only
    from the settings that define the point, with thresholds spelled one way
    (``0.10`` and ``0.1`` are one point), and safe as one path component.
    """
    parts = []
    for override in overrides:
        key, _, value = str(override).partition("=")
        key = key.lstrip("+~")
        if key.split(".")[0] in _NOT_IN_POINT_NAME:
            continue
        if key == "threshold":
            try:
                value = repr(float(value))
            except ValueError:
                pass
        parts.append(f"{key}={value}")
    name = re.sub(r"[^\w.,=+\-*\[\]]", "_", ",".join(sorted(parts))) or "default"
    if len(name) > 120:
        name = f"{name[:100]}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    return name


OmegaConf.register_new_resolver("kprune_layers", _model_layers, replace=True)
OmegaConf.register_new_resolver("kprune_point", point_dir_name, replace=True)


def point_settings(cfg: DictConfig, cwd: Path) -> PointSettings:
    """The settings of the point ``cfg`` describes (relative paths from ``cwd``, where kprune was started)."""
    method = OmegaConf.to_container(cfg.method, resolve=True) if OmegaConf.is_config(cfg.method) \
        else {"name": str(cfg.method)}
    return PointSettings(
        model=resolve_model_path(cfg.model, cwd), method=str(method.pop("name", "abs")), threshold=cfg.threshold,
        method_options=method, repair=to_plain(cfg.get("repair")), repair_options=to_plain(cfg.get("repair_options")),
        calib=to_plain(cfg.get("calib")), allocation=to_plain(cfg.get("allocation")),
        layers=OmegaConf.to_object(cfg.layers) if OmegaConf.is_list(cfg.layers) else cfg.layers,
        exclude=OmegaConf.to_object(cfg.exclude) if OmegaConf.is_list(cfg.exclude) else cfg.exclude,
        device=str(cfg.device), group=str(cfg.group), save_masks=bool(cfg.save_masks),
        histograms=bool(cfg.tensorboard.histograms), eval=OmegaConf.to_container(cfg.eval, resolve=True))


class RunDirGuard(Callback):
    """Checks the run (or sweep) directory before Hydra writes anything there (``hydra.callbacks``).

    A directory that holds the model, or that cannot be written, is refused with
    one line; Hydra has not yet created it, its ``.hydra/`` or its log.
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, Path(str(config.hydra.run.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._check(config, Path(str(config.hydra.sweep.dir)))

    @staticmethod
    def _check(config: DictConfig, run_dir: Path) -> None:
        try:
            check_run_dir(resolve_model_path(config.model, Path.cwd()), run_dir)
            check_can_write_dir(run_dir)
        except KpruneError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)


class PointFailed(RuntimeError):
    """A point that an optimising sweeper (``objective=`` set) cannot score: it failed, or lacks a metric.

    Raised from the task function, so that the sweeper records a failed trial
    (Optuna: ``hydra.sweeper.max_failure_rate`` decides whether the study goes
    on), where a NaN would be taken for a score.
    """


#: Sweepers that only launch points, and read no scores: under them a failed point returns NaN and the sweep goes on.
_LAUNCHING_SWEEPERS = ("hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                       "hydra_plugins.kprune_search.search_sweeper.KpruneSearchSweeper")


def objective_value(metrics: dict, objective, where: str = "the point", *,
                    strict: bool = True) -> float | list[float]:
    """What a run returns to a sweeper that optimises (``objective=``; Optuna reads it).

    ``None``: the error rate (``cer``, else ``wer``), or the sparse rate when
    nothing was evaluated, or NaN for a failed point (kprune's own sweeps go on
    past it).  A ``metrics.json`` key, or a list of them for a multi-objective
    study (``[cer, sparsity]``): their values, in that order.  A point that
    failed or was skipped, or that lacks a key, raises :class:`PointFailed`,
    or gives NaN for it with ``strict=False`` (a sweeper that reads no scores).
    """
    if objective is None:
        return float(metrics.get("cer", metrics.get("wer", metrics.get("sparsity", float("nan")))))
    names = [objective] if isinstance(objective, str) else list(objective)
    status = metrics.get("status", "ok")
    values = [metrics.get(name) if status == "ok" else None for name in names]
    missing = [n for n, v in zip(names, values) if isinstance(v, bool) or not isinstance(v, (int, float))]
    if missing and not strict:
        values = [float("nan") if n in missing else v for n, v in zip(names, values)]
    elif status == "taken":
        raise PointFailed(f"{where} is being computed by another process; objective {names} has no value here")
    elif status != "ok":
        raise PointFailed(f"{where} failed ({metrics.get('error', 'no metrics')}); objective {names} has no value")
    elif missing:
        raise PointFailed(f"objective: {where} has no {', '.join(missing)} in its metrics.json (it has "
                          f"{', '.join(k for k, v in metrics.items() if isinstance(v, (int, float)))}); "
                          f"an error rate needs an evaluation (eval=vosk, torch or kaldi)")
    return float(values[0]) if isinstance(objective, str) else [float(v) for v in values]


def _check_objective(objective) -> None:
    if objective is None or isinstance(objective, str):
        return
    if not isinstance(objective, list) or not objective or not all(isinstance(n, str) and n for n in objective):
        raise ConfigError(f"objective: expected null, a metrics.json key (cer) or a list of them ([cer, sparsity]), "
                          f"found {objective!r}")


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | list[float]:
    """Runs one point; returns ``objective_value`` of its metrics, for sweepers that optimise."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    objective = to_plain(cfg.get("objective")) if multirun else None  # a single run returns to no sweeper
    strict = str(hc.sweeper.get("_target_")) not in _LAUNCHING_SWEEPERS if multirun else False
    try:
        _check_objective(objective)
    except ConfigError as e:  # the same mistake for every point: stop the sweep
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        import_plugins(cfg.get("plugins"))  # in this process: a launcher's worker has not imported them
        settings = point_settings(cfg, Path(hydra.utils.get_original_cwd()))
        model = settings.model
        metrics = run_point(settings, Path(hc.runtime.output_dir), evaluator=lambda: evaluator_for(cfg, model),
                            tolerate_failure=multirun, summary="row" if multirun else "full")
    except KpruneError as e:
        if multirun:
            log.error("%s", e)
            return objective_value({"status": "failed", "error": str(e)}, objective, hc.runtime.output_dir,
                                   strict=strict)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return objective_value(metrics, objective, hc.runtime.output_dir, strict=strict)
