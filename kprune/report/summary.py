"""Tables and plots of finished runs and sweeps (what ``tools/summarize`` writes).

Reading results, formatting tables and drawing plots are separate functions; the
command line in ``tools/summarize`` only parses its arguments and calls
:func:`summarize`.

A *run directory* is one that holds ``metrics.json`` or ``error.json`` (see the
run directory layout in docs/runs.md).  Run directories are found recursively
under each directory given, so a sweep (``outputs/sweeps/<group>``), a
single run, or the whole ``outputs/`` tree can be passed.  Hidden directories
(``.hydra``) and the inside of run directories are not searched.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kprune.errors import ConfigError, KpruneError, ResultsError
from kprune.evaluate.bootstrap import UtteranceCounts, counts_from_json
from kprune.fileio import write_atomically as write_atomic

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
ERROR_FILE = "error.json"

TSV_FILE = "summary.tsv"
MARKDOWN_FILE = "summary.md"
SPARSITY_PLOT = "sparsity_vs_threshold.png"
ERROR_PLOT = "error_vs_sparsity.png"
TO_DENSE_PLOT = "to_dense_vs_sparsity.png"
PER_LAYER_PLOT = "per_layer.png"

#: Output signals of eval=torch (:mod:`kprune.nnet.signals`): key -> column header.
SIGNALS = {
    "kl": "output KL (nats/frame)",
    "argmax_agreement": "argmax agreement (%)",
    "snr_db": "output SNR (dB)",
}


#: Attribute names that read as None on a run that did not measure them (older code and tests use them).
_MEASURE_NAME = re.compile(r"(baseline_)?(wer|cer)(_to_dense)?"
                           r"(_delta_abs|_delta_rel|_ci_low|_ci_high|_delta_ci_low|_delta_ci_high|_p_improvement)?")


@dataclass(frozen=True)
class RunResult:
    """One run or sweep point, as read from its directory.  Rates are percentages.

    ``measures`` holds every number of ``metrics.json`` by its key, an
    interval ``[low, high]`` as ``<key>_low`` and ``<key>_high``
    (``cer_ci_low``), and the baseline's as ``baseline_<key>``
    (``baseline_cer``).  ``rates`` names the error rates among them (``wer``,
    ``cer``, ``cer_to_dense``): those the baseline has, or that come with a
    report line or an interval.  Measures also read as attributes
    (``run.cer``, ``run.baseline_cer``, ``run.kl``; None when not measured).
    ``per_utt`` and ``baseline_per_utt`` are the per-utterance counts, from
    which paired comparisons are drawn.
    """

    run_dir: Path
    group: str
    method: str
    threshold: float | None
    layers: str
    status: str
    sparsity: float | None = None
    sparsity_selected: float | None = None
    removed_energy: float | None = None
    removed_energy_selected: float | None = None
    measures: Mapping[str, float] = field(default_factory=dict)
    rates: tuple[str, ...] = ()
    per_utt: Mapping[str, UtteranceCounts] = field(default_factory=dict)
    baseline_per_utt: Mapping[str, UtteranceCounts] = field(default_factory=dict)
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def value(self, key: str) -> float | None:
        """A measure by its ``metrics.json`` key, None when not measured."""
        return self.measures.get(key)

    def interval(self, key: str) -> tuple[float, float] | None:
        """The interval ``<key>_ci`` (``cer``, ``cer_delta``), None when not drawn."""
        low, high = self.measures.get(f"{key}_ci_low"), self.measures.get(f"{key}_ci_high")
        return None if low is None or high is None else (low, high)

    def __getattr__(self, name: str) -> Any:
        measures = self.__dict__.get("measures", {})
        if name in measures:
            return measures[name]
        if name in SIGNALS or _MEASURE_NAME.fullmatch(name):
            return None
        raise AttributeError(f"{type(self).__name__} has no attribute or measure {name!r}")


def rate_label(rate: str) -> str:
    """How tables and plots name an error rate: ``CER``, ``CER to dense``."""
    base, _, rest = rate.partition("_")
    return base.upper() + (" " + rest.replace("_", " ") if rest else "")


@dataclass
class Summary:
    """What :func:`summarize` read and wrote."""

    runs: list[RunResult]
    out_dir: Path
    written: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- reading


def find_run_dirs(sweep_dir: str | os.PathLike) -> list[Path]:
    """Every run directory at or under ``sweep_dir``, sorted by path."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ConfigError(f"sweep directory {root} does not exist or is not a directory")
    found = []
    for current, dirs, files in os.walk(root):
        if METRICS_FILE in files or ERROR_FILE in files:
            found.append(Path(current))
            dirs.clear()  # a run directory holds no further runs
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def load_run(run_dir: str | os.PathLike, sweep_dir: str | os.PathLike | None = None) -> RunResult:
    """Read one run directory's ``metrics.json`` and, for a failed point, ``error.json``.

    ``sweep_dir`` is the directory the run was found under; it names the group
    when ``metrics.json`` has none.
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / METRICS_FILE
    error_path = run_dir / ERROR_FILE
    metrics = _read_json(metrics_path) if metrics_path.exists() else None
    error_info = _read_json(error_path) if error_path.exists() else None

    if metrics is None:
        # The point failed before it could write metrics.json: take what the
        # Hydra config says about it.
        metrics = {"status": "failed", **_config_of(run_dir)}
        source = error_path
    else:
        source = metrics_path
        for key in ("method", "threshold"):
            if key not in metrics:
                raise ResultsError(f"{metrics_path}: expected key {key!r}, found keys {sorted(metrics)}")

    status = str(metrics.get("status", "ok"))
    error = None
    if status == "failed":
        error = _error_text(error_info) if error_info is not None else "failed (no error.json)"
    baseline = metrics.get("baseline") if isinstance(metrics.get("baseline"), dict) else {}
    lenient = status == "failed"
    measures = _measures(metrics, source, lenient)
    measures.update({f"baseline_{k}": v for k, v in _measures(baseline, source, lenient, "baseline.").items()})
    if isinstance(metrics.get("bootstrap"), dict) and _is_number(metrics["bootstrap"].get("level")):
        measures["bootstrap_level"] = metrics["bootstrap"]["level"]
    rates = [k for k in baseline if k in measures] + \
        [k for k in metrics if k in measures and (f"{k}_report" in metrics or f"{k}_ci" in metrics)]

    return RunResult(
        run_dir=run_dir,
        group=str(metrics.get("group") or _default_group(run_dir, sweep_dir)),
        method=str(metrics.get("recipe") or metrics.get("method", "?")),  # "sparsegpt 2:4 +refit" for calibrated runs
        threshold=_number(metrics.get("threshold"), "threshold", source, lenient),
        layers=_layers_text(metrics.get("layers", "all")),
        status=status,
        sparsity=_number(metrics.get("sparsity"), "sparsity", source, lenient),
        sparsity_selected=_number(metrics.get("sparsity_selected"), "sparsity_selected", source, lenient),
        removed_energy=_number(metrics.get("removed_energy"), "removed_energy", source, lenient),
        removed_energy_selected=_number(metrics.get("removed_energy_selected"), "removed_energy_selected", source,
                                        lenient),
        measures=measures,
        rates=tuple(dict.fromkeys(rates)),
        per_utt=counts_from_json(metrics.get("per_utt"), f"{source}: per_utt") if not lenient else {},
        baseline_per_utt=counts_from_json(baseline.get("per_utt"), f"{source}: baseline") if not lenient else {},
        error=error,
    )


#: metrics.json keys that are settings or bookkeeping, not measures.
_NOT_MEASURES = frozenset({"threshold", "status", "group", "method", "layers", "recipe", "error"})


def _measures(doc: Mapping[str, Any], path: Path, lenient: bool, prefix: str = "") -> dict[str, float]:
    """Every number of ``doc`` by key, and every interval ``[low, high]`` as ``<key>_low``/``<key>_high``."""
    out: dict[str, float] = {}
    for key, value in doc.items():
        if key in _NOT_MEASURES:
            continue
        if key.endswith("_ci") and isinstance(value, list):
            if len(value) != 2 or not all(_is_number(v) for v in value):
                if lenient:
                    continue
                raise ResultsError(f"{path}: expected [low, high] for {prefix}{key!r}, found {value!r}")
            out[f"{key}_low"], out[f"{key}_high"] = float(value[0]), float(value[1])
        elif _is_number(value):
            out[key] = value
        elif value is not None and (key in SIGNALS or _MEASURE_NAME.fullmatch(key)) and not lenient:
            raise ResultsError(f"{path}: expected a number for {prefix + key!r}, found {value!r}")
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def collect_runs(sweep_dirs: Sequence[str | os.PathLike]) -> list[RunResult]:
    """Every run under the given directories, each once, in table order."""
    seen: set[Path] = set()
    runs = []
    for sweep_dir in sweep_dirs:
        for run_dir in find_run_dirs(sweep_dir):
            key = run_dir.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(load_run(run_dir, sweep_dir))
    if not runs:
        names = ", ".join(str(d) for d in sweep_dirs)
        raise ConfigError(f"no runs found under {names}: expected directories holding {METRICS_FILE} or {ERROR_FILE}")
    return sorted(runs, key=_sort_key)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path}: cannot read JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _config_of(run_dir: Path) -> dict[str, Any]:
    """method, threshold, layers and group from the run's ``.hydra/config.yaml``, if any."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        return {}
    import yaml  # comes with hydra-core (omegaconf)

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ResultsError(f"{path}: cannot read YAML: {exc}") from None
    found = {}
    for key in ("method", "threshold", "layers", "group"):
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, dict):  # a config group such as method: {name: pct, ...}
            value = value.get("name")
        if value is not None:
            found[key] = value
    return found


def _error_text(error_info: dict[str, Any]) -> str:
    parts = [str(error_info[key]) for key in ("stage", "type") if error_info.get(key)]
    parts.append(str(error_info.get("error", "unknown error")))
    return " ".join(": ".join(parts).split())  # one line


def _number(value: Any, key: str, path: Path, lenient: bool = False) -> float | None:
    """``value`` as a number; a failed point may hold what the user typed (``threshold=abc``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if lenient:
            return None
        raise ResultsError(f"{path}: expected a number for {key!r}, found {value!r}")
    return value


def _layers_text(layers: Any) -> str:
    if isinstance(layers, (list, tuple)):
        return ",".join(str(layer) for layer in layers)
    return str(layers)


def _default_group(run_dir: Path, sweep_dir: str | os.PathLike | None) -> str:
    """The name of the nearest Hydra sweep directory above the run, else of ``sweep_dir``."""
    root = Path(sweep_dir).resolve() if sweep_dir is not None else None
    for parent in [run_dir.resolve(), *run_dir.resolve().parents]:
        if (parent / "multirun.yaml").exists():
            return parent.name
        if parent == root:
            break
    return root.name if root is not None else run_dir.name


def _natural_key(text: str) -> list[Any]:
    # tdnnf2 before tdnnf10
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text)]


def _sort_key(run: RunResult) -> tuple[Any, ...]:
    threshold = math.inf if run.threshold is None else run.threshold
    return (run.group, run.method, _natural_key(run.layers), threshold, str(run.run_dir))


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Column:
    """A table column: its header and how a run's cell is written."""

    header: str
    cell: Callable[[RunResult], str]


def format_threshold(threshold: float | None) -> str:
    """The threshold as it was given: the shortest text that reads back the same number."""
    if threshold is None:
        return ""
    return repr(threshold) if isinstance(threshold, float) else str(threshold)


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _delta(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def _bounds(bounds: tuple[float, float] | None, signed: bool = False) -> str:
    if bounds is None:
        return ""
    return f"[{bounds[0]:+.2f}, {bounds[1]:+.2f}]" if signed else f"[{bounds[0]:.2f}, {bounds[1]:.2f}]"


def _rates_of(runs: Sequence[RunResult]) -> list[str]:
    """The error rates measured by any run, in the order the runs list them."""
    return list(dict.fromkeys(rate for run in runs for rate in run.rates))


def _signal(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def table_columns(runs: Sequence[RunResult]) -> list[Column]:
    """The columns of the table: the original experiments' ones, then what was measured.

    Error-rate columns appear only when some run has them, the error column only
    when some run failed.
    """
    columns = [
        Column("group", lambda r: r.group),
        Column("pruned layer", lambda r: r.layers),
        Column("pruning method", lambda r: r.method),
        Column("pruning threshold", lambda r: format_threshold(r.threshold)),
        Column("sparse rate (%)", lambda r: _rate(r.sparsity)),
        Column("selected sparse rate (%)", lambda r: _rate(r.sparsity_selected)),
        Column("removed energy (%)", lambda r: _rate(r.removed_energy)),
    ]
    level = next((r.measures.get("bootstrap_level") for r in runs if r.measures.get("bootstrap_level")), 0.95)
    for rate in _rates_of(runs):
        name = rate_label(rate)
        optional = [
            (rate, Column(f"{name} (%)", lambda r, m=rate: _rate(r.value(m)))),
            (f"{rate}_ci_low", Column(f"{name} {level:.0%} CI", lambda r, m=rate: _bounds(r.interval(m)))),
            (f"{rate}_delta_abs",
             Column(f"{name} change (abs)", lambda r, m=rate: _delta(r.value(f"{m}_delta_abs")))),
            (f"{rate}_delta_ci_low", Column(f"{name} change {level:.0%} CI",
                                            lambda r, m=rate: _bounds(r.interval(f"{m}_delta"), signed=True))),
            (f"{rate}_delta_rel",
             Column(f"{name} change (rel %)", lambda r, m=rate: _delta(r.value(f"{m}_delta_rel")))),
        ]
        columns += [column for key, column in optional if any(r.value(key) is not None for r in runs)]
    for key, header in SIGNALS.items():
        if any(getattr(r, key) is not None for r in runs):
            columns.append(Column(header, lambda r, k=key: _signal(getattr(r, k))))
    if any(run.failed for run in runs):
        columns.append(Column("error", lambda r: r.error or ""))
    return columns


def table_rows(runs: Sequence[RunResult]) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the table, as text cells."""
    columns = table_columns(runs)
    return [c.header for c in columns], [[c.cell(run) for c in columns] for run in runs]


def format_tsv(runs: Sequence[RunResult]) -> str:
    """The table as tab-separated values with a header line."""
    header, rows = table_rows(runs)
    clean = lambda cell: " ".join(cell.split())  # noqa: E731 -- no tab or newline inside a cell
    return "".join("\t".join(clean(c) for c in row) + "\n" for row in [header, *rows])


def format_markdown(runs: Sequence[RunResult]) -> str:
    """The table in Markdown, followed by the dense baselines the deltas refer to."""
    header, rows = table_rows(runs)
    numeric = [h.endswith(")") or h == "pruning threshold" for h in header]

    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(" ".join(c.split()).replace("|", "\\|") for c in cells) + " |"

    out = [line(header), "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    out += [line(row) for row in rows]

    baselines: dict[tuple[float | None, float | None], set[str]] = defaultdict(set)
    for run in runs:
        if run.baseline_wer is not None or run.baseline_cer is not None:
            baselines[(run.baseline_wer, run.baseline_cer)].add(run.group)
    if baselines:
        out.append("")
        for (wer, cer), groups in sorted(baselines.items(), key=lambda item: sorted(item[1])):
            with_ci = next((r for r in runs if (r.baseline_wer, r.baseline_cer) == (wer, cer)), None)
            rates = ", ".join(f"{name} {value:.2f} %{_baseline_interval(with_ci, name.lower())}"
                              for name, value in (("WER", wer), ("CER", cer)) if value is not None)
            out.append(f"Unpruned baseline ({', '.join(sorted(groups))}): {rates}.")
    ranking = signal_ranking(runs)
    if ranking:
        measure, count = ranking[0][1], ranking[0][3]
        parts = ", ".join(f"{SIGNALS[key].split(' (')[0]} {rho:+.2f}" for key, _, rho, _ in ranking)
        out.append("")
        out.append(f"How the output signals rank the points by {measure.upper()} (Spearman's rho over {count} "
                   f"points; +1 or -1 is a perfect ranking): {parts}.")
    return "\n".join(out) + "\n"


def _baseline_interval(run: RunResult | None, rate: str) -> str:
    """`` [7.49, 17.58] over 8 utterances`` when the baseline's interval was drawn."""
    bounds = run.interval(f"baseline_{rate}") if run is not None else None
    if bounds is None:
        return ""
    counts = run.baseline_per_utt.get(rate)
    size = f" over {len(counts.utts)} utterances, {int(counts.ref_len.sum())} reference tokens" if counts else ""
    return f" {_bounds(bounds)}{size}"


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of ``x`` and ``y``, ties given their average rank.

    NaN when either side is constant (no ranking to compare).
    """
    if len(x) != len(y):
        raise ValueError(f"expected two sequences of the same length, found {len(x)} and {len(y)}")

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2.0
            i = j + 1
        return out

    rx, ry = ranks(x), ranks(y)
    n = len(rx)
    if n < 2:
        return float("nan")
    mx, my = sum(rx) / n, sum(ry) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else float("nan")


def signal_ranking(runs: Sequence[RunResult]) -> list[tuple[str, str, float, int]]:
    """``(signal, measure, rho, points)`` for each output signal, against the error rate.

    Over the completed runs that have both the signal and the error rate (CER
    when some run has it, else WER); signals with fewer than 3 such runs, or no
    spread, are left out.
    """
    measure = error_measure(runs)
    if measure is None:
        return []
    out = []
    for key in SIGNALS:
        pairs = [(getattr(r, key), getattr(r, measure)) for r in runs
                 if not r.failed and getattr(r, key) is not None and getattr(r, measure) is not None]
        if len(pairs) >= 3:
            rho = spearman_rho([a for a, _ in pairs], [b for _, b in pairs])
            if not math.isnan(rho):
                out.append((key, measure, rho, len(pairs)))
    return out


# --------------------------------------------------------------------------- series


@dataclass
class Series:
    """Runs that differ in one setting only: the threshold, or the layer."""

    label: str
    runs: list[RunResult]


def threshold_sweeps(runs: Sequence[RunResult]) -> list[Series]:
    """One series per (group, method, layers), threshold ascending.

    Points that belong to a per-layer sweep (see :func:`layer_sweeps`) are left
    out, and so are failed ones and ones without a threshold.
    """
    in_layer_sweeps = {id(run) for series in layer_sweeps(runs) for run in series.runs}
    by_key: dict[tuple[str, str, str], list[RunResult]] = defaultdict(list)
    for run in runs:
        if id(run) not in in_layer_sweeps and not run.failed and run.threshold is not None:
            by_key[(run.group, run.method, run.layers)].append(run)
    groups = {key[0] for key in by_key}
    series = []
    for (group, method, layers), members in sorted(by_key.items()):
        label = method if layers == "all" else f"{method} [{layers}]"
        if len(groups) > 1:
            label = f"{label} ({group})"
        series.append(Series(label, sorted(members, key=lambda r: r.threshold)))
    return series


def layer_sweeps(runs: Sequence[RunResult]) -> list[Series]:
    """One series per (group, method, threshold) tried on several layer selections.

    A selection that is itself swept over thresholds in the same group (e.g.
    ``all``) is not part of a per-layer sweep.
    """
    thresholds_of: dict[tuple[str, str, str], set[float | None]] = defaultdict(set)
    for run in runs:
        thresholds_of[(run.group, run.method, run.layers)].add(run.threshold)
    by_key: dict[tuple[str, str, float | None], list[RunResult]] = defaultdict(list)
    for run in runs:
        if len(thresholds_of[(run.group, run.method, run.layers)]) == 1:
            by_key[(run.group, run.method, run.threshold)].append(run)
    series = []
    for (group, method, threshold), members in sorted(by_key.items(), key=lambda item: _sort_key(item[1][0])):
        if len({run.layers for run in members}) < 2:
            continue
        members = sorted(members, key=_network_order(members))
        series.append(Series(f"{group}: {method} at {format_threshold(threshold)}, one layer at a time", members))
    return series


def _network_order(runs: Sequence[RunResult]) -> Callable[[RunResult], tuple[Any, ...]]:
    """Sort key putting layers in the order of the model file, as listed in a run's
    ``sparsity.json``; selections it does not list (patterns) go last, by name."""
    order: dict[str, int] = {}
    for run in runs:
        try:
            per_layer = json.loads((run.run_dir / "sparsity.json").read_text(encoding="utf-8"))["per_layer"]
            order = {name: index for index, name in enumerate(per_layer)}
            break
        except (OSError, ValueError, KeyError, TypeError):
            continue  # only an ordering nicety: the table does not depend on it
    return lambda run: (order.get(run.layers, len(order)), _natural_key(run.layers))


def error_measure(runs: Sequence[RunResult]) -> str | None:
    """``"cer"`` when some run has a CER, else ``"wer"`` when some has a WER, else None."""
    for measure in ("cer", "wer"):
        if any(getattr(run, measure) is not None for run in runs):
            return measure
    return None


# --------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise KpruneError("the plots need matplotlib: pip install matplotlib (or pass --no-plots)") from None
    # A bare Figure renders with Agg and leaves pyplot's global backend alone.
    return Figure(figsize=(width, height), layout="constrained")


def plot_sparsity_vs_threshold(runs: Sequence[RunResult]) -> Any | None:
    """Sparse rate against threshold, one line per method; None when nothing to draw."""
    series = [s for s in threshold_sweeps(runs) if any(r.sparsity is not None for r in s.runs)]
    if not series:
        return None
    figure = _figure(7, 4.5)
    ax = figure.add_subplot()
    for s in series:
        points = [(r.threshold, r.sparsity) for r in s.runs if r.sparsity is not None]
        ax.plot(*zip(*points), marker="o", label=s.label)
    ax.set_xlabel("pruning threshold")
    ax.set_ylabel("sparse rate over the network (%)")
    ax.set_title("Sparse rate against threshold")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return figure


def plot_error_vs_sparsity(runs: Sequence[RunResult]) -> Any | None:
    """CER (else WER) against sparse rate, one line per method, with the unpruned baseline;
    each point's bootstrap interval as an error bar, the baseline's as a band."""
    measure = error_measure(runs)
    if measure is None:
        return None
    return _rate_vs_sparsity(runs, measure, f"{measure.upper()} against sparse rate", baseline=True)


def plot_to_dense_vs_sparsity(runs: Sequence[RunResult]) -> Any | None:
    """CER (else WER) against the dense model's own decode, against sparse rate, with intervals."""
    for measure in ("cer_to_dense", "wer_to_dense"):
        if any(r.value(measure) is not None for r in runs):
            return _rate_vs_sparsity(runs, measure, f"{rate_label(measure)} (no transcripts needed) against "
                                     "sparse rate", baseline=False)
    return None


def _rate_vs_sparsity(runs: Sequence[RunResult], measure: str, title: str, baseline: bool) -> Any | None:
    series = []
    for s in threshold_sweeps(runs):
        points = sorted((r.sparsity, r.value(measure), r.interval(measure)) for r in s.runs
                        if r.sparsity is not None and r.value(measure) is not None)
        if points:
            series.append((s.label, points))
    if not series:
        return None
    figure = _figure(7, 4.5)
    ax = figure.add_subplot()
    for label, points in series:
        x, y, bounds = zip(*points)
        if any(b is not None for b in bounds):
            err = [[v - b[0] if b else 0.0 for v, b in zip(y, bounds)],
                   [b[1] - v if b else 0.0 for v, b in zip(y, bounds)]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
        else:
            ax.plot(x, y, marker="o", label=label)
    if baseline:
        for value in sorted({r.value(f"baseline_{measure}") for r in runs} - {None}):
            ax.axhline(value, color="black", linestyle="--", linewidth=1,
                       label=f"unpruned baseline ({value:.2f} %)")
            band = next((r.interval(f"baseline_{measure}") for r in runs
                         if r.value(f"baseline_{measure}") == value and r.interval(f"baseline_{measure}")), None)
            if band is not None:
                ax.axhspan(*band, color="black", alpha=0.08, label="baseline's interval")
    ax.set_xlabel("sparse rate over the network (%)")
    ax.set_ylabel(f"{rate_label(measure)} (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return figure


def plot_per_layer(runs: Sequence[RunResult]) -> Any | None:
    """For each per-layer sweep: the error rate per layer (when evaluated), then the
    layer's own sparse rate and the removed energy, as bars.  For the points with
    ``allocation.json`` (``allocation=sensitivity``): the fraction chosen for each
    layer, one line per target, one panel per group and method."""
    sweeps = layer_sweeps(runs)
    allocated = allocations(runs)
    if not sweeps and not allocated:
        return None
    panels = []
    for s in sweeps:
        measure = error_measure(s.runs)
        if measure is not None:
            panels.append((s, measure))
        panels.append((s, None))
    widest = max([len(s.runs) for s in sweeps] + [len(next(iter(a.values()))) for a in allocated.values()])
    figure = _figure(max(7.0, 0.32 * widest + 2), 3.4 * (len(panels) + len(allocated)))
    axes = figure.subplots(len(panels) + len(allocated), 1, squeeze=False)[:, 0]
    for ax, ((group, method), points) in zip(axes[len(panels):], allocated.items()):
        names = list(next(iter(points.values())))
        for target, fractions in sorted(points.items()):
            ax.plot(range(len(names)), [100 * fractions.get(n, float("nan")) for n in names], marker="o",
                    label=f"network {100 * target:g} %")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize="small")
        ax.set_ylabel("layer's fraction pruned (%)")
        ax.set_title(f"{group}: {method}, allocation=sensitivity: per-layer fractions (allocation.json)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    for ax, (s, measure) in zip(axes, panels):
        names = [r.layers for r in s.runs]
        positions = range(len(names))
        if measure is not None:
            values = [getattr(r, measure) for r in s.runs]
            ax.bar(positions, [v if v is not None else 0 for v in values], color="tab:red")
            for x, (run, value) in enumerate(zip(s.runs, values)):
                if value is None:
                    ax.text(x, 0, "failed" if run.failed else "n/a", rotation=90, ha="center", va="bottom",
                            fontsize="x-small")
            for value in sorted({getattr(r, f"baseline_{measure}") for r in s.runs} - {None}):
                ax.axhline(value, color="black", linestyle="--", linewidth=1,
                           label=f"unpruned baseline ({value:.2f} %)")
            ax.set_ylabel(f"{measure.upper()} (%)")
            ax.set_title(f"{s.label}: {measure.upper()} when only this layer is pruned")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small")
        else:
            width = 0.4
            ax.bar([x - width / 2 for x in positions], [r.sparsity_selected or 0 for r in s.runs], width,
                   label="layer's sparse rate (%)")
            # The layer's own share of energy removed (older runs only have the network-wide one).
            ax.bar([x + width / 2 for x in positions],
                   [(r.removed_energy_selected if r.removed_energy_selected is not None else r.removed_energy) or 0
                    for r in s.runs], width, label="layer's removed energy (%)")
            ax.set_ylabel("%")
            ax.set_title(f"{s.label}: how much of each layer was pruned")
            ax.legend(fontsize="small")
        ax.set_xticks(list(positions), names, rotation=90, fontsize="small")
        ax.grid(True, axis="y", alpha=0.3)
    return figure


def allocations(runs: Sequence[RunResult]) -> dict[tuple[str, str], dict[float, dict[str, float]]]:
    """``{(group, method): {target: {layer: fraction}}}`` from the runs' ``allocation.json``."""
    out: dict[tuple[str, str], dict[float, dict[str, float]]] = {}
    for run in runs:
        try:
            doc = json.loads((run.run_dir / "allocation.json").read_text(encoding="utf-8"))
            out.setdefault((run.group, run.method), {})[float(doc["target"])] = dict(doc["fractions"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


# --------------------------------------------------------------------------- writing


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


PLOTS: dict[str, Callable[[Sequence[RunResult]], Any | None]] = {
    SPARSITY_PLOT: plot_sparsity_vs_threshold,
    ERROR_PLOT: plot_error_vs_sparsity,
    TO_DENSE_PLOT: plot_to_dense_vs_sparsity,
    PER_LAYER_PLOT: plot_per_layer,
}


def summarize(
    sweep_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    *,
    plots: bool = True,
    tensorboard: bool = False,
) -> Summary:
    """Read every run under ``sweep_dirs`` and write the tables and plots into ``out_dir``.

    ``out_dir`` defaults to the first sweep directory.  A plot with nothing to
    show (no error rates, no per-layer sweep) is not written, and one left there
    by an earlier call is removed so that it cannot be taken for a current one.
    ``tensorboard`` adds a TensorBoard summary run per group
    (:func:`write_sweep_runs`, in ``<out_dir>/_sweep/<group>/``).
    """
    if not sweep_dirs:
        raise ConfigError("no sweep directory given")
    runs = collect_runs(sweep_dirs)
    out = Path(out_dir) if out_dir is not None else Path(sweep_dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary(runs=runs, out_dir=out)

    for name, text in ((TSV_FILE, format_tsv(runs)), (MARKDOWN_FILE, format_markdown(runs))):
        write_atomic(out / name, text.encode("utf-8"))
        summary.written.append(out / name)
    if plots:
        for name, draw in PLOTS.items():
            figure = draw(runs)
            if figure is None:
                if (out / name).exists():
                    logger.info("removing %s: this summary has nothing to draw there", out / name)
                    (out / name).unlink()
                continue
            write_atomic(out / name, _png(figure))
            summary.written.append(out / name)
    if tensorboard:
        summary.written += write_sweep_runs(runs, out, images=plots)
    return summary


# --------------------------------------------------------------------------- TensorBoard


def write_sweep_runs(runs: Sequence[RunResult], out_dir: str | os.PathLike, *, images: bool = True) -> list[Path]:
    """One TensorBoard summary run per group, in ``<out_dir>/_sweep/<group>/``; returns the event files.

    Each holds the group's error rates (and deltas, signals, removed energy,
    threshold) against the sparse rate as scalar series, and, with ``images``,
    this module's figures of the group as images
    (:func:`kprune.report.tensorboard.log_sweep`).
    """
    from kprune.report.tensorboard import SWEEP_RUN_DIR, SWEEP_SERIES, log_sweep

    by_group: dict[str, list[RunResult]] = defaultdict(list)
    for run in runs:
        by_group[run.group].append(run)
    written = []
    for group, members in sorted(by_group.items()):
        sweeps = threshold_sweeps(members)
        series = {("" if len(sweeps) == 1 else s.label): [
            {"sparsity": r.sparsity, **{k: getattr(r, k, None) for k in SWEEP_SERIES}}
            for r in s.runs if r.sparsity is not None] for s in sweeps}
        baseline = {}
        for key in ("cer", "wer"):
            values = [getattr(r, f"baseline_{key}") for r in members if getattr(r, f"baseline_{key}") is not None]
            if values:
                baseline[key] = values[0]
        figures = {}
        if images:
            for name, draw in PLOTS.items():
                try:
                    figure = draw(members)
                except KpruneError as e:  # no matplotlib: the curves still go in
                    logger.warning("%s; the summary run of %s has no figures", e, group)
                    break
                if figure is not None:
                    figures[name.removesuffix(".png")] = _png(figure)
        written.append(log_sweep(Path(out_dir) / SWEEP_RUN_DIR / _safe_name(group), series, baseline=baseline,
                                 images=figures))
    return written


def _safe_name(text: str) -> str:
    return re.sub(r"[^\w.,=+\-]", "_", text) or "default"
