"""Scoring on hand-made cases whose answers are known, and against Kaldi's own loop."""

from __future__ import annotations

import random

import pytest

from kprune.errors import EvaluationError
from kprune.evaluate.scoring import (
    ErrorCounts,
    align,
    char_tokens,
    format_per_utt,
    format_per_utt_tsv,
    score_corpus,
)


def kaldi_levenshtein(ref: list[str], hyp: list[str]) -> tuple[int, int, int, int]:
    """A line-by-line port of kaldi::LevenshteinEditDistance(ref, hyp, &ins, &del, &sub).

    From util/edit-distance-inl.h (current master) without its band limit,
    which only skips cells no optimal path can reach.  Loops over the
    hypothesis outside and the reference inside, as Kaldi does; the stats are
    [ins, del, sub, total_cost] and "a < b" is Kaldi's error_stats::operator<.
    """

    def less(a: list[int], b: list[int]) -> bool:
        return a[3] < b[3] or (a[3] == b[3] and b[2] < a[2])

    e = [[0, i, 0, i] for i in range(len(ref) + 1)]
    for hyp_index in range(1, len(hyp) + 1):
        cur = [list(x) for x in e]
        cur[0] = list(e[0])
        cur[0][0] += 1
        cur[0][3] += 1
        for ref_index in range(1, len(ref) + 1):
            if hyp[hyp_index - 1] == ref[ref_index - 1]:
                cur[ref_index] = list(e[ref_index - 1])
                continue
            ins_err, del_err, sub_err = e[ref_index], cur[ref_index - 1], e[ref_index - 1]
            if less(sub_err, ins_err) and less(sub_err, del_err):
                cur[ref_index] = list(sub_err)
                cur[ref_index][2] += 1
            elif less(del_err, ins_err):
                cur[ref_index] = list(del_err)
                cur[ref_index][1] += 1
            else:
                cur[ref_index] = list(ins_err)
                cur[ref_index][0] += 1
            cur[ref_index][3] += 1
        e = cur
    ins, dels, subs, cost = e[len(ref)]
    return cost, ins, dels, subs


@pytest.mark.parametrize(
    "ref, hyp, expected",  # expected: (ins, del, sub)
    [
        ("a b c", "a b c", (0, 0, 0)),
        ("a b c", "a x c", (0, 0, 1)),
        ("a b c", "a b c d", (1, 0, 0)),
        ("a b c", "x a b c", (1, 0, 0)),
        ("a b c", "a c", (0, 1, 0)),
        ("a b c", "", (0, 3, 0)),  # empty hypothesis: all deletions
        ("", "a b", (2, 0, 0)),  # empty reference: all insertions
        ("", "", (0, 0, 0)),
        ("a b c d", "b c d e", (1, 1, 0)),  # shift: cheaper as del + ins (2) than 4 sub
        # Ties at equal cost: Kaldi takes the path with more substitutions.
        ("a b", "b a", (0, 0, 2)),
        ("a b", "b c", (0, 0, 2)),
        ("a", "b c", (1, 0, 1)),
    ],
)
def test_align_counts_known_cases(ref: str, hyp: str, expected: tuple[int, int, int]) -> None:
    a = align(ref.split(), hyp.split())
    assert (a.counts.ins, a.counts.dels, a.counts.subs) == expected
    assert a.counts.ref_len == len(ref.split())


def test_align_columns_agree_with_counts() -> None:
    a = align("the cat sat on the mat".split(), "the cat sat at on mat".split())
    assert a.ops.count("I") == a.counts.ins
    assert a.ops.count("D") == a.counts.dels
    assert a.ops.count("S") == a.counts.subs
    assert [r for r in a.ref if r != "***"] == "the cat sat on the mat".split()
    assert [h for h in a.hyp if h != "***"] == "the cat sat at on mat".split()
    assert a.counts.errors == 2


def test_align_matches_kaldi_loop_on_random_pairs() -> None:
    rng = random.Random(4)
    for _ in range(600):
        ref = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        hyp = [rng.choice("abcd") for _ in range(rng.randint(0, 7))]
        counts = align(ref, hyp).counts
        assert (counts.errors, counts.ins, counts.dels, counts.subs) == kaldi_levenshtein(ref, hyp), (ref, hyp)


def test_report_line_is_kaldis_format() -> None:
    assert ErrorCounts(5643, 67, 99, 305).report() == "%WER 8.35 [ 471 / 5643, 67 ins, 99 del, 305 sub ]"
    assert ErrorCounts(352, 1, 2, 39).report("CER") == "%CER 11.93 [ 42 / 352, 1 ins, 2 del, 39 sub ]"
    assert ErrorCounts(3, 0, 0, 0).report() == "%WER 0.00 [ 0 / 3, 0 ins, 0 del, 0 sub ]"


def test_rates_of_empty_references() -> None:
    assert ErrorCounts(0, 0, 0, 0).rate == 0.0
    assert ErrorCounts(0, 2, 0, 0).rate == float("inf")
    assert ErrorCounts(4, 1, 0, 1).rate == 50.0


def test_char_tokens_drop_spaces() -> None:
    assert char_tokens(["이천", "십", "팔"]) == ["이", "천", "십", "팔"]
    assert char_tokens([]) == []


def test_score_corpus_sums_words_and_characters() -> None:
    refs = {"u1": ["이천", "십", "팔", "년"], "u2": ["삼", "월"]}
    hyps = {"u1": ["이", "천", "십", "팔", "년"], "u2": ["사", "월", "에"]}
    score = score_corpus(refs, hyps)
    # u1: words 이천 -> 이 (sub) + 천 (ins); characters identical.
    # u2: words 삼 -> 사 (sub), 에 inserted; characters the same two errors.
    assert score.wer == ErrorCounts(6, 2, 0, 2)
    assert score.cer == ErrorCounts(7, 1, 0, 1)
    assert score.sentence_errors == 2
    assert score.report_lines()[0] == "%WER 66.67 [ 4 / 6, 2 ins, 0 del, 2 sub ]"
    assert score.report_lines()[-1] == "Scored 2 sentences, 0 not present in hyp."


def test_score_corpus_counts_a_missing_hypothesis_as_deletions() -> None:
    score = score_corpus({"u1": ["a", "b"], "u2": ["c"]}, {"u1": ["a", "b"]})
    assert score.missing == ("u2",)
    assert score.wer == ErrorCounts(3, 0, 1, 0)


def test_score_corpus_without_reference_words_is_an_error() -> None:
    with pytest.raises(EvaluationError, match="data/text: the 2 reference transcripts hold no word"):
        score_corpus({"u1": [], "u2": []}, {"u1": ["a"]}, where="data/text")


def test_per_utt_is_kaldis_layout() -> None:
    score = score_corpus({"u1": ["a", "bb", "c"]}, {"u1": ["a", "x", "c", "d"]})
    assert format_per_utt(score.utterances) == (
        "u1 ref  a bb c ***\n"
        "u1 hyp  a x  c d\n"
        "u1 op   C S  C I\n"
        "u1 #csid 2 1 1 0\n"
    )
    # Characters a b b c against a x c d: three substitutions tie with
    # sub + del + ins, and Kaldi takes the substitutions.
    tsv = format_per_utt_tsv(score.utterances).splitlines()
    assert tsv[0].split("\t")[:3] == ["utt", "ref_words", "word_errors"]
    assert tsv[1].split("\t") == ["u1", "3", "2", "1", "0", "1", "66.67", "4", "3", "0", "0", "3", "75.00"]
