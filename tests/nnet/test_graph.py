"""Descriptors and the node graph against their definitions (format doc 5.2), on tiny networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kprune.errors import KaldiFormatError
from kprune.kaldi.build import build_all_types, build_tdnn
from kprune.kaldi.model_file import read_nnet_file
from kprune.nnet.graph import NnetGraph
from nnet_helpers import net, nonlinear, tdnn

D = 3
T = 10
rng = np.random.default_rng(1)
XS = rng.standard_normal((2, T, D)).astype(np.float32)  # two sequences, frames 0..9
IV = rng.standard_normal((2, 1, 2)).astype(np.float32)


def run(descriptor: str, out_times, *, extra_lines=(), components=(), ivector=False, in_times=None):
    lines = [f"input-node name=input dim={D}"]
    if ivector:
        lines.append("input-node name=ivector dim=2")
    lines += list(extra_lines) + [f"output-node name=output input={descriptor}"]
    graph = NnetGraph(net(lines, list(components)))
    inputs = {"input": (torch.from_numpy(XS), np.arange(T) if in_times is None else in_times)}
    if ivector:
        inputs["ivector"] = (torch.from_numpy(IV), np.array([0]))
    return graph.compute(inputs, {"output": np.asarray(out_times)})["output"].numpy()


def x(t):
    return XS[:, t]


def test_append_and_offset():
    y = run("Append(Offset(input, -1), input, Offset(input, 2))", range(1, 8))
    for i, t in enumerate(range(1, 8)):
        np.testing.assert_array_equal(y[:, i], np.concatenate([x(t - 1), x(t), x(t + 2)], -1))


def test_sum_scale_const():
    y = run("Sum(Scale(2.5, input), Sum(Offset(input, 1), Const(1.5, 3)))", range(0, 9))
    for t in range(9):
        np.testing.assert_allclose(y[:, t], 2.5 * x(t) + x(t + 1) + 1.5, rtol=1e-6)


def test_replace_index_broadcasts_the_ivector():
    y = run("Append(input, ReplaceIndex(ivector, t, 0))", range(T), ivector=True)
    assert y.shape == (2, T, D + 2)
    for t in range(T):
        np.testing.assert_array_equal(y[:, t, D:], IV[:, 0])


def test_if_defined_gives_zero_where_undefined():
    y = run("IfDefined(Offset(input, -1))", range(T))
    np.testing.assert_array_equal(y[:, 0], 0.0)
    for t in range(1, T):
        np.testing.assert_array_equal(y[:, t], x(t - 1))


def test_failover_takes_the_second_where_the_first_is_missing():
    y = run("Failover(Offset(input, 2), input)", range(T))
    for t in range(T):
        np.testing.assert_array_equal(y[:, t], x(t + 2) if t + 2 < T else x(t))


def test_round_uses_mathematical_floor():
    y = run("Round(input, 3)", range(T))
    for t in range(T):
        np.testing.assert_array_equal(y[:, t], x(3 * (t // 3)))
    # Negative times round down too: t=-1 reads t=-3.
    times = np.arange(-4, 6)
    lines = [f"input-node name=input dim={D}", "output-node name=output input=Round(input, 3)"]
    g = NnetGraph(net(lines, []))
    out = g.compute({"input": (torch.from_numpy(XS), times)}, {"output": np.array([-1, -2, 2])})["output"].numpy()
    np.testing.assert_array_equal(out[:, 0], XS[:, 1])  # t=-3 is row 1 of times -4..5
    np.testing.assert_array_equal(out[:, 1], XS[:, 1])
    np.testing.assert_array_equal(out[:, 2], XS[:, 4])  # t=0


def test_switch_picks_by_t_modulo():
    y = run("Switch(input, Offset(input, 5))", range(0, 5))
    for t in range(5):
        np.testing.assert_array_equal(y[:, t], x(t) if t % 2 == 0 else x(t + 5))


def test_dim_range_node():
    y = run("dr", range(T), extra_lines=["dim-range-node name=dr input-node=input dim-offset=1 dim=2"])
    np.testing.assert_array_equal(y, XS[:, :, 1:3])


def test_tdnn_time_offsets_through_the_graph():
    w = rng.standard_normal((4, 2 * D)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    y = run("tdnn", range(1, 8), extra_lines=["component-node name=tdnn component=tdnn input=input"],
            components=[tdnn("tdnn", w, [-1, 2], bias=b)])
    for i, t in enumerate(range(1, 8)):
        expected = x(t - 1) @ w[:, :D].T + x(t + 2) @ w[:, D:].T + b
        np.testing.assert_allclose(y[:, i], expected, rtol=1e-5, atol=1e-5)


def test_output_that_needs_missing_frames_is_an_error():
    with pytest.raises(KaldiFormatError, match=r"node output.*computable at t=0.*given inputs at"):
        run("Offset(input, -1)", range(T))


def test_cycles_and_dim_mismatch_are_refused():
    lines = [f"input-node name=input dim={D}", "component-node name=a component=a input=Sum(input, a)",
             "output-node name=output input=a"]
    with pytest.raises(KaldiFormatError, match="cycle through 'a'"):
        NnetGraph(net(lines, [nonlinear("a", "RectifiedLinearComponent", D)]))
    lines = [f"input-node name=input dim={D}", "component-node name=a component=a input=Append(input, input)",
             "output-node name=output input=a"]
    with pytest.raises(KaldiFormatError, match="node a.*expected input dim 3.*dim 6"):
        NnetGraph(net(lines, [nonlinear("a", "RectifiedLinearComponent", D)]))


def test_unknown_output_and_unknown_input_are_refused():
    lines = [f"input-node name=input dim={D}", "output-node name=output input=input"]
    with pytest.raises(KaldiFormatError, match="output-node named 'nope'"):
        NnetGraph(net(lines, []), ("nope",))
    g = NnetGraph(net(lines, []))
    with pytest.raises(KaldiFormatError, match="input nodes.*found 'feats'"):
        g.compute({"feats": (torch.zeros(1, 2, D), np.arange(2))}, {"output": np.arange(2)})


def test_context_matches_the_models():
    tdnn_file = read_nnet_file(bytearray(build_tdnn(hidden_dim=8, num_pdfs=6)))
    g = NnetGraph(tdnn_file.nnet)
    assert (g.left_context, g.right_context) == (tdnn_file.left_context, tdnn_file.right_context) == (16, 10)
    all_types = read_nnet_file(bytearray(build_all_types(unknown=False)))
    g = NnetGraph(all_types.nnet)
    assert (g.left_context, g.right_context) == (2, 2)  # lda +-1, Tdnn -1 and +1
    assert g.input_dims == {"input": 8, "ivector": 4}


def test_branches_not_on_the_requested_output_are_not_built():
    model = read_nnet_file(bytearray(build_all_types(unknown=True)))
    with pytest.raises(KaldiFormatError, match="component custom.*CustomScaleComponent"):
        NnetGraph(model.nnet, ("output",))
    g = NnetGraph(model.nnet, ("output-xent",))  # the unknown component sits only on "output"
    assert "custom" not in g.nodes and g.output_dims == {"output-xent": 6}


def test_subsampled_outputs_compute_only_needed_frames():
    lines = [f"input-node name=input dim={D}",
             "component-node name=low component=low input=input",
             "component-node name=high component=high input=low",
             "output-node name=output input=high"]
    comps = [tdnn("low", np.ones((D, 2 * D), np.float32), [-1, 1]), tdnn("high", np.ones((D, 2 * D), np.float32), [-3, 3])]
    g = NnetGraph(net(lines, comps))
    assert (g.left_context, g.right_context) == (4, 4)
    plan = g.plan({"input": np.arange(-4, 34)}, {"output": np.arange(0, 30, 3)})
    np.testing.assert_array_equal(plan.times["high"], np.arange(0, 30, 3))
    np.testing.assert_array_equal(plan.times["low"], np.arange(-3, 31, 3))
    assert len(plan.times["input"]) == 2 * len(plan.times["low"])
