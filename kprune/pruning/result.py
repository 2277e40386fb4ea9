"""What a pruning changed: :class:`PruneResult`.

A weight-only rule changes nothing but the pruned weights (its masks).  A
calibrated pruning may also change the kept weights (SparseGPT, ``refit``),
the biases (``bias``, ``refit``, SparseGPT) and BatchNorm statistics (``bn``).
The result carries all of it, so that the runner can apply it, report it in
``sparsity.json`` and restore the model before the next point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from kprune.model import Model


@dataclass
class PruneResult:
    """Masks (True = pruned) and every other value the pruning rewrote.

    ``weights`` holds the new full weight tensors of layers whose kept weights
    changed (zeros at the masks); ``biases`` the new biases; ``batchnorm`` the
    new ``(<StatsMean>, <StatsVar>)`` per BatchNormComponent.  ``layer_notes``
    and ``batchnorm_notes`` are what ``sparsity.json`` reports per layer (the
    relative norm of the weight update, the dampening used, ...).
    """

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    biases: dict[str, torch.Tensor] = field(default_factory=dict)
    batchnorm: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    layer_notes: dict[str, dict[str, Any]] = field(default_factory=dict)
    batchnorm_notes: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def apply(self, model: Model) -> None:
        """Writes everything into ``model`` in place (idempotent)."""
        for name, mask in self.masks.items():
            weight = model.layers[name].weight
            if name in self.weights:
                weight.copy_(self.weights[name].to(weight.dtype))
            weight.masked_fill_(mask.to(weight.device), 0.0)
        for name, bias in self.biases.items():
            model.layers[name].bias.copy_(bias.to(model.layers[name].bias.dtype))
        for name, (mean, var) in self.batchnorm.items():
            model.batchnorms[name].mean.copy_(mean)
            model.batchnorms[name].var.copy_(var)

    def changes(self) -> dict[str, Any]:
        """The ``changes`` entry of ``sparsity.json``: what besides the pruned weights was rewritten."""
        return {
            "weights_updated": sorted(self.weights),
            "biases_updated": sorted(self.biases),
            "batchnorm_updated": sorted(self.batchnorm),
            "per_layer": self.layer_notes,
            "batchnorm": self.batchnorm_notes,
        }


def relative_norm_change(new: torch.Tensor, old: torch.Tensor) -> float:
    """‖new - old‖ / ‖old‖ (float64): the norm of a tensor's update relative to its norm.

    0 for two zero tensors, inf when only ``old`` is zero.
    """
    num = float(torch.linalg.vector_norm((new.double() - old.double()).flatten()))
    den = float(torch.linalg.vector_norm(old.double().flatten()))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den
