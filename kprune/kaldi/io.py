"""Kaldi's basic binary and text serialisation, read and written exactly.

This module knows the primitives of ``src/base/io-funcs`` and
``src/matrix/kaldi-{matrix,vector}.cc`` and nothing about networks: tokens,
size-prefixed scalars, bools, integer vectors, float matrices and vectors, and
compressed matrices (read only).  The format is described in
``shared/docs/kaldi-nnet3-format.md`` sections 1 and 9.

Readers work on an in-memory buffer and keep a byte position, so that every
error can say where the file is bad and every parsed item can remember the
bytes it came from (byte-exact rewriting is done by splicing those spans).
Binary float arrays are returned as numpy views into the buffer: no copy.
"""

from __future__ import annotations

import math
import os
import re
from typing import Union

import numpy as np

from kprune.errors import KaldiFormatError

BINARY_HEADER = b"\x00B"

_WHITESPACE = b" \t\n\r\v\f"
_TEXT_WORD = re.compile(rb"[^ \t\n\r\v\f]+")
_TEXT_SPACE = re.compile(rb"[ \t\n\r\v\f]*")
_MAX_ELEMENTS = 1 << 34  # sanity bound on a declared dimension

PathLike = Union[str, os.PathLike, None]


def _describe(data: bytes, limit: int = 24) -> str:
    """Shows found bytes in an error message without raising on bad UTF-8."""
    if not data:
        return "end of file"
    text = data[:limit].decode("ascii", errors="backslashreplace")
    text = text.replace("\n", "\\n")
    return repr(text + ("..." if len(data) > limit else ""))


class Reader:
    """Common state of the binary and text readers.

    ``buf`` is the whole file; ``pos`` the current byte offset into it.
    """

    binary: bool

    def __init__(self, buf: bytes | bytearray | memoryview, path: PathLike = None, pos: int = 0):
        self.buf = buf
        self.path = path
        self.pos = pos
        self.end = len(buf)

    # -- error reporting ---------------------------------------------------
    def where(self, pos: int | None = None) -> str:
        pos = self.pos if pos is None else pos
        return f"byte {pos}"

    def error(self, message: str, pos: int | None = None) -> KaldiFormatError:
        return KaldiFormatError(self.path, self.where(pos), message)

    def at_end(self) -> bool:
        return self.pos >= self.end

    def read_line(self) -> str:
        """Reads up to and including the next ``\\n``; returns the line without it.

        Config lines of an nnet3 file are plain text in both modes.
        """
        nl = self.buf.find(b"\n", self.pos)
        if nl < 0:
            raise self.error("expected a line ending in '\\n', found end of file")
        raw = bytes(self.buf[self.pos:nl])
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.error(f"expected a UTF-8 config line, found bytes {_describe(raw)}", self.pos + e.start) from None
        self.pos = nl + 1
        return line[:-1] if line.endswith("\r") else line

    def expect_token(self, expected: str) -> None:
        start = self.pos
        found = self.read_token()
        if found != expected:
            raise self.error(f"expected token {expected}, found {found!r}", start)

    def expect_one_of(self, *expected: str) -> str:
        start = self.pos
        found = self.read_token()
        if found not in expected:
            raise self.error(f"expected one of {', '.join(expected)}, found {found!r}", start)
        return found

    def _check_dims(self, rows: int, cols: int, start: int) -> None:
        if rows < 0 or cols < 0 or rows * cols > _MAX_ELEMENTS:
            raise self.error(f"expected a non-negative matrix size, found {rows}x{cols}", start)


class BinaryReader(Reader):
    """Reads Kaldi's binary format (``binary=true``)."""

    binary = True

    def _take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > self.end:
            raise self.error(f"expected {what} ({n} bytes), found end of file after {self.end - self.pos} bytes")
        view = memoryview(self.buf)[self.pos:self.pos + n]
        self.pos += n
        return view

    def read_token(self) -> str:
        """A token is any run of non-space bytes ended by exactly one space."""
        start = self.pos
        sp = self.buf.find(b" ", start, min(self.end, start + 4096))
        if sp < 0:
            raise self.error(f"expected a token ended by a space, found {_describe(bytes(self.buf[start:start + 24]))}")
        raw = bytes(self.buf[start:sp])
        if not raw or any(c in _WHITESPACE or c < 0x21 for c in raw):
            raise self.error(f"expected a token, found {_describe(raw + b' ')}")
        self.pos = sp + 1
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.error(f"expected an ASCII token, found {_describe(raw)}", start) from None

    def peek_byte(self) -> int:
        return self.buf[self.pos] if self.pos < self.end else -1

    def _size_byte(self, allowed: tuple[int, ...], what: str) -> int:
        start = self.pos
        size = self._take(1, f"the size byte of {what}")[0]
        if size not in allowed:
            raise self.error(f"expected {what} with size byte {' or '.join(map(str, allowed))}, found size byte {size}", start)
        return size

    def read_int32(self) -> int:
        self._size_byte((4,), "an int32")
        return int.from_bytes(self._take(4, "an int32"), "little", signed=True)

    def read_float32(self) -> float:
        size = self._size_byte((4, 8), "a float")
        raw = self._take(size, "a float")
        value = np.frombuffer(raw, dtype="<f4" if size == 4 else "<f8")[0]
        return float(np.float32(value))

    def read_float64(self) -> float:
        size = self._size_byte((4, 8), "a double")
        raw = self._take(size, "a double")
        return float(np.frombuffer(raw, dtype="<f4" if size == 4 else "<f8")[0])

    def read_bool(self) -> bool:
        start = self.pos
        c = self._take(1, "a bool (T or F)")[0]
        if c not in (0x54, 0x46):
            raise self.error(f"expected a bool (T or F), found {_describe(bytes([c]))}", start)
        return c == 0x54

    def read_int_vector(self) -> np.ndarray:
        self._size_byte((4,), "an int32 vector")
        start = self.pos
        n = int.from_bytes(self._take(4, "an integer-vector length"), "little", signed=True)
        if n < 0:
            raise self.error(f"expected a non-negative vector length, found {n}", start)
        return np.frombuffer(self._take(4 * n, f"{n} int32 values"), dtype="<i4").copy()

    def _float_kind(self) -> tuple[str, int]:
        start = self.pos
        tok = self.read_token()
        if tok in ("FM", "FV"):
            return tok, 4
        if tok in ("DM", "DV"):
            return tok, 8
        if tok in ("CM", "CM2", "CM3"):
            return tok, 0
        raise self.error(f"expected a matrix or vector (FM, DM, FV, DV, CM), found token {tok!r}", start)

    def read_matrix(self) -> tuple[np.ndarray, str]:
        """Returns ``(values, kind)``; FM/DM values are views into the buffer."""
        start = self.pos
        kind, width = self._float_kind()
        if kind.startswith("C"):
            return self._read_compressed(kind, start), kind
        if kind.endswith("V"):
            raise self.error(f"expected a matrix (FM or DM), found vector {kind}", start)
        dim_pos = self.pos
        rows, cols = self.read_int32(), self.read_int32()
        self._check_dims(rows, cols, dim_pos)
        dtype = "<f4" if width == 4 else "<f8"
        n = rows * cols
        self._take(width * n, f"{rows}x{cols} matrix data")
        values = np.frombuffer(self.buf, dtype=dtype, count=n, offset=self.pos - width * n)
        return values.reshape(rows, cols), kind

    def read_vector(self) -> tuple[np.ndarray, str]:
        start = self.pos
        kind, width = self._float_kind()
        if not kind.endswith("V"):
            raise self.error(f"expected a vector (FV or DV), found {kind}", start)
        dim_pos = self.pos
        dim = self.read_int32()
        self._check_dims(1, dim, dim_pos)
        dtype = "<f4" if width == 4 else "<f8"
        self._take(width * dim, f"{dim} vector values")
        return np.frombuffer(self.buf, dtype=dtype, count=dim, offset=self.pos - width * dim), kind

    def _read_compressed(self, kind: str, start: int) -> np.ndarray:
        header = np.frombuffer(self._take(16, "a compressed-matrix header"), dtype=np.dtype([
            ("min", "<f4"), ("range", "<f4"), ("rows", "<i4"), ("cols", "<i4")]))[0]
        rows, cols = int(header["rows"]), int(header["cols"])
        self._check_dims(rows, cols, start)
        lo, rng = np.float32(header["min"]), np.float32(header["range"])
        if kind == "CM":
            col_headers = np.frombuffer(self._take(8 * cols, "compressed column headers"), dtype="<u2")
            data = np.frombuffer(self._take(rows * cols, "compressed matrix data"), dtype=np.uint8)
            return _decode_cm1(lo, rng, col_headers.reshape(cols, 4), data.reshape(cols, rows))
        # CompressedMatrix::CopyToMat: increment = range * (1.0 / 65535.0) (or
        # 255), a float; then min_value + value * increment in float.
        if kind == "CM2":
            data = np.frombuffer(self._take(2 * rows * cols, "compressed matrix data"), dtype="<u2")
            increment = np.float32(np.float64(rng) * (1.0 / 65535.0))
        else:
            data = np.frombuffer(self._take(rows * cols, "compressed matrix data"), dtype=np.uint8)
            increment = np.float32(np.float64(rng) * (1.0 / 255.0))
        return (lo + data.astype(np.float32) * increment).reshape(rows, cols)


def _decode_cm1(lo: np.float32, rng: np.float32, col_headers: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Decodes Kaldi's per-column-header compressed format (``CM``), bit for bit.

    Column percentiles follow ``Uint16ToFloat`` (float arithmetic:
    ``min + range * 1.52590218966964e-05F * u``); values follow
    ``CharToFloat``, whose ``(1/64.0)``-style constants are doubles, so the
    last product and sum are in double and rounded to float once: bytes 0..64
    interpolate between the 0th and 25th percentile, 64..192 between the 25th
    and 75th, 192..255 between the 75th and 100th.
    """
    step = np.float32(rng * np.float32(1.52590218966964e-05))
    p = lo + step * col_headers.astype(np.float32)  # [cols, 4], float32
    p0, p25, p75, p100 = (p[:, i:i + 1] for i in range(4))
    b = data.astype(np.float32)  # [cols, rows]

    def piece(start, end, offset, scale):
        span = (end - start) * (b - np.float32(offset))  # float * float, as in C++
        return (start.astype(np.float64) + span.astype(np.float64) * scale).astype(np.float32)

    out = np.where(data <= 64, piece(p0, p25, 0, 1 / 64.0),
                   np.where(data <= 192, piece(p25, p75, 64, 1 / 128.0), piece(p75, p100, 192, 1 / 63.0)))
    return np.ascontiguousarray(out.T)


class TextReader(Reader):
    """Reads Kaldi's text format (``binary=false``); positions are reported as lines."""

    binary = False

    def where(self, pos: int | None = None) -> str:
        pos = self.pos if pos is None else pos
        line = self.buf.count(b"\n", 0, pos) + 1
        return f"line {line}"

    def skip_space(self) -> None:
        self.pos = _TEXT_SPACE.match(self.buf, self.pos).end()

    def _word(self, what: str) -> bytes:
        self.skip_space()
        m = _TEXT_WORD.match(self.buf, self.pos)
        if m is None:
            raise self.error(f"expected {what}, found end of file")
        self.pos = m.end()
        return m.group()

    def read_token(self) -> str:
        start = self.pos
        raw = self._word("a token")
        # Like Kaldi's ReadToken, eat the one whitespace character that ends it.
        if self.pos < self.end and self.buf[self.pos] in _WHITESPACE:
            self.pos += 1
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.error(f"expected an ASCII token, found {_describe(raw)}", start) from None

    def peek_byte(self) -> int:
        self.skip_space()
        return self.buf[self.pos] if self.pos < self.end else -1

    def read_int32(self) -> int:
        raw = self._word("an integer")
        try:
            value = int(raw)
        except ValueError:
            raise self.error(f"expected an integer, found {_describe(raw)}", self.pos - len(raw)) from None
        if not -(1 << 31) <= value < (1 << 31):
            raise self.error(f"expected an int32, found {value}", self.pos - len(raw))
        return value

    def read_float32(self) -> float:
        return float(np.float32(self.read_float64()))

    def read_float64(self) -> float:
        raw = self._word("a number")
        try:
            return float(raw)
        except ValueError:
            raise self.error(f"expected a number, found {_describe(raw)}", self.pos - len(raw)) from None

    def read_bool(self) -> bool:
        raw = self._word("a bool (T or F)")
        if raw not in (b"T", b"F"):
            raise self.error(f"expected a bool (T or F), found {_describe(raw)}", self.pos - len(raw))
        return raw == b"T"

    def _bracketed(self, what: str) -> tuple[int, int]:
        """Finds ``[ ... ]``; returns the span of the inside and moves past ``]``."""
        start = self.pos
        opening = self._word(what)
        if opening == b"[]":
            return self.pos, self.pos
        if opening != b"[":
            raise self.error(f"expected {what} starting with '[', found {_describe(opening)}", start)
        inside = self.pos
        close = self.buf.find(b"]", inside)
        if close < 0:
            raise self.error(f"expected ']' closing {what}, found end of file", inside)
        self.pos = close + 1
        # Kaldi eats one newline after ']'.
        if self.buf[self.pos:self.pos + 2] == b"\r\n":
            self.pos += 2
        elif self.buf[self.pos:self.pos + 1] == b"\n":
            self.pos += 1
        return inside, close

    def _floats(self, lo: int, hi: int, what: str) -> np.ndarray:
        chunk = bytes(self.buf[lo:hi])
        if not chunk.strip():
            return np.zeros(0, dtype=np.float32)
        try:
            return np.fromstring(chunk, dtype=np.float64, sep=" ").astype(np.float32)
        except ValueError:
            bad = next((w for w in chunk.split() if not _is_number(w)), chunk[:24])
            offset = lo + chunk.find(bad)
            raise self.error(f"expected a number in {what}, found {_describe(bad)}", offset) from None

    def read_int_vector(self) -> np.ndarray:
        lo, hi = self._bracketed("an integer vector")
        words = bytes(self.buf[lo:hi]).split()
        bad = next((w for w in words if not _is_int32(w)), None)
        if bad is not None:
            raise self.error(f"expected an int32 in an integer vector, found {_describe(bad)}",
                             lo + bytes(self.buf[lo:hi]).find(bad))
        return np.array([int(w) for w in words], dtype=np.int32)

    def read_vector(self) -> tuple[np.ndarray, str]:
        lo, hi = self._bracketed("a vector")
        if b"\n" in self.buf[lo:hi]:
            raise self.error("expected a vector on one line, found a newline inside '[ ]'", lo)
        return self._floats(lo, hi, "a vector"), "FV"

    def read_matrix(self) -> tuple[np.ndarray, str]:
        start = self.pos
        lo, hi = self._bracketed("a matrix")
        values = self._floats(lo, hi, "a matrix")
        rows = [r for r in bytes(self.buf[lo:hi]).replace(b";", b"\n").split(b"\n") if r.strip()]
        if not rows:
            return values.reshape(0, 0), "FM"
        cols = len(rows[0].split())
        if values.size != cols * len(rows) or any(len(r.split()) != cols for r in rows):
            raise self.error(f"expected a matrix whose rows all have {cols} values, found rows of unequal length", start)
        return values.reshape(len(rows), cols), "FM"


def _is_int32(word: bytes) -> bool:
    """An optional minus sign, then digits, within int32 (what Kaldi's integer reading takes)."""
    digits = word[1:] if word[:1] in (b"-", b"+") else word
    return digits.isdigit() and -(1 << 31) <= int(word) < (1 << 31)


def _is_number(word: bytes) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

def format_float32(value: float) -> str:
    """Shortest of ``%.7g`` (Kaldi's own precision), ``%.8g``, ``%.9g`` that reads back the same float32."""
    f = np.float32(value)
    if not math.isfinite(f):
        return _nonfinite(float(f))
    for digits in (7, 8, 9):
        s = "%.*g" % (digits, f)
        if np.float32(s) == f:
            return s
    return "%.9g" % f


def format_float64(value: float) -> str:
    if not math.isfinite(value):
        return _nonfinite(value)
    for digits in (7, 17):
        s = "%.*g" % (digits, value)
        if float(s) == value:
            return s
    return repr(value)


def _nonfinite(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def format_float32_array(values: np.ndarray) -> list[str]:
    """Formats many float32 values; exact for round trips, Kaldi-like where possible.

    Each value gets the fewest of 7 (Kaldi's precision), 8 or 9 significant
    digits that read back as the same float32; 9 always do.
    """
    flat = np.ascontiguousarray(values, dtype=np.float32).ravel()
    as_double = flat.tolist()
    strings = ["%.7g" % v for v in as_double]
    todo = np.arange(len(strings))
    for digits in (8, 9):
        if not len(todo):
            break
        back = np.array([strings[i] for i in todo.tolist()], dtype=np.float64).astype(np.float32)
        want = flat[todo]
        todo = todo[~((back == want) | (np.isnan(back) & np.isnan(want)))]
        for i in todo.tolist():
            strings[i] = "%.*g" % (digits, as_double[i])
    return strings


class Writer:
    """Accumulates output bytes; ``binary`` selects the encoding."""

    binary: bool

    def __init__(self) -> None:
        self.parts: list[bytes | bytearray | memoryview] = []

    def raw(self, data: bytes | bytearray | memoryview) -> None:
        self.parts.append(data)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)

    def newline(self) -> None:
        """A newline that Kaldi writes in text mode only."""

    def token(self, tok: str) -> None:
        self.parts.append(tok.encode("ascii") + b" ")


class BinaryWriter(Writer):
    binary = True

    def int32(self, v: int) -> None:
        self.parts.append(b"\x04" + int(v).to_bytes(4, "little", signed=True))

    def float32(self, v: float) -> None:
        self.parts.append(b"\x04" + np.float32(v).tobytes())

    def float64(self, v: float) -> None:
        self.parts.append(b"\x08" + np.float64(v).tobytes())

    def bool(self, v: bool) -> None:
        self.parts.append(b"T" if v else b"F")

    def int_vector(self, v: np.ndarray) -> None:
        arr = np.asarray(v, dtype="<i4")
        self.parts.append(b"\x04" + len(arr).to_bytes(4, "little", signed=True) + arr.tobytes())

    def matrix(self, m: np.ndarray, kind: str = "FM") -> None:
        double = kind == "DM"
        arr = np.ascontiguousarray(m, dtype="<f8" if double else "<f4")
        self.token("DM" if double else "FM")
        self.int32(arr.shape[0])
        self.int32(arr.shape[1])
        self.parts.append(arr.tobytes())

    def vector(self, v: np.ndarray, kind: str = "FV") -> None:
        double = kind == "DV"
        arr = np.ascontiguousarray(v, dtype="<f8" if double else "<f4")
        self.token("DV" if double else "FV")
        self.int32(arr.shape[0])
        self.parts.append(arr.tobytes())


class TextWriter(Writer):
    """Kaldi's text layout, with floats written to round-trip exactly."""

    binary = False

    def newline(self) -> None:
        self.parts.append(b"\n")

    def int32(self, v: int) -> None:
        self.parts.append(b"%d " % int(v))

    def float32(self, v: float) -> None:
        self.parts.append(format_float32(v).encode() + b" ")

    def float64(self, v: float) -> None:
        self.parts.append(format_float64(v).encode() + b" ")

    def bool(self, v: bool) -> None:
        self.parts.append(b"T " if v else b"F ")

    def int_vector(self, v: np.ndarray) -> None:
        body = "".join(f"{int(x)} " for x in np.asarray(v).tolist())
        self.parts.append(f"[ {body}]\n".encode())

    def matrix(self, m: np.ndarray, kind: str = "FM") -> None:
        rows, cols = m.shape
        if cols == 0 or rows == 0:
            self.parts.append(b" [ ]\n")
            return
        fmt = format_float32_array if kind != "DM" else (lambda a: [format_float64(x) for x in a.ravel().tolist()])
        strings = fmt(m)
        lines = [" ".join(strings[r * cols:(r + 1) * cols]) for r in range(rows)]
        self.parts.append((" [\n  " + " \n  ".join(lines) + " ]\n").encode())

    def vector(self, v: np.ndarray, kind: str = "FV") -> None:
        if len(v) == 0:
            self.parts.append(b" [ ]\n")
            return
        strings = format_float32_array(v) if kind != "DV" else [format_float64(x) for x in np.asarray(v).tolist()]
        self.parts.append((" [ " + " ".join(strings) + " ]\n").encode())


def make_reader(buf: bytes | bytearray, path: PathLike = None) -> Reader:
    """Reader for ``buf``, binary if it starts with Kaldi's ``\\0B`` header."""
    if buf[:2] == BINARY_HEADER:
        return BinaryReader(buf, path, pos=2)
    if buf[:1] == b"\x00":
        raise KaldiFormatError(path, "byte 0", f"expected the binary header '\\0B', found {_describe(bytes(buf[:2]))}")
    return TextReader(buf, path, pos=0)


def make_writer(binary: bool) -> Writer:
    w: Writer = BinaryWriter() if binary else TextWriter()
    if binary:
        w.raw(BINARY_HEADER)
    return w
