"""Whole Kaldi nnet3 model files: ``.mdl`` (TransitionModel + Nnet3 + AmNnetSimple
tail) and ``.raw`` (the Nnet3 alone), in binary or text mode.

Saving in the format that was read splices the original bytes: everything is
copied verbatim except the float arrays that changed, which are re-encoded in
place.  Binary weight matrices are numpy views into the file buffer, so an
in-place edit of a weight *is* an edit of the bytes to be written.  Saving in
the other format encodes every item (text floats are written with enough
digits to read back the same float32, so binary -> text -> binary is exact).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from kprune.errors import KaldiFormatError
from kprune.fileio import write_atomically
from kprune.kaldi.check import check_transition_model
from kprune.kaldi.components import Component, Field, fingerprint, write_value
from kprune.kaldi.schema import VEC
from kprune.kaldi.io import BINARY_HEADER, Reader, make_reader, make_writer
from kprune.kaldi.nnet3 import Nnet3, read_nnet3
from kprune.kaldi.transition import TransitionModel, read_transition_model


@dataclass
class NnetFile:
    """A parsed nnet3 model file and the buffer it was parsed from."""

    path: Path | None
    binary: bool
    buf: bytearray
    nnet: Nnet3
    transition_model: TransitionModel | None = None
    left_context: int | None = None
    right_context: int | None = None
    priors: Field | None = None

    @property
    def is_mdl(self) -> bool:
        return self.transition_model is not None

    def fields(self):
        for c in self.nnet.components:
            if isinstance(c, Component):
                yield from c.fields
        if self.priors is not None:
            yield self.priors

    def to_bytes(self, binary: bool | None = None) -> bytes:
        """The file's bytes, in its own format unless ``binary`` says otherwise."""
        return b"".join(self.chunks(binary))

    def chunks(self, binary: bool | None = None) -> list[bytes | memoryview]:
        """The file's bytes as consecutive pieces (views of the buffer where unchanged)."""
        if binary is None or binary == self.binary:
            return self._splice()
        return [self.encode(binary)]

    def _splice(self) -> list[bytes | memoryview]:
        patches = []
        for f in self.fields():
            if f.is_modified(self.buf, self.binary):
                w = make_writer(self.binary)
                if self.binary:
                    w.parts.clear()  # no header: this is one value
                write_value(w, f)
                patches.append((f.span, w.getvalue()))
        out, last = [], 0
        view = memoryview(self.buf)
        for (lo, hi), data in sorted(patches, key=lambda p: p[0][0]):
            out += [view[last:lo], data]
            last = hi
        out.append(view[last:])
        return out

    def encode(self, binary: bool) -> bytes:
        """Encodes every item anew in the given format (no byte of the source is reused)."""
        w = make_writer(binary)
        if self.transition_model is not None:
            self.transition_model.write(w)
        self.nnet.write(w)
        if self.transition_model is not None:
            w.token("<LeftContext>")
            w.int32(self.left_context)
            w.token("<RightContext>")
            w.int32(self.right_context)
            w.token("<Priors>")
            write_value(w, self.priors)
        return w.getvalue()


def read_nnet_file(buf: bytearray, path: str | os.PathLike | None = None) -> NnetFile:
    """Parses a whole ``.mdl`` or ``.raw`` file held in ``buf``."""
    if not buf:
        raise KaldiFormatError(path, "byte 0", "expected a Kaldi nnet3 model, found an empty file")
    r = make_reader(buf, path)
    first = r.peek_byte()
    start = r.pos
    model = NnetFile(Path(path) if path is not None else None, r.binary, buf, nnet=None)  # type: ignore[arg-type]
    if first == ord("<") and bytes(buf[r.pos:r.pos + 18]).lstrip().startswith(b"<TransitionModel>"):
        model.transition_model = read_transition_model(r)
        model.nnet = read_nnet3(r)
        _read_am_tail(r, model)
        tm = model.transition_model
        check_transition_model(r, tm, model.nnet.node_dims.get("output"), tm.span[0])
        if len(model.priors.value) not in (0, tm.num_pdfs):
            raise r.error(f"expected <Priors> of dim 0 or {tm.num_pdfs} (the pdfs), found dim "
                          f"{len(model.priors.value)}", model.priors.span[0])
    elif bytes(buf[r.pos:r.pos + 8]).lstrip().startswith(b"<Nnet3>"):
        model.nnet = read_nnet3(r)
    else:
        raise r.error("expected <TransitionModel> (a .mdl file) or <Nnet3> (a .raw file), "
                      f"found {bytes(buf[start:start + 20])!r}", start)
    if not r.binary:
        r.skip_space()
    if not r.at_end():
        raise r.error(f"expected the end of the file, found {r.end - r.pos} more bytes")
    return model


def _read_am_tail(r: Reader, model: NnetFile) -> None:
    r.expect_token("<LeftContext>")
    model.left_context = r.read_int32()
    r.expect_token("<RightContext>")
    model.right_context = r.read_int32()
    r.expect_token("<Priors>")
    pos = r.pos
    priors, kind = r.read_vector()
    model.priors = Field("<Priors>", VEC, priors, (pos, r.pos), kind,
                         None if r.binary else fingerprint(priors))


# What a model file starts with: Kaldi's binary header or text, then its first token.
_BINARY_STARTS = (BINARY_HEADER + b"<TransitionModel> ", BINARY_HEADER + b"<Nnet3> ")
_TEXT_STARTS = (b"<TransitionModel>", b"<Nnet3>")
_HEAD = 64


def load_nnet_file(path: str | os.PathLike) -> NnetFile:
    """Reads and parses a model file; every problem is a :class:`KaldiFormatError`.

    Only a regular file is opened for reading (a FIFO or a device would block or
    never end), and its first bytes are checked before the rest is read.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens without waiting for a writer
    except FileNotFoundError:
        raise KaldiFormatError(path, "", "expected a Kaldi model file, found no such file") from None
    except IsADirectoryError:
        raise KaldiFormatError(path, "", "expected a Kaldi model file, found a directory") from None
    except OSError as e:
        raise KaldiFormatError(path, "", f"expected a readable Kaldi model file, found: {e.strerror}") from None
    try:
        with os.fdopen(fd, "rb", buffering=0) as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise KaldiFormatError(path, "", f"expected a regular Kaldi model file, found {_file_kind(info.st_mode)}")
            size = info.st_size
            head = f.read(min(size, _HEAD))
            _check_head(path, head, size)
            buf = bytearray(size)
            buf[:len(head)] = head
            got = len(head) + f.readinto(memoryview(buf)[len(head):])
    except IsADirectoryError:
        raise KaldiFormatError(path, "", "expected a Kaldi model file, found a directory") from None
    except MemoryError:
        raise KaldiFormatError(path, "", f"expected a model file that fits in memory, found {size} bytes") from None
    except OSError as e:
        raise KaldiFormatError(path, "", f"expected a readable Kaldi model file, found: {e.strerror}") from None
    if got != size:
        raise KaldiFormatError(path, f"byte {got}", f"expected {size} bytes, read only {got}")
    return read_nnet_file(buf, path)


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a file that is not a regular file"


def _check_head(path: Path, head: bytes, size: int) -> None:
    """Refuses a file whose first bytes are not those of an nnet3 model, before the rest is read."""
    if size == 0:
        raise KaldiFormatError(path, "byte 0", "expected a Kaldi nnet3 model, found an empty file")
    if head[:2] == BINARY_HEADER:
        if not any(s.startswith(head[:len(s)]) or head.startswith(s) for s in _BINARY_STARTS):
            raise KaldiFormatError(path, "byte 2", "expected <TransitionModel> (a .mdl file) or <Nnet3> "
                                   f"(a .raw file), found {head[2:22]!r}")
        return
    if head[:1] == b"\x00":
        raise KaldiFormatError(path, "byte 0", f"expected the binary header '\\0B', found {head[:2]!r}")
    text = head.lstrip()
    if not text or not any(s.startswith(text[:len(s)]) or text.startswith(s) for s in _TEXT_STARTS):
        line = head[:len(head) - len(text)].count(b"\n") + 1
        raise KaldiFormatError(path, f"line {line}", "expected <TransitionModel> (a .mdl file) or <Nnet3> "
                               f"(a .raw file), found {text[:20]!r}")


def save_nnet_file(model: NnetFile, path: str | os.PathLike, binary: bool | None = None) -> None:
    """Writes ``model`` to ``path`` atomically; never over the file it was read from."""
    write_atomically(path, model.chunks(binary), protect=model.path)


__all__ = ["NnetFile", "read_nnet_file", "load_nnet_file", "save_nnet_file", "write_atomically", "BINARY_HEADER"]
