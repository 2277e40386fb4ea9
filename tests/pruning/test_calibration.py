"""Calibrated pruning of whole models: capture in the forward pass, sequential calibration, what a point records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kprune.features.pipeline import FeatureSet
from kprune.errors import ConfigError
from kprune.kaldi.build import build_all_types, build_tdnn
from kprune.model import load_model
from kprune.nnet.compute import AcousticModel, Segment
from kprune.pruning.calibration import prune_model
from kprune.pruning.config import MethodConfig, RepairConfig
from kprune.runner import PointSettings, run_point


@pytest.fixture
def tdnn_path(tmp_path):
    path = tmp_path / "tdnn" / "final.mdl"
    path.parent.mkdir()
    path.write_bytes(build_tdnn(hidden_dim=24, num_pdfs=16, feat_dim=8, splices=((-1, 0, 1), (-1, 0, 1), (-3, 0, 3))))
    return path


@pytest.fixture
def chain_path(tmp_path):
    """A small chain-style model with an i-vector input and BatchNorm components."""
    path = tmp_path / "chain" / "final.mdl"
    path.parent.mkdir()
    path.write_bytes(build_all_types(unknown=False))
    return path


def features_for(am: AcousticModel, lengths=(37, 80, 5), seed=0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    feats = [torch.from_numpy(rng.normal(size=(n, am.input_dim)).astype(np.float32)) for n in lengths]
    ivectors = [rng.normal(size=(-(-n // 10), am.ivector_dim)).astype(np.float32) if am.ivector_dim else None
                for n in lengths]
    return FeatureSet([f"u{i}" for i in range(len(lengths))], feats, ivectors, 10)


def test_capture_sees_each_owned_frame_once_in_the_weight_layout(tdnn_path):
    am = AcousticModel.load(tdnn_path, device="cpu")
    feats = features_for(am).feats
    # Pieces of 10 frames: the capture must count every frame of each utterance once.
    segments = [Segment(f, start, min(10, len(f) - start)) for f in feats for start in range(0, len(f), 10)]
    seen: dict[str, list[torch.Tensor]] = {}
    out = am.compute_observed(segments, lambda name, x: seen.setdefault(name, []).append(x.clone()))
    whole = am.compute(feats)
    torch.testing.assert_close(torch.cat(out), torch.cat(whole))  # observing changes nothing
    (lda_in,) = seen["lda"]
    assert lda_in.shape == (sum(len(f) for f in feats), 3 * am.input_dim)
    # lda reads Append(Offset(input, -1), input, Offset(input, 1)), edges repeated.
    f0 = feats[0]
    idx = np.arange(len(f0))
    spliced = torch.cat([f0[np.clip(idx - 1, 0, len(f0) - 1)], f0, f0[np.clip(idx + 1, 0, len(f0) - 1)]], dim=1)
    rows = sorted(range(len(lda_in)), key=lambda r: 0)  # order within the batch is by segment; compare as sets
    assert rows and torch.isclose(lda_in[:, None, :], spliced[None, :, :]).all(-1).any(0).all()
    assert seen["affine2"][0].shape == (sum(len(f) for f in feats), 3 * 24)


def test_a_change_made_while_observing_reaches_the_layers_after_it(tdnn_path):
    model = load_model(tdnn_path)
    am = AcousticModel(model.file, device="cpu")
    feats = features_for(am).feats
    segments = [Segment(f) for f in feats]

    def zero_affine2(name, x):
        if name == "affine2":
            model.layers["affine2"].weight.zero_()
            am.graph.reload_component(model.file.nnet.component("affine2"))

    changed = am.compute_observed(segments, zero_affine2)
    fresh = AcousticModel(model.file, device="cpu").compute(feats)  # built after the change
    torch.testing.assert_close(torch.cat(changed), torch.cat(fresh))


def test_sequential_calibration_sees_the_pruned_layers_before(chain_path):
    model = load_model(chain_path)
    am = AcousticModel(model.file, device="cpu")
    features = features_for(am, lengths=(60, 45, 30))
    selected = [n for n in model.default_layers if n != "block"]  # BlockAffine: refused (tested below)
    first, later = selected[0], selected[-1]
    dense = model.snapshot()
    results = {}
    for sequential in (True, False):
        model.restore(dense)
        cfg = MethodConfig.from_config({"name": "sparsegpt", "sequential": sequential})
        results[sequential] = prune_model(model, selected, cfg, 0.5, features=features, dense=dense)
    # The first layer sees the same (dense) input either way; later layers do not.
    torch.testing.assert_close(results[True].weights[first], results[False].weights[first])
    assert not torch.allclose(results[True].weights[later], results[False].weights[later])
    model.restore(dense)
    assert model.to_bytes() == chain_path.read_bytes()  # restore covers weights, biases, BatchNorm stats


def test_repairs_rewrite_biases_and_batchnorm_statistics_in_the_file(chain_path, tmp_path):
    model = load_model(chain_path)
    am = AcousticModel(model.file, device="cpu")
    features = features_for(am, lengths=(60, 45))
    dense = model.snapshot()
    layers = [n for n in model.default_layers if n != "block"]
    result = prune_model(model, layers, MethodConfig.from_config("magnitude"), 0.5,
                         RepairConfig.from_config(["refit", "bn"]), features, dense=dense)
    assert result.batchnorm and set(result.batchnorm) <= set(model.batchnorms)
    assert result.biases and result.weights
    out = tmp_path / "pruned.mdl"
    model.save(out)
    again = load_model(out)
    for name, (mean, var) in result.batchnorm.items():
        torch.testing.assert_close(again.batchnorms[name].mean, mean)
        torch.testing.assert_close(again.batchnorms[name].var, var)
    for name, bias in result.biases.items():
        torch.testing.assert_close(again.layers[name].bias, bias)
    for name, mask in result.masks.items():
        assert (again.layers[name].weight[mask] == 0).all()
    notes = result.changes()
    assert set(notes["per_layer"]) == set(result.masks)
    assert all(v["weight_update"] > 0 for n, v in notes["per_layer"].items() if n in result.weights)


def test_calibration_refuses_layers_it_never_reaches(chain_path):
    model = load_model(chain_path)
    am = AcousticModel(model.file, device="cpu")
    with pytest.raises(ConfigError, match="output-xent.affine feed no output used in decoding"):
        prune_model(model, ["output-xent.affine"], MethodConfig.from_config("wanda"), 0.5,
                    features=features_for(am))
    with pytest.raises(ConfigError, match="block are BlockAffineComponents"):
        prune_model(model, ["block"], MethodConfig.from_config("wanda"), 0.5, features=features_for(am))
    with pytest.raises(ConfigError, match="needs calibration data"):
        prune_model(model, model.default_layers, MethodConfig.from_config("wanda"), 0.5, features=None)


def write_archives(path, features: FeatureSet):
    import kaldiio

    path.mkdir()
    with kaldiio.WriteHelper(f"ark,scp:{path}/feats.ark,{path}/feats.scp") as w:
        for utt, f in zip(features.utts, features.feats):
            w(utt, f.numpy())
    with kaldiio.WriteHelper(f"ark,scp:{path}/ivector_online.ark,{path}/ivector_online.scp") as w:
        for utt, iv in zip(features.utts, features.ivectors):
            w(utt, iv)
    (path / "ivector_period").write_text("10\n")


def test_a_calibrated_point_records_its_knobs_and_resumes(chain_path, tmp_path):
    am = AcousticModel.load(chain_path, device="cpu")
    write_archives(tmp_path / "calib", features_for(am, lengths=(50, 40)))
    calib = {"feats": str(tmp_path / "calib" / "feats.scp"), "ivectors": str(tmp_path / "calib" / "ivector_online.scp")}

    def settings(**kw):
        base = dict(model=chain_path, method="sparsegpt", threshold=0.5, layers="all", exclude=["block"], device="cpu",
                    histograms=False, method_options={"dampening": 0.01, "block_size": 16}, repair=["bn"],
                    calib=calib)
        base.update(kw)
        return PointSettings(**base)

    run = tmp_path / "run"
    metrics = run_point(settings(), run, summary="none")
    assert metrics["status"] == "ok" and 40 < metrics["sparsity"] < 50  # "block" is counted, not pruned
    assert metrics["sparsity_selected"] == pytest.approx(50.0, abs=0.5)
    point = json.loads((run / "point.json").read_text())
    assert point["method_options"] == {"name": "sparsegpt", "pattern": None, "dampening": 0.01, "block_size": 16,
                                       "sequential": True}
    assert point["repair"] == {"steps": ["bn"], "bn_mode": "delta"}
    assert point["calib"]["feats"].endswith("feats.scp")
    doc = json.loads((run / "sparsity.json").read_text())
    assert doc["changes"]["batchnorm_updated"] and doc["changes"]["weights_updated"]
    stamp = (run / "final.mdl").stat().st_mtime_ns
    assert run_point(settings(), run, summary="none")["status"] == "ok"
    assert (run / "final.mdl").stat().st_mtime_ns == stamp  # complete for these settings: skipped
    run_point(settings(method_options={"dampening": 0.1, "block_size": 16}), run, summary="none")
    assert (run / "final.mdl").stat().st_mtime_ns != stamp  # another dampening is another point
    # The next point starts from the pristine model: a weight-only point gives a weight-only file.
    run_point(settings(method="abs", method_options={}, repair=[], threshold=0.0), tmp_path / "abs0", summary="none")
    assert (tmp_path / "abs0" / "final.mdl").read_bytes() == chain_path.read_bytes()
