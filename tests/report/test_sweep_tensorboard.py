"""A sweep in TensorBoard: a summary run per group (curves against sparse rate, the figures as images),
and the HParams tab still lists every point with its metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from kprune.kaldi.build import build_tdnn
from kprune.report.summary import collect_runs, summarize
from kprune.report.tensorboard import SWEEP_RUN_DIR, sparsity_step
from kprune.runner import PointSettings, run_point

THRESHOLDS = (0.1, 0.2, 0.3, 0.45)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Four evaluated points of one group (global_pct, tests/frame_error.py's real frame error rate)."""
    import frame_error

    root = tmp_path_factory.mktemp("tb")
    model = root / "final.mdl"
    model.write_bytes(build_tdnn(hidden_dim=32, num_pdfs=24))
    evaluator = frame_error.FrameErrorEvaluator(model, cache_dir=root / "cache")
    sweep_dir = root / "sweeps" / "tb_group"
    for t in THRESHOLDS:
        settings = PointSettings(model=model, method="global_pct", threshold=t, layers="all", exclude=[],
                                 device="cpu", group="tb_group", histograms=False, eval={"name": "frame_error"})
        run_point(settings, sweep_dir / f"method=global_pct,threshold={t}", evaluator=lambda: evaluator,
                  summary="none")
    return sweep_dir


def _accumulator(path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_the_summary_run_draws_error_against_sparse_rate(sweep):
    summary = summarize([sweep], tensorboard=True)
    run_dir = sweep / SWEEP_RUN_DIR / "tb_group"
    assert run_dir / next(run_dir.glob("events.out.tfevents.*")).name in summary.written
    runs = sorted(collect_runs([sweep]), key=lambda r: r.sparsity)
    acc = _accumulator(run_dir)
    cer = acc.Scalars("sweep/cer")
    assert [e.step for e in cer] == [sparsity_step(r.sparsity) for r in runs] == [10, 20, 30, 45]
    assert [e.value for e in cer] == pytest.approx([r.cer for r in runs])
    assert [e.value for e in acc.Scalars("sweep/threshold")] == pytest.approx(list(THRESHOLDS))
    assert [e.value for e in acc.Scalars("sweep/baseline_cer")] == pytest.approx([runs[0].baseline_cer] * 4)
    assert set(acc.Tags()["images"]) == {"figures/sparsity_vs_threshold", "figures/error_vs_sparsity"}
    image = acc.Images("figures/error_vs_sparsity")[0]
    assert image.width >= 600 and image.height >= 400

    again = summarize([sweep], tensorboard=True)  # replaced, not doubled
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1 and again.runs == summary.runs


def test_hparams_lists_every_point_and_not_the_summary_run(sweep):
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    summarize([sweep], tensorboard=True, plots=False)
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(sweep))
    mux.Reload()
    assert f"{SWEEP_RUN_DIR}/tb_group" in mux.Runs()
    provider = data_provider.MultiplexerDataProvider(mux, str(sweep))
    backend = backend_context.Context(base_plugin.TBContext(logdir=str(sweep), data_provider=provider,
                                                            multiplexer=mux))
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100, allowed_statuses=[
        api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING])
    groups = list_session_groups.Handler(context.RequestContext(), backend, "", request).run().session_groups
    cer = {g.name: {m.name.tag: m.value for m in g.metric_values}.get("eval/cer") for g in groups}
    expected = {r.run_dir.name: r.cer for r in collect_runs([sweep])}
    assert cer.keys() == expected.keys() and len(cer) == len(THRESHOLDS)
    assert all(cer[name] == pytest.approx(value) for name, value in expected.items())


def test_a_sweep_summarizes_itself_with_the_callback(tmp_path):
    import subprocess
    import sys

    (tmp_path / "final.mdl").write_bytes(build_tdnn(hidden_dim=24, num_pdfs=16))
    proc = subprocess.run([sys.executable, "-m", "kprune", "-m", "hydra/callbacks=sweep_summary", "model=final.mdl",
                           "method=pct", "threshold=0.1,0.3", "group=cb", "hydra.sweep.dir=cb",
                           "tensorboard.histograms=false"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "cb"
    assert (sweep / "summary.tsv").read_text().count("\n") == 1 + 2
    acc = _accumulator(sweep / SWEEP_RUN_DIR / "cb")
    assert [e.step for e in acc.Scalars("sweep/threshold")] == [10, 30]
    assert "figures/sparsity_vs_threshold" in acc.Tags()["images"]
