"""``python -m kprune.sensitivity``: the analysis of one model with one rule, and its outputs.

:func:`run_sensitivity` is what the Hydra task does in its run directory:
load the model, read the calibration features, measure every selected layer
at every level (:class:`~kprune.sensitivity.LayerSensitivity`), add the
decoded error rates when ``eval`` decodes, and write ``sensitivity.csv``,
``sensitivity.png`` and the TensorBoard curves.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

log = logging.getLogger(__name__)


@dataclass
class SensitivitySettings:
    model: Path
    method: Mapping[str, Any]
    calib: Mapping[str, Any]
    levels: Any
    layers: Any = "all"
    exclude: Any = ()
    max_seconds: float | None = None
    device: str = "auto"
    signal: str = "kl"


def measure_curves(loaded, method, calib, layers, levels, device: torch.device, max_seconds: float | None,
                   also: Callable[[], Mapping[str, Any]] | None = None, progress=None):
    """``{layer: {level: metrics}}`` on the calibration data (its first ``max_seconds``), pruning one layer at a time."""
    from kprune.sensitivity import LayerSensitivity, sensitivity_analysis
    from kprune.session import calibration_features

    from kprune.device import single_cpu_thread

    features = calibration_features(calib, loaded, device)
    if max_seconds is not None:
        features = features.limited(max_seconds)
    start = time.perf_counter()
    try:
        with single_cpu_thread(device):  # many small ops: a second thread costs more than it gives on 2 cores
            analysis = LayerSensitivity(loaded.model, method, features, dense=loaded.snapshot, device=device,
                                        model_path=loaded.model.path, layers=layers)
            table = sensitivity_analysis(layers, levels,
                                         lambda layer, level: analysis.measure(layer, level, also), progress)
    finally:
        loaded.model.restore(loaded.snapshot)
    log.info("%d layers x %d levels measured on %.0f s of %s in %.1f s", len(layers), len(levels),
             features.seconds, calib.data or calib.feats, time.perf_counter() - start)
    return table


def run_sensitivity(settings: SensitivitySettings, run_dir: Path, evaluator=None) -> dict:
    """Measures, writes ``sensitivity.csv``, ``sensitivity.png`` and TensorBoard scalars into ``run_dir``."""
    from kprune.features.pipeline import CalibrationData
    from kprune.pruning.config import MethodConfig
    from kprune.report.tensorboard import log_sensitivity
    from kprune.sensitivity import check_levels
    from kprune.sensitivity.report import CSV, PLOT, plot_heatmap, write_csv
    from kprune.device import resolve_device
    from kprune.session import load_model_once

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    loaded = load_model_once(settings.model)
    method = MethodConfig.from_config(dict(settings.method))
    layers = loaded.model.select(settings.layers, settings.exclude)
    levels = check_levels(settings.levels)
    also = None
    if evaluator is not None:
        work = Path(tempfile.mkdtemp(prefix="kprune-sensitivity-"))

        def also() -> dict[str, Any]:  # a decoder reads files: the pruned model is written, then decoded
            path = work / settings.model.name
            loaded.model.save(path)
            metrics = evaluator.evaluate(path, work / "eval")
            return {k: metrics[k] for k in ("cer", "wer") if k in metrics}

    def progress(layer: str, level: float, m: Mapping[str, Any]) -> None:
        log.info("%-24s %.2f  kl %.5f  agreement %6.2f %%  snr %6.2f dB%s", layer, level, m["kl"],
                 m["argmax_agreement"], m["snr_db"], f"  CER {m['cer']:.2f}" if "cer" in m else "")

    try:
        table = measure_curves(loaded, method, CalibrationData.from_config(settings.calib), layers, levels,
                               resolve_device(settings.device), settings.max_seconds, also, progress)
    finally:
        if evaluator is not None:
            shutil.rmtree(work, ignore_errors=True)
    write_csv(table, run_dir / CSV)
    plot_heatmap(table, run_dir / PLOT, settings.signal)
    log_sensitivity(run_dir, table)
    return table
