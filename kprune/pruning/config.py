"""The settings of a pruning: the method and its knobs, and the repairs after it.

Each is a small validated dataclass (like lhotse's feature configs): built
from the Hydra config (``method=`` group, ``repair=``, ``repair_options``),
checked once with messages that name the key and the value, and serialised
whole into ``point.json`` so that a resumed sweep never mistakes a point
computed with other knobs for a finished one.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from kprune.errors import ConfigError
from kprune.validate import boolean, check_keys, number, one_of, options_from_config

#: Repairs, in the order they run when several are asked for.
REPAIRS = ("bias", "refit", "bn")
REFIT_TARGETS = ("network", "layer")
BN_MODES = ("delta", "plain")
#: The layer statistics each repair reads (``bn`` reads BatchNorm inputs, not layer statistics).
REPAIR_NEEDS = {"bias": frozenset({"mean"}), "refit": frozenset({"gram"}), "bn": frozenset()}


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
    """``method=``: the rule, the knobs every rule shares, and the rule's own knobs.

    * ``name``: a registered rule (:func:`kprune.pruning.rules.available_methods`).
    * ``pattern``: ``N:M`` semi-structured sparsity along the input dimension
      (the rules registered with ``supports_pattern``); the threshold is then not used.
    * ``sequential`` (calibrated rules and repairs): each layer is calibrated on
      the inputs that the already-pruned layers before it give; false: every
      layer on the dense network's inputs.
    * ``options``: the rule's own knobs, an instance of the dataclass it was
      registered with (``register_method(..., options=...)``), e.g. SparseGPT's
      ``dampening`` and ``block_size``; None for a rule without knobs.  They are
      read as ``config.options.<knob>`` (or ``config.<knob>``).
    """

    name: str = "abs"
    pattern: NMPattern | None = None
    sequential: bool = True
    options: Any = None

    #: The knobs every rule takes; a rule's own come from its options dataclass.
    KEYS = ("name", "pattern", "sequential")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | str) -> MethodConfig:
        from kprune.pruning.rules import get_method, method_names

        if isinstance(cfg, str):
            cfg = {"name": cfg}
        cfg = dict(cfg)
        method = get_method(str(cfg.get("name", "abs")))
        check_keys(cfg, cls.KEYS + method.knobs, "method")
        out = cls(
            name=method.name,
            pattern=NMPattern.parse(cfg.get("pattern")),
            sequential=boolean(cfg, "sequential", True, "method.sequential"),
            options=None if method.options is None else options_from_config(
                method.options, {k: v for k, v in cfg.items() if k in method.knobs}, "method"),
        )
        if out.pattern is not None and not method.supports_pattern:
            raise ConfigError(f"method.pattern={out.pattern}: method {method.name!r} has no N:M form; "
                              f"use {_or_list(method_names(supports_pattern=True))}")
        return out

    def __getattr__(self, name: str) -> Any:
        # config.dampening for config.options.dampening; never for private names (copy, pickle).
        if name.startswith("_") or name == "options":
            raise AttributeError(name)
        options = self.__dict__.get("options")
        if options is not None and hasattr(options, name):
            return getattr(options, name)
        raise AttributeError(f"method {self.__dict__.get('name')!r} has no knob {name!r}")

    @property
    def calibrated(self) -> bool:
        from kprune.pruning.rules import get_method

        return get_method(self.name).calibrated

    def describe(self) -> dict[str, Any]:
        """The knobs as they enter ``point.json`` and cache keys: the name, the pattern and the rule's own knobs."""
        d: dict[str, Any] = {"name": self.name, "pattern": None if self.pattern is None else str(self.pattern)}
        if self.options is not None:
            d.update(dataclasses.asdict(self.options))
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
        check_keys(options, cls.OPTION_KEYS, "repair_options")
        target = one_of(options, "refit_target", "network", REFIT_TARGETS, "repair_options.refit_target")
        mode = one_of(options, "bn_mode", "delta", BN_MODES, "repair_options.bn_mode")
        damp = number(options, "refit_dampening", 0.01, "repair_options.refit_dampening", minimum=0.0)
        return cls(tuple(s for s in REPAIRS if s in steps), target, damp, mode)

    @property
    def needs(self) -> frozenset[str]:
        """The layer statistics the repairs read (:data:`kprune.pruning.rules.STATISTICS`)."""
        out: set[str] = set()
        for step in self.steps:
            out |= REPAIR_NEEDS[step]
        if "refit" in self.steps and self.refit_target == "network":
            out.add("target")
        return frozenset(out)

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


def _or_list(names: Sequence[str]) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


__all__ = ["MethodConfig", "RepairConfig", "NMPattern", "REPAIRS", "recipe_label"]
