"""Each nnet3 component in test mode against its documented math (format doc 5.4, Kaldi's Propagate)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kprune.errors import KaldiFormatError
from kprune.kaldi.components import Component, OpaqueComponent
from kprune.nnet.components import NORMALIZE_FLOOR, SCALE_EPSILON, make_op, supported_types
from kprune.kaldi.schema import F32, I32, IVEC, KNOWN_TYPES, MAT, VEC
from nnet_helpers import affine, batchnorm, field, general_dropout, linear, nonlinear, normalize, tdnn

rng = np.random.default_rng(0)
X = torch.from_numpy(rng.standard_normal((2, 5, 8)).astype(np.float32))  # [batch, time, dim]


def test_every_parsed_type_is_supported():
    assert supported_types() == KNOWN_TYPES


@pytest.mark.parametrize("ctype", ["AffineComponent", "NaturalGradientAffineComponent", "FixedAffineComponent"])
def test_affine_is_wx_plus_b(ctype):
    w, b = rng.standard_normal((3, 8)), rng.standard_normal(3)
    op = make_op(affine("a", w, b, ctype))
    assert (op.input_dim, op.output_dim) == (8, 3)
    expected = X.double().numpy() @ w.T + b
    np.testing.assert_allclose(op(X).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_linear_has_no_bias():
    w = rng.standard_normal((4, 8))
    np.testing.assert_allclose(make_op(linear("l", w))(X).numpy(), X.numpy() @ w.T, rtol=1e-5, atol=1e-5)


def test_tdnn_op_reads_offset_major_columns_and_optional_bias():
    w = rng.standard_normal((3, 16))
    op = make_op(tdnn("t", w, [-1, 2]))
    assert op.time_offsets == (-1, 2) and op.input_dim == 8 and "bias" not in op.weights
    with_bias = make_op(tdnn("t", w, [-1, 2], bias=[1.0, 2.0, 3.0]))
    x = torch.from_numpy(rng.standard_normal((1, 2, 16)).astype(np.float32))
    np.testing.assert_allclose(with_bias(x).numpy(), x.numpy() @ w.T + [1, 2, 3], rtol=1e-5, atol=1e-5)


def test_tdnn_columns_must_match_offsets():
    with pytest.raises(KaldiFormatError, match="multiple of 3 time offsets"):
        make_op(tdnn("bad", np.zeros((2, 8)), [-1, 0, 1]))


def test_block_affine_is_block_diagonal():
    w, b = rng.standard_normal((6, 4)), rng.standard_normal(6)  # 2 blocks: in 8 = 2 x 4, out 6 = 2 x 3
    comp = Component("b", "BlockAffineComponent", [field("<NumBlocks>", I32, 2), field("<LinearParams>", MAT, w),
                                                   field("<BiasParams>", VEC, b)])
    op = make_op(comp)
    full = np.zeros((6, 8))
    full[:3, :4], full[3:, 4:] = w[:3], w[3:]
    np.testing.assert_allclose(op(X).numpy(), X.numpy() @ full.T + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ctype,fn", [
    ("RectifiedLinearComponent", lambda x: np.maximum(x, 0)),
    ("SigmoidComponent", lambda x: 1 / (1 + np.exp(-x))),
    ("TanhComponent", np.tanh),
    ("LogSoftmaxComponent", lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))),
])
def test_nonlinearities(ctype, fn):
    np.testing.assert_allclose(make_op(nonlinear("n", ctype, 8))(X).numpy(), fn(X.double().numpy()), rtol=1e-5, atol=1e-6)


def test_softmax_floors_at_1e_minus_20():
    x = torch.tensor([[[0.0, -100.0, 100.0]]])
    y = make_op(nonlinear("s", "SoftmaxComponent", 3))(x)
    assert float(y[0, 0, 1]) == pytest.approx(1e-20, rel=1e-6)  # exp(-200) is below the floor
    assert float(y[0, 0, 2]) == pytest.approx(1.0)


def test_dropout_in_test_mode():
    assert torch.equal(make_op(general_dropout("d", 8, 0.5))(X), X)
    comp = Component("d", "DropoutComponent", [field("<Dim>", I32, 8), field("<DropoutProportion>", F32, 0.25)])
    np.testing.assert_allclose(make_op(comp)(X).numpy(), 0.75 * X.numpy(), rtol=1e-6)
    noop = Component("n", "NoOpComponent", [field("<Dim>", I32, 8), field("<BackpropScale>", F32, 1.0)])
    assert torch.equal(make_op(noop)(X), X)


def test_batchnorm_uses_stored_stats_per_block():
    mean, var = np.array([0.5, -1.0, 2.0, 0.0]), np.array([4.0, 1.0, 0.25, 9.0])
    op = make_op(batchnorm("bn", 8, 4, mean, var, eps=0.001, rms=2.0))
    scale = 2.0 * (var + 0.001) ** -0.5
    x = X.double().numpy().reshape(2, 5, 2, 4)
    expected = ((x - mean) * scale).reshape(2, 5, 8)
    np.testing.assert_allclose(op(X).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_batchnorm_without_stats_is_refused():
    with pytest.raises(KaldiFormatError, match="StatsMean.*dim 4.*never saw data"):
        make_op(batchnorm("bn", 8, 4, [], []))


def test_normalize_blocks_and_log_stddev():
    op = make_op(normalize("norm", 8, block=4, rms=0.5, log_stddev=True))
    assert op.output_dim == 10
    y = op(X).numpy().reshape(2, 5, 2, 5)
    x = X.double().numpy().reshape(2, 5, 2, 4)
    ms = (x ** 2).sum(-1, keepdims=True) / (4 * 0.25)
    np.testing.assert_allclose(y[..., :4], x / np.sqrt(ms), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[..., 4:], np.log(np.sqrt(ms)) + math.log(0.5), rtol=1e-5, atol=1e-5)


def test_normalize_floors_zero_input():
    op = make_op(normalize("norm", 4, log_stddev=True))
    y = op(torch.zeros(1, 1, 4)).numpy()
    assert np.all(y[..., :4] == 0)
    assert y[0, 0, 4] == pytest.approx(math.log(math.sqrt(NORMALIZE_FLOOR)), rel=1e-5)


def test_pnorm_sumgroup_product():
    pnorm = make_op(Component("p", "PnormComponent", [field("<InputDim>", I32, 8), field("<OutputDim>", I32, 2)]))
    x = X.double().numpy()
    np.testing.assert_allclose(pnorm(X).numpy(), np.sqrt((x.reshape(2, 5, 2, 4) ** 2).sum(-1)), rtol=1e-5)
    sums = make_op(Component("s", "SumGroupComponent", [field("<Sizes>", IVEC, [1, 3, 4])]))
    expected = np.stack([x[..., 0], x[..., 1:4].sum(-1), x[..., 4:].sum(-1)], -1)
    np.testing.assert_allclose(sums(X).numpy(), expected, rtol=1e-5, atol=1e-6)
    prod = make_op(Component("e", "ElementwiseProductComponent", [field("<InputDim>", I32, 8),
                                                                  field("<OutputDim>", I32, 4)]))
    np.testing.assert_allclose(prod(X).numpy(), x[..., :4] * x[..., 4:], rtol=1e-5, atol=1e-6)


def test_fixed_scale_bias_and_scale_offset():
    scales = rng.standard_normal(8)
    fs = make_op(Component("f", "FixedScaleComponent", [field("<Scales>", VEC, scales)]))
    np.testing.assert_allclose(fs(X).numpy(), X.numpy() * scales, rtol=1e-5)
    fb = make_op(Component("b", "FixedBiasComponent", [field("<Bias>", VEC, scales)]))
    np.testing.assert_allclose(fb(X).numpy(), X.numpy() + scales, rtol=1e-5)
    # Scales repeat over blocks of 4; tiny scales are pushed to +-epsilon (EnsureNonzero).
    s = np.array([2.0, 0.0, -1e-6, 1e-6])
    o = np.array([0.5, 1.0, -1.0, 0.0])
    comp = Component("so", "ScaleAndOffsetComponent", [field("<Dim>", I32, 8), field("<Scales>", VEC, s),
                                                      field("<Offsets>", VEC, o)])
    eff = np.array([2.0, SCALE_EPSILON, -SCALE_EPSILON, SCALE_EPSILON])
    expected = (X.double().numpy().reshape(2, 5, 2, 4) * eff + o).reshape(2, 5, 8)
    np.testing.assert_allclose(make_op(comp)(X).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_unknown_type_names_the_component():
    opaque = OpaqueComponent("custom", "CustomScaleComponent", b"", True)
    with pytest.raises(KaldiFormatError, match="component custom.*found CustomScaleComponent"):
        make_op(opaque)


def test_ops_copy_weights_off_the_file_buffer():
    w = np.ones((2, 8), dtype=np.float32)
    comp = affine("a", w, [0.0, 0.0])
    op = make_op(comp)
    comp.get("<LinearParams>")[:] = 5.0
    assert float(op.weights["weight"].max()) == 1.0
