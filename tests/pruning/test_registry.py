"""What a rule declares at registration: the statistics it needs and its own knobs, in prune_model, the
sensitivity analysis and point.json alike; the rule is the tests' plugin ``plugin_rule`` (``gram_diag``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch

import plugin_rule  # noqa: F401 -- registers gram_diag, as plugins=[plugin_rule] does in a subprocess
from kprune.errors import ConfigError
from kprune.kaldi.build import build_tdnn
from kprune.model import load_model
from kprune.nnet.compute import AcousticModel
from kprune.pruning import rules
from kprune.pruning.calibration import prune_model
from kprune.pruning.capture import statistics_needs
from kprune.pruning.config import MethodConfig, RepairConfig
from kprune.pruning.rules import LayerPruning, get_method, register_method, row_fraction_mask
from kprune.runner import PointSettings, run_point
from kprune.sensitivity import LayerSensitivity
from kprune.sensitivity.report import read_csv

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.fixture
def tdnn(tmp_path):
    path = tmp_path / "tdnn" / "final.mdl"
    path.parent.mkdir()
    path.write_bytes(build_tdnn(hidden_dim=16, num_pdfs=8, feat_dim=8, splices=((-1, 0, 1), (-1, 0, 1))))
    return path


def features_of(model, lengths=(70, 40), seed=0):
    from kprune.features.pipeline import FeatureSet

    am = AcousticModel(model.file, device="cpu")
    rng = np.random.default_rng(seed)
    feats = [torch.from_numpy(rng.normal(size=(n, am.input_dim)).astype(np.float32)) for n in lengths]
    return FeatureSet([f"u{i}" for i in range(len(lengths))], feats, [None] * len(lengths), 10)


@pytest.fixture
def spy(monkeypatch):
    """A rule declaring column norms only, registered for one test, recording the statistics it is given."""
    monkeypatch.setattr(rules, "_METHODS", dict(rules._METHODS))
    seen = []

    @register_method("norms_only", fraction=True, calibrated=True, needs=("column_norms",))
    def norms_only(weight, stats, threshold, config, *, bias=None, target=False):
        seen.append(stats)
        return LayerPruning(row_fraction_mask(weight.abs().double() * stats.column_norms[None, :], threshold))

    return seen


# -- the registry ---------------------------------------------------------------------


def test_registration_declares_needs_and_knobs():
    rule = get_method("gram_diag")
    assert rule.needs == {"gram"} and rule.knobs == ("power", "label")
    assert get_method("sparsegpt").needs == {"gram"} and get_method("wanda").needs == {"column_norms"}
    assert get_method("pct").needs == frozenset()
    assert statistics_needs(get_method("wanda"), RepairConfig.from_config(["refit"])) == {"column_norms", "gram",
                                                                                        "target"}
    assert statistics_needs(get_method("magnitude"), RepairConfig.from_config(["bias"])) == {"mean"}
    with pytest.raises(ConfigError, match="unknown statistics hessian in needs; known: mean, column_norms"):
        register_method("bad_needs", calibrated=True, needs=("hessian",))


def test_a_rule_s_knobs_are_validated_against_its_dataclass():
    cfg = MethodConfig.from_config({"name": "gram_diag", "power": 2})
    assert cfg.options.power == 2.0 and cfg.power == 2.0 and cfg.options.label == "plain"
    assert cfg.describe() == {"name": "gram_diag", "pattern": None, "power": 2.0, "label": "plain"}
    with pytest.raises(ConfigError, match=r"method: unknown setting\(s\) strength; known: name, pattern, "
                                          r"sequential, power, label"):
        MethodConfig.from_config({"name": "gram_diag", "strength": 1})
    with pytest.raises(ConfigError, match=r"method.power: expected a finite number >= 0, found 'x'"):
        MethodConfig.from_config({"name": "gram_diag", "power": "x"})
    with pytest.raises(ConfigError, match="method.label: expected plain or fancy, found 'odd'"):
        MethodConfig.from_config({"name": "gram_diag", "label": "odd"})
    # Another rule's knob is not this rule's: wanda takes no dampening.
    with pytest.raises(ConfigError, match=r"method: unknown setting\(s\) dampening"):
        MethodConfig.from_config({"name": "wanda", "dampening": 0.01})
    with pytest.raises(ConfigError, match="has no N:M form; use abs, global_pct, magnitude, wanda, sparsegpt or admm"):
        MethodConfig.from_config({"name": "gram_diag", "pattern": "2:4"})


# -- the capture gathers what is declared ---------------------------------------------


def test_a_rule_declaring_column_norms_gets_no_gram(tdnn, spy):
    model = load_model(tdnn)
    features = features_of(model)
    layers = model.default_layers
    prune_model(model, layers, MethodConfig.from_config("norms_only"), 0.5, features=features)
    assert len(spy) == len(layers) and all(s.gram is None and s.sumsq.abs().sum() > 0 for s in spy)
    spy.clear()
    model = load_model(tdnn)
    prune_model(model, layers, MethodConfig.from_config("norms_only"), 0.5, RepairConfig.from_config(["refit"]),
                features=features)
    assert len(spy) == len(layers) and all(s.gram is not None and s.cross is not None for s in spy)  # refit's needs
    model = load_model(tdnn)
    analysis = LayerSensitivity(model, MethodConfig.from_config("norms_only"), features, dense=model.snapshot(),
                                layers=layers)
    assert all(s.gram is None for s in analysis.statistics.values())


def test_a_plugin_rule_needing_the_gram_prunes_under_prune_model_with_its_knob(tdnn):
    model = load_model(tdnn)
    features = features_of(model)
    dense = model.snapshot()
    layers = model.default_layers
    results = {}
    for power in (0.0, 1.0):
        model.restore(dense)
        results[power] = prune_model(model, layers, MethodConfig.from_config({"name": "gram_diag", "power": power}),
                                     0.5, features=features, dense=dense)
    model.restore(dense)
    magnitude = prune_model(model, layers, MethodConfig.from_config("magnitude"), 0.5)
    for name in layers:  # power 0 is magnitude pruning; power 1 reads the inputs, so some mask differs
        assert torch.equal(results[0.0].masks[name], magnitude.masks[name])
        assert int(results[1.0].masks[name].sum()) == int(magnitude.masks[name].sum())
    assert any(not torch.equal(results[1.0].masks[n], magnitude.masks[n]) for n in layers)


def test_a_plugin_rule_s_knob_enters_point_json(tdnn, tmp_path):
    model = load_model(tdnn)
    features = features_of(model)
    (tmp_path / "calib").mkdir()
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/calib/feats.ark,{tmp_path}/calib/feats.scp") as w:
        for utt, f in zip(features.utts, features.feats):
            w(utt, f.numpy())

    def settings(power):
        return PointSettings(model=tdnn, method="gram_diag", threshold=0.5, layers="all", exclude=[], device="cpu",
                             histograms=False, method_options={"power": power},
                             calib={"feats": str(tmp_path / "calib" / "feats.scp")})

    run = tmp_path / "run"
    assert run_point(settings(2.0), run, summary="none")["status"] == "ok"
    point = json.loads((run / "point.json").read_text())
    assert point["method_options"] == {"name": "gram_diag", "pattern": None, "power": 2.0, "label": "plain",
                                       "sequential": True}
    stamp = (run / "final.mdl").stat().st_mtime_ns
    run_point(settings(2.0), run, summary="none")
    assert (run / "final.mdl").stat().st_mtime_ns == stamp  # complete: skipped
    run_point(settings(1.0), run, summary="none")
    assert (run / "final.mdl").stat().st_mtime_ns != stamp  # another knob value is another point


def test_a_plugin_rule_runs_under_the_sensitivity_task(tdnn, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "calib").mkdir()
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/calib/feats.ark,{tmp_path}/calib/feats.scp") as w:
        w("u1", rng.normal(size=(70, 8)).astype(np.float32))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)])}

    def task(run, *extra):
        return subprocess.run([sys.executable, "-m", "kprune.sensitivity", f"model={tdnn}", "plugins=[plugin_rule]",
                               "method.name=gram_diag", f"calib.feats={tmp_path}/calib/feats.scp", "levels=[0.3,0.6]",
                               "max_seconds=null", f"hydra.run.dir={run}", *extra],
                              cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)

    done = task(tmp_path / "run", "+method.power=2.0")
    assert done.returncode == 0, done.stderr[-3000:]
    table = read_csv(tmp_path / "run" / "sensitivity.csv")
    assert set(table) == {"affine1", "affine2", "final-affine"}
    assert all(d[0.6]["kl"] >= d[0.3]["kl"] > 0 for d in table.values())
    bad = task(tmp_path / "bad", "+method.strength=2.0")
    assert bad.returncode == 2 and "unknown setting(s) strength; known: name, pattern, sequential, power" in bad.stderr
