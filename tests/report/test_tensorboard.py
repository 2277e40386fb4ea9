"""kprune.report.tensorboard, read back with TensorBoard's own event reader and hparams backend."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import api_pb2, metadata

from kprune.errors import ConfigError
from kprune.report.tensorboard import HPARAM_METRICS, histogram_of, log_run

SIZE_GUIDANCE = {ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0}


def _weights() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    before = {
        "affine1": torch.tensor([[-0.30, -0.04, 0.02], [0.20, 0.01, 0.40]]),
        "tdnnf2.linear": torch.tensor([[0.03, -0.02], [0.01, -0.01]]),
        "final-affine": torch.tensor([[0.5, -0.6, 0.7, 0.8]]),
    }
    # abs at 0.05: every |w| < 0.05 becomes an exact zero.
    after = {name: torch.where(w.abs() < 0.05, torch.zeros(()), w) for name, w in before.items()}
    return before, after


def _sparsity(threshold: float = 0.05) -> dict:
    per_layer = {
        "affine1": {"type": "NaturalGradientAffineComponent", "shape": [2, 3], "weights": 6,
                    "pruned": 3, "zeros": 3, "sparsity": 50.0, "removed_energy": 0.7, "selected": True},
        "tdnnf2.linear": {"type": "LinearComponent", "shape": [2, 2], "weights": 4,
                          "pruned": 4, "zeros": 4, "sparsity": 100.0, "removed_energy": 100.0,
                          "selected": True},
        "final-affine": {"type": "NaturalGradientAffineComponent", "shape": [1, 4], "weights": 4,
                         "pruned": 0, "zeros": 0, "sparsity": 0.0, "removed_energy": 0.0,
                         "selected": True},
    }
    return {"method": "abs", "threshold": threshold, "layers": "all", "selected": list(per_layer),
            "sparsity": 50.0, "sparsity_selected": 50.0, "removed_energy": 0.4,
            "weights": 14, "zeros": 7, "per_layer": per_layer}


def _metrics(evaluated: bool, status: str = "ok") -> dict:
    metrics = {"status": status, "group": "abs_sweep", "method": "abs", "threshold": 0.05,
               "layers": "all", "sparsity": 50.0, "sparsity_selected": 50.0, "removed_energy": 0.4}
    if evaluated:
        metrics.update({"wer": 12.5, "cer": 6.25, "baseline": {"wer": 10.0, "cer": 5.0},
                        "wer_delta_abs": 2.5, "wer_delta_rel": 25.0, "cer_delta_abs": 1.25,
                        "cer_delta_rel": 25.0, "eval_seconds": 3.5})
    return metrics


def _log(run_dir: Path, *, evaluated: bool = True, **overrides) -> Path:
    before, after = _weights()
    kwargs = dict(method="abs", threshold=0.05, layers="all", sparsity=_sparsity(),
                  metrics=_metrics(evaluated), weights_before=before, weights_after=after)
    kwargs.update(overrides)
    return log_run(run_dir, **kwargs)


def _read(run_dir: Path) -> ea.EventAccumulator:
    accumulator = ea.EventAccumulator(str(run_dir), size_guidance=SIZE_GUIDANCE)
    accumulator.Reload()
    return accumulator


def _scalars(accumulator: ea.EventAccumulator) -> dict[str, float]:
    values = {}
    for tag in accumulator.Tags()["scalars"]:
        (event,) = accumulator.Scalars(tag)
        assert event.step == 0
        values[tag] = event.value
    return values


def test_scalars_are_read_back(tmp_path):
    _log(tmp_path)
    scalars = _scalars(_read(tmp_path))
    assert scalars == pytest.approx({
        "threshold": 0.05,
        "sparsity/total": 50.0,
        "sparsity/selected": 50.0,
        "removed_energy/total": 0.4,
        "sparsity/affine1": 50.0,
        "sparsity/tdnnf2.linear": 100.0,
        "sparsity/final-affine": 0.0,
        "removed_energy/affine1": 0.7,
        "removed_energy/tdnnf2.linear": 100.0,
        "removed_energy/final-affine": 0.0,
        "eval/wer": 12.5,
        "eval/cer": 6.25,
        "eval/wer_delta_abs": 2.5,
        "eval/wer_delta_rel": 25.0,
        "eval/cer_delta_abs": 1.25,
        "eval/cer_delta_rel": 25.0,
        "eval/baseline_wer": 10.0,
        "eval/baseline_cer": 5.0,
        "time/eval_seconds": 3.5,
    })


def test_unevaluated_run_has_no_eval_scalars(tmp_path):
    _log(tmp_path, evaluated=False)
    tags = set(_read(tmp_path).Tags()["scalars"])
    assert "sparsity/total" in tags
    assert not any(tag.startswith(("eval/", "time/")) for tag in tags)


def test_events_go_into_the_run_directory_itself(tmp_path):
    path = _log(tmp_path)
    assert path.parent == tmp_path
    assert path.name.startswith("events.out.tfevents.")
    # No stray subdirectory (add_hparams would make a timestamped one), no temp dir left.
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_rerun_replaces_the_earlier_record(tmp_path):
    first = _log(tmp_path, evaluated=False)
    second = _log(tmp_path, evaluated=True)
    assert first != second  # torch numbers its event files
    assert list(tmp_path.iterdir()) == [second]
    scalars = _scalars(_read(tmp_path))  # one event per tag, not two
    assert scalars["eval/wer"] == pytest.approx(12.5)


def test_histograms_before_after_and_kept(tmp_path):
    before, after = _weights()
    _log(tmp_path)
    accumulator = _read(tmp_path)
    tags = set(accumulator.Tags()["histograms"])
    assert tags == {
        "weights_before/affine1", "weights_before/tdnnf2.linear", "weights_before/final-affine",
        "weights_after/affine1", "weights_after/tdnnf2.linear", "weights_after/final-affine",
        # tdnnf2.linear is pruned to nothing: it has no kept weights to show.
        "weights_kept/affine1", "weights_kept/final-affine",
    }
    for name, weight in before.items():
        (event,) = accumulator.Histograms(f"weights_before/{name}")
        histo = event.histogram_value
        assert event.step == 0
        assert histo.num == weight.numel()
        assert sum(histo.bucket) == weight.numel()
        assert histo.min == pytest.approx(weight.min().item())
        assert histo.max == pytest.approx(weight.max().item())
        assert histo.sum == pytest.approx(weight.sum().item())
        assert histo.sum_squares == pytest.approx((weight**2).sum().item())

    after_affine = accumulator.Histograms("weights_after/affine1")[0].histogram_value
    assert after_affine.num == 6 and sum(after_affine.bucket) == 6
    assert after_affine.min == pytest.approx(-0.30)
    # The three pruned weights are exact zeros: one bucket holds them all.
    assert max(after_affine.bucket) == 3

    kept_affine = accumulator.Histograms("weights_kept/affine1")[0].histogram_value
    assert kept_affine.num == 3
    assert sum(kept_affine.bucket) == 3
    assert kept_affine.sum == pytest.approx(-0.30 + 0.20 + 0.40)

    all_zero = accumulator.Histograms("weights_after/tdnnf2.linear")[0].histogram_value
    assert (all_zero.num, all_zero.min, all_zero.max, sum(all_zero.bucket)) == (4, 0.0, 0.0, 4)


def test_histograms_can_be_switched_off(tmp_path):
    _log(tmp_path, histograms=False)
    accumulator = _read(tmp_path)
    assert accumulator.Tags()["histograms"] == []
    assert "sparsity/total" in accumulator.Tags()["scalars"]


def _hparams(accumulator: ea.EventAccumulator):
    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)
    return (
        metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG]),
        metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG]),
        metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG]),
    )


def test_hparams_are_in_the_run_with_all_metric_keys(tmp_path):
    _log(tmp_path, threshold=0.2665, method="pct", layers=["affine1", "tdnnf*.linear"])
    experiment, start, end = _hparams(_read(tmp_path))
    assert start.hparams["method"].string_value == "pct"
    assert start.hparams["threshold"].number_value == pytest.approx(0.2665)
    assert start.hparams["layers"].string_value == "affine1,tdnnf*.linear"
    assert start.hparams["group"].string_value == "abs_sweep"
    assert [info.name for info in experiment.hparam_infos] == ["method", "threshold", "layers", "group"]
    assert [info.name.tag for info in experiment.metric_infos] == list(HPARAM_METRICS)
    assert end.status == api_pb2.STATUS_SUCCESS


def test_experiment_is_identical_with_and_without_evaluation(tmp_path):
    _log(tmp_path / "evaluated", evaluated=True)
    _log(tmp_path / "not_evaluated", evaluated=False, threshold=0.07)
    first, _, _ = _hparams(_read(tmp_path / "evaluated"))
    second, start, _ = _hparams(_read(tmp_path / "not_evaluated"))
    assert first.SerializeToString() == second.SerializeToString()
    assert start.hparams["threshold"].number_value == pytest.approx(0.07)


def test_failed_run_is_marked_failed(tmp_path):
    _log(tmp_path, sparsity=None, metrics=_metrics(False, status="failed"),
         weights_before=None, weights_after=None)
    accumulator = _read(tmp_path)
    _, start, end = _hparams(accumulator)
    assert end.status == api_pb2.STATUS_FAILURE
    assert start.hparams["method"].string_value == "abs"
    assert _scalars(accumulator) == pytest.approx({"threshold": 0.05})


def test_hparams_dashboard_lines_up_a_mixed_sweep(tmp_path):
    """What the HParams tab gets from TensorBoard's own backend for a sweep."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context, get_experiment, list_session_groups

    sweep = tmp_path / "multirun" / "2024-05-01" / "12-00-00"
    _log(sweep / "0", evaluated=True)
    _log(sweep / "1", evaluated=False, threshold=0.07)
    _log(sweep / "2", sparsity=None, metrics=_metrics(False, status="failed"), threshold=0.09)

    multiplexer = plugin_event_multiplexer.EventMultiplexer().AddRunsFromDirectory(str(tmp_path))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(tmp_path))
    tb_context = base_plugin.TBContext(data_provider=provider, logdir=str(tmp_path),
                                       multiplexer=multiplexer, plugin_name_to_instance={})
    backend = backend_context.Context(tb_context)
    request_context = context.RequestContext()

    experiment = get_experiment.Handler(
        request_context, backend, "", api_pb2.GetExperimentRequest(include_metrics=True)).run()
    assert [info.name.tag for info in experiment.metric_infos] == list(HPARAM_METRICS)
    assert {info.name for info in experiment.hparam_infos} == {"method", "threshold", "layers", "group"}

    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=100, include_metrics=True,
        allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_UNKNOWN])
    groups = list_session_groups.Handler(request_context, backend, "", request).run().session_groups
    by_threshold = {round(g.hparams["threshold"].number_value, 4): g for g in groups}
    assert sorted(by_threshold) == [0.05, 0.07, 0.09]

    def metrics_of(group):
        return {value.name.tag: value.value for value in group.metric_values}

    assert metrics_of(by_threshold[0.05])["eval/cer"] == pytest.approx(6.25)
    assert set(metrics_of(by_threshold[0.07])) == {"sparsity/total", "sparsity/selected",
                                                   "removed_energy/total"}
    assert metrics_of(by_threshold[0.09]) == {}
    assert by_threshold[0.09].sessions[0].status == api_pb2.STATUS_FAILURE
    assert by_threshold[0.05].sessions[0].name.endswith("12-00-00/0")


@pytest.mark.parametrize(
    ("values", "bins", "limits", "counts"),
    [
        # Equal-width bins from min to max; the leading empty bucket carries the left edge.
        ([0.0, 1.0, 2.0, 3.0], 3, [0.0, 1.0, 2.0, 3.0], [0, 1, 1, 2]),
        ([-1.0, -1.0, 1.0], 2, [-1.0, 0.0, 1.0], [0, 2, 1]),
        # One value only, zero or not: one bucket around it.
        ([0.0, 0.0], 4, [-0.5, 0.5], [0, 2]),
        ([2.0], 4, [1.0, 3.0], [0, 1]),
    ],
)
def test_histogram_of_known_values(values, bins, limits, counts):
    histogram = histogram_of(torch.tensor(values), bins)
    assert histogram["bucket_limits"] == pytest.approx(limits)
    assert histogram["bucket_counts"] == counts
    assert histogram["num"] == len(values)
    assert histogram["sum"] == pytest.approx(sum(values))
    assert histogram["sum_squares"] == pytest.approx(sum(v * v for v in values))


def test_histogram_of_empty_and_non_finite():
    assert histogram_of(torch.tensor([])) is None
    assert histogram_of(torch.tensor([math.nan, math.inf])) is None
    histogram = histogram_of(torch.tensor([1.0, math.nan, 3.0]), 2)
    assert (histogram["num"], histogram["min"], histogram["max"]) == (2, 1.0, 3.0)


@pytest.mark.parametrize("bins", [0, -3, 2.5, True])
def test_bad_bin_count_is_a_config_error(tmp_path, bins):
    with pytest.raises(ConfigError, match=f"histogram bins must be a whole number >= 1, got {bins!r}"):
        _log(tmp_path, bins=bins)
    assert list(tmp_path.iterdir()) == []


def test_intervals_and_the_rate_against_the_dense_decode_are_scalars(tmp_path):
    metrics = _metrics(True)
    metrics.update({"cer_ci": [3.5, 9.0], "cer_delta_ci": [-0.5, 3.0], "cer_p_improvement": 0.125,
                    "cer_to_dense": 2.0, "cer_to_dense_ci": [0.5, 4.0]})
    metrics["baseline"] = {**metrics["baseline"], "cer_ci": [2.0, 8.0]}
    _log(tmp_path, metrics=metrics)
    scalars = _scalars(_read(tmp_path))
    assert {k: v for k, v in scalars.items() if "_ci_" in k or "dense" in k or "improvement" in k} == pytest.approx({
        "eval/cer_ci_low": 3.5, "eval/cer_ci_high": 9.0, "eval/cer_delta_ci_low": -0.5,
        "eval/cer_delta_ci_high": 3.0, "eval/cer_p_improvement": 0.125, "eval/cer_to_dense": 2.0,
        "eval/cer_to_dense_ci_low": 0.5, "eval/cer_to_dense_ci_high": 4.0,
        "eval/baseline_cer_ci_low": 2.0, "eval/baseline_cer_ci_high": 8.0})
