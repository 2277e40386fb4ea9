"""Whole model files: byte-exact round trips, format conversion, and what the parse finds."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from kprune.errors import KaldiFormatError
from kprune.kaldi import Component, OpaqueComponent, load_nnet_file, read_nnet_file, save_nnet_file
from kprune.kaldi.build import build_all_types, build_tdnn


def parse(data: bytes):
    return read_nnet_file(bytearray(data))


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("build", [
    lambda binary: build_all_types(binary=binary),
    lambda binary: build_tdnn(hidden_dim=32, num_pdfs=20, binary=binary),
    lambda binary: build_tdnn(hidden_dim=16, num_pdfs=10, binary=binary, raw=True),
], ids=["all-types", "tdnn", "tdnn-raw"])
def test_synthetic_round_trip_is_byte_exact(build, binary):
    data = build(binary)
    assert parse(data).to_bytes() == data


@pytest.mark.parametrize("binary", [True, False])
def test_conversion_round_trip_is_byte_exact(binary):
    data = build_all_types(binary=binary, unknown=False)
    other = parse(data).to_bytes(binary=not binary)
    assert other[:2] == (b"<T" if binary else b"\x00B")
    assert parse(other).to_bytes(binary=binary) == data


def test_unknown_component_passes_through_unchanged():
    for binary in (True, False):
        data = build_all_types(binary=binary)
        model = parse(data)
        custom = model.nnet.component("custom")
        assert isinstance(custom, OpaqueComponent) and custom.type == "CustomScaleComponent"
        assert model.to_bytes() == data
        with pytest.raises(KaldiFormatError, match="cannot convert component type CustomScaleComponent"):
            model.to_bytes(binary=not binary)


def test_all_component_types_are_parsed():
    model = parse(build_all_types(unknown=False))
    types = {c.type for c in model.nnet.components}
    assert types >= {"FixedAffineComponent", "NaturalGradientAffineComponent", "TdnnComponent", "LinearComponent",
                     "BatchNormComponent", "RectifiedLinearComponent", "GeneralDropoutComponent", "NoOpComponent",
                     "LogSoftmaxComponent", "BlockAffineComponent", "NormalizeComponent", "PnormComponent",
                     "SigmoidComponent", "TanhComponent", "SoftmaxComponent", "DropoutComponent",
                     "SumGroupComponent"}
    tdnn = model.nnet.component("tdnnf2.linear")
    assert tdnn.get("<TimeOffsets>").tolist() == [-1, 0]
    assert tdnn.get("<AlphaInOut>") == (4.0, 4.0) and tdnn.get("<RankInOut>") == (20, 32)
    assert model.nnet.component("tdnn1.dropout").get("<Continuous>") is True


def test_editing_a_weight_changes_only_its_bytes():
    for binary in (True, False):
        data = build_all_types(binary=binary)
        model = parse(data)
        weight = model.nnet.component("tdnn1.affine").weight_field
        weight.value[weight.value.__abs__() < 0.05] = 0.0  # in place, as pruning does
        out = model.to_bytes()
        lo, hi = weight.span
        assert out[:lo] == data[:lo]
        assert out[len(out) - (len(data) - hi):] == data[hi:]
        assert out != data
        assert np.array_equal(parse(out).nnet.component("tdnn1.affine").get("<LinearParams>"), weight.value)


def test_transition_model_maps_transition_ids_to_pdfs():
    tm = parse(build_tdnn(hidden_dim=8, num_pdfs=5)).transition_model
    # One 2-state topology: phone p has transition ids (2p-1: self-loop, 2p: forward), both pdf p-1.
    assert tm.transition_id_to_pdf().tolist() == [-1, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert tm.num_pdfs == 5 and tm.is_hmm


# -- the real model ---------------------------------------------------------

def test_real_model_round_trip_is_byte_exact(real_model_path, real_model_bytes):
    model = load_nnet_file(real_model_path)
    assert model.binary and model.is_mdl
    assert model.to_bytes() == real_model_bytes


def test_real_model_binary_text_binary_is_byte_exact(real_model_path, real_model_bytes, tmp_path):
    model = load_nnet_file(real_model_path)
    text_path = tmp_path / "final.txt.mdl"
    save_nnet_file(model, text_path, binary=False)
    text = text_path.read_bytes()
    assert text.startswith(b"<TransitionModel> \n<Topology> \n<TopologyEntry> \n<ForPhones> \n1 2 3 ")
    back = load_nnet_file(text_path)
    assert not back.binary
    assert back.to_bytes() == text  # text -> text is exact too
    assert back.to_bytes(binary=True) == real_model_bytes


def test_real_model_contents_match_the_format_reference(real_model_path):
    model = load_nnet_file(real_model_path)
    counts = Counter(c.type for c in model.nnet.components)
    assert counts == {"FixedAffineComponent": 1, "NaturalGradientAffineComponent": 5, "RectifiedLinearComponent": 17,
                      "BatchNormComponent": 19, "GeneralDropoutComponent": 15, "TdnnComponent": 28,
                      "NoOpComponent": 14, "LinearComponent": 3, "LogSoftmaxComponent": 1}
    assert all(isinstance(c, Component) for c in model.nnet.components)
    assert len(model.nnet.config_lines) == 107
    assert (model.left_context, model.right_context) == (34, 34)
    assert len(model.priors.value) == 0
    tm = model.transition_model
    assert len(tm.tuples) == 5943 and not tm.is_hmm and len(tm.log_probs) == 11887
    lda = model.nnet.component("lda")
    assert lda.get("<LinearParams>").shape == (220, 220)
    bn = model.nnet.component("tdnn1.batchnorm")
    assert bn.get("<Count>") == 185024.0 and bn.get("<TestMode>") is False
    feeding = model.nnet.components_feeding("output")
    assert "output.affine" in feeding and "lda" in feeding
    assert not any(name.startswith(("prefinal-xent", "output-xent")) for name in feeding)


def test_real_model_weights_share_the_file_buffer(real_model_path):
    model = load_nnet_file(real_model_path)
    weight = model.nnet.component("tdnnf3.linear").get("<LinearParams>")
    assert np.shares_memory(weight, np.frombuffer(model.buf, dtype=np.uint8))


def _cm2(values: np.ndarray) -> bytes:
    """Kaldi's CM2 encoding (uint16 per value, row-major) of a float matrix."""
    lo, hi = float(values.min()), float(values.max())
    rng = hi - lo
    q = np.round((values - lo) / rng * 65535).astype("<u2")
    header = np.array([lo, rng], dtype="<f4").tobytes() + np.array(values.shape, dtype="<i4").tobytes()
    return b"CM2 " + header + q.tobytes()


def test_compressed_weights_load_and_save():
    data = build_all_types(unknown=False)
    model = parse(data)
    field = model.nnet.component("tdnn1.affine").weight_field
    lo, hi = field.span
    compressed = data[:lo] + _cm2(field.value) + data[hi:]
    model = parse(compressed)
    weight = model.nnet.component("tdnn1.affine").weight_field
    assert weight.kind == "CM2" and weight.value.dtype == np.float32
    np.testing.assert_allclose(weight.value, field.value, atol=float(np.ptp(field.value)) / 65535)
    assert model.to_bytes() == compressed  # unchanged: the compressed bytes stay
    weight.value[0, 0] = 0.0
    rewritten = parse(model.to_bytes())  # changed: written back as a plain float matrix
    assert rewritten.nnet.component("tdnn1.affine").weight_field.kind == "FM"
    assert np.array_equal(rewritten.nnet.component("tdnn1.affine").get("<LinearParams>"), weight.value)
