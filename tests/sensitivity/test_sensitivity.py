"""Sensitivity analysis and allocation on a small TDNN whose most sensitive layer is known.

In the fixture model every layer but ``affine2`` has a few large weights per
row and many tiny ones, so pruning up to 80 % of it removes almost nothing;
``affine2`` has Gaussian weights, so every fraction pruned costs.  The
analysis must find ``affine2`` the most sensitive, and the allocation must
protect it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kprune.features.pipeline import FeatureSet
from kprune.errors import ConfigError
from kprune.kaldi.build import build_tdnn
from kprune.model import load_model
from kprune.nnet.compute import AcousticModel
from kprune.nnet.signals import output_signals
from kprune.pruning.calibration import prune_model
from kprune.pruning.config import MethodConfig
from kprune.runner import PointSettings, run_point
from kprune.sensitivity import LayerSensitivity, check_levels, sensitivity_analysis
from kprune.sensitivity.allocation import AllocationConfig, allocate
from kprune.sensitivity.forward import LayerReplay
from kprune.sensitivity.report import read_csv, write_csv

LEVELS = (0.2, 0.4, 0.6, 0.8)
SENSITIVE = "affine2"


@pytest.fixture
def tdnn_path(tmp_path):
    path = tmp_path / "tdnn" / "final.mdl"
    path.parent.mkdir()
    raw = tmp_path / "raw.mdl"
    raw.write_bytes(build_tdnn(hidden_dim=32, num_pdfs=16, feat_dim=8, splices=((-1, 0, 1), (-1, 0, 1), (-1, 0, 1))))
    model = load_model(raw)
    rng = np.random.default_rng(1)
    for name in model.default_layers:
        if name != SENSITIVE:  # 15 % large weights, the rest 1/100 of the size: pruning 80 % costs little
            w = model.layers[name].weight
            w.mul_(torch.from_numpy(np.where(rng.random(tuple(w.shape)) < 0.15, 1.0, 0.01).astype(np.float32)))
    model.save(path)
    return path


def features(input_dim: int, lengths=(60, 90, 45), seed=0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    feats = [torch.from_numpy(rng.normal(size=(n, input_dim)).astype(np.float32)) for n in lengths]
    return FeatureSet([f"u{i}" for i in range(len(lengths))], feats, [None] * len(lengths), 10)


def network_kl(path, model, feats) -> float:
    dense = AcousticModel.load(path, device="cpu").compute(feats.feats)
    pruned = AcousticModel(model.file, device="cpu").compute(feats.feats)
    return output_signals(dense, pruned)["kl"]


def test_replay_of_one_changed_layer_equals_a_full_forward(tdnn_path):
    model = load_model(tdnn_path)
    feats = features(8)
    replay = LayerReplay(AcousticModel(model.file, device="cpu", use_priors=False), feats)
    assert "final-affine" in replay.downstream("affine2") and "affine1" not in replay.downstream("affine2")
    model.layers["affine2"].weight[:, ::2] = 0.0
    replay.reload(model.file.nnet.component("affine2"))
    full = AcousticModel(model.file, device="cpu", use_priors=False)._run_batch(replay.segments, False)
    for a, b in zip(replay.outputs("affine2"), full):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method", ["pct", "magnitude", "wanda", "sparsegpt"])
def test_the_analysis_finds_the_sensitive_layer_and_restores_the_model(tdnn_path, method):
    model = load_model(tdnn_path)
    before = model.to_bytes()
    analysis = LayerSensitivity(model, MethodConfig.from_config(method), features(8), dense=model.snapshot(),
                                layers=model.default_layers)
    table = sensitivity_analysis(model.default_layers, LEVELS, analysis.measure)
    assert model.to_bytes() == before  # every layer restored
    assert set(table) == set(model.default_layers) and all(list(d) == list(LEVELS) for d in table.values())
    worst = max(table, key=lambda n: table[n][0.6]["kl"])
    assert worst == SENSITIVE
    row = table[SENSITIVE][0.4]
    assert row["layer_sparsity"] == pytest.approx(40.0, abs=2.0)
    assert 0 < row["network_sparsity"] < row["layer_sparsity"]
    # Monotone in the level for the sensitive layer (more pruned, more damage).
    kls = [table[SENSITIVE][lv]["kl"] for lv in LEVELS]
    assert kls == sorted(kls) and kls[0] > 0


def test_a_one_layer_measure_equals_prune_model_with_that_layer(tdnn_path):
    model = load_model(tdnn_path)
    feats = features(8)
    method = MethodConfig.from_config("sparsegpt")
    analysis = LayerSensitivity(model, method, feats, dense=model.snapshot(), layers=[SENSITIVE])
    measured = analysis.measure(SENSITIVE, 0.5)
    prune_model(model, [SENSITIVE], method, 0.5, features=feats)
    dense = load_model(tdnn_path)
    replay = LayerReplay(AcousticModel(dense.file, device="cpu", use_priors=False), feats)
    pruned = AcousticModel(model.file, device="cpu", use_priors=False)._run_batch(replay.segments, False)
    assert output_signals(replay.dense, pruned)["kl"] == pytest.approx(measured["kl"], rel=1e-4)


def test_allocate_known_answers():
    curves = {"cheap": {0.5: 0.5, 1.0: 1.0}, "dear": {0.5: 5.0, 1.0: 10.0}}
    a = allocate(curves, {"cheap": 100, "dear": 100}, 0.5)
    assert a.fractions == {"cheap": 1.0, "dear": 0.0} and a.predicted_damage == pytest.approx(1.0)
    a = allocate(curves, {"cheap": 100, "dear": 100}, 0.6)
    assert a.fractions["dear"] == pytest.approx(0.2) and a.predicted_damage == pytest.approx(3.0)
    # A non-convex curve is taken through its hull: 0.5 costs as much as 0.25 would on the chord.
    a = allocate({"x": {0.25: 1.0, 0.5: 1.0}, "y": {0.25: 0.6, 0.5: 1.5}}, {"x": 1, "y": 1}, 0.25)
    assert a.fractions == {"x": 0.5, "y": 0.0}
    assert allocate(curves, {"cheap": 1, "dear": 3}, 0.0).fractions == {"cheap": 0.0, "dear": 0.0}
    with pytest.raises(ConfigError, match="a target of 0.95 needs more than the highest measured levels"):
        allocate({"x": {0.5: 1.0, 0.9: 2.0}}, {"x": 10}, 0.95)
    with pytest.raises(ConfigError, match="allocation.signal: expected one of kl"):
        AllocationConfig.from_config({"name": "sensitivity", "signal": "cer"})
    with pytest.raises(ConfigError, match="levels: expected fractions in"):
        check_levels([0.5, 1.5])


@pytest.mark.parametrize("method", ["pct", "global_pct", "sparsegpt"])
def test_a_point_with_sensitivity_allocation_protects_the_sensitive_layer(tdnn_path, tmp_path, method):
    import kaldiio

    feats = features(8)
    calib = tmp_path / "calib"
    calib.mkdir()
    with kaldiio.WriteHelper(f"ark,scp:{calib}/feats.ark,{calib}/feats.scp") as w:
        for utt, f in zip(feats.utts, feats.feats):
            w(utt, f.numpy())

    def settings(allocation):
        return PointSettings(model=tdnn_path, method=method, threshold=0.5, layers="all", exclude=[], device="cpu",
                             histograms=False, calib={"feats": str(calib / "feats.scp")},
                             allocation={"name": allocation, "levels": [0.2, 0.4, 0.6, 0.8, 0.9], "max_seconds": None,
                                         "cache_dir": str(tmp_path / "cache")})

    run = tmp_path / "sens"
    metrics = run_point(settings("sensitivity"), run, summary="none")
    assert metrics["status"] == "ok", metrics.get("error")
    assert metrics["sparsity_selected"] == pytest.approx(50.0, abs=1.0)
    doc = json.loads((run / "allocation.json").read_text())
    fractions = doc["fractions"]
    assert min(fractions, key=fractions.get) == SENSITIVE and fractions[SENSITIVE] < 0.3
    per_layer = json.loads((run / "sparsity.json").read_text())["per_layer"]
    assert per_layer[SENSITIVE]["sparsity"] < 30.0
    assert json.loads((run / "point.json").read_text())["allocation"]["name"] == "sensitivity"
    # The curves were cached: a second target reads them back.
    cached = list((tmp_path / "cache" / "sensitivity").glob("*.json"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert run_point(settings("sensitivity").__class__(**{**settings("sensitivity").__dict__, "threshold": 0.4}),
                     tmp_path / "sens40", summary="none")["status"] == "ok"
    assert cached[0].stat().st_mtime_ns == stamp
    # The allocated point moves the outputs less than the uniform one at the same sparsity.
    uniform = tmp_path / "uniform"
    assert run_point(settings("uniform"), uniform, summary="none")["status"] == "ok"
    assert not (uniform / "allocation.json").exists()
    assert network_kl(tdnn_path, load_model(run / "final.mdl"), feats) < \
        network_kl(tdnn_path, load_model(uniform / "final.mdl"), feats)


def test_csv_round_trip(tmp_path):
    table = {"a": {0.1: {"layer_sparsity": 10.0, "network_sparsity": 1.0, "kl": 0.5, "argmax_agreement": 99.0,
                         "snr_db": 20.0}}}
    write_csv(table, tmp_path / "s.csv")
    assert read_csv(tmp_path / "s.csv")["a"][0.1]["kl"] == 0.5
    assert "cer" not in read_csv(tmp_path / "s.csv")["a"][0.1]


def test_summary_draws_the_allocation_in_per_layer_png(tmp_path):
    pytest.importorskip("matplotlib")
    from kprune.report.summary import RunResult, allocations, plot_per_layer

    runs = []
    for target in (0.4, 0.5):
        run_dir = tmp_path / f"t{target}"
        run_dir.mkdir()
        (run_dir / "allocation.json").write_text(json.dumps(
            {"target": target, "fractions": {"a": target / 2, "b": target * 1.5}}))
        runs.append(RunResult(run_dir, "g", "pct", target, "all", "ok"))
    runs.append(RunResult(tmp_path / "none", "g", "pct", 0.3, "all", "ok"))  # uniform: no allocation.json
    assert allocations(runs) == {("g", "pct"): {0.4: {"a": 0.2, "b": pytest.approx(0.6)},
                                                0.5: {"a": 0.25, "b": 0.75}}}
    figure = plot_per_layer(runs)
    assert figure is not None and "per-layer fractions" in figure.axes[0].get_title()


@pytest.mark.parametrize("method", ["pct", "global_pct", "magnitude", "wanda"])
def test_prune_model_takes_a_threshold_per_layer(tdnn_path, method):
    model = load_model(tdnn_path)
    names = model.default_layers
    own = {names[0]: 0.8, names[1]: 0.1}
    result = prune_model(model, names, MethodConfig.from_config(method), 0.5, features=features(8),
                         layer_thresholds=own)
    for name in own:
        assert float(result.masks[name].float().mean()) == pytest.approx(own[name], abs=0.03), name
    rest = [n for n in names if n not in own]  # global_pct ranks these together, the others each layer
    pruned = sum(int(result.masks[n].sum()) for n in rest) / sum(result.masks[n].numel() for n in rest)
    assert pruned == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("method", ["sparsegpt", "admm"])
def test_sensitivity_allocation_with_refit_runs_end_to_end(tdnn_path, tmp_path, method):
    import kaldiio

    feats = features(8)
    calib = tmp_path / "calib"
    calib.mkdir()
    with kaldiio.WriteHelper(f"ark,scp:{calib}/feats.ark,{calib}/feats.scp") as w:
        for utt, f in zip(feats.utts, feats.feats):
            w(utt, f.numpy())
    run = tmp_path / "sens_refit"
    settings = PointSettings(model=tdnn_path, method=method, threshold=0.5, layers="all", exclude=[], device="cpu",
                             histograms=False, calib={"feats": str(calib / "feats.scp")}, repair=["refit"],
                             allocation={"name": "sensitivity", "levels": [0.2, 0.4, 0.6, 0.8, 0.9],
                                         "max_seconds": None, "cache_dir": str(tmp_path / "cache")})
    metrics = run_point(settings, run, summary="none")
    assert metrics["status"] == "ok", metrics.get("error")
    assert metrics["sparsity_selected"] == pytest.approx(50.0, abs=1.0)
    fractions = json.loads((run / "allocation.json").read_text())["fractions"]
    per_layer = json.loads((run / "sparsity.json").read_text())["per_layer"]
    for name, fraction in fractions.items():  # each layer pruned at its own fraction (per row: floor)
        assert per_layer[name]["sparsity"] == pytest.approx(100.0 * fraction, abs=100.0 / 24)
    point = json.loads((run / "point.json").read_text())
    assert point["repair"]["steps"] == ["refit"] and point["allocation"]["name"] == "sensitivity"
    assert json.loads((run / "sparsity.json").read_text())["changes"]["weights_updated"]
