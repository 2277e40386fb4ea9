"""Bad input: every problem is one KaldiFormatError naming the file, the place and what was expected."""

from __future__ import annotations

import re

import numpy as np
import pytest

from kprune.errors import KaldiFormatError
from kprune.kaldi import Component, load_nnet_file, read_nnet_file
from kprune.kaldi.build import build_all_types

WHERE = re.compile(r", (byte \d+|line \d+): expected ")


def check_error(data: bytes, name: str = "model.mdl") -> KaldiFormatError:
    with pytest.raises(KaldiFormatError) as info:
        read_nnet_file(bytearray(data), name)
    message = str(info.value)
    assert message.startswith(name) and "\n" not in message
    return info.value


def test_missing_file(tmp_path):
    with pytest.raises(KaldiFormatError, match=r"nope\.mdl: expected a Kaldi model file, found no such file"):
        load_nnet_file(tmp_path / "nope.mdl")


def test_empty_file(tmp_path):
    (tmp_path / "empty.mdl").write_bytes(b"")
    with pytest.raises(KaldiFormatError, match=r"empty\.mdl, byte 0: expected a Kaldi nnet3 model, found an empty file"):
        load_nnet_file(tmp_path / "empty.mdl")


def test_wrong_header():
    e = check_error(b"\x00Q" + build_all_types()[2:])
    assert "byte 0" in str(e) and "binary header" in str(e)
    e = check_error(b"<Nnet2> ")
    assert "expected <TransitionModel>" in str(e)


def test_token_where_a_number_should_be():
    text = build_all_types(binary=False)
    bad = text.replace(b"<Dim> 16 ", b"<Dim> sixteen ", 1)
    e = check_error(bad)
    line = text[:text.index(b"<Dim> 16 ")].count(b"\n") + 1
    assert f"line {line}: expected an integer, found 'sixteen'" in str(e)


def test_dimension_that_does_not_match_the_data():
    model = read_nnet_file(bytearray(build_all_types()))
    weight = model.nnet.component("tdnn1.affine").weight_field
    rows_at = weight.span[0] + 3  # after "FM "
    data = bytearray(model.buf)
    data[rows_at:rows_at + 5] = b"\x04" + (15).to_bytes(4, "little")  # 16 rows -> 15
    e = check_error(bytes(data))
    assert "tdnn1.affine" in str(e)
    # A bias of the wrong length is named as such.
    text = build_all_types(binary=False)
    model = read_nnet_file(bytearray(text))
    bias = model.nnet.component("output.affine").field("<BiasParams>")
    lo, hi = bias.span
    values = text[lo:hi].split()
    shorter = text[:lo] + b" " + b" ".join(values[:-2] + [values[-1]]) + b"\n" + text[hi:]
    e = check_error(shorter)
    assert "expected <BiasParams> of dim 6 (the rows of the weight)" in str(e) and "output.affine" in str(e)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_weights(value):
    model = read_nnet_file(bytearray(build_all_types()))
    weight = model.nnet.component("tdnnf2.affine").get("<LinearParams>")
    weight[3, 4] = value  # writes into the buffer
    e = check_error(bytes(model.buf))
    assert "expected finite values in <LinearParams> of TdnnComponent tdnnf2.affine" in str(e)
    assert "at row 3, column 4" in str(e)


def test_text_nan_weights():
    text = build_all_types(binary=False)
    model = read_nnet_file(bytearray(text))
    lo, _ = model.nnet.component("lda").weight_field.span
    first = re.compile(rb"-?[0-9][^ \n]*").search(text, lo)
    bad = text[:first.start()] + b"nan" + text[first.end():]
    assert "expected finite values in <LinearParams> of FixedAffineComponent lda" in str(check_error(bad))


def _structure_offsets(data: bytes) -> list[int]:
    """Byte offsets where the structure of a parsed model changes: each field's value start and end."""
    model = read_nnet_file(bytearray(data))
    offsets = {0, 1, 2, len(data) - 1}
    for c in model.nnet.components:
        offsets.update(c.span)
        if isinstance(c, Component):
            for f in c.fields:
                offsets.update((f.span[0] - 1, f.span[0], f.span[0] + 1, f.span[1] - 1, f.span[1]))
    offsets.update(model.transition_model.span)
    offsets.update(model.nnet.span)
    return sorted(o for o in offsets if 0 <= o < len(data))


def test_truncation_anywhere_is_a_clean_error(real_model_bytes):
    data = real_model_bytes
    rng = np.random.default_rng(0)
    points = set(_structure_offsets(data)[::3]) | set(rng.integers(1, len(data), 150).tolist())
    for n in sorted(points):
        e = check_error(data[:n], "final.mdl")
        assert WHERE.search(str(e)), str(e)


def test_truncated_text_model_is_a_clean_error():
    data = build_all_types(binary=False)
    for n in range(1, len(data) - 1, 97):
        if not data[n:].strip():
            continue  # only trailing whitespace was cut
        check_error(data[:n])


def _value_bytes(model) -> list[tuple[int, int]]:
    """Byte ranges holding number values (not tokens, size bytes or dimensions) in a binary model."""
    ranges = []
    header = {"FM": 13, "DM": 13, "FV": 8, "DV": 8}
    for c in model.nnet.components:
        for f in c.fields:
            lo, hi = f.span
            if f.kind in header:
                ranges.append((lo + header[f.kind], hi))
            elif f.type in ("int32", "float", "double"):
                ranges.append((lo + 1, hi))
            elif f.type in ("float-pair", "int-pair"):
                ranges += [(lo + 1, lo + 5), (lo + 6, hi)]
            elif f.type == "bool":
                ranges.append((lo, hi))
    return ranges


def test_corruption_of_structure_is_a_clean_error(real_model_bytes):
    """Overwrites bytes where tokens, size bytes and dimensions sit.

    A patched byte inside a number's value may still parse (any float is
    valid); anywhere else the parse must fail with a KaldiFormatError.
    """
    data = real_model_bytes
    model = read_nnet_file(bytearray(data))
    values = _value_bytes(model)
    offsets = _structure_offsets(data)
    rng = np.random.default_rng(1)
    failures = 0
    for o in rng.choice(offsets, 100, replace=False).tolist():
        for patch in (b"\x07", b"Z"):
            bad = bytearray(data)
            if bad[o:o + 1] == patch:
                continue
            bad[o:o + 1] = patch
            try:
                read_nnet_file(bad, "final.mdl")
            except KaldiFormatError as e:
                assert str(e).startswith("final.mdl") and "\n" not in str(e)
                failures += 1
            else:
                assert any(lo <= o < hi for lo, hi in values), f"corrupting byte {o} went unnoticed"
    assert failures > 100


def test_corrupt_tokens_and_sizes_are_caught(real_model_bytes):
    model = read_nnet_file(bytearray(real_model_bytes))
    cases = 0
    for c in model.nnet.components[::5]:
        for f in c.fields:
            lo = f.span[0]
            if f.type in ("int32", "float", "double"):  # size byte
                bad = bytearray(real_model_bytes)
                bad[lo] = 0x03
                e = check_error(bytes(bad), "final.mdl")
                assert f"byte {lo}" in str(e) and "size byte" in str(e)
                cases += 1
            token_at = lo - len(f.token) - 1
            bad = bytearray(real_model_bytes)
            bad[token_at + 1] = ord("Q")  # <Dim> -> <Qim>
            e = check_error(bytes(bad), "final.mdl")
            assert f"component {c.name}" in str(e) and f"byte {token_at}" in str(e)
            cases += 1
    assert cases > 100


@pytest.mark.parametrize("old, new, message", [
    (b"<ForPhones> \n1 ", b"<ForPhones> \n-1 ", "expected a phone id in [1, "),
    (b"<ForPhones> \n1 ", b"<ForPhones> \n999999999999 ", "expected a phone id in [1, "),
    (b"<TimeOffsets> [ -1 0 ]", b"<TimeOffsets> [ -1 99999999999 ]", "expected an int32 in an integer vector"),
    (b"input=output-xent.affine", b"input=nowhere", "expected node 'nowhere'"),
])
def test_corrupt_text_models(old, new, message):
    text = build_all_types(binary=False)
    assert old in text
    assert message in str(check_error(text.replace(old, new, 1)))


# -- only regular files, checked before they are read (issue 9) ----------------

def test_a_fifo_is_refused_at_once(tmp_path):
    import os
    import time

    fifo = tmp_path / "final.mdl"
    os.mkfifo(fifo)
    start = time.perf_counter()
    with pytest.raises(KaldiFormatError, match=r"final\.mdl: expected a regular Kaldi model file, found a FIFO"):
        load_nnet_file(fifo)
    assert time.perf_counter() - start < 1.0


def test_a_device_or_a_directory_is_refused(tmp_path):
    with pytest.raises(KaldiFormatError, match=r"/dev/zero: expected a regular Kaldi model file, found a character"):
        load_nnet_file("/dev/zero")
    with pytest.raises(KaldiFormatError, match="found a directory"):
        load_nnet_file(tmp_path)


@pytest.mark.parametrize("gigabytes", [1, 8])
def test_a_huge_file_of_zeros_is_refused_before_it_is_read(tmp_path, gigabytes):
    import time
    import tracemalloc

    path = tmp_path / "final.mdl"
    with open(path, "wb") as f:
        f.truncate(gigabytes << 30)  # sparse: no disk used
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(KaldiFormatError, match=r"final\.mdl, byte 0: expected the binary header"):
        load_nnet_file(path)
    assert time.perf_counter() - start < 0.5
    assert tracemalloc.get_traced_memory()[1] < 10 << 20
    tracemalloc.stop()


def test_a_file_with_the_wrong_start_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "final.mdl"
    path.write_bytes(b"\x00B<Nnet2> " + bytes(1000))
    with pytest.raises(KaldiFormatError, match=r"byte 2: expected <TransitionModel> \(a \.mdl file\) or <Nnet3>"):
        load_nnet_file(path)
    path.write_bytes(b"hello world\n" * 100)
    with pytest.raises(KaldiFormatError, match=r"line 1: expected <TransitionModel>"):
        load_nnet_file(path)


def test_a_deeply_nested_descriptor_is_a_clean_error():
    text = build_all_types(binary=False)
    old = b"input=output-xent.affine"
    assert old in text
    deep = b"input=" + b"Sum(" * 2000 + b"output-xent.affine" + b", output-xent.affine)" * 2000
    e = check_error(text.replace(old, deep, 1))
    assert "nested at most 64 deep, found 2000 levels" in str(e)


def test_a_malformed_integer_is_a_clean_error():
    text = build_all_types(binary=False)
    assert b"<TimeOffsets> [ -1 0 ]" in text
    for bad in (b"--1", b"1-", b"-", b"+-2", b"0x10"):
        e = check_error(text.replace(b"<TimeOffsets> [ -1 0 ]", b"<TimeOffsets> [ " + bad + b" 0 ]", 1))
        assert f"expected an int32 in an integer vector, found {bad.decode()!r}" in str(e)
