"""kprune.report.summary and tools/summarize, on run directories laid out as Hydra writes them."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from kprune.errors import ConfigError
from kprune.report.summary import (
    ERROR_PLOT,
    PER_LAYER_PLOT,
    SPARSITY_PLOT,
    ResultsError,
    collect_runs,
    find_run_dirs,
    format_markdown,
    format_threshold,
    format_tsv,
    layer_sweeps,
    load_run,
    signal_ranking,
    spearman_rho,
    summarize,
    table_rows,
    threshold_sweeps,
)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "summarize"
BASELINE = {"wer": 31.58, "cer": 9.87}


def _metrics(group, method, threshold, layers, sparsity, selected, energy, wer=None, cer=None,
             status="ok"):
    metrics = {"status": status, "group": group, "method": method, "threshold": threshold,
               "layers": layers, "sparsity": sparsity, "sparsity_selected": selected,
               "removed_energy": energy}
    if wer is not None:
        metrics.update({
            "wer": wer, "cer": cer, "baseline": dict(BASELINE),
            "wer_delta_abs": round(wer - BASELINE["wer"], 4),
            "wer_delta_rel": round(100 * (wer - BASELINE["wer"]) / BASELINE["wer"], 4),
            "cer_delta_abs": round(cer - BASELINE["cer"], 4),
            "cer_delta_rel": round(100 * (cer - BASELINE["cer"]) / BASELINE["cer"], 4),
            "eval_seconds": 11.2,
        })
    return metrics


def _write_run(run_dir: Path, metrics: dict | None, error: dict | None = None, config: str | None = None):
    run_dir.mkdir(parents=True)
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if error is not None:
        (run_dir / "error.json").write_text(json.dumps(error))
    hydra = run_dir / ".hydra"
    hydra.mkdir()
    (hydra / "config.yaml").write_text(config or "model: am/final.mdl\n")
    # Things a run directory also holds, which summarize must not mistake for runs.
    (run_dir / "sparsity.json").write_text("{}")
    (run_dir / "events.out.tfevents.1714560000.host.1.0").write_bytes(b"")


def _sweep(root: Path, name: str, points: list[tuple[dict | None, dict | None]]) -> Path:
    """A Hydra multirun: <root>/multirun/2024-05-01/<name>/<job>/ plus multirun.yaml."""
    sweep = root / "multirun" / "2024-05-01" / name
    for job, (metrics, error) in enumerate(points):
        _write_run(sweep / str(job), metrics, error)
    (sweep / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    return sweep


def _eval_failure(message="decode timed out after 600 s"):
    return {"error": message, "type": "EvaluationError", "stage": "eval"}


@pytest.fixture
def outputs(tmp_path) -> Path:
    """outputs/ with an abs sweep, a pct sweep (one failed point) and a per-layer sweep."""
    root = tmp_path / "outputs"
    _sweep(root, "10-00-00", [
        (_metrics("abs_sweep", "abs", 0.1, "all", 55.31, 55.31, 4.02, 35.09, 11.84), None),
        (_metrics("abs_sweep", "abs", 0.05, "all", 30.12, 30.12, 0.61, 31.58, 9.87), None),
        (_metrics("abs_sweep", "abs", 0.15, "all", 71.9, 71.9, 11.5, 64.91, 30.26), None),
    ])
    _sweep(root, "11-00-00", [
        (_metrics("pct_sweep", "pct", 0.2665, "all", 26.65, 26.65, 0.98, 33.33, 10.53), None),
        (_metrics("pct_sweep", "pct", 0.1, "all", 10.0, 10.0, 0.12, 31.58, 9.87), None),
        (_metrics("pct_sweep", "pct", 0.3993, "all", 39.93, 39.93, 2.44, None, None, status="failed"),
         _eval_failure()),
    ])
    _sweep(root, "12-00-00", [
        (_metrics("per_layer", "abs", 0.15, "tdnnf10.linear", 2.01, 80.2, 30.1, 36.84, 12.5), None),
        (_metrics("per_layer", "abs", 0.15, "affine1", 0.85, 62.4, 14.8, 33.33, 10.2), None),
        (_metrics("per_layer", "abs", 0.15, "tdnnf2.linear", 1.97, 78.7, 28.3, 45.61, 16.45), None),
    ])
    return root


EVAL_HEADER = [
    "group", "pruned layer", "pruning method", "pruning threshold", "sparse rate (%)",
    "selected sparse rate (%)", "removed energy (%)",
    "WER (%)", "WER change (abs)", "WER change (rel %)",
    "CER (%)", "CER change (abs)", "CER change (rel %)", "error",
]


def test_table_rows_are_exact_and_sorted(outputs):
    header, rows = table_rows(collect_runs([outputs]))
    assert header == EVAL_HEADER
    assert rows == [
        ["abs_sweep", "all", "abs", "0.05", "30.12", "30.12", "0.61",
         "31.58", "+0.00", "+0.00", "9.87", "+0.00", "+0.00", ""],
        ["abs_sweep", "all", "abs", "0.1", "55.31", "55.31", "4.02",
         "35.09", "+3.51", "+11.11", "11.84", "+1.97", "+19.96", ""],
        ["abs_sweep", "all", "abs", "0.15", "71.90", "71.90", "11.50",
         "64.91", "+33.33", "+105.54", "30.26", "+20.39", "+206.59", ""],
        ["pct_sweep", "all", "pct", "0.1", "10.00", "10.00", "0.12",
         "31.58", "+0.00", "+0.00", "9.87", "+0.00", "+0.00", ""],
        ["pct_sweep", "all", "pct", "0.2665", "26.65", "26.65", "0.98",
         "33.33", "+1.75", "+5.54", "10.53", "+0.66", "+6.69", ""],
        ["pct_sweep", "all", "pct", "0.3993", "39.93", "39.93", "2.44",
         "", "", "", "", "", "", "eval: EvaluationError: decode timed out after 600 s"],
        # natural order of layers: tdnnf2 before tdnnf10
        ["per_layer", "affine1", "abs", "0.15", "0.85", "62.40", "14.80",
         "33.33", "+1.75", "+5.54", "10.20", "+0.33", "+3.34", ""],
        ["per_layer", "tdnnf2.linear", "abs", "0.15", "1.97", "78.70", "28.30",
         "45.61", "+14.03", "+44.43", "16.45", "+6.58", "+66.67", ""],
        ["per_layer", "tdnnf10.linear", "abs", "0.15", "2.01", "80.20", "30.10",
         "36.84", "+5.26", "+16.66", "12.50", "+2.63", "+26.65", ""],
    ]


def test_tsv_and_markdown(outputs):
    runs = collect_runs([outputs])
    tsv = format_tsv(runs).splitlines()
    assert tsv[0].split("\t") == EVAL_HEADER
    assert tsv[2].split("\t")[:5] == ["abs_sweep", "all", "abs", "0.1", "55.31"]
    assert len(tsv) == 1 + 9

    markdown = format_markdown(runs).splitlines()
    assert markdown[0] == "| " + " | ".join(EVAL_HEADER) + " |"
    assert markdown[1].startswith("|---|---|---|---:|---:|")
    assert markdown[6] == ("| pct_sweep | all | pct | 0.2665 | 26.65 | 26.65 | 0.98 | 33.33 | +1.75 | +5.54 "
                           "| 10.53 | +0.66 | +6.69 |  |")
    assert markdown[-1] == "Unpruned baseline (abs_sweep, pct_sweep, per_layer): WER 31.58 %, CER 9.87 %."


def test_unevaluated_sweep_has_no_eval_columns(tmp_path):
    sweep = _sweep(tmp_path, "09-00-00", [
        (_metrics("neg_sweep", "neg", 0.025, "all", 8.1, 8.1, 0.05), None),
        (_metrics("neg_sweep", "neg", 0.09, "all", 31.4, 31.4, 1.9), None),
    ])
    runs = collect_runs([sweep])
    header, rows = table_rows(runs)
    assert header == EVAL_HEADER[:7]
    assert rows == [["neg_sweep", "all", "neg", "0.025", "8.10", "8.10", "0.05"],
                    ["neg_sweep", "all", "neg", "0.09", "31.40", "31.40", "1.90"]]
    assert "baseline" not in format_markdown(runs)

    # A stale error plot from an earlier summary is not left behind.
    (sweep / ERROR_PLOT).write_bytes(b"old")
    summary = summarize([sweep])
    assert [p.name for p in summary.written] == ["summary.tsv", "summary.md", SPARSITY_PLOT]
    assert not (sweep / ERROR_PLOT).exists()
    assert not (sweep / PER_LAYER_PLOT).exists()


def test_point_that_failed_before_metrics_json(tmp_path):
    run = tmp_path / "sweep" / "3"
    _write_run(run, None, {"error": "threshold 1.5 is out of range: pct takes 0 <= t <= 1",
                           "type": "ConfigError", "stage": "prune"},
               config="method: pct\nthreshold: 1.5\nlayers: all\nmodel: am/final.mdl\n")
    result = load_run(run, tmp_path / "sweep")
    assert (result.method, result.threshold, result.layers, result.status) == ("pct", 1.5, "all", "failed")
    assert result.group == "sweep"
    assert result.sparsity is None
    assert result.error == "prune: ConfigError: threshold 1.5 is out of range: pct takes 0 <= t <= 1"


def test_failed_point_without_error_json_and_multiline_error(tmp_path):
    _write_run(tmp_path / "a", _metrics("g", "abs", 0.05, "all", None, None, None, status="failed"))
    _write_run(tmp_path / "b", _metrics("g", "abs", 0.06, "all", None, None, None, status="failed"),
               {"error": "decoder crashed\n\twith\tcode 3", "type": "EvaluationError", "stage": "eval"})
    runs = collect_runs([tmp_path])
    assert [r.error for r in runs] == ["failed (no error.json)",
                                       "eval: EvaluationError: decoder crashed with code 3"]
    assert format_tsv(runs).splitlines()[2].split("\t") == [
        "g", "all", "abs", "0.06", "", "", "", "eval: EvaluationError: decoder crashed with code 3"]


def test_group_falls_back_to_the_sweep_directory(tmp_path):
    metrics = _metrics("x", "abs", 0.05, "all", 30.0, 30.0, 0.6)
    del metrics["group"]
    sweep = _sweep(tmp_path / "outputs", "13-30-00", [(metrics, None)])
    (run,) = collect_runs([tmp_path / "outputs"])
    assert run.group == "13-30-00"
    # Without a Hydra sweep directory above it, the directory that was given names it.
    (sweep / "multirun.yaml").unlink()
    (run,) = collect_runs([sweep])
    assert run.group == "13-30-00"
    (run,) = collect_runs([tmp_path / "outputs"])
    assert run.group == "outputs"


@pytest.mark.parametrize(("value", "text"), [(0.2665, "0.2665"), (0.1, "0.1"), (0.025, "0.025"),
                                             (0.3993, "0.3993"), (0, "0"), (1e-05, "1e-05"), (None, "")])
def test_format_threshold(value, text):
    assert format_threshold(value) == text


def test_outputs_holding_several_sweeps_and_overlapping_arguments(outputs):
    found = find_run_dirs(outputs)
    assert len(found) == 9
    assert all(d.parent.parent.parent.name == "multirun" for d in found)
    # A sweep given twice (itself and through outputs/) is counted once.
    runs = collect_runs([outputs / "multirun" / "2024-05-01" / "10-00-00", outputs])
    assert len(runs) == 9


def test_series_for_the_plots(outputs):
    runs = collect_runs([outputs])
    sweeps = threshold_sweeps(runs)
    assert [s.label for s in sweeps] == ["abs (abs_sweep)", "pct (pct_sweep)"]
    assert [r.threshold for r in sweeps[0].runs] == [0.05, 0.1, 0.15]
    assert [r.threshold for r in sweeps[1].runs] == [0.1, 0.2665]  # the failed point is left out
    (per_layer,) = layer_sweeps(runs)
    assert per_layer.label == "per_layer: abs at 0.15, one layer at a time"
    assert [r.layers for r in per_layer.runs] == ["affine1", "tdnnf2.linear", "tdnnf10.linear"]


def test_per_layer_sweep_beside_a_threshold_sweep_in_one_group(tmp_path):
    """A run of 'all' at the per-layer threshold stays on its threshold curve."""
    points = [(_metrics("run", "abs", t, "all", s, s, 1.0), None) for t, s in ((0.1, 50.0), (0.15, 70.0))]
    points += [(_metrics("run", "abs", 0.15, layer, 1.0, 70.0, 20.0), None) for layer in ("affine1", "lda")]
    runs = collect_runs([_sweep(tmp_path, "s", points)])
    assert [[r.threshold for r in s.runs] for s in threshold_sweeps(runs)] == [[0.1, 0.15]]
    assert [[r.layers for r in s.runs] for s in layer_sweeps(runs)] == [["affine1", "lda"]]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]
    assert data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def test_script_writes_tables_and_plots(outputs, tmp_path):
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, str(SCRIPT), str(outputs), "-o", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"9 runs (1 failed) summarized in {out}:"
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["summary.tsv", "summary.md", SPARSITY_PLOT, ERROR_PLOT, PER_LAYER_PLOT])
    runs = collect_runs([outputs])
    assert (out / "summary.tsv").read_text() == format_tsv(runs)
    assert (out / "summary.md").read_text() == format_markdown(runs)
    for name in (SPARSITY_PLOT, ERROR_PLOT, PER_LAYER_PLOT):
        width, height = _png_size(out / name)
        assert width >= 600 and height >= 400
    # per_layer.png stacks two panels (error rate, sparse rate and energy).
    assert _png_size(out / PER_LAYER_PLOT)[1] > _png_size(out / SPARSITY_PLOT)[1]


def test_script_default_output_is_the_first_sweep_dir(outputs):
    sweep = outputs / "multirun" / "2024-05-01" / "11-00-00"
    done = subprocess.run([sys.executable, str(SCRIPT), str(sweep), "--no-plots"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in sweep.iterdir() if p.is_file()) == ["multirun.yaml", "summary.md",
                                                                       "summary.tsv"]
    assert (sweep / "summary.tsv").read_text().count("\n") == 1 + 3


def _run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_script_error_for_a_directory_without_runs(tmp_path):
    (tmp_path / "empty" / ".hydra").mkdir(parents=True)
    (tmp_path / "empty" / ".hydra" / "metrics.json").write_text("{}")  # hidden: not a run
    done = _run_script(str(tmp_path / "empty"))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (f"summarize: error: no runs found under {tmp_path / 'empty'}: "
                           "expected directories holding metrics.json or error.json\n")


def test_script_error_for_a_missing_directory(tmp_path):
    done = _run_script(str(tmp_path / "nope"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == f"summarize: error: sweep directory {tmp_path / 'nope'} does not exist or is not a directory"


def test_script_error_for_unreadable_json(tmp_path):
    run = tmp_path / "sweep" / "0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"status": "ok", "method": "abs",')
    done = _run_script(str(tmp_path / "sweep"))
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"summarize: error: {run / 'metrics.json'}: cannot read JSON: ")
    assert not (tmp_path / "sweep" / "summary.tsv").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[1, 2]', "expected a JSON object, found list"),
        ('{"status": "ok", "threshold": 0.05}', "expected key 'method', found keys ['status', 'threshold']"),
        ('{"method": "abs", "threshold": "0.05"}', "expected a number for 'threshold', found '0.05'"),
        ('{"method": "abs", "threshold": 0.05, "wer": true}', "expected a number for 'wer', found True"),
    ],
)
def test_malformed_metrics_json(tmp_path, content, message):
    (tmp_path / "metrics.json").write_text(content)
    with pytest.raises(ResultsError) as caught:
        load_run(tmp_path)
    assert str(caught.value) == f"{tmp_path / 'metrics.json'}: {message}"


def test_summarize_without_directories():
    with pytest.raises(ConfigError, match="no sweep directory given"):
        summarize([])


def test_outputs_are_replaced_atomically(outputs, tmp_path):
    out = tmp_path / "report"
    summarize([outputs], out)
    first = (out / "summary.tsv").stat().st_ino
    summarize([outputs], out)
    assert (out / "summary.tsv").stat().st_ino != first  # replaced, not rewritten in place
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_per_layer_sweep_follows_the_model_order_of_sparsity_json(outputs):
    first_run = outputs / "multirun" / "2024-05-01" / "12-00-00" / "0"
    order = ["lda", "affine1", "tdnnf10.linear", "tdnnf2.linear", "output.affine"]
    (first_run / "sparsity.json").write_text(json.dumps({"per_layer": {name: {} for name in order}}))
    (per_layer,) = layer_sweeps(collect_runs([outputs]))
    assert [r.layers for r in per_layer.runs] == ["affine1", "tdnnf10.linear", "tdnnf2.linear"]


def test_the_apps_layout_sweeps_by_group_and_single_runs(tmp_path):
    """outputs/sweeps/<group>/<override_dirname>/ and outputs/runs/<time>/, as kprune/conf/config.yaml sets."""
    outputs = tmp_path / "outputs"
    for group, method, thresholds in (("abs_sweep", "abs", (0.05, 0.1)), ("pct_sweep", "pct", (0.2665,))):
        sweep = outputs / "sweeps" / group
        for t in thresholds:
            metrics = _metrics(group, method, t, "all", 100 * t, 100 * t, 1.0)
            del metrics["group"]  # named by the sweep directory instead
            _write_run(sweep / f"method={method},threshold={t}", metrics)
        (sweep / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    _write_run(outputs / "runs" / "2024-05-01_12-00-00", _metrics("default", "pct", 0.15, "affine1", 0.8, 15.0, 0.2))
    header, rows = table_rows(collect_runs([outputs]))
    assert [row[:4] for row in rows] == [
        ["abs_sweep", "all", "abs", "0.05"],
        ["abs_sweep", "all", "abs", "0.1"],
        ["default", "affine1", "pct", "0.15"],
        ["pct_sweep", "all", "pct", "0.2665"],
    ]


def test_a_failed_point_with_a_non_numeric_threshold_still_summarizes(tmp_path):
    import json

    from kprune.report.summary import collect_runs

    good = tmp_path / "sweep" / "method=abs,threshold=0.1"
    bad = tmp_path / "sweep" / "method=abs,threshold=abc"
    for d in (good, bad):
        d.mkdir(parents=True)
    (good / "metrics.json").write_text(json.dumps({"status": "ok", "group": "g", "method": "abs", "threshold": 0.1,
                                                   "layers": "all", "sparsity": 12.5, "sparsity_selected": 12.5,
                                                   "removed_energy": 1.0}))
    (bad / "metrics.json").write_text(json.dumps({"status": "failed", "group": "g", "method": "abs",
                                                  "threshold": "abc", "layers": "all"}))
    (bad / "error.json").write_text(json.dumps({"error": "threshold for method 'abs' must be a number, got 'abc'",
                                                "type": "ConfigError", "stage": "prune"}))
    runs = {r.run_dir.name: r for r in collect_runs([tmp_path / "sweep"])}
    assert runs["method=abs,threshold=abc"].threshold is None and runs["method=abs,threshold=abc"].failed
    assert runs["method=abs,threshold=0.1"].threshold == 0.1
    from kprune.report.summary import summarize

    summarize([tmp_path / "sweep"], tmp_path / "out", plots=False)
    table = (tmp_path / "out" / "summary.tsv").read_text()
    assert "threshold for method 'abs' must be a number" in table and "0.1" in table


def test_spearman_rho_known_answers():
    assert spearman_rho([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman_rho([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ranks, not values: any increasing map gives +1.
    assert spearman_rho([0.001, 0.1, 5.0, 900.0], [1, 2, 3, 4]) == pytest.approx(1.0)
    # Ties take their average rank: x ranks (0.5, 0.5, 2), y ranks (0, 1, 2).
    assert spearman_rho([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254)
    # A worked example: d = (0, -2, 1, 1, 0), rho = 1 - 6 * 6 / (5 * 24) = 0.7.
    assert spearman_rho([1, 2, 3, 4, 5], [1, 4, 2, 3, 5]) == pytest.approx(0.7)
    assert spearman_rho([1, 1, 1], [1, 2, 3]) != spearman_rho([1, 1, 1], [1, 2, 3])  # NaN: x has no ranking
    with pytest.raises(ValueError, match="same length"):
        spearman_rho([1, 2], [1, 2, 3])


def test_output_signals_become_columns_and_are_ranked_against_cer(tmp_path):
    points = []
    for t, sparsity, wer, cer, kl, agree, snr in [
        (0.01, 10.0, 31.6, 9.9, 0.002, 99.1, 31.0),
        (0.02, 20.0, 31.9, 10.1, 0.010, 97.2, 24.5),
        (0.03, 30.0, 33.0, 11.5, 0.052, 93.0, 17.9),
        (0.04, 40.0, 45.0, 20.0, 0.300, 80.4, 9.2),
    ]:
        m = _metrics("abs_sweep", "abs", t, "all", sparsity, sparsity, 1.0, wer=wer, cer=cer)
        m.update({"kl": kl, "argmax_agreement": agree, "snr_db": snr})
        points.append((m, None))
    # A point without signals (eval=vosk) leaves its cells empty and out of the ranking.
    points.append((_metrics("abs_sweep", "abs", 0.05, "all", 50.0, 50.0, 2.0, wer=90.0, cer=70.0), None))
    sweep = _sweep(tmp_path, "10-00-00", points)
    runs = collect_runs([sweep])
    header, rows = table_rows(runs)
    assert header[-3:] == ["output KL (nats/frame)", "argmax agreement (%)", "output SNR (dB)"]
    assert rows[0][-3:] == ["0.002", "99.1", "31"]
    assert rows[-1][-3:] == ["", "", ""]
    assert signal_ranking(runs) == [("kl", "cer", pytest.approx(1.0), 4),
                                    ("argmax_agreement", "cer", pytest.approx(-1.0), 4),
                                    ("snr_db", "cer", pytest.approx(-1.0), 4)]
    assert format_markdown(runs).splitlines()[-1] == (
        "How the output signals rank the points by CER (Spearman's rho over 4 points; +1 or -1 is a perfect "
        "ranking): output KL +1.00, argmax agreement -1.00, output SNR -1.00.")


def _with_intervals(metrics: dict, cer_ci, delta_ci, to_dense, errors) -> dict:
    """What an evaluation with per-utterance counts adds: intervals, the rate against the dense decode, counts."""
    utts = ["u1", "u2", "u3"]
    metrics.update({"cer_ci": cer_ci, "cer_delta_ci": delta_ci, "cer_to_dense": to_dense,
                    "cer_to_dense_ci": [to_dense / 2, to_dense * 2], "cer_report": "%CER ...",
                    "bootstrap": {"replications": 100, "seed": 0, "level": 0.9, "kind": "percentile"},
                    "per_utt": {"utts": utts, "cer": {"errors": errors, "ref_len": [10, 20, 30]}}})
    metrics["baseline"] = {**metrics["baseline"], "cer_ci": [6.0, 14.0],
                           "per_utt": {"utts": utts, "cer": {"errors": [1, 2, 3], "ref_len": [10, 20, 30]}}}
    return metrics


def test_intervals_and_the_rate_against_the_dense_decode_are_columns_and_error_bars(tmp_path):
    pytest.importorskip("matplotlib")
    sweep = _sweep(tmp_path, "10-00-00", [
        (_with_intervals(_metrics("g", "sparsegpt", 0.5, "all", 50.0, 50.0, 2.0, 33.0, 10.0),
                         [7.5, 12.5], [-1.0, 1.5], 3.0, [1, 2, 3]), None),
        (_with_intervals(_metrics("g", "sparsegpt", 0.7, "all", 70.0, 70.0, 6.0, 40.0, 15.0),
                         [11.0, 19.0], [2.0, 8.0], 9.0, [2, 3, 4]), None),
    ])
    runs = collect_runs([sweep])
    assert runs[0].interval("cer") == (7.5, 12.5) and runs[0].cer == 10.0 and runs[0].baseline_cer == 9.87
    assert runs[0].rates == ("wer", "cer", "cer_to_dense")
    assert runs[1].per_utt["cer"].errors.tolist() == [2, 3, 4]
    header, rows = table_rows(runs)
    assert header[header.index("CER (%)"):] == ["CER (%)", "CER 90% CI", "CER change (abs)", "CER change 90% CI",
                                                "CER change (rel %)", "CER to dense (%)", "CER to dense 90% CI"]
    assert rows[1][header.index("CER (%)"):] == ["15.00", "[11.00, 19.00]", "+5.13", "[+2.00, +8.00]", "+51.98",
                                                 "9.00", "[4.50, 18.00]"]
    assert format_markdown(runs).splitlines()[-1] == (
        "Unpruned baseline (g): WER 31.58 %, CER 9.87 % [6.00, 14.00] over 3 utterances, 60 reference tokens.")
    summary = summarize([sweep])
    assert {p.name for p in summary.written} >= {ERROR_PLOT, "to_dense_vs_sparsity.png"}
    from kprune.report.summary import plot_error_vs_sparsity

    ax = plot_error_vs_sparsity(runs).axes[0]
    (bars,) = [c for c in ax.containers]  # one errorbar container: the sweep's points with their intervals
    assert bars.lines[0].get_ydata().tolist() == [10.0, 15.0]
