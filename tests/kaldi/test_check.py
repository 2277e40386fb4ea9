"""Validation like Kaldi's Check(): each corruption of issue 9's hostile test is one KaldiFormatError
naming the component (or node), the field and the byte offset (or line)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from kprune.errors import KaldiFormatError
from kprune.kaldi import read_nnet_file
from kprune.kaldi.build import build_all_types

BYTE = re.compile(r"final\.mdl, byte (\d+): expected ")


def refused(data: bytes | bytearray, *needles: str, name: str = "final.mdl") -> str:
    with pytest.raises(KaldiFormatError) as info:
        read_nnet_file(bytearray(data), name)
    message = str(info.value)
    assert message.startswith(name) and "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.fixture(scope="module")
def real(real_model_bytes):
    return read_nnet_file(bytearray(real_model_bytes), "final.mdl")


def _patch_int(data: bytes, field, value: int) -> bytearray:
    out = bytearray(data)
    lo = field.span[0]
    assert out[lo] == 4
    out[lo + 1:lo + 5] = value.to_bytes(4, "little", signed=True)
    return out


@pytest.mark.parametrize("ctype, token", [("RectifiedLinearComponent", "<Dim>"), ("BatchNormComponent", "<Dim>"),
                                          ("BatchNormComponent", "<BlockDim>"), ("GeneralDropoutComponent", "<Dim>"),
                                          ("GeneralDropoutComponent", "<BlockDim>"), ("NoOpComponent", "<Dim>")])
@pytest.mark.parametrize("value", [0, -1, (1 << 31) - 1])
def test_a_dimension_that_contradicts_its_neighbours(real, real_model_bytes, ctype, token, value):
    comp = next(c for c in real.nnet.components if c.type == ctype)
    field = comp.field(token)
    message = refused(_patch_int(real_model_bytes, field, value), comp.name)
    assert BYTE.search(message)


def test_a_statistics_vector_of_the_wrong_dim_text():
    text = build_all_types(binary=False)
    model = read_nnet_file(bytearray(text))
    relu = model.nnet.component("tdnn1.relu")
    lo, hi = relu.field("<ValueAvg>").span
    one = text[:lo] + b" [ 0.5 ]\n" + text[hi:]
    message = refused(one, "<ValueAvg>", "RectifiedLinearComponent tdnn1.relu", "found dim 1", name="<memory>")
    assert re.search(r"line \d+: expected <ValueAvg> of dim 0 or <Dim>", message)
    lo, hi = relu.field("<DerivAvg>").span
    values = text[lo:hi].split()[1:-1]
    longer = text[:lo] + b" [ " + b" ".join(values + [values[0]]) + b" ]\n" + text[hi:]
    refused(longer, "<DerivAvg>", "tdnn1.relu", "found dim 17", name="<memory>")


@pytest.mark.parametrize("ctype, token, value, expected", [
    ("GeneralDropoutComponent", "<TimePeriod>", -1, "expected <TimePeriod> >= 0"),
    ("TdnnComponent", "<RankInOut>", None, "expected <RankInOut> > 0"),
])
def test_impossible_options_of_the_real_model(real, real_model_bytes, ctype, token, value, expected):
    comp = next(c for c in real.nnet.components if c.type == ctype)
    field = comp.field(token)
    if value is not None:
        data = _patch_int(real_model_bytes, field, value)
    else:  # an int pair: the first of the two
        data = bytearray(real_model_bytes)
        data[field.span[0] + 1:field.span[0] + 5] = (0).to_bytes(4, "little")
    message = refused(data, expected, comp.name)
    assert f"byte {field.span[0]}:" in message


@pytest.mark.parametrize("token, value", [("<RankIn>", 0), ("<RankOut>", -1), ("<UpdatePeriod>", 0)])
def test_impossible_natural_gradient_options(token, value):
    data = build_all_types()
    model = read_nnet_file(bytearray(data))
    comp = model.nnet.component("tdnn1.affine")
    refused(_patch_int(data, comp.field(token), value), f"expected {token} > 0", "tdnn1.affine",
            f"byte {comp.field(token).span[0]}", name="<memory>")


def test_unsorted_transition_tuples(real, real_model_bytes):
    tm = real.transition_model
    tuples = tm.tuples
    i = int(np.flatnonzero((tuples[1:] != tuples[:-1]).any(axis=1))[0])
    swapped = tuples.copy()
    swapped[[i, i + 1]] = swapped[[i + 1, i]]
    model = read_nnet_file(bytearray(real_model_bytes), "final.mdl")
    model.transition_model.tuples = swapped
    refused(model.encode(True), "expected the transition tuples sorted and unique")


def test_a_pdf_outside_the_networks_output(real, real_model_bytes):
    last = len(real.transition_model.tuples) - 1
    at = real.transition_model.tuples_pos + 20 * last  # four int32 of 5 bytes per tuple
    for pdf in (2616, 268436901, -1):
        data = bytearray(real_model_bytes)
        data[at + 11:at + 15] = pdf.to_bytes(4, "little", signed=True)  # the forward pdf
        message = refused(data, "expected pdf ids in [0, 2616) (the network's output dim)", str(pdf))
        assert f"byte {at}:" in message


def test_statistics_missing_or_repeated_and_a_renamed_field(real, real_model_bytes):
    bn = next(c for c in real.nnet.components if c.type == "BatchNormComponent")
    lo = bn.field("<StatsVar>").span[0] - len("<StatsVar> ")
    hi = bn.field("<StatsVar>").span[1]
    data = real_model_bytes
    refused(data[:lo] + data[hi:], "expected <StatsVar> in BatchNormComponent " + bn.name)
    message = refused(data[:hi] + data[lo:hi] + data[hi:], "<StatsVar>", bn.name, "repeated or out of Kaldi's order")
    assert f"byte {hi}:" in message
    affine = next(c for c in real.nnet.components if c.field("<MaxChange>") is not None)
    at = affine.field("<MaxChange>").span[0] - len("<MaxChange> ")
    renamed = data[:at] + b"<Epsilon> " + data[at + len("<MaxChange> "):]
    refused(renamed, "found <Epsilon>", affine.name, f"byte {at}:")


def test_config_corruption(real_model_bytes):
    data = real_model_bytes
    cases = [  # (old, new, expected message, the line the error points at)
        (b"output-node name=output ", b"output-node name=outputx ", "expected an output-node named 'output'", None),
        (b"input-node name=input dim=40", b"input-node name=input dim=41",
         "expected the input of component-node lda to have the input dim 220 of FixedAffineComponent lda, "
         "found dim 223", b"component-node name=lda "),
        (b"component-node name=tdnn1.affine component=tdnn1.affine",
         b"component-node name=tdnn1.affine component=tdnnf2.affine",
         "expected the input of component-node tdnn1.affine to have the input dim", b"component-node name=tdnn1.affine "),
        (b"component-node name=tdnn1.relu component=tdnn1.relu input=tdnn1.affine",
         b"component-node name=tdnn1.relu component=tdnn1.relu input=tdnn1.affine input=lda",
         "expected each key once, found input= twice", b"component-node name=tdnn1.relu "),
    ]
    for old, new, expected, line in cases:
        assert data.count(old) == 1, old
        bad = data.replace(old, new)
        message = refused(bad, expected)
        if line is not None:
            assert f"byte {bad.index(line)}:" in message, message


def test_unknown_component_types_still_load():
    for binary in (True, False):
        model = read_nnet_file(bytearray(build_all_types(binary=binary, unknown=True)))
        assert model.nnet.component("custom").type == "CustomScaleComponent"


def test_an_unknown_objective_is_refused():
    text = build_all_types(binary=False)
    assert text.count(b"objective=linear") >= 1
    bad = text.replace(b"objective=linear", b"objective=lineat", 1)
    refused(bad, "expected objective=linear or quadratic in output-node", "bad nnet3 config line", name="<memory>")


def test_a_recurrent_loop_is_checked_and_loads():
    text = build_all_types(binary=False)
    old = b"component-node name=tdnn1.relu component=tdnn1.relu input=tdnn1.affine"
    loop = old.replace(b"input=tdnn1.affine", b"input=Sum(tdnn1.affine, IfDefined(Offset(tdnn1.batchnorm, -1)))")
    read_nnet_file(bytearray(text.replace(old, loop)))  # a later node, read one frame back: as Kaldi allows
    wrong = old.replace(b"input=tdnn1.affine", b"input=Sum(tdnn1.affine, IfDefined(Offset(lda, -1)))")
    refused(text.replace(old, wrong), "expected the parts of node tdnn1.relu's input to agree",
            "Sum() of parts with different dims [16, 28]", name="<memory>")
