"""Per-layer sparsity from sensitivity curves: spend a network-wide budget where it costs least.

``allocation=uniform`` prunes every layer with the run's threshold (the
rule's own behaviour).  ``allocation=sensitivity`` reads ``threshold`` as the
target sparsity of the selected layers together and chooses a fraction per
layer from the curves of a sensitivity analysis (:mod:`kprune.sensitivity`),
measured on the calibration data and cached on disk by model, rule, data and
levels, so a sweep over targets measures once.

:func:`allocate` minimises the predicted damage ``Σ_l D_l(s_l)`` (the sum of
each layer's signal when pruned alone, ``kl`` by default) under
``Σ_l n_l s_l = T Σ_l n_l``.  Each curve is made piecewise linear through
``(0, 0)`` and the measured levels, and replaced by its lower convex hull;
the hull segments of all layers are then taken in order of damage per pruned
weight (a Lagrange multiplier swept from 0 up), the last one partly, so the
budget is met exactly.  On the convexified curves this is the optimum.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from kprune.errors import ConfigError
from kprune.validate import check_keys, number, one_of

log = logging.getLogger(__name__)

ALLOCATIONS = ("uniform", "sensitivity")
SIGNALS = ("kl", "argmax_agreement", "snr_db")
#: Bumped when what the cached curves hold changes.
CURVES_REVISION = 1


@dataclass(frozen=True)
class AllocationConfig:
    """``allocation=``: ``name`` (uniform | sensitivity) and how the curves are measured."""

    name: str = "uniform"
    signal: str = "kl"
    levels: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    max_seconds: float | None = 20.0
    cache_dir: Path | None = None

    KEYS = ("name", "signal", "levels", "max_seconds", "cache_dir")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | str | None) -> AllocationConfig:
        from kprune.sensitivity import check_levels

        if cfg is None:
            return cls()
        if isinstance(cfg, str):
            cfg = {"name": cfg}
        cfg = dict(cfg)
        check_keys(cfg, cls.KEYS, "allocation")
        name = one_of(cfg, "name", "uniform", ALLOCATIONS, "allocation")
        signal = one_of(cfg, "signal", "kl", SIGNALS, "allocation.signal")
        seconds = cfg.get("max_seconds", 20.0)
        if seconds is not None:
            seconds = number(cfg, "max_seconds", 20.0, "allocation.max_seconds", 0.0, strict=True,
                             what="seconds > 0 or null")
        cache = cfg.get("cache_dir")
        return cls(name, signal, tuple(check_levels(cfg.get("levels", cls.levels))),
                   None if seconds is None else float(seconds), Path(cache).expanduser() if cache else None)

    def describe(self) -> dict[str, Any]:
        if self.name == "uniform":
            return {"name": "uniform"}
        return {"name": self.name, "signal": self.signal, "levels": list(self.levels), "max_seconds": self.max_seconds}


def damage(metrics: Mapping[str, float], signal: str) -> float:
    """A signal as damage: larger is worse, 0 for the dense outputs."""
    value = float(metrics[signal])
    if signal == "kl":
        return value
    if signal == "argmax_agreement":
        return 100.0 - value
    from kprune.nnet.signals import MAX_SNR_DB

    return 10.0 ** (-min(value, MAX_SNR_DB) / 10.0)  # snr_db: the noise-to-signal power ratio


@dataclass
class Allocation:
    """The chosen fraction per layer, with what the curves predict."""

    fractions: dict[str, float]
    target: float
    predicted_damage: float
    signal: str
    weights: dict[str, int] = field(default_factory=dict)
    curves: dict[str, dict[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        total = sum(self.weights.values())
        return {"target": self.target, "signal": self.signal, "predicted_damage": self.predicted_damage,
                "sparsity": sum(self.fractions[n] * self.weights[n] for n in self.fractions) / total if total else 0.0,
                "fractions": self.fractions, "weights": self.weights,
                "curves": {n: {f"{lv:g}": v for lv, v in c.items()} for n, c in self.curves.items()}}


def _lower_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    hull: list[tuple[float, float]] = []
    for p in points:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):  # hull[-1] on or above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def allocate(curves: Mapping[str, Mapping[float, float]], weights: Mapping[str, int], target: float,
             signal: str = "kl") -> Allocation:
    """Fractions per layer with ``Σ n_l s_l = target Σ n_l`` and the least predicted damage (module docstring).

    ``curves[layer][level]`` is the damage (larger is worse) of pruning the
    layer alone at ``level``; ``weights[layer]`` its number of weights.  A
    layer is never pruned beyond its highest measured level.
    """
    if not 0.0 <= target <= 1.0:
        raise ConfigError(f"allocation=sensitivity: the target sparsity must be in [0, 1], found {target!r}")
    layers = list(curves)
    total = sum(weights[n] for n in layers)
    segments = []  # (damage per weight, layer, fraction from, fraction to, damage from, damage to)
    for n in layers:
        points = [(0.0, 0.0)] + sorted((float(lv), max(0.0, float(d))) for lv, d in curves[n].items())
        hull = _lower_hull(points)
        for (x0, y0), (x1, y1) in zip(hull, hull[1:]):
            segments.append(((y1 - y0) / ((x1 - x0) * weights[n]), n, x0, x1, y0, y1))
    reachable = sum(max(curves[n]) * weights[n] for n in layers) / total
    if target > reachable + 1e-12:
        raise ConfigError(f"allocation=sensitivity: a target of {target:g} needs more than the highest measured "
                          f"levels give ({reachable:.3f}); add higher allocation.levels")
    segments.sort(key=lambda s: (s[0], s[2]))
    fractions = {n: 0.0 for n in layers}
    predicted = {n: 0.0 for n in layers}
    need = target * total
    for _, n, x0, x1, y0, y1 in segments:
        if need <= 0:
            break
        if fractions[n] != x0:  # the hull of one layer is convex: its segments come in order
            continue
        take = min(x1 - x0, need / weights[n])
        fractions[n] = x0 + take
        predicted[n] = y0 + (y1 - y0) * take / (x1 - x0)
        need -= take * weights[n]
    return Allocation(fractions, target, sum(predicted.values()), signal, {n: int(weights[n]) for n in layers},
                      {n: {float(k): float(v) for k, v in c.items()} for n, c in curves.items()})


# ------------------------------------------------------------------ the curves, measured once


def curves_cache_path(config: AllocationConfig, identity: Mapping[str, Any], method, calib, layers: Sequence[str]) -> tuple[Path, dict]:
    from kprune.cache import default_cache_dir

    key = {"revision": CURVES_REVISION, "model": dict(identity), "method": method.describe(),
           "calib": calib.describe(), "levels": list(config.levels), "max_seconds": config.max_seconds,
           "layers": list(layers)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return (config.cache_dir or default_cache_dir()) / "sensitivity" / f"{digest}.json", key


def sensitivity_curves(loaded, method, calib, layers: Sequence[str], config: AllocationConfig, device) -> dict:
    """``{layer: {level: metrics}}`` from the cache, or measured on the calibration data and cached."""
    from kprune.fileio import write_json_atomically
    from kprune.sensitivity.run import measure_curves

    path, key = curves_cache_path(config, loaded.identity, method, calib, layers)
    try:
        content = json.loads(path.read_text())
        if content.get("key") == key:
            log.info("sensitivity curves read from %s", path)
            return {n: {float(lv): m for lv, m in d.items()} for n, d in content["curves"].items()}
    except (OSError, ValueError):
        pass
    table = measure_curves(loaded, method, calib, list(layers), list(config.levels), device, config.max_seconds)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, {"key": key, "curves": {n: {f"{lv:g}": m for lv, m in d.items()}
                                                        for n, d in table.items()}})
    log.info("sensitivity curves cached in %s", path)
    return table


def allocate_for_point(loaded, method, calib, selected: Sequence[str], target: float, config: AllocationConfig,
                       device) -> Allocation:
    """The per-layer fractions of a point with ``allocation=sensitivity``."""
    table = sensitivity_curves(loaded, method, calib, selected, config, device)
    curves = {n: {lv: damage(m, config.signal) for lv, m in table[n].items()} for n in selected}
    weights = {n: loaded.model.layers[n].weight.numel() for n in selected}
    return allocate(curves, weights, target, config.signal)
