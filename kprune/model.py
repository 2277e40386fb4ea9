"""The prunable view of a Kaldi nnet3 model: layer name -> weight and bias tensors.

>>> model = load_model("exp/chain/tdnn1a/final.mdl")
>>> model.layers["tdnnf3.linear"].weight.shape       # torch.float32 [out, in]
>>> model.save("pruned/final.mdl")                   # same format as read

A *layer* is a weight-bearing component (Affine, NaturalGradientAffine,
FixedAffine, BlockAffine, Linear, Tdnn), named as in the file.  For binary
files the weight tensors share memory with the file buffer, so editing a
weight in place edits the bytes that :meth:`Model.save` writes.

Besides the weights, a pruning may change what a calibrated repair writes:
the layers' biases and the stored statistics of every BatchNormComponent
(:attr:`Model.batchnorms`).  Both are in-place views too, and
:meth:`Model.snapshot` / :meth:`Model.restore` cover all three.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from kprune.errors import ConfigError
from kprune.kaldi.components import fingerprint
from kprune.kaldi import Component, NnetFile, OpaqueComponent, WEIGHT_FIELD, load_nnet_file, save_nnet_file

#: The output node that decoding reads.  Other outputs (``output-xent`` of
#: chain models) are used only in training.
DECODING_OUTPUT = "output"


@dataclass(frozen=True)
class Layer:
    """One weight layer.

    ``weight`` is float32 ``[out, in]`` (for TdnnComponent, ``in`` spans all
    time offsets; for BlockAffineComponent, one block's input).  ``bias`` is
    None where the component has none.  ``trainable`` is False for
    FixedAffineComponent (the LDA transform).  ``decoding`` is False for layers
    that feed no output used in decoding (a chain model's xent branch).
    Edit ``weight`` in place (``weight[mask] = 0``, ``weight.copy_(w)``): that
    tensor is what gets saved, so the attribute cannot be rebound.
    """

    name: str
    type: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    trainable: bool
    decoding: bool

    @property
    def prunable_by_default(self) -> bool:
        return self.trainable and self.decoding


@dataclass(frozen=True)
class BatchNorm:
    """The stored statistics of one BatchNormComponent, as Kaldi uses them in test mode.

    ``mean`` and ``var`` (float32 ``[block_dim]``, ``<StatsMean>`` and
    ``<StatsVar>``) are views of the file's values: edit them in place.  In
    test mode Kaldi's ``BatchNormComponent`` computes, per block column,
    ``scale = target_rms * (var + epsilon)^-1/2`` and
    ``offset = -mean * scale`` (``nnet-normalize-component.cc``,
    ``ComputeDerived``), and ``y = x * scale + offset``.
    """

    name: str
    dim: int
    block_dim: int
    epsilon: float
    target_rms: float
    mean: torch.Tensor
    var: torch.Tensor


@dataclass
class ModelState:
    """Copies of everything a pruning may change: weights, biases, BatchNorm statistics."""

    weights: dict[str, torch.Tensor]
    biases: dict[str, torch.Tensor]
    batchnorm: dict[str, tuple[torch.Tensor, torch.Tensor]]


class Model:
    """A parsed model file plus its layer view."""

    def __init__(self, file: NnetFile):
        self.file = file
        feeding = _components_feeding_decoding(file)
        self.layers: dict[str, Layer] = {}
        for c in file.nnet.components:
            if isinstance(c, Component) and c.type in WEIGHT_FIELD:
                wf, bf = c.weight_field, c.bias_field
                for f in (wf, bf):
                    if f is not None and f.value.dtype != np.float32:
                        _to_float32(f)
                self.layers[c.name] = Layer(
                    name=c.name,
                    type=c.type,
                    weight=_as_tensor(wf.value),
                    bias=None if bf is None else _as_tensor(bf.value),
                    trainable=c.type != "FixedAffineComponent",
                    decoding=feeding is None or c.name in feeding,
                )
        self.opaque = {c.name: c.type for c in file.nnet.components if isinstance(c, OpaqueComponent)}
        self.batchnorms: dict[str, BatchNorm] = {}
        for c in file.nnet.components:
            if isinstance(c, Component) and c.type == "BatchNormComponent":
                stats = [c.field(t) for t in ("<StatsMean>", "<StatsVar>")]
                if any(f is None or f.value is None for f in stats):
                    continue  # no statistics to view (the network cannot run in test mode either)
                for f in stats:
                    if f.value.dtype != np.float32:
                        _to_float32(f)
                dim = int(c.get("<Dim>", 0))
                self.batchnorms[c.name] = BatchNorm(
                    c.name, dim, int(c.get("<BlockDim>", dim)), float(c.get("<Epsilon>", 0.001)),
                    float(c.get("<TargetRms>", 1.0)), _as_tensor(stats[0].value), _as_tensor(stats[1].value))

    @property
    def path(self) -> Path | None:
        return self.file.path

    @property
    def binary(self) -> bool:
        return self.file.binary

    def save(self, path: str | os.PathLike, binary: bool | None = None) -> None:
        """Writes the model atomically, in the format it was read unless ``binary`` is given.

        Writing over the file the model was read from is refused.
        """
        save_nnet_file(self.file, path, binary)

    def to_bytes(self, binary: bool | None = None) -> bytes:
        return self.file.to_bytes(binary)

    # -- weights ------------------------------------------------------------
    def weights(self, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        names = self.layers if names is None else names
        return {n: self.layers[n].weight for n in names}

    def snapshot(self) -> ModelState:
        """Copies of every weight, bias and BatchNorm statistic, to restore with :meth:`restore`
        between sweep points."""
        return ModelState(
            weights={n: layer.weight.clone() for n, layer in self.layers.items()},
            biases={n: layer.bias.clone() for n, layer in self.layers.items() if layer.bias is not None},
            batchnorm={n: (bn.mean.clone(), bn.var.clone()) for n, bn in self.batchnorms.items()})

    def restore(self, state: ModelState) -> None:
        """Copies everything back in place (the tensors stay views of the file buffer)."""
        for n, w in state.weights.items():
            self.layers[n].weight.copy_(w)
        for n, b in state.biases.items():
            self.layers[n].bias.copy_(b)
        for n, (mean, var) in state.batchnorm.items():
            self.batchnorms[n].mean.copy_(mean)
            self.batchnorms[n].var.copy_(var)

    # -- selection ----------------------------------------------------------
    @property
    def default_layers(self) -> list[str]:
        """What ``layers=all`` selects: trainable layers that feed decoding."""
        return [n for n, layer in self.layers.items() if layer.prunable_by_default]

    def select(self, layers: str | Sequence[str] = "all", exclude: str | Sequence[str] = ()) -> list[str]:
        """Resolves a layer selection to names, in file order.

        ``layers`` is ``"all"``, a name, a glob (``"tdnnf*.linear"``) or a list
        of those (a comma-separated string is a list too).  An exact name may
        pick any weight layer, the FixedAffine LDA and the xent branch
        included; ``all`` and globs draw only on :attr:`default_layers`.
        ``exclude`` removes names or globs.  A name or pattern that matches
        nothing is a :class:`ConfigError` listing what is available.
        """
        wanted = self._match(_as_list(layers), "layers")
        unwanted = self._match(_as_list(exclude), "exclude") if exclude else set()
        chosen = [n for n in self.layers if n in wanted and n not in unwanted]
        if not chosen:
            raise ConfigError(f"layers={_show(layers)} exclude={_show(exclude)} selects no layer; "
                              f"available: {', '.join(self.layers)}")
        return chosen

    def _match(self, patterns: list[str], key: str) -> set[str]:
        pool = self.default_layers
        out: set[str] = set()
        for p in patterns:
            if p == "all":
                out.update(pool)
            elif p in self.layers:
                out.add(p)
            elif p in self.opaque:
                raise ConfigError(f"{key}={p}: component {p} has type {self.opaque[p]}, which kprune does not "
                                  "read, so it cannot be pruned (it is kept unchanged)")
            else:
                hits = [n for n in pool if fnmatch.fnmatchcase(n, p)]
                if not hits:
                    raise ConfigError(f"{key}={p} matches no weight layer of {self.path} (globs match the "
                                      f"layers of layers=all; name others exactly); available: "
                                      f"{', '.join(self.layers)}")
                out.update(hits)
        return out


def load_model(path: str | os.PathLike) -> Model:
    """Reads a Kaldi nnet3 ``.mdl`` or ``.raw`` file, binary or text."""
    return Model(load_nnet_file(path))


def _as_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr)


def _to_float32(f) -> None:
    """Double-precision (DM/DV) weights become a float32 copy, written back only if changed."""
    f.value = f.value.astype(np.float32)
    f.fingerprint = fingerprint(f.value)


def _components_feeding_decoding(file: NnetFile) -> set[str] | None:
    nodes = file.nnet.nodes
    if DECODING_OUTPUT not in nodes:
        return None  # not a simple acoustic model: every layer counts
    return file.nnet.components_feeding(DECODING_OUTPUT)


def _as_list(value: str | Sequence[str]) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _show(value: str | Sequence[str]) -> str:
    return value if isinstance(value, str) else "[" + ",".join(map(str, value)) + "]"
