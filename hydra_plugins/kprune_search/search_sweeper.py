"""``hydra/sweeper=kprune_search``: the largest threshold within an error budget (:mod:`kprune.search`).

    kprune -m hydra/sweeper=kprune_search method=global_pct eval=vosk group=ko_search
    kprune -m hydra/sweeper=kprune_search hydra.sweeper.max_abs_increase=0.5 ...

The sweeper chooses the thresholds; every point is an ordinary sweep point,
launched by the configured launcher (``hydra/launcher=joblib`` runs
``points_per_round`` points at once) into the sweep directory, where a grid
sweep would put it.  The result is printed and written to
``<sweep dir>/search.json``.  Running the same command again reads the points
already there and evaluates only what is missing.
"""

# No "from __future__ import annotations": Hydra loads plugin modules outside sys.modules, where
# dataclasses cannot resolve string annotations.

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class KpruneSearchConf:
    _target_: str = "hydra_plugins.kprune_search.search_sweeper.KpruneSearchSweeper"
    # The error metric of metrics.json (with its baseline): cer or wer.
    metric: str = "cer"
    # Allowed rise over the unpruned model: a fraction of it (0.05: 5 % relative) ...
    max_rel_increase: Optional[float] = 0.05
    # ... or, when given, points of the metric (0.5: +0.5 % absolute); it then replaces max_rel_increase.
    max_abs_increase: Optional[float] = None
    # The threshold range; upper null: 1.0 for the fraction rules (pct, global_pct), required for others.
    lower: float = 0.0
    upper: Optional[float] = None
    # Grid step of the thresholds tried; the answer is within one step of the boundary.
    resolution: float = 0.01
    # Points evaluated per round (1: bisection; set it to the launcher's parallel jobs).
    points_per_round: int = 1


ConfigStore.instance().store(group="hydra/sweeper", name="kprune_search", node=KpruneSearchConf,
                             provider="kprune")


class KpruneSearchSweeper(Sweeper):
    def __init__(self, metric: str = "cer", max_rel_increase: Optional[float] = 0.05,
                 max_abs_increase: Optional[float] = None, lower: float = 0.0, upper: Optional[float] = None,
                 resolution: float = 0.01, points_per_round: int = 1) -> None:
        self.budget_settings = (metric, max_rel_increase, max_abs_increase)  # checked in sweep(): one line
        self.budget = None
        self.lower, self.upper, self.resolution = lower, upper, resolution
        self.points_per_round = points_per_round
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher = None
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from kprune.errors import KpruneError

        try:
            return self._search(arguments)
        except (KpruneError, ValueError) as e:  # a user's mistake: one line, as kprune's own errors
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    def _search(self, arguments: List[str]) -> Any:
        from kprune.fileio import write_json_atomically
        from kprune.search import SEARCH, Budget, reusable_points, search_threshold

        self.budget = Budget(*self.budget_settings)

        assert self.config is not None and self.hydra_context is not None and self.launcher is not None
        fixed = self._fixed_overrides(arguments)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        settings = self._settings(fixed)
        upper = self._upper(settings)
        from kprune.session import model_identity

        known = reusable_points(sweep_dir, settings.fingerprint(model_identity(settings.model)), self.budget)
        if known:
            log.info("search: %d complete points of these settings found in %s", len(known), sweep_dir)

        succeeded = bool(known)

        def evaluate(thresholds: list[float]):
            nonlocal succeeded
            batch = [[*fixed, f"threshold={t!r}"] for t in thresholds]
            returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
            self.job_idx += len(batch)
            points = [self._point(t, r) for t, r in zip(thresholds, returns)]
            if not succeeded and all(p.source == "failed" for p in points):
                # Nothing has worked yet: a setting is wrong, not the model too pruned. Stop, do not bisect to 0.
                raise ValueError(f"the first points of the search failed: {points[0].error} "
                                 f"({points[0].run_dir}/error.json)")
            succeeded = True
            return points

        result = search_threshold(evaluate, self.budget, lower=self.lower, upper=upper,
                                  resolution=self.resolution, points_per_round=self.points_per_round, known=known)
        write_json_atomically(sweep_dir / SEARCH, result.to_dict())
        print(result.format(), flush=True)
        print(f"written to {sweep_dir / SEARCH}", flush=True)
        return result

    # ------------------------------------------------------------------ helpers

    def _fixed_overrides(self, arguments: List[str]) -> list[str]:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        fixed = []
        for override in parser.parse_overrides(arguments):
            key = override.get_key_element()
            if override.is_sweep_override():
                raise ValueError(f"{key}: the search runs one setting and chooses the threshold itself; "
                                 "sweep the other settings with separate runs")
            if key.lstrip("+~") == "threshold":
                raise ValueError("threshold: the search chooses it (set hydra.sweeper.lower/upper for its range)")
            fixed.append(override.input_line)
        return fixed

    def _settings(self, fixed: list[str]):
        from kprune.app import point_settings
        from kprune.plugins import import_plugins

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, [*fixed, "threshold=0"])
        import_plugins(cfg.get("plugins"))
        if cfg.eval.get("name", "none") == "none":
            raise ValueError("the search needs an evaluation: eval=vosk, eval=torch or eval=kaldi")
        return point_settings(cfg, Path.cwd())  # the sweeper runs where kprune was started

    def _upper(self, settings) -> float:
        from kprune.pruning.rules import get_method

        if self.upper is not None:
            return float(self.upper)
        if get_method(settings.method).fraction:
            return 1.0
        raise ValueError(f"method {settings.method}: its threshold has no natural upper end; "
                         "set hydra.sweeper.upper (python -m kprune.info shows the weights' scale)")

    def _point(self, threshold: float, ret):
        import json

        from kprune.search import point_from_metrics

        run_dir = None
        try:
            run_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
        except Exception:  # a launcher that returns no Hydra config: the job's working directory
            run_dir = Path(ret.working_dir) if ret.working_dir else None
        metrics = None
        if run_dir is not None:
            try:
                metrics = json.loads((run_dir / "metrics.json").read_text())
            except (OSError, ValueError):
                metrics = None
        if ret.status == JobStatus.FAILED and metrics is None:
            metrics = {"status": "failed", "error": repr(ret._return_value)}
        return point_from_metrics(threshold, metrics, self.budget, "evaluated", str(run_dir))
