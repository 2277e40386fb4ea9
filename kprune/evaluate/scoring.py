"""Error rates the way Kaldi's ``compute-wer`` counts them.

Scoring is implemented here once and used by every backend that scores its own
hypotheses (the Kaldi backend reads the numbers Kaldi's scripts wrote instead).

* :func:`align` is a Levenshtein alignment that breaks ties like the current
  ``kaldi::LevenshteinEditDistance`` (``util/edit-distance-inl.h``): a match is
  always taken; among equal-cost edits the path with more substitutions wins,
  then deletion beats insertion.  So ``ref = a b``, ``hyp = b a`` counts
  2 substitutions, not 1 insertion and 1 deletion.
* :func:`word_tokens` and :func:`char_tokens` give the units of WER and of CER
  (characters with spaces removed, the convention for Korean).
* :class:`ErrorCounts` sums counts over utterances and formats Kaldi's line
  ``%WER 8.35 [ 471 / 5643, 67 ins, 99 del, 305 sub ]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from kprune.errors import EvaluationError

#: Operation codes of an alignment, as in Kaldi's ``per_utt`` files.
MATCH, SUB, INS, DEL = "C", "S", "I", "D"
#: The empty side of an insertion or a deletion in ``per_utt``.
EPS = "***"


@dataclass(frozen=True)
class ErrorCounts:
    """Reference length and edit counts of one utterance or of a whole set."""

    ref_len: int = 0
    ins: int = 0
    dels: int = 0
    subs: int = 0

    @property
    def errors(self) -> int:
        return self.ins + self.dels + self.subs

    @property
    def rate(self) -> float:
        """Errors per reference token, in percent.

        An empty reference gives 0 when the hypothesis is empty too, and
        infinity otherwise (only single utterances can have one: a whole set
        without reference tokens is refused by :func:`score_corpus`).
        """
        if self.ref_len == 0:
            return 0.0 if self.errors == 0 else math.inf
        return 100.0 * self.errors / self.ref_len

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.ref_len + other.ref_len,
            self.ins + other.ins,
            self.dels + other.dels,
            self.subs + other.subs,
        )

    def report(self, label: str = "WER") -> str:
        """Kaldi's report line, e.g. ``%WER 8.35 [ 471 / 5643, 67 ins, 99 del, 305 sub ]``.

        ``compute-wer`` stores the rate in a 32-bit float before printing it
        with two decimals; doing the same keeps the rounding identical.
        """
        if self.ref_len == 0:
            shown = "0.00" if self.errors == 0 else "inf"
        else:
            shown = f"{float(np.float32(100.0 * self.errors / self.ref_len)):.2f}"
        return (
            f"%{label} {shown} [ {self.errors} / {self.ref_len}, "
            f"{self.ins} ins, {self.dels} del, {self.subs} sub ]"
        )


@dataclass(frozen=True)
class Alignment:
    """One utterance aligned: the counts and the operation per column."""

    counts: ErrorCounts
    ref: tuple[str, ...]  # reference token per column, EPS for insertions
    hyp: tuple[str, ...]  # hypothesis token per column, EPS for deletions
    ops: tuple[str, ...]  # MATCH, SUB, INS or DEL per column


def align(ref: Sequence[str], hyp: Sequence[str]) -> Alignment:
    """Align ``hyp`` to ``ref`` with unit costs, breaking ties as Kaldi does.

    Every cell keeps the best (cost, ins, del, sub) of the paths reaching it,
    "best" meaning lower cost, then more substitutions (Kaldi's
    ``error_stats::operator<``); the backtrace follows the choices made, so the
    columns always agree with the counts.
    """
    n_ref, n_hyp = len(ref), len(hyp)
    # stats[i][j]: (cost, -subs, ins, dels) for ref[:i] against hyp[:j]; the
    # negated substitutions make plain tuple order Kaldi's comparison.
    stats: list[list[tuple[int, int, int, int]]] = [[(0, 0, 0, 0)] * (n_hyp + 1) for _ in range(n_ref + 1)]
    back: list[list[str]] = [[""] * (n_hyp + 1) for _ in range(n_ref + 1)]
    for i in range(1, n_ref + 1):
        stats[i][0] = (i, 0, 0, i)
        back[i][0] = DEL
    for j in range(1, n_hyp + 1):
        stats[0][j] = (j, 0, j, 0)
        back[0][j] = INS
    for i in range(1, n_ref + 1):
        row, prev = stats[i], stats[i - 1]
        brow = back[i]
        r = ref[i - 1]
        for j in range(1, n_hyp + 1):
            if hyp[j - 1] == r:
                row[j] = prev[j - 1]
                brow[j] = MATCH
                continue
            # Kaldi loops over the hypothesis outside; its "ins_err" is the
            # same reference prefix with one hypothesis token less (our
            # row[j - 1]) and its "del_err" one reference token less (prev[j]).
            sub_from, ins_from, del_from = prev[j - 1][:2], row[j - 1][:2], prev[j][:2]
            if sub_from < ins_from and sub_from < del_from:
                c, s, ins, dels = prev[j - 1]
                row[j] = (c + 1, s - 1, ins, dels)
                brow[j] = SUB
            elif del_from < ins_from:
                c, s, ins, dels = prev[j]
                row[j] = (c + 1, s, ins, dels + 1)
                brow[j] = DEL
            else:
                c, s, ins, dels = row[j - 1]
                row[j] = (c + 1, s, ins + 1, dels)
                brow[j] = INS
    cost, neg_subs, ins, dels = stats[n_ref][n_hyp]
    counts = ErrorCounts(n_ref, ins, dels, -neg_subs)
    assert counts.errors == cost, "alignment counts disagree with its cost"

    cols_ref: list[str] = []
    cols_hyp: list[str] = []
    ops: list[str] = []
    i, j = n_ref, n_hyp
    while i > 0 or j > 0:
        op = back[i][j]
        if op in (MATCH, SUB):
            cols_ref.append(ref[i - 1])
            cols_hyp.append(hyp[j - 1])
            i, j = i - 1, j - 1
        elif op == INS:
            cols_ref.append(EPS)
            cols_hyp.append(hyp[j - 1])
            j -= 1
        else:
            cols_ref.append(ref[i - 1])
            cols_hyp.append(EPS)
            i -= 1
        ops.append(op)
    return Alignment(counts, tuple(reversed(cols_ref)), tuple(reversed(cols_hyp)), tuple(reversed(ops)))


def word_tokens(words: Sequence[str]) -> list[str]:
    """The units of WER: the words as given."""
    return list(words)


def char_tokens(words: Sequence[str]) -> list[str]:
    """The units of CER: every character of the words, spaces removed."""
    return [ch for word in words for ch in word]


@dataclass(frozen=True)
class UtteranceScore:
    """Word and character alignments of one utterance."""

    utt_id: str
    words: Alignment
    chars: Alignment


@dataclass(frozen=True)
class CorpusScore:
    """Scores of a whole set, in the order of the references."""

    utterances: tuple[UtteranceScore, ...]
    wer: ErrorCounts
    cer: ErrorCounts
    sentence_errors: int
    missing: tuple[str, ...]

    @property
    def num_utts(self) -> int:
        return len(self.utterances)

    def report_lines(self) -> list[str]:
        """The lines of ``score.txt``: %WER, %CER, %SER and the sentence count."""
        n = self.num_utts
        ser = 100.0 * self.sentence_errors / n if n else 0.0
        return [
            self.wer.report("WER"),
            self.cer.report("CER"),
            f"%SER {float(np.float32(ser)):.2f} [ {self.sentence_errors} / {n} ]",
            f"Scored {n} sentences, {len(self.missing)} not present in hyp.",
        ]


def score_corpus(
    refs: Mapping[str, Sequence[str]],
    hyps: Mapping[str, Sequence[str]],
    where: str = "",
) -> CorpusScore:
    """Score normalised hypotheses against normalised references.

    Both map an utterance id to its words.  Every reference is scored; an
    utterance without a hypothesis counts as an empty hypothesis (Kaldi's
    ``--mode=all``) and is listed in ``missing``.  A set whose references hold
    no word at all cannot give a rate and raises :class:`EvaluationError`;
    ``where`` names the references in that message.
    """
    if not refs:
        raise EvaluationError(f"{where or 'references'}: no utterance to score")
    results = []
    wer = cer = ErrorCounts()
    sentence_errors = 0
    missing = []
    for utt_id, ref_words in refs.items():
        hyp_words = hyps.get(utt_id)
        if hyp_words is None:
            missing.append(utt_id)
            hyp_words = ()
        words = align(word_tokens(ref_words), word_tokens(hyp_words))
        chars = align(char_tokens(ref_words), char_tokens(hyp_words))
        results.append(UtteranceScore(utt_id, words, chars))
        wer += words.counts
        cer += chars.counts
        sentence_errors += words.counts.errors > 0
    if wer.ref_len == 0 or cer.ref_len == 0:
        raise EvaluationError(
            f"{where or 'references'}: the {len(refs)} reference transcripts hold no word, "
            "so no error rate can be computed"
        )
    return CorpusScore(tuple(results), wer, cer, sentence_errors, tuple(missing))


def format_per_utt(scores: Iterable[UtteranceScore]) -> str:
    """Kaldi's ``per_utt`` text (``wer_per_utt_details.pl``) for the word alignments.

    Four lines per utterance: ``ref``, ``hyp`` and ``op`` with columns padded to
    a common width, then ``#csid`` with the counts of correct, substituted,
    inserted and deleted words.
    """
    lines = []
    for utt in scores:
        a = utt.words
        widths = [max(len(r), len(h), len(o)) for r, h, o in zip(a.ref, a.hyp, a.ops)]

        def row(cells: Sequence[str]) -> str:
            return " ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

        correct = a.ops.count(MATCH)
        lines.append(f"{utt.utt_id} ref  {row(a.ref)}".rstrip())
        lines.append(f"{utt.utt_id} hyp  {row(a.hyp)}".rstrip())
        lines.append(f"{utt.utt_id} op   {row(a.ops)}".rstrip())
        lines.append(f"{utt.utt_id} #csid {correct} {a.counts.subs} {a.counts.ins} {a.counts.dels}")
    return "\n".join(lines) + ("\n" if lines else "")


_TSV_HEADER = (
    "utt",
    "ref_words", "word_errors", "word_ins", "word_del", "word_sub", "wer",
    "ref_chars", "char_errors", "char_ins", "char_del", "char_sub", "cer",
)


def format_per_utt_tsv(scores: Iterable[UtteranceScore]) -> str:
    """Per-utterance counts and rates (%) of words and characters, tab separated."""
    lines = ["\t".join(_TSV_HEADER)]
    for utt in scores:
        cells: list[str] = [utt.utt_id]
        for c in (utt.words.counts, utt.chars.counts):
            cells += [str(c.ref_len), str(c.errors), str(c.ins), str(c.dels), str(c.subs), f"{c.rate:.2f}"]
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"
