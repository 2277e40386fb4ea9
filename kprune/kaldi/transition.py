"""Kaldi's TransitionModel (``src/hmm/transition-model.cc``), read and written.

kprune never changes a transition model; it reads one to keep it, to convert
it between binary and text, and to map transition ids to pdfs.  The binary and
text layouts differ (the topology has a human-readable text form); both are in
``shared/docs/kaldi-nnet3-format.md`` sections 2.1 and 2.2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kprune.kaldi.io import BinaryReader, Reader, Writer

NO_PDF = -1
_MAX_PHONE = 1 << 20  # far above any real phone set; bounds the phone -> entry table


@dataclass
class HmmState:
    forward_pdf_class: int
    self_loop_pdf_class: int
    transitions: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class TransitionModel:
    """Topology, (phone, hmm-state, forward-pdf, self-loop-pdf) tuples and log-probs."""

    phones: list[int]
    phone2idx: list[int]
    entries: list[list[HmmState]]
    tuples: np.ndarray  # int32 [num_tuples, 4]
    log_probs: np.ndarray  # float32 [num_transition_ids + 1]
    span: tuple[int, int] | None = None
    tuples_pos: int | None = field(default=None, repr=False)  # where the tuples start in the file read

    @property
    def is_hmm(self) -> bool:
        return all(s.forward_pdf_class == s.self_loop_pdf_class for e in self.entries for s in e)

    @property
    def num_pdfs(self) -> int:
        return int(self.tuples[:, 2:4].max()) + 1 if len(self.tuples) else 0

    def transition_id_to_pdf(self) -> np.ndarray:
        """``table[tid]`` is the pdf of transition id ``tid`` (1-based; entry 0 is -1)."""
        out = [NO_PDF]
        for phone, hmm_state, fwd, loop in self.tuples.tolist():
            state = self.entries[self.phone2idx[phone]][hmm_state]
            for dst, _ in state.transitions:
                out.append(loop if dst == hmm_state else fwd)
        return np.array(out, dtype=np.int32)

    # -- writing -----------------------------------------------------------
    def write(self, w: Writer) -> None:
        hmm = self.is_hmm
        w.token("<TransitionModel>")
        w.newline()
        self._write_topology(w, hmm)
        w.token("<Triples>" if hmm else "<Tuples>")
        w.int32(len(self.tuples))
        w.newline()
        if w.binary:
            cols = self.tuples[:, :3] if hmm else self.tuples
            packed = np.zeros(cols.shape, dtype=[("size", "u1"), ("value", "<i4")])
            packed["size"], packed["value"] = 4, cols
            w.raw(packed.tobytes())
        else:
            for row in self.tuples.tolist():
                w.raw(("".join(f"{v} " for v in (row[:3] if hmm else row)) + "\n").encode())
        w.token("</Triples>" if hmm else "</Tuples>")
        w.newline()
        w.token("<LogProbs>")
        w.newline()
        w.vector(self.log_probs)
        w.token("</LogProbs>")
        w.newline()
        w.token("</TransitionModel>")
        w.newline()

    def _write_topology(self, w: Writer, hmm: bool) -> None:
        w.token("<Topology>")
        if w.binary:
            w.int_vector(np.array(self.phones))
            w.int_vector(np.array(self.phone2idx))
            if not hmm:
                w.int32(-1)
            w.int32(len(self.entries))
            for entry in self.entries:
                w.int32(len(entry))
                for s in entry:
                    w.int32(s.forward_pdf_class)
                    if not hmm:
                        w.int32(s.self_loop_pdf_class)
                    w.int32(len(s.transitions))
                    for dst, prob in s.transitions:
                        w.int32(dst)
                        w.float32(prob)
        else:
            w.newline()
            for i, entry in enumerate(self.entries):
                w.token("<TopologyEntry>")
                w.newline()
                w.token("<ForPhones>")
                w.newline()
                w.raw("".join(f"{p} " for p, idx in enumerate(self.phone2idx) if idx == i).encode())
                w.newline()
                w.token("</ForPhones>")
                w.newline()
                for j, s in enumerate(entry):
                    w.token("<State>")
                    w.int32(j)
                    if s.forward_pdf_class != NO_PDF:
                        if hmm:
                            w.token("<PdfClass>")
                            w.int32(s.forward_pdf_class)
                        else:
                            w.token("<ForwardPdfClass>")
                            w.int32(s.forward_pdf_class)
                            w.token("<SelfLoopPdfClass>")
                            w.int32(s.self_loop_pdf_class)
                    for dst, prob in s.transitions:
                        w.token("<Transition>")
                        w.int32(dst)
                        w.float32(prob)
                    w.token("</State>")
                    w.newline()
                w.token("</TopologyEntry>")
                w.newline()
        w.token("</Topology>")
        w.newline()


# -- reading ---------------------------------------------------------------

def read_transition_model(r: Reader) -> TransitionModel:
    start = r.pos
    r.expect_token("<TransitionModel>")
    if isinstance(r, BinaryReader):
        phones, phone2idx, entries = _read_topology_binary(r)
    else:
        phones, phone2idx, entries = _read_topology_text(r)
    hmm_pos = r.pos
    opening = r.expect_one_of("<Tuples>", "<Triples>")
    n = r.read_int32()
    if n < 0:
        raise r.error(f"expected a non-negative number of transition tuples, found {n}", hmm_pos)
    width = 3 if opening == "<Triples>" else 4
    tuples_pos = r.pos
    tuples = _read_tuples(r, n, width)
    if width == 3:
        tuples = np.concatenate([tuples, tuples[:, 2:3]], axis=1)
    r.expect_one_of("</Tuples>", "</Triples>")
    r.expect_token("<LogProbs>")
    log_probs, _ = r.read_vector()
    r.expect_token("</LogProbs>")
    r.expect_token("</TransitionModel>")
    tm = TransitionModel(phones, phone2idx, entries, tuples.astype(np.int32),
                         np.array(log_probs, dtype=np.float32), (start, r.pos))
    tm.tuples_pos = tuples_pos
    _check(r, tm, start)
    return tm


def _read_tuples(r: Reader, n: int, width: int) -> np.ndarray:
    if isinstance(r, BinaryReader):
        start = r.pos
        raw = r._take(5 * n * width, f"{n} transition tuples")
        packed = np.frombuffer(raw, dtype=[("size", "u1"), ("value", "<i4")])
        if (packed["size"] != 4).any():
            bad = int(np.flatnonzero(packed["size"] != 4)[0])
            raise r.error(f"expected an int32 size byte 4 in the transition tuples, found {packed['size'][bad]}",
                          start + 5 * bad)
        return packed["value"].reshape(n, width).astype(np.int32)
    return np.array([r.read_int32() for _ in range(n * width)], dtype=np.int32).reshape(n, width)


def _read_topology_binary(r: BinaryReader) -> tuple[list[int], list[int], list[list[HmmState]]]:
    r.expect_token("<Topology>")
    phones = r.read_int_vector().tolist()
    phone2idx = r.read_int_vector().tolist()
    n = r.read_int32()
    hmm = n != -1
    if not hmm:
        n = r.read_int32()
    entries = []
    for _ in range(_count(r, n, "topology entries")):
        num_states = r.read_int32()
        entry = []
        for _ in range(_count(r, num_states, "HMM states")):
            fwd = r.read_int32()
            loop = fwd if hmm else r.read_int32()
            num_trans = r.read_int32()
            trans = [(r.read_int32(), r.read_float32()) for _ in range(_count(r, num_trans, "transitions"))]
            entry.append(HmmState(fwd, loop, trans))
        entries.append(entry)
    r.expect_token("</Topology>")
    return phones, phone2idx, entries


def _count(r: Reader, n: int, what: str) -> int:
    """A declared count, checked against the bytes left (each item takes at least 5)."""
    if not 0 <= n <= (r.end - r.pos) // 5:
        raise r.error(f"expected a number of {what} that fits in the file, found {n}", r.pos - 4)
    return n


def _read_topology_text(r: Reader) -> tuple[list[int], list[int], list[list[HmmState]]]:
    r.expect_token("<Topology>")
    phone2idx: list[int] = []
    phones: list[int] = []
    entries: list[list[HmmState]] = []
    while r.expect_one_of("</Topology>", "<TopologyEntry>") == "<TopologyEntry>":
        r.expect_token("<ForPhones>")
        these = []
        while True:
            pos = r.pos
            tok = r.read_token()
            if tok == "</ForPhones>":
                break
            try:
                phone = int(tok)
            except ValueError:
                phone = -1
            if not 0 < phone < _MAX_PHONE:
                raise r.error(f"expected a phone id in [1, {_MAX_PHONE}) or </ForPhones>, found {tok!r}", pos)
            these.append(phone)
        entry: list[HmmState] = []
        tok = r.expect_one_of("<State>", "</TopologyEntry>")
        while tok == "<State>":
            pos = r.pos
            j = r.read_int32()
            if j != len(entry):
                raise r.error(f"expected state {len(entry)}, found state {j}", pos)
            fwd = loop = NO_PDF
            tok = r.read_token()
            if tok == "<PdfClass>":
                fwd = loop = r.read_int32()
                tok = r.read_token()
            elif tok == "<ForwardPdfClass>":
                fwd = r.read_int32()
                r.expect_token("<SelfLoopPdfClass>")
                loop = r.read_int32()
                tok = r.read_token()
            trans = []
            while tok == "<Transition>":
                trans.append((r.read_int32(), r.read_float32()))
                tok = r.read_token()
            if tok != "</State>":
                raise r.error(f"expected <Transition> or </State>, found {tok!r}")
            entry.append(HmmState(fwd, loop, trans))
            tok = r.expect_one_of("<State>", "</TopologyEntry>")
        for p in these:
            if p < len(phone2idx) and phone2idx[p] != -1:
                raise r.error(f"expected each phone in one topology entry, found phone {p} twice")
            if p >= len(phone2idx):
                phone2idx.extend([-1] * (p + 1 - len(phone2idx)))
            phone2idx[p] = len(entries)
            phones.append(p)
        entries.append(entry)
    return sorted(phones), phone2idx, entries


def _check(r: Reader, tm: TransitionModel, start: int) -> None:
    if not tm.entries or not tm.phones:
        raise r.error("expected a topology with at least one entry and one phone, found an empty one", start)
    for phone in tm.phones:
        if not 0 <= phone < len(tm.phone2idx) or not 0 <= tm.phone2idx[phone] < len(tm.entries):
            raise r.error(f"expected phone {phone} of the topology to have an entry, found none", start)
    num_tids = 0
    for phone, hmm_state, *_ in tm.tuples.tolist():
        if not 0 < phone < len(tm.phone2idx) or tm.phone2idx[phone] < 0:
            raise r.error(f"expected transition tuples to name phones of the topology, found phone {phone}", start)
        entry = tm.entries[tm.phone2idx[phone]]
        if not 0 <= hmm_state < len(entry):
            raise r.error(f"expected HMM state < {len(entry)} for phone {phone}, found {hmm_state}", start)
        num_tids += len(entry[hmm_state].transitions)
    if len(tm.log_probs) != num_tids + 1:
        raise r.error(f"expected <LogProbs> of dim {num_tids + 1} (transition ids + 1), "
                      f"found dim {len(tm.log_probs)}", start)
