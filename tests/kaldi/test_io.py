"""Kaldi's basic binary/text primitives, against byte layouts from the format reference."""

from __future__ import annotations

import numpy as np
import pytest

from kprune.errors import KaldiFormatError
from kprune.kaldi.io import (BinaryReader, BinaryWriter, TextReader, TextWriter, format_float32,
                             format_float32_array, make_reader)


def binary_bytes(write) -> bytes:
    w = BinaryWriter()
    write(w)
    return w.getvalue()


def text_bytes(write) -> bytes:
    w = TextWriter()
    write(w)
    return w.getvalue()


def test_binary_layouts_match_kaldi():
    assert binary_bytes(lambda w: w.token("<Dim>")) == b"<Dim> "
    assert binary_bytes(lambda w: w.int32(768)) == b"\x04\x00\x03\x00\x00"
    assert binary_bytes(lambda w: w.float32(0.75)) == b"\x04\x00\x00\x40\x3f"
    assert binary_bytes(lambda w: w.float64(185024.0)) == b"\x08" + np.float64(185024.0).tobytes()
    assert binary_bytes(lambda w: w.bool(True)) == b"T"
    assert binary_bytes(lambda w: w.int_vector(np.array([-1, 0]))) == b"\x04\x02\x00\x00\x00\xff\xff\xff\xff\x00\x00\x00\x00"
    assert binary_bytes(lambda w: w.vector(np.zeros(0))) == b"FV \x04\x00\x00\x00\x00"
    m = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert binary_bytes(lambda w: w.matrix(m)) == b"FM \x04\x02\x00\x00\x00\x04\x03\x00\x00\x00" + m.tobytes()


def test_text_layouts_match_kaldi():
    assert text_bytes(lambda w: w.vector(np.array([1, 2.5], dtype=np.float32))) == b" [ 1 2.5 ]\n"
    assert text_bytes(lambda w: w.vector(np.zeros(0, dtype=np.float32))) == b" [ ]\n"
    assert text_bytes(lambda w: w.matrix(np.array([[1, 2], [3, 4]], dtype=np.float32))) == b" [\n  1 2 \n  3 4 ]\n"
    assert text_bytes(lambda w: w.int_vector(np.array([-1, 0]))) == b"[ -1 0 ]\n"
    assert text_bytes(lambda w: (w.token("<LearningRate>"), w.float32(0.001))) == b"<LearningRate> 0.001 "
    assert text_bytes(lambda w: w.bool(False)) == b"F "


@pytest.mark.parametrize("shape", [(0, 0), (1, 1), (3, 5), (64, 17)])
@pytest.mark.parametrize("binary", [True, False])
def test_matrix_round_trip_is_exact(shape, binary):
    rng = np.random.default_rng(0)
    m = (rng.laplace(size=shape) * 10.0 ** rng.integers(-8, 8, size=shape)).astype(np.float32)
    w = BinaryWriter() if binary else TextWriter()
    w.matrix(m)
    data = w.getvalue()
    r = (BinaryReader if binary else TextReader)(data)
    back, kind = r.read_matrix()
    assert kind == "FM"
    assert back.shape == m.shape and back.tobytes() == m.tobytes()
    assert r.at_end()


@pytest.mark.parametrize("binary", [True, False])
def test_vector_and_scalars_round_trip(binary):
    v = np.array([1e-30, -3.4e38, 0.1, -0.0, 123456.789], dtype=np.float32)
    w = BinaryWriter() if binary else TextWriter()
    w.vector(v), w.int32(-7), w.float32(0.1), w.float64(0.1), w.bool(True), w.int_vector(np.array([3, -4]))
    r = (BinaryReader if binary else TextReader)(w.getvalue())
    back, _ = r.read_vector()
    assert back.tobytes() == v.tobytes()
    assert r.read_int32() == -7
    assert np.float32(r.read_float32()) == np.float32(0.1)
    assert r.read_float64() == 0.1
    assert r.read_bool() is True
    assert r.read_int_vector().tolist() == [3, -4]


def test_float_formatting_is_shortest_exact():
    assert format_float32(0.001) == "0.001"
    assert format_float32(np.float32(1e-05)) == "1e-05"
    values = np.random.default_rng(1).standard_normal(10000).astype(np.float32)
    strings = format_float32_array(values)
    assert np.array(strings, dtype=np.float64).astype(np.float32).tobytes() == values.tobytes()
    assert max(len(s.lstrip("-").split("e")[0].replace(".", "").lstrip("0")) for s in strings) <= 9


def test_binary_matrix_is_a_view_into_the_buffer():
    m = np.ones((2, 2), dtype=np.float32)
    buf = bytearray(binary_bytes(lambda w: w.matrix(m)))
    values, _ = BinaryReader(buf).read_matrix()
    values[0, 0] = 0.0
    assert buf[-16:-12] == b"\x00\x00\x00\x00"


def test_compressed_matrices_are_decoded():
    # CM2: uint16 values, value = min + u * range / 65535, row-major.
    header = np.array([-1.0, 2.0], dtype="<f4").tobytes() + np.array([2, 2], dtype="<i4").tobytes()
    data = np.array([0, 65535, 32768, 0], dtype="<u2").tobytes()
    values, kind = BinaryReader(b"CM2 " + header + data).read_matrix()
    assert kind == "CM2"
    np.testing.assert_allclose(values, [[-1.0, 1.0], [-1.0 + 2.0 * 32768 / 65535, -1.0]], atol=1e-6)
    # CM3: uint8, value = min + u * range / 255.
    values, _ = BinaryReader(b"CM3 " + header + bytes([0, 255, 51, 0])).read_matrix()
    np.testing.assert_allclose(values, [[-1.0, 1.0], [-0.6, -1.0]], rtol=1e-6)
    # CM: per-column percentile headers; byte 0 -> p0, 64 -> p25, 192 -> p75, 255 -> p100.
    cols = np.array([[0, 16384, 49151, 65535], [0, 0, 65535, 65535]], dtype="<u2").tobytes()
    col_major = bytes([0, 64, 192, 255, 0, 64, 192, 255])
    values, _ = BinaryReader(b"CM " + header.replace(np.array([2], "<i4").tobytes() * 2,
                                                       np.array([4, 2], "<i4").tobytes()) + cols + col_major).read_matrix()
    assert values.shape == (4, 2)
    np.testing.assert_allclose(values[:, 1], [-1.0, -1.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(values[[0, 3], 0], [-1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("data, message", [
    (b"\x04\x01\x00", "end of file"),
    (b"\x07\x01\x00\x00\x00", "size byte 4, found size byte 7"),
])
def test_binary_int_errors_name_the_offset(data, message):
    with pytest.raises(KaldiFormatError, match=message) as e:
        BinaryReader(data, "x.mdl").read_int32()
    assert "x.mdl, byte" in str(e.value)


def test_text_errors_name_the_line():
    r = TextReader(b"<Dim>\n abc ", "x.mdl")
    r.expect_token("<Dim>")
    with pytest.raises(KaldiFormatError, match=r"x.mdl, line 2: expected an integer, found 'abc'"):
        r.read_int32()


def test_wrong_header_is_an_error():
    with pytest.raises(KaldiFormatError, match=r"expected the binary header"):
        make_reader(b"\x00X<Nnet3> ", "bad.mdl")
