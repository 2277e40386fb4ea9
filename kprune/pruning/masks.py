"""Applying prune masks, and the sparsity statistics of a pruning.

A mask is a bool tensor shaped like its weight, True where the weight is pruned
(see :mod:`kprune.pruning.rules`).  Statistics are computed from the masks and the
weights *before* pruning, then the masks are applied::

    baseline = summarize_weights(weights)          # once per model (a sweep reuses it)
    masks = dict(zip(selected, compute_masks("pct", [weights[n] for n in selected], 0.15)))
    stats = sparsity_stats(weights, masks, types=types, baseline=baseline)
    apply_masks(weights, masks)                     # zeroes in place
    json.dumps(stats.to_dict(method="pct", threshold=0.15, layers="all"))

Definitions, per layer and in total (every rate is a percentage):

* ``weights``: number of weights (numel); ``pruned``: number of True mask entries.
* ``zeros``: weights equal to zero after pruning, those that were zero before included.
* ``sparsity = 100 * zeros / weights``.  The network-wide ``sparsity`` divides by
  the weights of *all* prunable layers, selected or not (the original
  experiments' "sparse rate": pruning one layer gives a small rate);
  ``sparsity_selected`` divides by the weights of the selected layers only.
* ``removed_energy = 100 * sum(w**2 over pruned) / sum(w**2)``, from the weights
  before pruning, accumulated in float64: the share of the squared norm that was
  removed, a damage indicator that needs no data.  The total is over all
  prunable layers, like ``sparsity``; ``removed_energy_selected`` is over the
  selected layers, like ``sparsity_selected``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from kprune.errors import ConfigError

__all__ = ["WeightSummary", "LayerStats", "SparsityStats", "summarize_weights", "sparsity_stats", "apply_masks"]


@dataclass(frozen=True)
class WeightSummary:
    """What the statistics need from one layer's weights before pruning."""

    weights: int
    zeros: int
    energy: float  # sum of squares, float64


@dataclass(frozen=True)
class LayerStats:
    """The statistics of one layer (see the module docstring for the definitions)."""

    type: str | None
    shape: tuple[int, ...]
    weights: int
    pruned: int
    zeros: int
    energy: float
    pruned_energy: float
    selected: bool

    @property
    def sparsity(self) -> float:
        return _pct(self.zeros, self.weights)

    @property
    def removed_energy(self) -> float:
        return _pct(self.pruned_energy, self.energy)

    def to_dict(self) -> dict[str, Any]:
        """The ``per_layer`` entry of ``sparsity.json``."""
        return {"type": self.type, "shape": list(self.shape), "weights": self.weights, "pruned": self.pruned,
                "zeros": self.zeros, "sparsity": self.sparsity, "removed_energy": self.removed_energy,
                "selected": self.selected}


@dataclass(frozen=True)
class SparsityStats:
    """Per-layer statistics of every prunable layer, and the totals derived from them."""

    per_layer: dict[str, LayerStats]

    @property
    def selected(self) -> list[str]:
        return [n for n, s in self.per_layer.items() if s.selected]

    @property
    def weights(self) -> int:
        return sum(s.weights for s in self.per_layer.values())

    @property
    def pruned(self) -> int:
        return sum(s.pruned for s in self.per_layer.values())

    @property
    def zeros(self) -> int:
        return sum(s.zeros for s in self.per_layer.values())

    @property
    def sparsity(self) -> float:
        """Zeros over all prunable weights of the network, %."""
        return _pct(self.zeros, self.weights)

    @property
    def sparsity_selected(self) -> float:
        """Zeros over the weights of the selected layers, %."""
        chosen = [s for s in self.per_layer.values() if s.selected]
        return _pct(sum(s.zeros for s in chosen), sum(s.weights for s in chosen))

    @property
    def removed_energy(self) -> float:
        """Removed share of the squared norm of all prunable weights, %."""
        layers = self.per_layer.values()
        return _pct(sum(s.pruned_energy for s in layers), sum(s.energy for s in layers))

    @property
    def removed_energy_selected(self) -> float:
        """Removed share of the squared norm of the selected layers' weights, %."""
        chosen = [s for s in self.per_layer.values() if s.selected]
        return _pct(sum(s.pruned_energy for s in chosen), sum(s.energy for s in chosen))

    def to_dict(self, *, method: str | None = None, threshold: float | None = None,
                layers: str | Sequence[str] | None = None) -> dict[str, Any]:
        """The content of ``sparsity.json``; ``layers`` is the selection as the user gave it."""
        return {
            "method": method,
            "threshold": threshold,
            "layers": layers if layers is None or isinstance(layers, str) else list(layers),
            "selected": self.selected,
            "sparsity": self.sparsity,
            "sparsity_selected": self.sparsity_selected,
            "removed_energy": self.removed_energy,
            "removed_energy_selected": self.removed_energy_selected,
            "weights": self.weights,
            "pruned": self.pruned,
            "zeros": self.zeros,
            "per_layer": {n: s.to_dict() for n, s in self.per_layer.items()},
        }


def summarize_weights(weights: Mapping[str, Any]) -> dict[str, WeightSummary]:
    """Counts and energies of unpruned weights: compute once, pass to every :func:`sparsity_stats`.

    Values are weight tensors or layer objects with a ``.weight``.
    """
    return {name: _summarize(_weight_of(name, w)) for name, w in weights.items()}


def sparsity_stats(weights: Mapping[str, Any], masks: Mapping[str, torch.Tensor | None], *,
                   selected: Iterable[str] | None = None, types: Mapping[str, str] | None = None,
                   baseline: Mapping[str, WeightSummary] | None = None) -> SparsityStats:
    """Statistics of pruning ``weights`` with ``masks``; call it before :func:`apply_masks`.

    ``weights`` maps every prunable layer of the network (the denominator of the
    network-wide rates) to its weight tensor *before pruning*, or to a layer object
    with ``.weight`` (and ``.type``).  ``masks`` maps pruned layers to their bool masks;
    a layer without a mask (or with None) loses nothing.  ``selected`` defaults to the
    layers that have a mask.  ``baseline`` (from :func:`summarize_weights` on the same
    unpruned weights) saves a pass over every layer; without it one is made.
    """
    unknown = [n for n in masks if n not in weights]
    if unknown:
        raise ConfigError(f"masks given for layers {', '.join(unknown)} that are not among the weights: "
                          f"{', '.join(weights)}")
    chosen = {n for n, m in masks.items() if m is not None} if selected is None else set(selected)
    unknown = sorted(chosen - set(weights))
    if unknown:
        raise ConfigError(f"selected layers {', '.join(unknown)} are not among the weights: {', '.join(weights)}")
    per_layer = {}
    for name, value in weights.items():
        w = _weight_of(name, value)
        kind = (types or {}).get(name, None if isinstance(value, torch.Tensor) else getattr(value, "type", None))
        base = baseline[name] if baseline is not None and name in baseline else _summarize(w)
        if base.weights != w.numel():
            raise ConfigError(f"baseline of layer {name} counts {base.weights} weights, the tensor has {w.numel()}")
        mask = masks.get(name)
        if mask is None:
            pruned, zeros, pruned_energy = 0, base.zeros, 0.0
        else:
            _check_mask(name, w, mask)
            pruned, zeros, pruned_energy = _masked_counts(w, mask, base.zeros)
        per_layer[name] = LayerStats(type=kind, shape=tuple(w.shape), weights=base.weights, pruned=pruned,
                                     zeros=zeros, energy=base.energy, pruned_energy=pruned_energy,
                                     selected=name in chosen)
    return SparsityStats(per_layer)


def apply_masks(weights: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
                masks: Mapping[str, torch.Tensor | None] | Sequence[torch.Tensor | None]) -> None:
    """Sets the masked weights to zero (+0.0) in place; the tensors keep their storage.

    Either two mappings (``masks`` naming a subset of ``weights``'s layers) or two
    sequences of the same length.  Equivalent to ``w.masked_fill_(mask, 0)``; on CPU the
    float bits are multiplied by ``~mask`` instead, which writes the same bytes several
    times faster.
    """
    if isinstance(masks, Mapping):
        if not isinstance(weights, Mapping):
            raise ConfigError("apply_masks: masks is a mapping by layer name, so weights must be one too")
        unknown = [n for n in masks if n not in weights]
        if unknown:
            raise ConfigError(f"masks given for layers {', '.join(unknown)} that are not among the weights: "
                              f"{', '.join(weights)}")
        pairs = [(n, weights[n], m) for n, m in masks.items()]
    else:
        ws = list(weights.values()) if isinstance(weights, Mapping) else list(weights)
        ms = list(masks)
        if len(ws) != len(ms):
            raise ConfigError(f"apply_masks: {len(ms)} masks for {len(ws)} weight tensors")
        pairs = [(f"#{i}", w, m) for i, (w, m) in enumerate(zip(ws, ms))]
    for name, w, mask in pairs:
        if mask is None:
            continue
        _check_mask(name, w, mask)
        _zero(w, mask)


# ----------------------------------------------------------------------------

_INT_VIEW = {torch.float16: np.int16, torch.float32: np.int32, torch.float64: np.int64}


def _zero(w: torch.Tensor, mask: torch.Tensor) -> None:
    with torch.no_grad():
        if w.device.type == "cpu" and w.dtype in _INT_VIEW and w.is_contiguous() and w.numel() > 0:
            bits = w.detach().numpy().view(_INT_VIEW[w.dtype])
            np.multiply(bits, np.logical_not(mask.numpy()), out=bits)
        else:
            w.masked_fill_(mask, 0)


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def _weight_of(name: str, value: Any) -> torch.Tensor:
    w = getattr(value, "weight", value)
    if not isinstance(w, torch.Tensor):
        raise ConfigError(f"layer {name}: expected a weight tensor or a layer with .weight, got {type(value).__name__}")
    return w


def _check_mask(name: str, w: torch.Tensor, mask: torch.Tensor) -> None:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        found = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ConfigError(f"mask of layer {name} must be a bool tensor, got {found}")
    if mask.shape != w.shape:
        raise ConfigError(f"mask of layer {name} has shape {tuple(mask.shape)}, its weight {tuple(w.shape)}")
    if mask.device != w.device:
        raise ConfigError(f"mask of layer {name} is on {mask.device}, its weight on {w.device}")


def _host(w: torch.Tensor) -> np.ndarray | None:
    """A flat NumPy view of a CPU tensor NumPy can read, else None (use torch)."""
    if w.device.type != "cpu" or (w.dtype not in _INT_VIEW and w.dtype != torch.bool):
        return None
    return w.detach().numpy().reshape(-1)


def _summarize(w: torch.Tensor) -> WeightSummary:
    n = w.numel()
    a = _host(w)
    if a is not None:
        zeros = n - int(np.count_nonzero(a))  # counts -0.0 as zero
        energy = float(np.add.reduce(np.square(a, dtype=np.float64))) if n else 0.0
    else:
        x = w.detach()
        zeros = n - int(torch.count_nonzero(x))
        energy = float(x.double().square().sum())
    return WeightSummary(weights=n, zeros=zeros, energy=energy)


def _masked_counts(w: torch.Tensor, mask: torch.Tensor, zeros_before: int) -> tuple[int, int, float]:
    """(pruned, zeros after pruning, sum of squares of the pruned weights)."""
    a, m = _host(w), _host(mask)
    if a is not None and m is not None:
        pruned = int(np.count_nonzero(m))
        zeros = pruned if zeros_before == 0 else int(np.count_nonzero(m | (a == 0)))
        energy = float(np.add.reduce(np.square(np.compress(m, a), dtype=np.float64))) if pruned else 0.0
        return pruned, zeros, energy
    x = w.detach()
    pruned = int(torch.count_nonzero(mask))
    zeros = pruned if zeros_before == 0 else int(torch.count_nonzero(mask | (x == 0)))
    energy = float(x[mask].double().square().sum()) if pruned else 0.0
    return pruned, zeros, energy
