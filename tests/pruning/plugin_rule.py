"""A calibrated rule from outside kprune, registered the way a user's plugin module would be.

``gram_diag`` scores ``W_ij`` by ``|W_ij| * (Σ x_j²)^(power / 2)`` read off the
diagonal of ``Σ x xᵀ`` (so it declares ``needs={"gram"}``, and asserts it got
it), and prunes the fraction ``t`` of each row with the lowest scores.  Its
own knob ``power`` (``method.power``): 0 gives magnitude pruning, 1 Wanda's
scores.  Imported as ``plugin_rule`` by the tests (this directory is on
``sys.path`` under pytest) and by ``plugins=[plugin_rule]`` in subprocesses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kprune.errors import ConfigError
from kprune.pruning.rules import LayerPruning, register_method, row_fraction_mask


@dataclass(frozen=True)
class GramDiagOptions:
    #: The exponent of the input norm in the score.
    power: float = 1.0
    #: Only to show a knob with its own check.
    label: str = field(default="plain")

    def __post_init__(self):
        if self.label not in ("plain", "fancy"):
            raise ConfigError(f"method.label: expected plain or fancy, found {self.label!r}")


@register_method("gram_diag", fraction=True, calibrated=True, needs=("gram",), options=GramDiagOptions)
def gram_diag_rule(weight: torch.Tensor, stats, threshold: float, config, *, bias=None, target=False) -> LayerPruning:
    """Prunes, per row, the fraction t with the lowest |W_ij| * (Σx_j²)^(power/2), from the Gram diagonal."""
    if stats.gram is None:
        raise RuntimeError("gram_diag: the capture did not gather Σ x xᵀ although the rule declared it")
    norms = stats.gram.diagonal().clamp_min(0).sqrt().to(weight.device)
    scores = weight.detach().abs().double() * norms[None, :] ** config.options.power
    return LayerPruning(row_fraction_mask(scores, threshold))
