"""The prunable view of a Kaldi nnet3 model: layer name -> weight and bias tensors.

>>> model = load_model("exp/chain/tdnn1a/final.mdl")
>>> model.layers["tdnnf3.linear"].weight.shape       # torch.float32 [out, in]
>>> model.save("pruned/final.mdl")                   # same format as read

A *layer* is a weight-bearing component (Affine, NaturalGradientAffine,
FixedAffine, BlockAffine, Linear, Tdnn), named as in the file.  For binary
files the weight tensors share memory with the file buffer, so editing a
weight in place edits the bytes that :meth:`Model.save` writes.
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

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Copies of every weight, to restore with :meth:`restore` between sweep points."""
        return {n: layer.weight.clone() for n, layer in self.layers.items()}

    def restore(self, snapshot: dict[str, torch.Tensor]) -> None:
        """Copies weights back in place (the tensors stay views of the file buffer)."""
        for n, w in snapshot.items():
            self.layers[n].weight.copy_(w)

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
