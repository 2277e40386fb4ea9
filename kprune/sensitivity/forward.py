"""The network's outputs when one layer changes, computed from that layer on.

:class:`LayerReplay` runs the dense network once on a :class:`FeatureSet` (as
one batch, utterances in pieces as calibration does), keeping every
component node's value.  After one layer's parameters change, :meth:`outputs`
computes only the nodes that depend on that layer (the nnet3 graph's looped
computation cache holds the others), so a single-layer pruning costs the tail
of the network, not all of it.
"""

from __future__ import annotations

import logging
import time

import torch

from kprune.features.pipeline import FeatureSet

log = logging.getLogger(__name__)

from kprune.pruning.capture import calibration_segments  # pieces as the calibration batch cuts them


class LayerReplay:
    """Dense outputs of a feature set, and the outputs with one changed layer (see the module docstring).

    ``am`` is an :class:`~kprune.nnet.compute.AcousticModel` built with
    ``use_priors=False`` (raw outputs) on the model being pruned; a layer's
    change reaches it through :meth:`reload`.
    """

    def __init__(self, am, features: FeatureSet):
        self.am = am
        self.segments = calibration_segments(am, features)
        self.per_frame = bool(am.ivector_dim)
        self.graph = am.graph_for(self.per_frame)
        start = time.perf_counter()
        self._cache: dict = {}
        self.dense = self._run(self._cache)
        self.dense_seconds = time.perf_counter() - start
        self._downstream: dict[str, set[str]] = {}
        log.info("dense pass over %d pieces in %.1f s", len(self.segments), self.dense_seconds)

    def _run(self, cache: dict) -> list[torch.Tensor]:
        return self.am._run_batch(self.segments, self.per_frame, cache=cache)

    def downstream(self, component: str) -> set[str]:
        """The graph nodes whose value depends on ``component`` (its own nodes included)."""
        if component not in self._downstream:
            nodes = self.graph.nodes
            changed = {n for n, node in nodes.items() if node.op is not None and node.op.name == component}
            for name in self.graph.order:
                if name not in changed and any(d in changed for d in nodes[name].deps):
                    changed.add(name)
            self._downstream[component] = changed
        return self._downstream[component]

    def reload(self, component) -> None:
        """Makes the graph read ``component``'s current parameters (a Kaldi component of the model file)."""
        self.graph.reload_component(component)

    def outputs(self, changed: str) -> list[torch.Tensor]:
        """Raw outputs per piece with the current parameters, when only ``changed`` differs from the dense pass."""
        skip = self.downstream(changed)
        cache = {k: v for k, v in self._cache.items() if k not in skip}
        return self._run(cache)

    def cache_bytes(self) -> int:
        return sum(v[1].numel() * v[1].element_size() for v in self._cache.values())
