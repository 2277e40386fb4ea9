"""The settings of a pruning: the method and its knobs, and the repairs after it.

Each is a small validated dataclass (like lhotse's feature configs): built
from the Hydra config (``method=`` group, ``repair=``, ``repair_options``),
checked once with messages that name the key and the value, and serialised
whole into ``point.json`` so that a resumed sweep never mistakes a point
computed with other knobs for a finished one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from kprune.errors import ConfigError

#: Repairs, in the order they run when several are asked for.
REPAIRS = ("bias", "refit", "bn")
REFIT_TARGETS = ("network", "layer")
BN_MODES = ("delta", "plain")


@dataclass(frozen=True)
class NMPattern:
    """Semi-structured sparsity: in every group of ``m`` consecutive inputs of a row, ``n`` are pruned."""

    n: int
    m: int

    @classmethod
    def parse(cls, value: Any) -> NMPattern | None:
        if value in (None, "", "null", "none"):
            return None
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(value))
        if not match or not 0 < int(match[1]) < int(match[2]):
            raise ConfigError(f"method.pattern: expected N:M with 0 < N < M (e.g. 2:4), found {value!r}")
        return cls(int(match[1]), int(match[2]))

    @property
    def fraction(self) -> float:
        return self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class MethodConfig:
    """``method=``: the rule and its knobs.

    * ``name``: a registered rule (:func:`kprune.pruning.rules.available_methods`).
    * ``pattern``: ``N:M`` semi-structured sparsity along the input dimension
      (magnitude rules, ``wanda``, ``sparsegpt``); the threshold is then not used.
    * ``dampening`` (``sparsegpt``): added to the Hessian's diagonal, as a
      fraction of its mean (SparseGPT's ``percdamp``).
    * ``block_size`` (``sparsegpt``): columns per lazy batch update.
    * ``sequential`` (calibrated rules and repairs): each layer is calibrated on
      the inputs that the already-pruned layers before it give; false: every
      layer on the dense network's inputs.
    """

    name: str = "abs"
    pattern: NMPattern | None = None
    dampening: float = 0.01
    block_size: int = 128
    sequential: bool = True

    KEYS = ("name", "pattern", "dampening", "block_size", "sequential")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | str) -> MethodConfig:
        from kprune.pruning.rules import get_method

        if isinstance(cfg, str):
            cfg = {"name": cfg}
        cfg = dict(cfg)
        _check_keys(cfg, cls.KEYS, "method")
        name = get_method(str(cfg.get("name", "abs"))).name
        out = cls(
            name=name,
            pattern=NMPattern.parse(cfg.get("pattern")),
            dampening=_number(cfg, "dampening", 0.01, "method.dampening", minimum=0.0),
            block_size=_integer(cfg, "block_size", 128, "method.block_size"),
            sequential=_boolean(cfg, "sequential", True, "method.sequential"),
        )
        method = get_method(name)
        if out.pattern is not None and not method.supports_pattern:
            raise ConfigError(f"method.pattern={out.pattern}: method {name!r} has no N:M form; "
                              "use abs, global_pct, magnitude, wanda or sparsegpt")
        return out

    @property
    def calibrated(self) -> bool:
        from kprune.pruning.rules import get_method

        return get_method(self.name).calibrated

    def describe(self) -> dict[str, Any]:
        """The knobs as they enter ``point.json`` (the rule's own knobs only)."""
        d: dict[str, Any] = {"name": self.name, "pattern": None if self.pattern is None else str(self.pattern)}
        if self.name == "sparsegpt":
            d.update(dampening=self.dampening, block_size=self.block_size)
        return d


@dataclass(frozen=True)
class RepairConfig:
    """``repair=[...]`` and ``repair_options``: what is mended after the rule.

    * ``bias``: the expected contribution of the removed weights,
      ``(W - W_pruned) E[x]``, is added to the layer's bias (where it has one).
    * ``refit``: with the mask fixed, each row's kept weights (and the bias, as
      a constant-1 input) are solved by damped least squares to reproduce
      ``refit_target``: ``network``, the dense network's output at that layer,
      or ``layer``, the layer's own dense output on the inputs it now gets.
    * ``bn``: every BatchNormComponent's stored statistics are re-estimated on
      the calibration audio, ``delta`` (stored mean + (pruned - dense)
      calibration mean, stored variance x pruned / dense calibration variance)
      or ``plain`` (the calibration statistics of the pruned network).
    """

    steps: tuple[str, ...] = ()
    refit_target: str = "network"
    refit_dampening: float = 0.01
    bn_mode: str = "delta"

    OPTION_KEYS = ("refit_target", "refit_dampening", "bn_mode")

    @classmethod
    def from_config(cls, steps: Sequence[str] | str | None, options: Mapping[str, Any] | None = None) -> RepairConfig:
        if steps in (None, "", "none"):
            steps = ()
        if isinstance(steps, str):
            steps = [s.strip() for s in steps.strip("[]").split(",") if s.strip()]
        steps = [str(s) for s in steps]
        unknown = [s for s in steps if s not in REPAIRS]
        if unknown:
            raise ConfigError(f"repair: unknown repair(s) {', '.join(unknown)}; expected a list of {', '.join(REPAIRS)}")
        if len(set(steps)) != len(steps):
            raise ConfigError(f"repair: each repair once, found {steps}")
        options = dict(options or {})
        _check_keys(options, cls.OPTION_KEYS, "repair_options")
        target = str(options.get("refit_target", "network"))
        if target not in REFIT_TARGETS:
            raise ConfigError(f"repair_options.refit_target: expected one of {', '.join(REFIT_TARGETS)}, found {target!r}")
        mode = str(options.get("bn_mode", "delta"))
        if mode not in BN_MODES:
            raise ConfigError(f"repair_options.bn_mode: expected one of {', '.join(BN_MODES)}, found {mode!r}")
        damp = _number(options, "refit_dampening", 0.01, "repair_options.refit_dampening", minimum=0.0)
        return cls(tuple(s for s in REPAIRS if s in steps), target, damp, mode)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"steps": list(self.steps)}
        if "refit" in self.steps:
            d.update(refit_target=self.refit_target, refit_dampening=self.refit_dampening)
        if "bn" in self.steps:
            d["bn_mode"] = self.bn_mode
        return d


def recipe_label(method: MethodConfig, repair: RepairConfig | None = None) -> str:
    """How tables and plots name a recipe: ``sparsegpt 2:4 +refit+bn``; the bare rule name without knobs."""
    label = method.name + (f" {method.pattern}" if method.pattern is not None else "")
    if repair is not None and repair.steps:
        label += " +" + "+".join(repair.steps)
    return label


def _check_keys(cfg: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")


def _number(cfg: Mapping[str, Any], key: str, default: float, where: str, minimum: float) -> float:
    value = cfg.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{where}: expected a finite number >= {minimum:g}, found {value!r}")
    return float(value)


def _integer(cfg: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected a positive integer, found {value!r}")
    return value


def _boolean(cfg: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, found {value!r}")
    return value


__all__ = ["MethodConfig", "RepairConfig", "NMPattern", "REPAIRS", "recipe_label"]
