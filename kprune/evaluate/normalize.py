"""Text normalisation applied to references and hypotheses before scoring.

The Vosk Korean model writes ``지난해 [3] 월`` and ``이 (천) (십) 팔 년`` where the
Zeroth references say ``지난해 삼 월`` and ``이천 십 팔 년``; without
normalisation every such number is an error that has nothing to do with the
acoustic model.  The steps, each switchable in ``eval.normalize``:

1. Unicode NFC (always: Hangul syllables must be composed to count as one
   character each).
2. ``drop_tokens``: whole tokens removed, compared case-insensitively
   (``[unk]``, ``<unk>``).
3. ``brackets``: the characters ``[ ] ( ) { }`` are removed and the words
   inside kept (``[64]`` -> ``64``, ``(천)`` -> ``천``).
4. ``digits: sino-korean``: every number is spelled out in Sino-Korean,
   one word per digit-and-unit as the Zeroth transcripts do
   (``2018`` -> ``이천 십 팔``, ``64`` -> ``육십 사``, ``1,000`` -> ``천``,
   ``3.5`` -> ``삼 점 오``).
5. ``lowercase``: Unicode case folding.
6. ``punctuation``: apostrophes are deleted, every other punctuation
   character becomes a space.

The result is a list of words; CER is computed over their characters, so the
spacing decisions above change WER only.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, fields
from typing import Any, Mapping

from kprune.errors import ConfigError

_DIGITS = "영일이삼사오육칠팔구"
_SMALL_UNITS = ("", "십", "백", "천")
_LARGE_UNITS = ("", "만", "억", "조", "경")
_BRACKETS = re.compile(r"[\[\](){}]")
_NUMBER = re.compile(r"\d+(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")
_APOSTROPHES = "'\u2019"

#: Accepted values of ``digits``: how numbers written with digits are read.
DIGIT_READINGS = ("sino-korean",)


def sino_korean(number: int, sep: str = "") -> str:
    """Spell a non-negative integer in Sino-Korean numerals.

    ``sep`` goes between the digit-and-unit pieces: ``sino_korean(2018)`` is
    ``이천십팔`` and ``sino_korean(2018, " ")`` is ``이천 십 팔``.  A leading one is
    silent before 십, 백, 천 and a lone 만 (``10`` -> ``십``, ``10000`` -> ``만``)
    but spoken before 억 and above (``100000000`` -> ``일억``).  Numbers of 10^20
    and more are read digit by digit.
    """
    if number < 0:
        raise ValueError(f"sino_korean takes non-negative integers, got {number}")
    if number == 0:
        return _DIGITS[0]
    if number >= 10 ** (4 * len(_LARGE_UNITS)):
        return sep.join(_DIGITS[int(d)] for d in str(number))
    pieces: list[str] = []
    groups = []
    while number:
        number, group = divmod(number, 10000)
        groups.append(group)
    for level in range(len(groups) - 1, -1, -1):
        group = groups[level]
        if group == 0:
            continue
        group_pieces = []
        for position in range(3, -1, -1):
            digit = group // 10**position % 10
            if digit == 0:
                continue
            spoken = "" if digit == 1 and position > 0 else _DIGITS[digit]
            group_pieces.append(spoken + _SMALL_UNITS[position])
        if level == 1 and group == 1:
            group_pieces = [""]  # 만, not 일만
        group_pieces[-1] += _LARGE_UNITS[level]
        pieces.extend(group_pieces)
    return sep.join(pieces)


def spell_number(text: str, sep: str = " ") -> str:
    """Spell one number token as read aloud: ``1,000``, ``3.5``, ``007``.

    Commas between groups of three are ignored, a decimal part is read digit
    by digit after 점, and a number with a leading zero (``007``) is read digit
    by digit.
    """
    whole, _, fraction = text.replace(",", "").partition(".")
    if len(whole) > 1 and whole.startswith("0"):
        spoken = sep.join(_DIGITS[int(d)] for d in whole)
    else:
        spoken = sino_korean(int(whole), sep)
    if fraction:
        spoken += sep + "점" + sep + sep.join(_DIGITS[int(d)] for d in fraction)
    return spoken


@dataclass(frozen=True)
class Normalizer:
    """The normalisation settings of ``eval.normalize``; call it on a transcript."""

    lowercase: bool = True
    punctuation: bool = True
    brackets: bool = True
    drop_tokens: tuple[str, ...] = ("[unk]", "<unk>")
    digits: str | None = "sino-korean"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> Normalizer:
        """Build from the ``eval.normalize`` mapping; unknown keys are refused."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(
                f"eval.normalize: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}"
            )
        for key in ("lowercase", "punctuation", "brackets"):
            if key in cfg and not isinstance(cfg[key], bool):
                raise ConfigError(f"eval.normalize.{key}: expected true or false, found {cfg[key]!r}")
        if "digits" in cfg and cfg["digits"] not in (None, False, *DIGIT_READINGS):
            raise ConfigError(
                f"eval.normalize.digits: expected null or one of {', '.join(DIGIT_READINGS)}, found {cfg['digits']!r}"
            )
        if cfg.get("digits") is False:
            cfg["digits"] = None
        if "drop_tokens" in cfg:
            tokens = cfg["drop_tokens"] or ()
            if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
                raise ConfigError(f"eval.normalize.drop_tokens: expected a list of strings, found {tokens!r}")
            cfg["drop_tokens"] = tuple(tokens)
        return cls(**cfg)

    def settings(self) -> dict[str, Any]:
        """The settings as plain JSON values (for cache keys and logs)."""
        return {
            "lowercase": self.lowercase,
            "punctuation": self.punctuation,
            "brackets": self.brackets,
            "drop_tokens": list(self.drop_tokens),
            "digits": self.digits,
        }

    def __call__(self, text: str) -> list[str]:
        """Normalise one transcript and split it into words."""
        text = unicodedata.normalize("NFC", text)
        if self.drop_tokens:
            dropped = {t.casefold() for t in self.drop_tokens}
            text = " ".join(t for t in text.split() if t.casefold() not in dropped)
        if self.brackets:
            text = _BRACKETS.sub("", text)
        if self.digits == "sino-korean":
            text = _NUMBER.sub(lambda m: spell_number(m.group(0)), text)
        if self.lowercase:
            text = text.casefold()
        if self.punctuation:
            text = "".join(_strip_punctuation(ch) for ch in text)
        return text.split()


def _strip_punctuation(ch: str) -> str:
    if ch in _APOSTROPHES:
        return ""
    return " " if unicodedata.category(ch).startswith("P") else ch
