"""The layer view: names, tensors that share the file buffer, selection, saving."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kprune.errors import ConfigError, KpruneError
from kprune.kaldi.build import build_all_types, build_tdnn
from kprune.model import load_model


@pytest.fixture
def tdnn_path(tmp_path):
    path = tmp_path / "final.mdl"
    path.write_bytes(build_tdnn(hidden_dim=32, num_pdfs=24))
    return path


@pytest.fixture
def all_types_path(tmp_path):
    path = tmp_path / "all.mdl"
    path.write_bytes(build_all_types())
    return path


def test_wsj_style_layers(tdnn_path):
    model = load_model(tdnn_path)
    assert list(model.layers) == ["lda", "affine1", "affine2", "affine3", "affine4", "affine5", "affine6",
                                  "final-affine"]
    assert model.default_layers == list(model.layers)[1:]
    layer = model.layers["affine2"]
    assert layer.type == "AffineComponent"
    assert layer.weight.dtype == torch.float32 and layer.weight.shape == (32, 96)
    assert layer.bias.shape == (32,)
    assert not model.layers["lda"].trainable


def test_layer_types_and_missing_bias(all_types_path):
    model = load_model(all_types_path)
    assert model.layers["tdnnf2.linear"].bias is None  # TdnnComponent with an empty bias
    assert model.layers["tdnnf2.affine"].bias.shape == (16,)
    assert model.layers["prefinal-l"].type == "LinearComponent" and model.layers["prefinal-l"].bias is None
    assert model.layers["block"].weight.shape == (16, 8)
    assert not model.layers["output-xent.affine"].decoding
    assert "output-xent.affine" not in model.default_layers
    assert model.opaque == {"custom": "CustomScaleComponent"}


def test_weights_share_memory_with_the_file(real_model_path, real_model_bytes, tmp_path):
    model = load_model(real_model_path)
    weight = model.layers["tdnnf3.linear"].weight
    assert np.shares_memory(weight.numpy(), np.frombuffer(model.file.buf, dtype=np.uint8))
    snapshot = model.snapshot()
    weight.masked_fill_(weight.abs() < 0.01, 0.0)
    out = tmp_path / "final.mdl"
    model.save(out)
    data = out.read_bytes()
    assert len(data) == len(real_model_bytes)
    changed = np.flatnonzero(np.frombuffer(data, np.uint8) != np.frombuffer(real_model_bytes, np.uint8))
    lo, hi = model.file.nnet.component("tdnnf3.linear").weight_field.span
    assert changed.size and lo <= changed.min() and changed.max() < hi
    model.restore(snapshot)
    assert model.to_bytes() == real_model_bytes


def test_save_in_text_and_back(tdnn_path, tmp_path):
    model = load_model(tdnn_path)
    model.layers["affine1"].weight[0, :5] = 0.0
    model.save(tmp_path / "t.mdl", binary=False)
    text = load_model(tmp_path / "t.mdl")
    assert not text.binary
    assert torch.equal(text.layers["affine1"].weight, model.layers["affine1"].weight)
    text.layers["affine2"].weight[1, 1] = 0.0  # a text model can be pruned and saved as text too
    text.save(tmp_path / "t2.mdl")
    assert load_model(tmp_path / "t2.mdl").layers["affine2"].weight[1, 1] == 0.0


def test_never_writes_over_the_input(tdnn_path):
    model = load_model(tdnn_path)
    before = tdnn_path.read_bytes()
    with pytest.raises(KpruneError, match="refusing to write over the input model"):
        model.save(tdnn_path)
    assert tdnn_path.read_bytes() == before


@pytest.mark.parametrize("layers, exclude, expected", [
    ("all", (), ["affine1", "affine2", "affine3", "affine4", "affine5", "affine6", "final-affine"]),
    ("affine1", (), ["affine1"]),
    ("lda", (), ["lda"]),
    ("affine[12]", (), ["affine1", "affine2"]),
    ("affine*", "affine2,affine3", ["affine1", "affine4", "affine5", "affine6"]),
    (["final-affine", "affine6"], (), ["affine6", "final-affine"]),
    ("*", (), ["affine1", "affine2", "affine3", "affine4", "affine5", "affine6", "final-affine"]),
])
def test_selection(tdnn_path, layers, exclude, expected):
    assert load_model(tdnn_path).select(layers, exclude) == expected


def test_selection_errors_list_the_layers(tdnn_path, all_types_path):
    model = load_model(tdnn_path)
    with pytest.raises(ConfigError, match=r"layers=affine9 matches no weight layer .*available: lda, affine1"):
        model.select("affine9")
    with pytest.raises(ConfigError, match=r"exclude=nope\* matches no weight layer"):
        model.select("all", "nope*")
    with pytest.raises(ConfigError, match="selects no layer"):
        model.select("affine1", "affine1")
    with pytest.raises(ConfigError, match="component custom has type CustomScaleComponent, which kprune does not read"):
        load_model(all_types_path).select("custom")


def test_real_model_selection(real_model_path):
    model = load_model(real_model_path)
    assert len(model.select("tdnnf*.linear")) == 14
    everything = model.select("all")
    assert "lda" not in everything and not any("xent" in n for n in everything)
    assert sum(model.layers[n].weight.numel() for n in everything) == 3_138_048
    assert sum(l.weight.numel() for l in model.layers.values() if not l.decoding) == 265_728
