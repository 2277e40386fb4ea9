"""Checks of config settings, in one place: each raises a one-line :class:`ConfigError` naming the key and the value.

``where`` is how the message names the setting (``method.dampening``,
``allocation``), so a user sees what to change.  :func:`options_from_config`
builds a knob dataclass (a rule's options, like lhotse's ``FbankConfig``)
from a mapping, checking every field by its annotation.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Mapping, Sequence

from kprune.errors import ConfigError


def check_keys(cfg: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    """Refuses settings outside ``known`` (a typo would be silently ignored)."""
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")


def number(cfg: Mapping[str, Any], key: str, default: float, where: str, minimum: float | None = None,
           *, strict: bool = False, what: str | None = None) -> float:
    """A finite number (``>= minimum``, or ``> minimum`` when ``strict``); None reads as ``default``."""
    value = cfg.get(key, default)
    if value is None:
        value = default
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
        raise ConfigError(f"{where}: expected {what or 'a finite number' + bound}, found {value!r}")
    return float(value)


def integer(cfg: Mapping[str, Any], key: str, default: int, where: str, minimum: int = 1) -> int:
    """An integer ``>= minimum`` (a positive integer by default)."""
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{where}: expected {what}, found {value!r}")
    return value


def boolean(cfg: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    """true or false."""
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, found {value!r}")
    return value


def one_of(cfg: Mapping[str, Any], key: str, default: str, choices: Sequence[str], where: str) -> str:
    """One of ``choices`` (read as a string)."""
    value = str(cfg.get(key, default))
    if value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, found {value!r}")
    return value


def options_from_config(cls: type, cfg: Mapping[str, Any], where: str) -> Any:
    """An instance of the dataclass ``cls`` from ``cfg``, every field checked by its type.

    Fields annotated ``float``, ``int`` or ``bool`` are checked with
    :func:`number`, :func:`integer` or :func:`boolean`; a field's
    ``metadata={"minimum": x}`` sets the bound (default: >= 0 for numbers, >= 1
    for integers).  Other fields are passed as they are.  Keys outside the
    dataclass are refused by the caller (:func:`check_keys`), which knows the
    shared ones too.  The dataclass's ``__post_init__`` may check more and
    raise :class:`ConfigError`.
    """
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in cfg:
            continue
        kind = hints.get(f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        minimum = f.metadata.get("minimum")
        label = f"{where}.{f.name}"
        if kind is bool:
            values[f.name] = boolean(cfg, f.name, default, label)
        elif kind is int:
            values[f.name] = integer(cfg, f.name, default, label, 1 if minimum is None else minimum)
        elif kind is float:
            values[f.name] = number(cfg, f.name, default, label, 0.0 if minimum is None else minimum,
                                    strict=bool(f.metadata.get("strict")))
        else:
            values[f.name] = cfg[f.name]
    return cls(**values)


__all__ = ["check_keys", "number", "integer", "boolean", "one_of", "options_from_config"]
