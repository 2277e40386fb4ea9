"""Pruning a whole model: weight-only rules directly, calibrated rules and repairs through the network.

:func:`prune_model` is the one entry point.  A weight-only rule without
repairs needs no data: its masks are applied to the weights.  Everything else
runs the network in torch (:class:`kprune.nnet.AcousticModel`) on the
calibration :class:`~kprune.features.pipeline.FeatureSet`, all of it as one
batch, and works where each component's input appears
(:meth:`AcousticModel.compute_observed`):

1. *Dense pass* (only when needed): the unpruned network is run once to record,
   per selected layer, its output (the ``network`` refit target) or its input
   statistics (``method.sequential=false``), and per BatchNorm the dense input
   moments (``bn_mode=delta``).
2. *Pruning pass*: the network is run again; at each selected layer, in the
   order the computation reaches them, the statistics of its input (coming
   from the already-pruned layers before it when ``method.sequential``) are
   gathered, the rule chooses the mask (and SparseGPT the kept weights), the
   repairs run, and the new values are written into the model and into the
   running network before the layer is applied.  At each BatchNorm the stored
   statistics are updated the same way (``repair=[bn]``).

Statistics are kept, never the activations, except the dense outputs of the
selected layers for the ``network`` target, freed as each layer is done.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from kprune.features.pipeline import FeatureSet
from kprune.errors import ConfigError
from kprune.model import Model, ModelState
from kprune.pruning.capture import PIECE_FRAMES, calibration_segments, new_statistics, solve_layer, statistics_needs
from kprune.pruning.config import MethodConfig, RepairConfig
from kprune.pruning.repair import update_batchnorm
from kprune.pruning.result import PruneResult, relative_norm_change
from kprune.pruning.rules import compute_masks, get_method, nm_mask
from kprune.pruning.statistics import InputStatistics, MomentStatistics

log = logging.getLogger(__name__)

__all__ = ["PIECE_FRAMES", "prune_model", "needs_calibration", "CalibratedPruning"]


def needs_calibration(method: MethodConfig, repair: RepairConfig) -> bool:
    """True when the pruning runs the network on calibration audio."""
    return method.calibrated or bool(repair.steps)


def prune_model(model: Model, selected: Sequence[str], method: MethodConfig, threshold: float,
                repair: RepairConfig | None = None, features: FeatureSet | Callable[[], FeatureSet] | None = None, *,
                device: torch.device | str = "cpu", model_path=None,
                dense: ModelState | None = None, layer_thresholds: Mapping[str, float] | None = None) -> PruneResult:
    """Prunes the ``selected`` layers of ``model`` in place; returns everything that changed.

    ``layer_thresholds`` gives some layers their own threshold (a fraction per
    layer, from ``allocation=sensitivity``); each such layer is then pruned
    by the rule on its own (``global_pct`` ranks that layer's weights alone).

    ``features`` (or a function that returns them) is the calibration data,
    needed by calibrated rules and repairs.  ``dense`` is the unpruned state
    (default: a snapshot taken now).  ``model_path`` locates ``conf/model.conf``
    (the frame subsampling factor).
    """
    repair = repair or RepairConfig()
    selected = list(selected)
    device = torch.device(device)
    if not needs_calibration(method, repair):
        result = PruneResult(masks=_weight_rule_masks(model, selected, method, threshold, device, layer_thresholds))
        result.apply(model)
        return result
    if callable(features):
        features = features()
    if features is None or not features.feats:
        raise ConfigError(f"method {method.name!r} with repair={list(repair.steps)} needs calibration data "
                          "(calib.data or calib.feats)")
    return CalibratedPruning(model, selected, method, threshold, repair, features, device, model_path,
                             dense or model.snapshot(), layer_thresholds).run()


def _weight_rule_masks(model: Model, selected: list[str], method: MethodConfig, threshold: float,
                       device: torch.device, layer_thresholds: Mapping[str, float] | None = None
                       ) -> dict[str, torch.Tensor]:
    own = [n for n in selected if layer_thresholds and n in layer_thresholds]
    rest = [n for n in selected if n not in own]
    weights = [model.layers[n].weight.to(device) for n in rest]
    if method.pattern is not None:  # magnitude N:M: the N smallest |w| of every M inputs of a row
        masks = [nm_mask(w.detach().abs(), method.pattern.n, method.pattern.m) for w in weights]
    else:
        masks = compute_masks(method.name, weights, threshold) if rest else []
    out = {n: m.cpu() for n, m in zip(rest, masks)}
    for n in own:
        out[n] = compute_masks(method.name, [model.layers[n].weight.to(device)], layer_thresholds[n])[0].cpu()
    return {n: out[n] for n in selected}


class CalibratedPruning:
    """One calibrated pruning of a model (see the module docstring)."""

    def __init__(self, model: Model, selected: list[str], method: MethodConfig, threshold: float,
                 repair: RepairConfig, features: FeatureSet, device: torch.device, model_path, dense: ModelState,
                 layer_thresholds: Mapping[str, float] | None = None):
        from kprune.nnet.compute import AcousticModel, decoding_options

        self.model, self.method, self.threshold, self.repair = model, method, threshold, repair
        self.layer_thresholds = dict(layer_thresholds or {})
        self.selected = list(selected)
        self.features, self.device, self.dense = features, device, dense
        self.rule = get_method(method.name)
        fsf, _ = decoding_options(model_path) if model_path is not None else (1, 1.0)
        start = time.perf_counter()
        self.am = AcousticModel(model.file, frame_subsampling_factor=fsf, device=device, use_priors=False)
        self.timings = {"build_seconds": time.perf_counter() - start, "forward_seconds": 0.0,
                        "statistics_seconds": 0.0, "solve_seconds": 0.0}
        nodes = self.am.graph.component_nodes()
        missing = [n for n in self.selected if n not in nodes]
        if missing:
            raise ConfigError(f"layers {', '.join(missing)} feed no output used in decoding, so calibration audio "
                              f"never reaches them; {method.name} and repairs prune decoding layers only")
        blocks = [n for n in self.selected if model.layers[n].type == "BlockAffineComponent"]
        if blocks:
            raise ConfigError(f"layers {', '.join(blocks)} are BlockAffineComponents, whose weight is shared by "
                              f"several input blocks; {method.name} and repairs prune full weight matrices only "
                              "(exclude them: exclude=[...])")
        shared = [n for n in self.selected if len(nodes[n]) > 1]
        if shared:
            raise ConfigError(f"layers {', '.join(shared)} run at several nodes of the network; calibrated "
                              "pruning needs one input per layer")
        # What the rule and the repairs declare they read; the dense network's output at each layer is
        # recorded only when one of them reads Σ y* xᵀ.
        self.needs = statistics_needs(self.rule, repair)
        self.target = "network" if "target" in self.needs else "layer"
        self.batchnorms = [n for n in model.batchnorms if n in nodes] if "bn" in repair.steps else []
        self.result = PruneResult()
        self.masks_before: dict[str, torch.Tensor] = {}
        if not self.rule.calibrated:
            self.masks_before = _weight_rule_masks(model, self.selected, method, threshold, device,
                                                   self.layer_thresholds)

    # ------------------------------------------------------------------ passes

    def run(self) -> PruneResult:
        needs_dense = self.target == "network" or not self.method.sequential or \
            (self.batchnorms and self.repair.bn_mode == "delta")
        self.dense_outputs: dict[str, torch.Tensor] = {}
        self.dense_stats: dict[str, InputStatistics] = {}
        self.dense_moments: dict[str, MomentStatistics] = {}
        if needs_dense:
            self._forward(self._observe_dense)
        if not self.method.sequential:
            for name in self.selected:
                self._prune_layer(name, self.dense_stats.pop(name))
            if self.batchnorms:
                self._forward(self._observe_batchnorm_only)
        else:
            self._forward(self._observe_pruning)
        done = set(self.result.masks)
        missing = [n for n in self.selected if n not in done]
        if missing:  # cannot happen for decoding layers; a guard against silent no-ops
            raise RuntimeError(f"calibration never reached layers {missing}")
        self.result.timings = self.timings
        return self.result

    def _segments(self):
        return calibration_segments(self.am, self.features)

    def _forward(self, observe) -> None:
        start = time.perf_counter()
        before = self.timings["statistics_seconds"] + self.timings["solve_seconds"]
        self.am.compute_observed(self._segments(), observe, frozenset(self.selected) | frozenset(self.batchnorms))
        spent = self.timings["statistics_seconds"] + self.timings["solve_seconds"] - before
        self.timings["forward_seconds"] += time.perf_counter() - start - spent

    def _observe_dense(self, name: str, x: torch.Tensor) -> None:
        start = time.perf_counter()
        if name in self.batchnorms:
            self.dense_moments.setdefault(name, MomentStatistics(self.model.batchnorms[name].block_dim,
                                                                 self.device)).add(x)
        elif name in self.selected and not self.method.sequential:
            self.dense_stats.setdefault(name, new_statistics(x.shape[1], self.needs, self.device)).add(x)
        elif name in self.selected and self.target == "network":
            layer = self.model.layers[name]
            self.dense_outputs[name] = F.linear(x, layer.weight.to(x), None if layer.bias is None else
                                                layer.bias.to(x))
        self.timings["statistics_seconds"] += time.perf_counter() - start

    def _observe_pruning(self, name: str, x: torch.Tensor) -> None:
        if name in self.batchnorms:
            self._update_batchnorm(name, x)
        elif name in self.selected and name not in self.result.masks:
            start = time.perf_counter()
            stats = new_statistics(x.shape[1], self.needs, self.device)
            stats.add(x, target=self.dense_outputs.pop(name, None))
            self.timings["statistics_seconds"] += time.perf_counter() - start
            self._prune_layer(name, stats)

    def _observe_batchnorm_only(self, name: str, x: torch.Tensor) -> None:
        if name in self.batchnorms:
            self._update_batchnorm(name, x)

    # ------------------------------------------------------------------ one layer

    def _prune_layer(self, name: str, stats: InputStatistics) -> None:
        start = time.perf_counter()
        layer = self.model.layers[name]
        dense_w = self.dense.weights[name].to(self.device)
        dense_b = self.dense.biases[name].to(self.device) if name in self.dense.biases else None
        weight = layer.weight.to(self.device)
        use_target = self.target == "network" and stats.cross is not None
        decided = solve_layer(self.rule, self.method, weight, stats, self.layer_thresholds.get(name, self.threshold),
                              dense_weight=dense_w, dense_bias=dense_b, repair=self.repair, target=use_target,
                              mask=None if self.rule.calibrated else self.masks_before[name].to(self.device))
        self._write_layer(name, decided.mask, decided.weight, decided.bias, dense_w, dense_b, decided.notes)
        self.timings["solve_seconds"] += time.perf_counter() - start

    def _write_layer(self, name, mask, new_w, new_b, dense_w, dense_b, notes) -> None:
        layer = self.model.layers[name]
        mask = mask.cpu()
        new_w = new_w.cpu().to(layer.weight.dtype)
        new_w[mask] = 0.0
        kept = dense_w.cpu().masked_fill(mask, 0.0)
        self.result.masks[name] = mask
        info = dict(notes)
        if not torch.equal(new_w, kept):
            self.result.weights[name] = new_w
            info["weight_update"] = relative_norm_change(new_w, kept)
        if new_b is not None and dense_b is not None and not torch.equal(new_b.cpu(), dense_b.cpu()):
            self.result.biases[name] = new_b.cpu().to(layer.bias.dtype)
            info["bias_update"] = relative_norm_change(new_b.cpu(), dense_b.cpu())
        self.result.layer_notes[name] = info
        layer.weight.copy_(new_w)
        if name in self.result.biases:
            layer.bias.copy_(self.result.biases[name])
        self._reload(name)

    def _update_batchnorm(self, name: str, x: torch.Tensor) -> None:
        start = time.perf_counter()
        bn = self.model.batchnorms[name]
        moments = MomentStatistics(bn.block_dim, self.device)
        moments.add(x)
        mean, var = update_batchnorm(self.dense.batchnorm[name][0], self.dense.batchnorm[name][1], moments,
                                     self.dense_moments.get(name), self.repair.bn_mode)
        self.result.batchnorm[name] = (mean.cpu(), var.cpu())
        self.result.batchnorm_notes[name] = {"mean_change": relative_norm_change(mean, self.dense.batchnorm[name][0]),
                                             "var_change": relative_norm_change(var, self.dense.batchnorm[name][1])}
        bn.mean.copy_(mean)
        bn.var.copy_(var)
        self._reload(name)
        self.timings["statistics_seconds"] += time.perf_counter() - start

    def _reload(self, name: str) -> None:
        """Rebuilds the running network's op for ``name`` from the model's new values."""
        per_frame = bool(self.am.ivector_dim)  # the calibration segments read an i-vector at every frame
        self.am.graph_for(per_frame).reload_component(self.model.file.nnet.component(name))
