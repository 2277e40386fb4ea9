"""Sensitivity analysis: how much each layer's pruning alone moves the network's outputs.

:func:`sensitivity_analysis` is one function (as in Distiller): for each layer
and each level it calls ``measure(layer, level)``, which prunes that layer
alone, measures, and restores; it returns ``{layer: {level: metrics}}``.
Writing the CSV, the heat map and TensorBoard is separate
(:mod:`kprune.sensitivity.report`).

:class:`LayerSensitivity` is the ``measure`` for a loaded model, a rule and a
:class:`~kprune.features.pipeline.FeatureSet` (the calibration data): the
network's outputs with the pruned layer against the dense ones (``kl``,
``argmax_agreement``, ``snr_db``, :mod:`kprune.nnet.signals`), computed from
that layer on (:class:`~kprune.sensitivity.forward.LayerReplay`).  Weight-only
rules prune through :func:`~kprune.pruning.calibration.prune_model`;
calibrated rules (``wanda``, ``sparsegpt``) read the statistics of the layer's
dense inputs, gathered once for every layer in one pass: with one layer
pruned, its inputs are the dense network's, so this is exactly what
``prune_model`` with that one layer selected computes (on the same audio).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Sequence

import torch

from kprune.errors import ConfigError

log = logging.getLogger(__name__)

#: The default levels: the fraction of a layer's weights the rule removes.
DEFAULT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def sensitivity_analysis(layers: Sequence[str], levels: Sequence[float],
                         measure: Callable[[str, float], Mapping[str, Any]],
                         progress: Callable[[str, float, Mapping[str, Any]], None] | None = None,
                         ) -> dict[str, dict[float, dict[str, Any]]]:
    """``{layer: {level: measure(layer, level)}}``; ``measure`` prunes the layer alone, measures and restores."""
    out: dict[str, dict[float, dict[str, Any]]] = {}
    for layer in layers:
        out[layer] = {}
        for level in levels:
            out[layer][float(level)] = dict(measure(layer, float(level)))
            if progress is not None:
                progress(layer, float(level), out[layer][float(level)])
    return out


def check_levels(levels: Any) -> list[float]:
    """Levels as sorted floats in (0, 1]; a message naming the bad value otherwise."""
    if isinstance(levels, (int, float)):
        levels = [levels]
    try:
        values = sorted({float(v) for v in levels})
    except (TypeError, ValueError):
        raise ConfigError(f"levels: expected a list of fractions in (0, 1], found {levels!r}") from None
    bad = [v for v in values if not 0.0 < v <= 1.0]
    if not values or bad:
        raise ConfigError(f"levels: expected fractions in (0, 1], found {bad or levels!r}")
    return values


class LayerSensitivity:
    """Prunes one layer of ``model`` at a time with ``method`` and measures the outputs on ``features``.

    ``dense`` is the unpruned :class:`~kprune.model.ModelState`; the model is
    restored to it after every measurement.  ``model_path`` locates
    ``conf/model.conf`` (the frame subsampling factor).
    """

    def __init__(self, model, method, features, *, dense, device: torch.device | str = "cpu", model_path=None,
                 layers: Sequence[str] = ()):
        from kprune.nnet.compute import AcousticModel, decoding_options
        from kprune.pruning.rules import get_method, method_names
        from kprune.sensitivity.forward import LayerReplay

        self.model, self.method, self.dense, self.device = model, method, dense, torch.device(device)
        self.rule = get_method(method.name)
        if method.pattern is not None:
            raise ConfigError(f"method.pattern={method.pattern}: an N:M pattern has one sparsity; "
                              "a sensitivity analysis needs a fraction rule")
        if not self.rule.fraction:
            raise ConfigError(f"method {method.name!r} takes a magnitude threshold; a sensitivity analysis "
                              f"needs a fraction rule ({', '.join(method_names(fraction=True))})")
        fsf, _ = decoding_options(model_path) if model_path is not None else (1, 1.0)
        start = time.perf_counter()
        self.am = AcousticModel(model.file, frame_subsampling_factor=fsf, device=self.device, use_priors=False)
        nodes = self.am.graph.component_nodes()
        missing = [n for n in layers if n not in nodes]
        if missing:
            raise ConfigError(f"layers {', '.join(missing)} feed no output used in decoding; a sensitivity "
                              "analysis measures decoding layers only")
        self.replay = LayerReplay(self.am, features)
        self.statistics: dict[str, Any] = {}
        if self.rule.calibrated:
            self._gather_statistics(list(layers))
        self.setup_seconds = time.perf_counter() - start
        self.total_weights = sum(model.layers[n].weight.numel() for n in model.default_layers)

    def _gather_statistics(self, layers: list[str]) -> None:
        from kprune.pruning.capture import capture_statistics, statistics_needs

        def dense_output(name: str, x: torch.Tensor) -> torch.Tensor:  # the target: the layer's dense output
            w, b = self.dense.weights[name].to(x), self.dense.biases.get(name)
            return torch.nn.functional.linear(x, w, None if b is None else b.to(x))

        self.needs = statistics_needs(self.rule)
        self.statistics = capture_statistics(self.am, self.replay.segments, layers, self.needs, self.device,
                                             target=dense_output)

    def prune(self, layer: str, level: float) -> int:
        """Prunes ``layer`` alone at ``level`` in the model (and the running network); returns the pruned count."""
        if self.rule.calibrated:
            from kprune.pruning.capture import solve_layer

            w = self.dense.weights[layer].to(self.device)
            b = self.dense.biases[layer].to(self.device) if layer in self.dense.biases else None
            stats = self.statistics[layer]
            decided = solve_layer(self.rule, self.method, w, stats, level, dense_weight=w, dense_bias=b,
                                  target=stats.cross is not None)
            self.model.layers[layer].weight.copy_(decided.weight.cpu())
            if decided.bias is not None and self.model.layers[layer].bias is not None:
                self.model.layers[layer].bias.copy_(decided.bias.cpu())
            pruned = int(decided.mask.sum())
        else:
            from kprune.pruning.calibration import prune_model

            result = prune_model(self.model, [layer], self.method, level, device=self.device, dense=self.dense)
            pruned = int(result.masks[layer].sum())
        self.replay.reload(self.model.file.nnet.component(layer))
        return pruned

    def restore(self, layer: str) -> None:
        self.model.layers[layer].weight.copy_(self.dense.weights[layer])
        if layer in self.dense.biases:
            self.model.layers[layer].bias.copy_(self.dense.biases[layer])
        self.replay.reload(self.model.file.nnet.component(layer))

    def measure(self, layer: str, level: float, also: Callable[[], Mapping[str, Any]] | None = None
                ) -> dict[str, Any]:
        """Prunes ``layer`` at ``level``, compares the outputs with the dense ones, restores the layer.

        ``also`` (a decode of the pruned model, for example) is called while the layer is pruned;
        its metrics are added.
        """
        from kprune.nnet.signals import output_signals

        start = time.perf_counter()
        try:
            pruned = self.prune(layer, level)
            signals = output_signals(self.replay.dense, self.replay.outputs(layer))
            if also is not None:
                signals.update(also())
        finally:
            self.restore(layer)
        n = self.model.layers[layer].weight.numel()
        return {"layer_sparsity": 100.0 * pruned / n, "network_sparsity": 100.0 * pruned / self.total_weights,
                "pruned": pruned, "weights": n, **signals, "seconds": time.perf_counter() - start}


__all__ = ["sensitivity_analysis", "LayerSensitivity", "check_levels", "DEFAULT_LEVELS"]
