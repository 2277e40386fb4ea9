"""TensorBoard records of a run: the only module of kprune that touches TensorBoard.

:func:`log_run` is called once per run (one per sweep point) and writes one event
file directly into the run directory, so ``tensorboard --logdir outputs`` shows
every run and every sweep point as its own TensorBoard run.

What a run holds (every rate is a percentage, 0..100; every value at step 0):

* scalars
    - ``threshold``
    - ``sparsity/total`` (the sparse rate: zeros over all prunable weights of the
      network), ``sparsity/selected`` (over the selected layers) and
      ``sparsity/<layer>`` for every layer in ``sparsity.json``'s ``per_layer``;
    - ``removed_energy/total`` and ``removed_energy/<layer>``;
    - once evaluated: ``eval/wer``, ``eval/cer``, ``eval/wer_delta_abs``,
      ``eval/wer_delta_rel``, ``eval/cer_delta_abs``, ``eval/cer_delta_rel``,
      ``eval/baseline_wer``, ``eval/baseline_cer``; with ``eval=torch`` (or
      ``eval.signals``) also ``eval/kl``, ``eval/argmax_agreement`` and
      ``eval/snr_db``; the rates against the dense model's decode
      (``eval/cer_to_dense``, ``eval/wer_to_dense``), the probability that the
      pruned model is better (``eval/cer_p_improvement``), and every bootstrap
      interval ``<key>_ci`` of ``metrics.json`` as ``eval/<key>_ci_low`` and
      ``eval/<key>_ci_high`` (``eval/cer_ci_low``, ``eval/cer_delta_ci_high``,
      ``eval/baseline_cer_ci_low``);
    - every numeric ``*_seconds`` key of ``metrics.json`` as ``time/<key>``.
* histograms, per layer (optional, see ``histograms=``)
    - ``weights_before/<layer>``: every weight before pruning;
    - ``weights_after/<layer>``: every weight after pruning, the pruned ones as the
      spike at exactly 0 (its counts add up to the layer's size);
    - ``weights_kept/<layer>``: the nonzero weights after pruning, where the shape
      of what survived is visible without the spike (absent when nothing is left).
* hparams: ``method``, ``threshold``, ``layers`` and ``group``, with the metrics
  in :data:`HPARAM_METRICS`.

Why step 0 and not the threshold as the step: each run is its own directory and a
step is an integer, so a sweep is compared in the HParams tab (table, parallel
coordinates and the scatter plot of any metric against ``threshold``), and
``tools/summarize`` draws the sweep curves.

Why the hparams are written by hand: ``SummaryWriter.add_hparams`` puts them in a
new timestamped subdirectory, which shows up as a second run.  Here the three
summaries of ``torch.utils.tensorboard.summary.hparams`` go into the run's own
event file.  The HParams tab takes its columns from the experiment summary of an
arbitrary run (``backend_context._find_experiment_tag``), so every run declares
the same hparams and the same metric keys, evaluated or not.  A metric that was
not measured is not written: the plugin shows an empty cell for it (writing NaN
would show "NaN" and break sorting).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from kprune.errors import ConfigError
from kprune.device import single_cpu_thread

logger = logging.getLogger(__name__)

#: Metrics declared in the hparams experiment of every run, in this order.  They
#: are scalar tags: the HParams tab shows the last value of each in the run.
HPARAM_METRICS: tuple[str, ...] = (
    "sparsity/total",
    "sparsity/selected",
    "removed_energy/total",
    "eval/wer",
    "eval/cer",
    "eval/wer_delta_abs",
    "eval/wer_delta_rel",
    "eval/cer_delta_abs",
    "eval/cer_delta_rel",
    "eval/kl",
    "eval/argmax_agreement",
    "eval/snr_db",
    "eval/cer_ci_low",
    "eval/cer_ci_high",
    "eval/cer_delta_ci_low",
    "eval/cer_delta_ci_high",
    "eval/cer_p_improvement",
    "eval/cer_to_dense",
    "eval/cer_to_dense_ci_low",
    "eval/cer_to_dense_ci_high",
)

#: metrics.json key -> scalar tag, for the evaluation results.
EVAL_SCALARS: dict[str, str] = {
    "wer": "eval/wer",
    "cer": "eval/cer",
    "wer_delta_abs": "eval/wer_delta_abs",
    "wer_delta_rel": "eval/wer_delta_rel",
    "cer_delta_abs": "eval/cer_delta_abs",
    "cer_delta_rel": "eval/cer_delta_rel",
    # the decode against the dense model's own (no transcripts needed), and P(pruned better than dense)
    "wer_to_dense": "eval/wer_to_dense",
    "cer_to_dense": "eval/cer_to_dense",
    "wer_p_improvement": "eval/wer_p_improvement",
    "cer_p_improvement": "eval/cer_p_improvement",
    # eval=torch and eval.signals: the pruned network's outputs against the dense one's.
    "kl": "eval/kl",
    "argmax_agreement": "eval/argmax_agreement",
    "snr_db": "eval/snr_db",
}

#: Number of equal-width histogram bins between a layer's min and max weight.
#: TensorBoard re-bins for display (to 30 by default), so more buys nothing.
DEFAULT_BINS = 64

_EVENT_PREFIX = "events.out.tfevents."


def log_run(
    run_dir: str | os.PathLike,
    *,
    method: str,
    threshold: float,
    layers: str | Sequence[str],
    sparsity: Mapping[str, Any] | None,
    metrics: Mapping[str, Any] | None = None,
    weights_before: Mapping[str, torch.Tensor] | None = None,
    weights_after: Mapping[str, torch.Tensor] | None = None,
    histograms: bool = True,
    bins: int = DEFAULT_BINS,
) -> Path:
    """Write the TensorBoard record of one run into ``run_dir`` and return its path.

    Args:
        run_dir: the run directory; the event file goes directly into it.
        method, threshold, layers: the run's hparams (``layers`` as given by the
            user, e.g. ``"all"`` or ``"tdnnf*.linear"``; a list is joined by commas).
        sparsity: the ``sparsity.json`` structure, or None when pruning failed.
        metrics: the ``metrics.json`` structure (its ``group``, evaluation results,
            ``status`` and ``*_seconds`` keys are used), or None.
        weights_before, weights_after: layer name -> weight tensor (any device),
            before and after pruning, for the histograms.  Either may be None.
        histograms: False skips the histograms, the only part whose cost grows
            with the model: ~0.1-0.2 s for 3.4 M weights in 40 layers on two
            cores, against ~10 ms for the rest.
        bins: histogram bins per layer (at least 1).

    A record written earlier into the same directory (an interrupted or repeated
    run) is replaced, so a rerun does not show up twice.  The new event file
    appears in ``run_dir`` complete or not at all.
    """
    from torch.utils.tensorboard import SummaryWriter

    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"histogram bins must be a whole number >= 1, got {bins!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = dict(metrics or {})
    old_files = sorted(run_dir.glob(_EVENT_PREFIX + "*"))
    started = time.perf_counter()

    # Written outside the log directory, so that a TensorBoard watching it never
    # sees a half-written file or a temporary directory as a run of its own.
    tmp_dir = Path(tempfile.mkdtemp(prefix="kprune-tensorboard-"))
    try:
        writer = SummaryWriter(log_dir=str(tmp_dir))
        try:
            _write_scalars(writer, threshold, sparsity, metrics)
            if histograms:
                with single_cpu_thread():
                    _write_histograms(writer, "weights_before", weights_before, bins)
                    _write_histograms(writer, "weights_after", weights_after, bins)
                    _write_histograms(writer, "weights_kept", weights_after, bins, nonzero=True)
            _write_hparams(writer, method, threshold, layers, metrics)
        finally:
            writer.close()
        target = _install_event_file(tmp_dir, run_dir, old_files)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    logger.debug("TensorBoard record %s written in %.3f s", target, time.perf_counter() - started)
    return target


def hparam_values(
    method: str, threshold: float, layers: str | Sequence[str], group: str | None
) -> dict[str, str | float]:
    """The hparams of a run, always the same four keys with the same types."""
    if not isinstance(layers, str):
        layers = ",".join(str(layer) for layer in layers)
    return {
        "method": str(method),
        "threshold": float(threshold),
        "layers": layers,
        "group": str(group) if group else "run",
    }


def _write_scalars(
    writer: Any, threshold: float, sparsity: Mapping[str, Any] | None, metrics: Mapping[str, Any]
) -> None:
    writer.add_scalar("threshold", float(threshold), 0)
    if sparsity is not None:
        writer.add_scalar("sparsity/total", float(sparsity["sparsity"]), 0)
        writer.add_scalar("sparsity/selected", float(sparsity["sparsity_selected"]), 0)
        writer.add_scalar("removed_energy/total", float(sparsity["removed_energy"]), 0)
        for name, stats in sparsity.get("per_layer", {}).items():
            tag = _layer_tag(name)
            writer.add_scalar(f"sparsity/{tag}", float(stats["sparsity"]), 0)
            writer.add_scalar(f"removed_energy/{tag}", float(stats["removed_energy"]), 0)

    for key, tag in EVAL_SCALARS.items():
        if _is_number(metrics.get(key)):
            writer.add_scalar(tag, float(metrics[key]), 0)
    _write_intervals(writer, "eval/", metrics)
    baseline = metrics.get("baseline")
    if isinstance(baseline, Mapping):
        for key in ("wer", "cer"):
            if _is_number(baseline.get(key)):
                writer.add_scalar(f"eval/baseline_{key}", float(baseline[key]), 0)
        _write_intervals(writer, "eval/baseline_", baseline)
    for key, value in metrics.items():
        if key.endswith("_seconds") and _is_number(value):
            writer.add_scalar(f"time/{key}", float(value), 0)


def _write_intervals(writer: Any, prefix: str, metrics: Mapping[str, Any]) -> None:
    """Each bootstrap interval ``<key>_ci: [low, high]`` as the scalars ``<key>_ci_low`` and ``<key>_ci_high``."""
    for key, value in metrics.items():
        if key.endswith("_ci") and isinstance(value, (list, tuple)) and len(value) == 2 \
                and all(_is_number(v) for v in value):
            writer.add_scalar(f"{prefix}{key}_low", float(value[0]), 0)
            writer.add_scalar(f"{prefix}{key}_high", float(value[1]), 0)


def _layer_tag(name: str) -> str:
    # A Kaldi component may be called anything; these two would land on the
    # network-wide series.
    if name in ("total", "selected"):
        logger.warning("layer %r is logged as %r to keep it apart from the totals", name, name + "_layer")
        return name + "_layer"
    return name


def _write_histograms(
    writer: Any,
    prefix: str,
    weights: Mapping[str, torch.Tensor] | None,
    bins: int,
    *,
    nonzero: bool = False,
) -> None:
    if not weights:
        return
    for name, weight in weights.items():
        values = weight.detach().reshape(-1)
        if values.dtype not in (torch.float32, torch.float64):
            values = values.float()
        if nonzero:
            values = values[values != 0]
        histogram = histogram_of(values, bins)
        if histogram is None:
            continue
        writer.add_histogram_raw(f"{prefix}/{name}", global_step=0, **histogram)


def histogram_of(values: torch.Tensor, bins: int = DEFAULT_BINS) -> dict[str, Any] | None:
    """TensorBoard histogram fields of a 1-D float tensor, or None when it is empty.

    Equal-width bins from min to max computed with ``torch.histc``: about 10x
    faster than ``SummaryWriter.add_histogram``, whose exponential bins go
    through ``numpy.histogram`` in float64.  Non-finite values are left out.
    """
    if values.numel() == 0:
        return None
    low, high = (float(v) for v in torch.aminmax(values))
    if not (math.isfinite(low) and math.isfinite(high)):
        values = values[torch.isfinite(values)]
        if values.numel() == 0:
            return None
        low, high = (float(v) for v in torch.aminmax(values))
    if low == high:
        # One value (e.g. a layer pruned to all zeros): one bucket around it.
        edges = [low - 0.5, high + 0.5] if low == 0 else [low - abs(low) / 2, high + abs(high) / 2]
        counts = [0.0, float(values.numel())]
    else:
        counts = [0.0] + torch.histc(values, bins=bins, min=low, max=high).tolist()
        step = (high - low) / bins
        # TensorBoard stores right edges only; the leading empty bucket carries
        # the left edge (the same trick as torch's make_histogram).
        edges = [low] + [low + step * i for i in range(1, bins)] + [high]
    return {
        "min": low,
        "max": high,
        "num": int(values.numel()),
        "sum": float(values.sum(dtype=torch.float64)),
        "sum_squares": float(torch.dot(values, values)),
        "bucket_limits": edges,
        "bucket_counts": counts,
    }


def _write_hparams(
    writer: Any,
    method: str,
    threshold: float,
    layers: str | Sequence[str],
    metrics: Mapping[str, Any],
) -> None:
    from torch.utils.tensorboard.summary import hparams

    values = hparam_values(method, threshold, layers, metrics.get("group"))
    # Only the keys of the metric dict are used (they declare the columns); the
    # values come from the scalars written under the same tags.
    experiment, start, end = hparams(values, {tag: 0.0 for tag in HPARAM_METRICS})
    if metrics.get("status") == "failed":
        end = _failed_session_end()
    for summary in (experiment, start, end):
        writer.file_writer.add_summary(summary, 0)


def _failed_session_end() -> Any:
    """The session-end summary of torch's ``hparams`` with the status FAILURE.

    (tensorboard's own ``session_end_pb`` would import TensorFlow.)
    """
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    content = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_FAILURE),
        version=metadata.PLUGIN_DATA_VERSION,
    )
    return Summary(
        value=[
            Summary.Value(
                tag=metadata.SESSION_END_INFO_TAG,
                metadata=metadata.create_summary_metadata(content),
            )
        ]
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- a whole sweep

#: Directory of a sweep's summary runs, inside the sweep directory (one run per group).
SWEEP_RUN_DIR = "_sweep"

#: Point keys drawn as curves against the sparse rate in a summary run.
SWEEP_SERIES: tuple[str, ...] = ("cer", "wer", "cer_delta_rel", "wer_delta_rel", "cer_delta_abs", "wer_delta_abs",
                                 "cer_ci_low", "cer_ci_high", "cer_delta_ci_low", "cer_delta_ci_high",
                                 "cer_to_dense", "cer_to_dense_ci_low", "cer_to_dense_ci_high", "wer_to_dense",
                                 "kl", "argmax_agreement", "snr_db", "removed_energy", "threshold")


def sparsity_step(sparsity: float) -> int:
    """The step of a point in a summary run: its sparse rate in whole percent (the fraction x 100)."""
    return int(round(float(sparsity)))


def log_sweep(
    run_dir: str | os.PathLike,
    series: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    baseline: Mapping[str, float] | None = None,
    images: Mapping[str, bytes] | None = None,
) -> Path:
    """Write a sweep's summary run into ``run_dir`` (replacing an earlier one) and return the event file.

    ``series`` maps a label (a method and layer selection; "" when the group has
    one) to its points, each a mapping with ``sparsity`` (%) and any keys of
    :data:`SWEEP_SERIES`.  Each key becomes the scalar ``sweep/<key>``
    (``sweep/<key>/<label>`` with a label) at step :func:`sparsity_step`, so
    TensorBoard draws error against sparse rate as a curve.  ``baseline``
    (``{"cer": ...}``) is drawn flat as ``sweep/baseline_<key>`` over the same
    steps; ``images`` (name -> PNG bytes, e.g. ``tools/summarize``'s figures)
    become images ``figures/<name>``.  The run has no hparams, so the HParams
    tab keeps one row per point.
    """
    from torch.utils.tensorboard import SummaryWriter

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    old_files = sorted(run_dir.glob(_EVENT_PREFIX + "*"))
    tmp_dir = Path(tempfile.mkdtemp(prefix="kprune-tensorboard-"))
    try:
        writer = SummaryWriter(log_dir=str(tmp_dir))
        try:
            steps: set[int] = set()
            for label, points in series.items():
                suffix = f"/{label}" if label else ""
                for point in sorted(points, key=lambda p: float(p["sparsity"])):
                    step = sparsity_step(point["sparsity"])
                    steps.add(step)
                    for key in SWEEP_SERIES:
                        if _is_number(point.get(key)):
                            writer.add_scalar(f"sweep/{key}{suffix}", float(point[key]), step)
            for key, value in (baseline or {}).items():
                if _is_number(value):
                    for step in sorted(steps):
                        writer.add_scalar(f"sweep/baseline_{key}", float(value), step)
            for name, png in (images or {}).items():
                writer.add_image(f"figures/{name}", _decode_png(png), 0, dataformats="HWC")
        finally:
            writer.close()
        target = _install_event_file(tmp_dir, run_dir, old_files)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


def _install_event_file(tmp_dir: Path, run_dir: Path, old_files: Sequence[Path]) -> Path:
    """Moves the one event file written in ``tmp_dir`` into ``run_dir``, then removes ``old_files``.

    The system temp dir may be another file system: the file is copied under a
    name TensorBoard ignores (no "tfevents" in it), then renamed into place.
    """
    (written,) = tmp_dir.glob(_EVENT_PREFIX + "*")
    target = run_dir / written.name
    partial = run_dir / f".{os.getpid()}.events.partial"
    try:
        shutil.copyfile(written, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    for old in old_files:
        if old != target:
            old.unlink(missing_ok=True)
    return target


def _decode_png(png: bytes) -> Any:
    """PNG bytes as an HWC uint8 array (matplotlib reads them; it drew them)."""
    import io

    import numpy as np
    from matplotlib.image import imread

    pixels = imread(io.BytesIO(png), format="png")  # float32 in [0, 1]
    return (np.asarray(pixels)[..., :3] * 255).round().astype(np.uint8)


def log_sensitivity(run_dir: Path, table: Mapping[str, Mapping[float, Mapping[str, Any]]],
                    signals: Sequence[str] = ("kl", "argmax_agreement", "snr_db", "cer")) -> None:
    """A sensitivity analysis: ``<signal>/<layer>`` against the level in % (the step), one curve per layer."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir))
    try:
        with single_cpu_thread():
            for layer, levels in table.items():
                for level, metrics in sorted(levels.items()):
                    for key in signals:
                        if _is_number(metrics.get(key)):
                            writer.add_scalar(f"{key}/{_layer_tag(layer)}", float(metrics[key]),
                                              int(round(100 * level)))
    finally:
        writer.close()
