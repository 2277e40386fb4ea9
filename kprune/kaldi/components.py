"""nnet3 components as ordered lists of ``<Token> value`` fields.

Every nnet3 component that Kaldi writes is its type token, then a sequence of
``<Field> value`` pairs in a fixed order, then the closing token.  Which fields
are present varies (optional fields, legacy layouts), but each field token has
one value type.  So a component is read generically: read a token, look up the
type of its value, read the value, until the closing token.  The field order
is kept, so writing gives back the same layout; the value types are what make
binary <-> text conversion possible.

Field types are those of ``shared/docs/kaldi-nnet3-format.md`` section 4,
listed in :mod:`kprune.kaldi.schema`.  A component type not listed there is kept as its original bytes (see
:class:`OpaqueComponent`): it passes through a load/save unchanged.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kprune.errors import KaldiFormatError
from kprune.kaldi.io import Reader, Writer
from kprune.kaldi.schema import (BOOL, F32, F32X2, F64, FIELD_TYPES, FLAG, I32, I32X2, IVEC, KNOWN_TYPES, MAT,
                                  VEC, WEIGHT_FIELD, _OVERRIDES, check_schema, check_values)

# Fields holding float arrays that kprune may change; the others are kept as read.
_MUTABLE = (MAT, VEC)


@dataclass
class Field:
    """One ``<Token> value`` pair of a component.

    ``span`` is the byte range of the value in the source buffer (None for a
    field that was built, not read).  ``kind`` records the binary matrix type
    (``FM``, ``DM``, ``CM``...) for matrices and vectors.
    """

    token: str
    type: str
    value: Any
    span: tuple[int, int] | None = None
    kind: str | None = None
    fingerprint: int | None = None

    def is_modified(self, buf: bytes | bytearray | None, binary_source: bool) -> bool:
        """True when the value no longer matches the bytes it was read from."""
        if self.span is None:
            return True
        if self.type not in _MUTABLE:
            return False  # scalars are read-only in kprune
        if binary_source and self.kind in ("FM", "DM", "FV", "DV") and _is_view_of(self.value, buf):
            return False  # the value *is* those bytes; in-place edits are already there
        return fingerprint(self.value) != self.fingerprint


def _is_view_of(arr: np.ndarray, buf: bytes | bytearray | None) -> bool:
    base = arr
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return buf is not None and base is buf


def fingerprint(arr: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(arr).view(np.uint8).data)


@dataclass
class Component:
    """A component whose fields kprune understands."""

    name: str
    type: str
    fields: list[Field] = field(default_factory=list)
    span: tuple[int, int] | None = None
    closing: str | None = None

    def get(self, token: str, default: Any = None) -> Any:
        for f in self.fields:
            if f.token == token:
                return f.value
        return default

    def field(self, token: str) -> Field | None:
        return next((f for f in self.fields if f.token == token), None)

    @property
    def weight_field(self) -> Field | None:
        token = WEIGHT_FIELD.get(self.type)
        return None if token is None else self.field(token)

    @property
    def bias_field(self) -> Field | None:
        if self.type not in WEIGHT_FIELD:
            return None
        f = self.field("<BiasParams>")
        return f if f is not None and len(f.value) > 0 else None

    def write(self, w: Writer) -> None:
        w.token(f"<{self.type}>")
        for f in self.fields:
            w.token(f.token)
            write_value(w, f)
        w.token(self.closing or f"</{self.type}>")


@dataclass
class OpaqueComponent:
    """A component type kprune does not parse: kept as its original bytes."""

    name: str
    type: str
    raw: bytes
    binary: bool
    span: tuple[int, int] | None = None

    def write(self, w: Writer) -> None:
        if w.binary != self.binary:
            raise KaldiFormatError(
                None, f"component {self.name}",
                f"cannot convert component type {self.type} to {'binary' if w.binary else 'text'}: "
                "kprune passes unknown component types through only in their original format")
        w.raw(self.raw)


def read_value(r: Reader, ftype: str) -> tuple[Any, str | None]:
    if ftype == I32:
        return r.read_int32(), None
    if ftype == F32:
        return r.read_float32(), None
    if ftype == F64:
        return r.read_float64(), None
    if ftype == BOOL:
        return r.read_bool(), None
    if ftype == FLAG:
        return True, None
    if ftype == IVEC:
        return r.read_int_vector(), None
    if ftype == MAT:
        return r.read_matrix()
    if ftype == VEC:
        return r.read_vector()
    if ftype == F32X2:
        return (r.read_float32(), r.read_float32()), None
    if ftype == I32X2:
        return (r.read_int32(), r.read_int32()), None
    raise AssertionError(ftype)


def write_value(w: Writer, f: Field) -> None:
    t, v = f.type, f.value
    if t == I32:
        w.int32(v)
    elif t == F32:
        w.float32(v)
    elif t == F64:
        w.float64(v)
    elif t == BOOL:
        w.bool(v)
    elif t == FLAG:
        pass
    elif t == IVEC:
        w.int_vector(v)
    elif t == MAT:
        w.matrix(v, "DM" if f.kind == "DM" else "FM")
    elif t == VEC:
        w.vector(v, "DV" if f.kind == "DV" else "FV")
    elif t == F32X2:
        w.float32(v[0]), w.float32(v[1])
    elif t == I32X2:
        w.int32(v[0]), w.int32(v[1])
    else:
        raise AssertionError(t)


_TYPE_TOKEN = re.compile(r"<([A-Za-z0-9_]+)>")
_NEXT_IN_NNET = re.compile(rb"[ \t\r\n]*(<ComponentName>|</Nnet3>)[ \t\r\n]")


def read_component(r: Reader, name: str) -> Component | OpaqueComponent:
    """Reads one component, starting at its type token."""
    start = r.pos
    type_token = r.read_token()
    m = _TYPE_TOKEN.fullmatch(type_token)
    if m is None:
        raise r.error(f"expected a component type token like <AffineComponent> for component {name}, "
                      f"found {type_token!r}", start)
    ctype = m.group(1)
    if ctype not in KNOWN_TYPES:
        return _read_opaque(r, name, ctype, start)
    closing = {f"</{ctype}>"}
    if ctype == "SumGroupComponent":
        closing.add(f"<{ctype}>")  # Kaldi's reader accepts this too
    types = {**FIELD_TYPES, **_OVERRIDES.get(ctype, {})}
    comp = Component(name, ctype)
    while True:
        tok_pos = r.pos
        tok = r.read_token()
        if tok in closing:
            comp.closing = tok
            break
        ftype = types.get(tok)
        if ftype is None:
            raise r.error(f"expected a field of {ctype} or {f'</{ctype}>'} in component {name}, found {tok!r}", tok_pos)
        value_pos = r.pos
        value, kind = read_value(r, ftype)
        f = Field(tok, ftype, value, (value_pos, r.pos), kind)
        if ftype in _MUTABLE and not (r.binary and kind in ("FM", "DM", "FV", "DV")):
            f.fingerprint = fingerprint(value)
        comp.fields.append(f)
    comp.span = (start, r.pos)
    check_component(r, comp)
    return comp


def _read_opaque(r: Reader, name: str, ctype: str, start: int) -> OpaqueComponent:
    """Skips to the closing token of an unknown type, keeping the bytes."""
    closing = f"</{ctype}> ".encode("ascii")
    search = r.pos
    while True:
        hit = r.buf.find(closing, search)
        if hit < 0:
            raise r.error(f"expected {closing.decode()} ending component {name} of unknown type {ctype}, "
                          "found end of file", start)
        end = hit + len(closing)
        # Raw float data could contain the closing bytes by chance; the real
        # end is followed by the next component or the end of the network.
        if _NEXT_IN_NNET.match(r.buf, end):
            break
        search = hit + 1
    r.pos = end
    return OpaqueComponent(name, ctype, bytes(r.buf[start:end]), r.binary, (start, end))


def check_component(r: Reader, comp: Component) -> None:
    """Checks what Kaldi would check on read, plus finite weights."""
    check_schema(r, comp)
    _check_weights(r, comp)
    check_values(r, comp)


def _check_weights(r: Reader, comp: Component) -> None:
    name, ctype = comp.name, comp.type
    where = comp.span[0] if comp.span else None
    if ctype in WEIGHT_FIELD:
        wf = comp.weight_field
        if wf is None:
            raise r.error(f"expected {WEIGHT_FIELD[ctype]} in {ctype} {name}, found none", where)
        weight = wf.value
        rows, cols = weight.shape
        bias = comp.get("<BiasParams>")
        if bias is not None and len(bias) not in (rows, 0 if ctype == "TdnnComponent" else rows):
            raise r.error(f"expected <BiasParams> of dim {rows} (the rows of the weight) in {ctype} {name}, "
                          f"found dim {len(bias)}", wf.span[0])
        if ctype != "LinearComponent" and ctype != "TdnnComponent" and bias is None:
            raise r.error(f"expected <BiasParams> in {ctype} {name}, found none", where)
        if ctype == "TdnnComponent":
            offsets = comp.get("<TimeOffsets>")
            if offsets is None or len(offsets) == 0:
                raise r.error(f"expected non-empty <TimeOffsets> in TdnnComponent {name}", where)
            if cols % len(offsets):
                raise r.error(f"expected the <LinearParams> columns of TdnnComponent {name} to be a multiple of "
                              f"{len(offsets)} time offsets, found {cols}", wf.span[0])
        for f in (wf, comp.field("<BiasParams>")):
            if f is not None and f.value.size and not np.isfinite(f.value).all():
                bad = np.argwhere(~np.isfinite(f.value))[0]
                at = f"row {bad[0]}, column {bad[1]}" if len(bad) == 2 else f"element {bad[0]}"
                raise r.error(f"expected finite values in {f.token} of {ctype} {name}, "
                              f"found {f.value[tuple(bad)]} at {at}", f.span[0])
    if ctype == "BatchNormComponent":
        block = comp.get("<BlockDim>")
        for tok in ("<StatsMean>", "<StatsVar>"):
            v = comp.get(tok)
            if v is not None and block is not None and len(v) not in (0, block):
                raise r.error(f"expected {tok} of dim {block} (<BlockDim>) in BatchNormComponent {name}, "
                              f"found dim {len(v)}", comp.field(tok).span[0])

