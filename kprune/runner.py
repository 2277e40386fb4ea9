"""One pruning run (a sweep point): prune, export, evaluate, record.

:func:`run_point` is what ``python -m kprune`` does for each run or sweep
point, in the run directory Hydra gives it:

1. load the model (parsed once per process and restored between points);
2. select layers, compute the masks on the chosen device, take statistics;
3. zero the pruned weights and write the pruned model under the input's file
   name, the masks and ``sparsity.json``;
4. evaluate (``eval=vosk|kaldi``) and write ``metrics.json``;
5. log everything to TensorBoard.

A point whose outputs are complete for the same settings is skipped, so a
sweep can be run again to finish it.  A point that fails writes ``error.json``
and a ``metrics.json`` with ``"status": "failed"``; a sweep goes on.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from kprune.errors import ConfigError
from kprune.rundir import (ALLOCATION, ERROR, EVENTS, MASKS, METRICS, POINT, SPARSITY, PointLock, archive_previous,
                           check_run_dir, ensure_writable_dir, remove_stale_temporaries)
from kprune.fileio import write_atomically, write_json_atomically as write_json
from kprune.pruning.calibration import needs_calibration, prune_model
from kprune.pruning.config import MethodConfig, RepairConfig, recipe_label
from kprune.pruning.masks import SparsityStats, sparsity_stats
from kprune.pruning.result import PruneResult
from kprune.pruning.rules import get_method, method_names, validate_threshold
from kprune.device import resolve_device
from kprune.session import LoadedModel, calibration_features, load_model_once, model_identity

log = logging.getLogger(__name__)


# -- one point ----------------------------------------------------------------

# Evaluation settings that change how a point is computed, not its result.
_OPERATIONAL_EVAL_KEYS = frozenset({"jobs", "nj", "timeout", "progress", "isolate", "cache_dir", "keep_lattices",
                                    "allow_pipes"})


@dataclass
class PointSettings:
    """What a run computes from; equal settings give equal outputs."""

    model: Path
    method: str
    threshold: float
    layers: Any
    exclude: Any
    device: str = "auto"
    group: str = "default"
    save_masks: bool = True
    histograms: bool = True
    eval: Mapping[str, Any] | None = None
    #: The method's knobs (``method.*`` besides ``name``: pattern, sequential and the rule's own, e.g. dampening).
    method_options: Mapping[str, Any] | None = None
    repair: Any = ()
    repair_options: Mapping[str, Any] | None = None
    #: ``calib.*``: where the calibration audio comes from (used by calibrated rules and repairs).
    calib: Mapping[str, Any] | None = None
    #: ``allocation=``: uniform (the threshold per layer) or sensitivity (the threshold as the network's sparsity).
    allocation: Any = None

    @property
    def evaluates(self) -> bool:
        return bool(self.eval) and self.eval.get("name", "none") != "none"

    def method_config(self) -> MethodConfig:
        return MethodConfig.from_config({**dict(self.method_options or {}), "name": self.method})

    def repair_config(self) -> RepairConfig:
        return RepairConfig.from_config(self.repair, self.repair_options)

    def allocation_config(self):
        from kprune.sensitivity.allocation import AllocationConfig

        return AllocationConfig.from_config(self.allocation)

    def calibration(self):
        """The calibration data settings, or None when this point needs none."""
        if not needs_calibration(self.method_config(), self.repair_config()) \
                and self.allocation_config().name == "uniform":
            return None
        from kprune.features.pipeline import CalibrationData

        return CalibrationData.from_config(self.calib)

    def fingerprint(self, identity: Mapping[str, Any]) -> dict[str, Any]:
        """The settings that decide a point's outputs (not how fast or how verbosely they are made)."""
        method = self.method_config()
        evaluation = ({k: v for k, v in self.eval.items() if k not in _OPERATIONAL_EVAL_KEYS}
                      if self.evaluates else {})
        out = {"model": dict(identity), "method": method.name, "threshold": float(self.threshold),
               "layers": self.layers, "exclude": self.exclude, "eval": evaluation,
               "method_options": method.describe(), "repair": self.repair_config().describe()}
        calib = self.calibration()
        if calib is not None:
            out["method_options"]["sequential"] = method.sequential
            out["calib"] = calib.describe()
        allocation = self.allocation_config()
        if allocation.name != "uniform":  # absent for uniform: earlier points stay complete
            out["allocation"] = allocation.describe()
        return out


def prune(loaded: LoadedModel, method: str | MethodConfig, threshold: float, layers: Any = "all", exclude: Any = (),
          device: torch.device | str = "cpu", *, repair: RepairConfig | None = None,
          features: Any = None, layer_thresholds: Mapping[str, float] | None = None) -> tuple[PruneResult, SparsityStats]:
    """Prunes the selected layers of ``loaded.model`` in place; returns what changed and the statistics.

    ``method`` is a rule name or a :class:`MethodConfig`; calibrated rules and
    ``repair`` need ``features`` (a :class:`~kprune.features.pipeline.FeatureSet`
    or a function returning one).  Masks are computed on ``device`` and
    returned on the CPU.  Statistics cover the network's prunable layers (the
    ``all`` layers plus the selected), counted against the unpruned weights.
    """
    model = loaded.model
    config = method if isinstance(method, MethodConfig) else MethodConfig.from_config(method)
    selected = model.select(layers, exclude)
    chosen = set(selected)
    network = [n for n in model.layers if model.layers[n].prunable_by_default or n in chosen]
    result = prune_model(model, selected, config, threshold, repair, features, device=torch.device(device),
                         model_path=model.path, dense=loaded.snapshot, layer_thresholds=layer_thresholds)
    stats = sparsity_stats({n: loaded.snapshot.weights[n] for n in network}, result.masks,
                           types={n: model.layers[n].type for n in network},
                           baseline={n: loaded.baseline[n] for n in network})
    return result, stats


def run_point(settings: PointSettings, run_dir: Path, *, evaluator: Callable[[], Any] | None = None,
              tolerate_failure: bool = False, summary: str = "full", wait: bool | None = None) -> dict[str, Any]:
    """Prunes, exports, evaluates and records one point in ``run_dir``; returns its metrics.

    ``evaluator`` is called, only when the point is not already complete, to get
    the evaluator (or None).  With ``tolerate_failure`` (a multirun), an error is
    recorded and returned as a failed point; otherwise it is recorded and
    re-raised.  ``summary`` is ``"full"`` (the row and the per-layer table),
    ``"row"`` or ``"none"``.

    Another process working on the same directory holds its lock: with ``wait``
    (default: not ``tolerate_failure``, i.e. a single run) this one waits for it,
    otherwise (a sweep) it skips the point and returns ``{"status": "taken"}``.
    """
    run_dir = Path(run_dir)
    check_run_dir(settings.model, run_dir)  # before anything is written there
    ensure_writable_dir(run_dir)
    with PointLock(run_dir, wait=not tolerate_failure if wait is None else wait) as lock:
        if not lock.acquired:
            log.warning("%s: taken by another process (%s); skipped", run_dir, lock.holder or "unknown pid")
            return {"status": "taken", "group": settings.group, "method": settings.method,
                    "threshold": settings.threshold, "layers": _layers_text(settings.layers)}
        return _run_locked(settings, run_dir, evaluator, tolerate_failure, summary)


def _run_locked(settings: PointSettings, run_dir: Path, evaluator: Callable[[], Any] | None,
                tolerate_failure: bool, summary: str) -> dict[str, Any]:
    started = time.perf_counter()
    metrics: dict[str, Any] = {"status": "failed", "group": settings.group, "method": settings.method,
                               "threshold": settings.threshold, "layers": _layers_text(settings.layers)}
    stage, sparsity_doc, loaded, masks = "prune", None, None, None
    try:
        method = get_method(settings.method)
        threshold = validate_threshold(method, settings.threshold)
        metrics["method"] = method.name
        fingerprint = settings.fingerprint(model_identity(settings.model))
        done = completed_metrics(run_dir, fingerprint, save_masks=settings.save_masks)
        if done is not None:
            log.info("%s: complete for these settings, skipped", run_dir)
            _print_summary(summary, done, None)
            return done
        archive_previous(run_dir, settings.model.name)  # before any write: a failure below loses nothing
        remove_stale_temporaries(run_dir, settings.model.name)
        (run_dir / METRICS).unlink(missing_ok=True)  # written last: until then the point is not complete
        write_json(run_dir / POINT, fingerprint)
        loaded = load_model_once(settings.model)
        device = resolve_device(settings.device)
        method_config, repair = settings.method_config(), settings.repair_config()
        metrics["recipe"] = recipe_label(method_config, repair)
        if settings.allocation_config().name != "uniform":  # tables tell a per-layer allocation from a uniform one
            metrics["recipe"] += f" alloc={settings.allocation_config().name}"
        calib = settings.calibration()
        if calib is not None and settings.evaluates:
            check_scored_audio(settings.eval, calib)
        features = (lambda: calibration_features(calib, loaded, device)) if calib is not None else None
        allocation = _allocate(settings, loaded, method_config, threshold, calib, device, run_dir)
        result, stats = prune(loaded, method_config, threshold, settings.layers, settings.exclude, device,
                              repair=repair, features=features,
                              layer_thresholds=allocation.fractions if allocation is not None else None)
        masks = result.masks
        sparsity_doc = stats.to_dict(method=method.name, threshold=threshold, layers=metrics["layers"])
        sparsity_doc["device"] = str(device)
        sparsity_doc["method_options"] = method_config.describe()
        sparsity_doc["repair"] = repair.describe()
        if calib is not None:
            sparsity_doc["changes"] = result.changes()
            metrics.update({k: v for k, v in result.timings.items()})
        metrics.update(sparsity=stats.sparsity, sparsity_selected=stats.sparsity_selected,
                       removed_energy=stats.removed_energy, removed_energy_selected=stats.removed_energy_selected,
                       pruned=stats.pruned, weights=stats.weights)

        stage = "export"
        pruned_path = run_dir / settings.model.name
        loaded.model.save(pruned_path)
        if settings.save_masks:
            _save_masks(masks, run_dir / MASKS)
        write_json(run_dir / SPARSITY, sparsity_doc)
        metrics["prune_seconds"] = time.perf_counter() - started

        if settings.evaluates and evaluator is not None:
            stage = "eval"
            backend = evaluator()
            if backend is not None:
                metrics.update(backend.evaluate(pruned_path, run_dir))
        metrics["status"] = "ok"
        metrics["seconds"] = time.perf_counter() - started
        (run_dir / ERROR).unlink(missing_ok=True)
        _log_tensorboard(settings, run_dir, metrics, sparsity_doc, loaded, masks)
        write_json(run_dir / METRICS, metrics)  # the completion mark: written last
        _print_summary(summary, metrics, sparsity_doc)
        return metrics
    except Exception as e:  # recorded in run_dir; a multirun goes on
        archive_previous(run_dir, settings.model.name)
        _record_failure(run_dir, metrics, stage, e)
        _log_tensorboard(settings, run_dir, metrics, sparsity_doc, None, None)
        write_json(run_dir / METRICS, metrics)
        _print_summary(summary, metrics, None)
        if not tolerate_failure:
            raise
        log.error("%s failed at %s: %s", run_dir, stage, metrics["error"])
        return metrics
    finally:
        if loaded is not None:
            loaded.model.restore(loaded.snapshot)


def _allocate(settings: PointSettings, loaded: LoadedModel, method: MethodConfig, threshold: float, calib,
              device: torch.device, run_dir: Path):
    """With ``allocation=sensitivity``: the per-layer fractions, written to ``allocation.json``; else None."""
    config = settings.allocation_config()
    if config.name == "uniform":
        return None
    from kprune.sensitivity.allocation import allocate_for_point

    if method.pattern is not None or not get_method(method.name).fraction:
        raise ConfigError(f"allocation={config.name}: needs a fraction rule without an N:M pattern "
                          f"({', '.join(method_names(fraction=True))})")
    selected = loaded.model.select(settings.layers, settings.exclude)
    allocation = allocate_for_point(loaded, method, calib, selected, threshold, config, device)
    write_json(run_dir / ALLOCATION, {"allocation": config.describe(), **allocation.to_dict()})
    return allocation


def check_scored_audio(evaluation: Mapping[str, Any], calib) -> None:
    """Refuses a point that would score on its own calibration audio (``eval.data`` sharing a recording
    with ``calib.data``, compared by the digest of the samples)."""
    if not evaluation.get("data") or calib.data is None:
        return
    from kprune.evaluate.base import absolute_path

    scored = absolute_path(evaluation["data"])
    _check_disjoint(str(scored), _mtime(scored / "wav.scp"), str(calib.data), _mtime(calib.data / "wav.scp"),
                    bool(evaluation.get("allow_pipes", True)))


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


@functools.lru_cache(maxsize=8)
def _check_disjoint(scored: str, scored_mtime, calib: str, calib_mtime, allow_pipes: bool) -> None:
    """Once per process and pair of data directories (as they are now): the audio check of a sweep."""
    from kprune.data.datadir import check_no_shared_audio, read_data_dir

    check_no_shared_audio(read_data_dir(Path(scored), transcripts=False, key="eval.data"),
                          read_data_dir(Path(calib), transcripts=False, key="calib.data"), allow_pipes=allow_pipes)


def completed_metrics(run_dir: Path, fingerprint: Mapping[str, Any], *,
                      save_masks: bool = False) -> dict[str, Any] | None:
    """The metrics of a finished point with the same settings, or None.

    A point is finished when ``metrics.json`` (written last) says ``ok`` and its
    model, masks and TensorBoard record exist.  A point evaluated earlier also
    satisfies a request without evaluation.
    """
    try:
        metrics = json.loads((run_dir / METRICS).read_text())
        point = json.loads((run_dir / POINT).read_text())
    except (OSError, ValueError):
        return None
    wanted = json.loads(json.dumps(fingerprint))
    if not isinstance(point, dict) or not isinstance(metrics, dict):
        return None
    if not wanted["eval"]:
        point = {**point, "eval": {}}
    if metrics.get("status") != "ok" or point != wanted:
        return None
    if not (run_dir / Path(fingerprint["model"]["model"]).name).is_file():
        return None
    if save_masks and not (run_dir / MASKS).is_file():
        return None
    if not any(run_dir.glob(EVENTS)):
        return None
    return metrics


def _record_failure(run_dir: Path, metrics: dict[str, Any], stage: str, e: BaseException) -> None:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    metrics["status"] = "failed"
    metrics["error"] = message
    write_json(run_dir / ERROR, {"error": message, "type": type(e).__name__, "stage": stage})


def _save_masks(masks: Mapping[str, torch.Tensor], path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(dict(masks), buffer)
    write_atomically(path, buffer.getbuffer())


def _log_tensorboard(settings: PointSettings, run_dir: Path, metrics: Mapping[str, Any],
                     sparsity_doc: Mapping[str, Any] | None, loaded: LoadedModel | None,
                     masks: Mapping[str, torch.Tensor] | None) -> None:
    """Writes the run's TensorBoard record; call it while the model holds the pruned weights."""
    from kprune.report.tensorboard import log_run

    before = after = None
    if settings.histograms and loaded is not None and masks:
        before = {n: loaded.snapshot.weights[n] for n in masks}
        after = {n: loaded.model.layers[n].weight for n in masks}
    try:
        log_run(run_dir, method=str(metrics.get("method")), threshold=float(settings.threshold),
                layers=metrics.get("layers", ""), sparsity=sparsity_doc, metrics=metrics,
                weights_before=before, weights_after=after, histograms=settings.histograms)
    except Exception as e:  # TensorBoard must never cost a result
        log.warning("TensorBoard logging failed in %s: %s", run_dir, e)


def _layers_text(layers: Any) -> str:
    if isinstance(layers, str):
        return layers
    return ",".join(map(str, layers))


# -- the printed summary ------------------------------------------------------

def _print_summary(mode: str, metrics: Mapping[str, Any], sparsity_doc: Mapping[str, Any] | None) -> None:
    if mode != "none":
        print(format_summary(metrics, sparsity_doc if mode == "full" else None), flush=True)


def format_summary(metrics: Mapping[str, Any], sparsity_doc: Mapping[str, Any] | None, max_layers: int = 40) -> str:
    """The original experiments' row (pruned layer, method, threshold, sparse rate, error rates),
    then the selected layers' rates when ``sparsity_doc`` is given; fits on one screen."""
    head = ["pruned layer", "method", "threshold", "sparse rate %", "selected %", "removed energy %"]
    row = [str(metrics.get("layers")), str(metrics.get("method")), f"{metrics.get('threshold')}",
           _pct(metrics.get("sparsity")), _pct(metrics.get("sparsity_selected")), _pct(metrics.get("removed_energy"))]
    for key in ("wer", "cer"):
        if metrics.get(key) is not None:
            level = (metrics.get("bootstrap") or {}).get("level", 0.95)
            head.append(f"{key.upper()} % [{level:.0%} CI] (change [CI])" if metrics.get(f"{key}_ci")
                        else f"{key.upper()} %")
            row.append(_pct(metrics[key]) + _interval(metrics.get(f"{key}_ci"))
                       + _change(metrics.get(f"{key}_delta_abs"), metrics.get(f"{key}_delta_ci")))
    if metrics.get("cer_to_dense") is not None:
        head.append("CER to dense %")
        row.append(_pct(metrics["cer_to_dense"]) + _interval(metrics.get("cer_to_dense_ci")))
    if metrics.get("status") == "failed":
        head.append("status")
        row.append(f"FAILED: {metrics.get('error', '')}"[:100])
    lines = _columns([head, row])
    if sparsity_doc:
        per = [(n, s) for n, s in sparsity_doc["per_layer"].items() if s["selected"]]
        lines.append("")
        table = [["layer", "type", "weights", "pruned", "sparsity %", "removed energy %"]]
        for name, s in per[:max_layers]:
            table.append([name, str(s["type"]).removesuffix("Component"), f"{s['weights']:,}", f"{s['pruned']:,}",
                          _pct(s["sparsity"]), _pct(s["removed_energy"])])
        lines += _columns(table)
        if len(per) > max_layers:
            lines.append(f"... and {len(per) - max_layers} more layers (sparsity.json)")
    return "\n".join(lines)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _interval(bounds: Any, signed: bool = False) -> str:
    """`` [9.66, 15.34]`` (empty without an interval)."""
    if not bounds:
        return ""
    low, high = bounds
    return f" [{low:+.2f}, {high:+.2f}]" if signed else f" [{low:.2f}, {high:.2f}]"


def _change(delta: Any, bounds: Any) -> str:
    """`` (+0.57 [-1.70, +2.84])``: the change from the baseline and its paired interval."""
    if delta is None:
        return ""
    return f" ({delta:+.2f}{_interval(bounds, signed=True)})"


def _columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows)))]
    return ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
