"""Normalisation: Sino-Korean numbers, Vosk's brackets, case and punctuation."""

from __future__ import annotations

import unicodedata

import pytest

from kprune.errors import ConfigError
from kprune.evaluate.normalize import Normalizer, sino_korean, spell_number
from kprune.evaluate.scoring import score_corpus


@pytest.mark.parametrize(
    "number, spoken",
    [
        (0, "영"),
        (3, "삼"),
        (10, "십"),
        (11, "십일"),
        (20, "이십"),
        (64, "육십사"),
        (100, "백"),
        (105, "백오"),
        (1000, "천"),
        (2018, "이천십팔"),
        (10000, "만"),
        (12345, "만이천삼백사십오"),
        (110000, "십일만"),
        (100000000, "일억"),
        (300020001, "삼억이만일"),
    ],
)
def test_sino_korean(number: int, spoken: str) -> None:
    assert sino_korean(number) == spoken


def test_sino_korean_pieces_are_spaced_like_the_zeroth_transcripts() -> None:
    assert sino_korean(2018, " ") == "이천 십 팔"
    assert sino_korean(64, " ") == "육십 사"


@pytest.mark.parametrize(
    "text, spoken",
    [("1,000", "천"), ("3.5", "삼 점 오"), ("007", "영 영 칠"), ("64", "육십 사")],
)
def test_spell_number(text: str, spoken: str) -> None:
    assert spell_number(text) == spoken


def test_sino_korean_refuses_negative_numbers() -> None:
    with pytest.raises(ValueError, match="-1"):
        sino_korean(-1)


def test_vosk_output_meets_the_zeroth_reference() -> None:
    norm = Normalizer()
    assert norm("지난해 [3] 월") == ["지난해", "삼", "월"]
    assert norm("이 (천) (십) 팔 년") == ["이", "천", "십", "팔", "년"]
    # With spaces removed the two spellings of 2018 are the same characters.
    score = score_corpus({"u": norm("이천 십 팔 년")}, {"u": norm("이 (천) (십) 팔 년")})
    assert score.cer.errors == 0
    assert score.wer.errors > 0  # word segmentation still differs


def test_digits_inside_words_and_dropped_tokens() -> None:
    norm = Normalizer()
    assert norm("2018년 [unk] 3월") == ["이천", "십", "팔년", "삼월"]
    assert norm("<UNK> 안녕") == ["안녕"]


def test_case_and_punctuation() -> None:
    norm = Normalizer()
    assert norm("Hello, World! It's A-OK.") == ["hello", "world", "its", "a", "ok"]
    keep = Normalizer(lowercase=False, punctuation=False)
    assert keep("Hello, World!") == ["Hello,", "World!"]


def test_each_step_can_be_switched_off() -> None:
    raw = Normalizer(lowercase=False, punctuation=False, brackets=False, drop_tokens=(), digits=None)
    assert raw("[3] (천) [unk] 2018") == ["[3]", "(천)", "[unk]", "2018"]
    no_digits = Normalizer(digits=None)
    assert no_digits("[64] 월") == ["64", "월"]


def test_decomposed_hangul_is_composed() -> None:
    decomposed = unicodedata.normalize("NFD", "한국어")
    assert len(decomposed) > 3
    assert Normalizer()(decomposed) == ["한국어"]


def test_from_config_reads_settings_and_refuses_unknown_keys() -> None:
    norm = Normalizer.from_config({"lowercase": False, "digits": None, "drop_tokens": ["<noise>"]})
    assert norm == Normalizer(lowercase=False, digits=None, drop_tokens=("<noise>",))
    with pytest.raises(ConfigError, match="eval.normalize: unknown key.*lowercas"):
        Normalizer.from_config({"lowercas": True})
    with pytest.raises(ConfigError, match="eval.normalize.digits: .*'roman'"):
        Normalizer.from_config({"digits": "roman"})
    with pytest.raises(ConfigError, match="eval.normalize.brackets: expected true or false"):
        Normalizer.from_config({"brackets": "yes"})
