"""Applying masks in place, and the sparsity statistics, on hand-computed examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kprune.errors import ConfigError
from kprune.pruning.masks import LayerStats, WeightSummary, apply_masks, sparsity_stats, summarize_weights
from kprune.pruning.rules import compute_masks

F32 = torch.float32


def tiny():
    weights = {
        "a": torch.tensor([[1.0, -2.0], [0.0, 3.0]]),
        "b": torch.tensor([4.0, 0.0, -1.0, 0.5]),
        "c": torch.tensor([2.0, 2.0]),
    }
    masks = {
        "a": torch.tensor([[True, False], [True, False]]),  # prunes 1 and the zero
        "b": torch.tensor([False, False, True, True]),      # prunes -1 and 0.5
    }
    return weights, masks


# ----------------------------------------------------------------------------
# Statistics


def test_statistics_of_a_tiny_example_by_hand():
    weights, masks = tiny()
    s = sparsity_stats(weights, masks, types={"a": "AffineComponent", "b": "LinearComponent"})
    a, b, c = s.per_layer["a"], s.per_layer["b"], s.per_layer["c"]
    # a: energy 1 + 4 + 0 + 9 = 14, pruned 1 + 0; zeros: the old zero (pruned) and 1.
    assert (a.weights, a.pruned, a.zeros, a.selected) == (4, 2, 2, True)
    assert a.energy == 14.0 and a.pruned_energy == 1.0
    assert a.sparsity == 50.0 and a.removed_energy == pytest.approx(100 / 14)
    # b: energy 16 + 0 + 1 + 0.25, pruned 1.25; zeros: the old zero plus 2 pruned.
    assert (b.weights, b.pruned, b.zeros) == (4, 2, 3)
    assert b.sparsity == 75.0 and b.removed_energy == pytest.approx(125 / 17.25)
    # c: not selected, nothing removed.
    assert (c.weights, c.pruned, c.zeros, c.selected, c.removed_energy) == (2, 0, 0, False, 0.0)
    assert (a.type, b.type, c.type) == ("AffineComponent", "LinearComponent", None)
    # Totals: 5 zeros of 10 weights network-wide, 5 of the 8 selected ones.
    assert (s.weights, s.zeros, s.pruned) == (10, 5, 4)
    assert s.sparsity == 50.0
    assert s.sparsity_selected == 62.5
    assert s.removed_energy == pytest.approx(100 * 2.25 / 39.25)
    assert s.selected == ["a", "b"]


def test_sparsity_json_layout():
    weights, masks = tiny()
    d = sparsity_stats(weights, masks).to_dict(method="pct", threshold=0.15, layers="all")
    assert list(d) == ["method", "threshold", "layers", "selected", "sparsity", "sparsity_selected",
                       "removed_energy", "removed_energy_selected", "weights", "pruned", "zeros", "per_layer"]
    assert (d["method"], d["threshold"], d["layers"], d["selected"]) == ("pct", 0.15, "all", ["a", "b"])
    assert list(d["per_layer"]) == ["a", "b", "c"]
    assert d["pruned"] == sum(layer["pruned"] for layer in d["per_layer"].values())
    assert d["per_layer"]["a"] == {"type": None, "shape": [2, 2], "weights": 4, "pruned": 2, "zeros": 2,
                                   "sparsity": 50.0, "removed_energy": pytest.approx(100 / 14), "selected": True}
    assert json.loads(json.dumps(d)) == d
    assert sparsity_stats(weights, masks).to_dict(layers=("a", "b"))["layers"] == ["a", "b"]


def test_one_pruned_layer_gives_a_small_network_wide_rate():
    weights = {f"l{i}": torch.ones(100) for i in range(10)}
    s = sparsity_stats(weights, {"l3": torch.ones(100, dtype=torch.bool)})
    assert s.sparsity == 10.0 and s.sparsity_selected == 100.0 and s.removed_energy == 10.0
    assert s.per_layer["l3"].sparsity == 100.0 and s.per_layer["l4"].sparsity == 0.0


def test_selected_set_is_explicit_when_given():
    weights, masks = tiny()
    s = sparsity_stats(weights, {"a": masks["a"], "b": None}, selected=["a", "b"])
    assert s.selected == ["a", "b"]
    assert s.per_layer["b"].pruned == 0 and s.per_layer["b"].zeros == 1
    assert s.sparsity_selected == 100 * 3 / 8


def test_layer_objects_are_accepted():
    class Layer:
        def __init__(self, weight, type):
            self.weight, self.type = weight, type

    weights, masks = tiny()
    layers = {n: Layer(w, "TdnnComponent") for n, w in weights.items()}
    s = sparsity_stats(layers, masks)
    assert s.per_layer["c"].type == "TdnnComponent"
    assert s.to_dict() == {**sparsity_stats(weights, masks, types=dict.fromkeys(weights, "TdnnComponent")).to_dict()}
    assert summarize_weights(layers) == summarize_weights(weights)


def test_baseline_gives_the_same_statistics():
    weights, masks = tiny()
    base = summarize_weights(weights)
    assert base["a"] == WeightSummary(weights=4, zeros=1, energy=14.0)
    assert sparsity_stats(weights, masks, baseline=base) == sparsity_stats(weights, masks)


def test_baseline_of_another_model_is_refused():
    weights, masks = tiny()
    base = summarize_weights({**weights, "c": torch.ones(3)})
    with pytest.raises(ConfigError, match="baseline of layer c counts 3 weights, the tensor has 2"):
        sparsity_stats(weights, masks, baseline=base)


def test_empty_and_all_zero_layers():
    weights = {"empty": torch.zeros(0, 4), "zero": torch.zeros(3, 3), "w": torch.tensor([1.0, -1.0])}
    masks = {"empty": torch.zeros(0, 4, dtype=torch.bool), "zero": torch.ones(3, 3, dtype=torch.bool)}
    s = sparsity_stats(weights, masks)
    e, z = s.per_layer["empty"], s.per_layer["zero"]
    assert (e.weights, e.zeros, e.sparsity, e.removed_energy) == (0, 0, 0.0, 0.0)
    assert (z.pruned, z.zeros, z.sparsity, z.removed_energy) == (9, 9, 100.0, 0.0)
    assert s.sparsity == 100 * 9 / 11 and s.removed_energy == 0.0
    assert sparsity_stats({}, {}).to_dict()["sparsity"] == 0.0


def test_negative_zeros_count_as_zeros():
    w = torch.tensor([-0.0, 0.0, 1.0])
    assert summarize_weights({"w": w})["w"].zeros == 2
    assert sparsity_stats({"w": w}, {"w": torch.tensor([False, False, True])}).zeros == 3


def test_removed_energy_is_accumulated_in_float64():
    # 10^6 weights of 1e-3 and one of 1: float32 accumulation would drift in the 4th digit.
    x = np.full(1_000_001, 1e-3, dtype=np.float32)
    x[0] = 1.0
    mask = torch.from_numpy(x < 0.5)
    s = sparsity_stats({"w": torch.from_numpy(x)}, {"w": mask})
    small = float(np.float32(1e-3)) ** 2 * 1_000_000
    assert s.per_layer["w"].pruned_energy == pytest.approx(small, rel=1e-12)
    assert s.removed_energy == pytest.approx(100 * small / (small + 1.0), rel=1e-12)


def test_statistics_match_the_weights_after_applying():
    g = torch.Generator().manual_seed(0)
    weights = {f"l{i}": torch.randn(40, 30, generator=g).mul_(0.05) for i in range(3)}
    weights["l1"][::3] = 0.0
    names = ["l0", "l1"]
    masks = dict(zip(names, compute_masks("abs", [weights[n] for n in names], 0.03)))
    energy = {n: float(w.double().square().sum()) for n, w in weights.items()}
    s = sparsity_stats(weights, masks)
    apply_masks(weights, masks)
    for n, w in weights.items():
        assert s.per_layer[n].zeros == int((w == 0).sum())
        left = float(w.double().square().sum())
        assert s.per_layer[n].removed_energy == pytest.approx(100 * (1 - left / energy[n]), abs=1e-9)
    assert s.zeros == sum(int((w == 0).sum()) for w in weights.values())


@pytest.mark.parametrize("kwargs, message", [
    ({"masks": {"zz": torch.zeros(2, dtype=torch.bool)}}, "masks given for layers zz that are not among"),
    ({"masks": {}, "selected": ["zz"]}, "selected layers zz are not among the weights: a, b, c"),
    ({"masks": {"c": torch.zeros(3, dtype=torch.bool)}}, r"mask of layer c has shape \(3,\), its weight \(2,\)"),
    ({"masks": {"c": torch.zeros(2)}}, "mask of layer c must be a bool tensor, got torch.float32"),
])
def test_statistics_refuse_inconsistent_input(kwargs, message):
    weights, _ = tiny()
    with pytest.raises(ConfigError, match=message):
        sparsity_stats(weights, **kwargs)


def test_statistics_refuse_a_non_tensor():
    with pytest.raises(ConfigError, match="layer x: expected a weight tensor or a layer with .weight, got list"):
        sparsity_stats({"x": [1.0]}, {})


def test_layer_stats_percentages():
    s = LayerStats(type=None, shape=(4,), weights=4, pruned=1, zeros=1, energy=8.0, pruned_energy=2.0, selected=True)
    assert s.sparsity == 25.0 and s.removed_energy == 25.0


# ----------------------------------------------------------------------------
# apply_masks


def bits(t: torch.Tensor) -> np.ndarray:
    return t.numpy().view(np.uint32).copy()


def test_apply_masks_zeroes_in_place_with_positive_zeros():
    w = torch.tensor([[-1.0, 2.0, -0.0], [float("nan"), -3.0, 4.0]])
    ptr = w.data_ptr()
    old = bits(w)
    m = torch.tensor([[True, False, False], [False, True, False]])
    assert apply_masks([w], [m]) is None
    assert w.data_ptr() == ptr
    new = bits(w).reshape(2, 3)
    assert new[0, 0] == 0 and new[1, 1] == 0               # +0.0, not -0.0
    keep = ~m.numpy()
    assert (new[keep] == old.reshape(2, 3)[keep]).all()    # -0.0 and NaN untouched, bit for bit


def test_apply_masks_writes_through_to_a_file_buffer():
    buf = bytearray(np.arange(1, 13, dtype=np.float32).tobytes())
    w = torch.from_numpy(np.frombuffer(buf, dtype=np.float32).reshape(3, 4))
    apply_masks({"w": w}, {"w": w < 5})
    assert np.frombuffer(buf, dtype=np.float32).tolist() == [0, 0, 0, 0] + list(range(5, 13))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.bfloat16])
def test_apply_masks_matches_masked_fill(dtype):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(50, 40, generator=g).to(dtype)
    m = torch.rand(50, 40, generator=g) < 0.3
    expected = w.clone().masked_fill_(m, 0)
    apply_masks([w], [m])
    assert torch.equal(w.view(torch.int16 if w.element_size() == 2 else
                              (torch.int32 if w.element_size() == 4 else torch.int64)),
                       expected.view(torch.int16 if w.element_size() == 2 else
                                     (torch.int32 if w.element_size() == 4 else torch.int64)))


def test_apply_masks_on_non_contiguous_views():
    base = torch.arange(1.0, 13.0).reshape(3, 4)
    w = base.t()  # a view, not contiguous
    apply_masks([w], [w > 6])
    assert base.tolist() == [[1, 2, 3, 4], [5, 6, 0, 0], [0, 0, 0, 0]]


def test_apply_masks_mapping_subset_and_none():
    weights = {"a": torch.ones(3), "b": torch.ones(2)}
    apply_masks(weights, {"a": torch.tensor([True, False, True]), "b": None})
    assert weights["a"].tolist() == [0, 1, 0] and weights["b"].tolist() == [1, 1]


def test_apply_masks_to_parameters_that_require_grad():
    p = torch.nn.Parameter(torch.ones(4))
    apply_masks([p], [torch.tensor([True, False, False, True])])
    assert p.detach().tolist() == [0, 1, 1, 0] and p.requires_grad


@pytest.mark.parametrize("weights, masks, message", [
    ([torch.ones(2)], [torch.ones(3, dtype=torch.bool)], r"mask of layer #0 has shape \(3,\), its weight \(2,\)"),
    ([torch.ones(2)], [torch.ones(2)], "mask of layer #0 must be a bool tensor, got torch.float32"),
    ([torch.ones(2)], [], "0 masks for 1 weight tensors"),
    ({"a": torch.ones(2)}, {"x": torch.ones(2, dtype=torch.bool)}, "masks given for layers x that are not among"),
    ([torch.ones(2)], {"a": torch.ones(2, dtype=torch.bool)}, "weights must be one too"),
])
def test_apply_masks_refuses_inconsistent_input(weights, masks, message):
    with pytest.raises(ConfigError, match=message):
        apply_masks(weights, masks)


# ----------------------------------------------------------------------------
# The real model


def test_real_model_statistics(real_model_path):
    from kprune.model import load_model

    model = load_model(real_model_path)
    prunable = {n: layer for n, layer in model.layers.items() if layer.prunable_by_default}
    selected = [n for n in prunable if n.endswith(".linear")]
    masks = dict(zip(selected, compute_masks("pct", [prunable[n].weight for n in selected], 0.2)))
    before = {n: layer.weight.clone() for n, layer in prunable.items()}
    s = sparsity_stats(prunable, masks, baseline=summarize_weights(prunable))
    apply_masks({n: layer.weight for n, layer in prunable.items()}, masks)
    assert s.weights == sum(w.numel() for w in before.values())
    assert s.zeros == sum(int((layer.weight == 0).sum()) for layer in prunable.values())
    assert 0 < s.sparsity < s.sparsity_selected < 20.0  # at most 20% of each sign, in part of the layers
    assert s.per_layer[selected[0]].type == prunable[selected[0]].type
    removed = sum(float((before[n].double() - prunable[n].weight.double()).square().sum()) for n in selected)
    total = sum(float(w.double().square().sum()) for w in before.values())
    assert s.removed_energy == pytest.approx(100 * removed / total, rel=1e-9)
    assert math.isfinite(s.removed_energy) and s.removed_energy > 0


def test_statistics_through_torch_match_numpy():
    # bfloat16 has no NumPy dtype: its statistics go through torch operations,
    # the code path of CUDA tensors.
    g = torch.Generator().manual_seed(3)
    w16 = torch.randn(30, 20, generator=g).to(torch.bfloat16)
    w16[0] = 0.0
    w32 = w16.float()  # the same values, exactly
    mask = w32.abs() < 0.5
    a = sparsity_stats({"w": w16}, {"w": mask})
    b = sparsity_stats({"w": w32}, {"w": mask})
    assert a.per_layer["w"].zeros == b.per_layer["w"].zeros == int((mask | (w32 == 0)).sum())
    assert a.per_layer["w"].pruned_energy == pytest.approx(b.per_layer["w"].pruned_energy, rel=1e-12)
    s16, s32 = summarize_weights({"w": w16})["w"], summarize_weights({"w": w32})["w"]
    assert (s16.weights, s16.zeros) == (s32.weights, s32.zeros) == (600, 20)
    assert s16.energy == pytest.approx(s32.energy, rel=1e-12)
