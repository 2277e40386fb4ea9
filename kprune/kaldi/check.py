"""Checks a parsed model the way Kaldi's ``Check()`` functions do, around its components.

Each component is checked on read against :mod:`kprune.kaldi.schema` (field
order, values).  Here: ``Nnet::Check`` checks every node's dimension against
the components and descriptors around it, so the dimensions each component
takes and gives are stated as data; ``TransitionModel::Check`` and the
decoders check the transition model against the network's output.

Every failure is a :class:`KaldiFormatError` naming the component (or node),
the field and the byte offset (line, in text files).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from kprune.kaldi.components import Component, OpaqueComponent
from kprune.kaldi.io import Reader
from kprune.kaldi.schema import _show

if TYPE_CHECKING:
    from kprune.kaldi.nnet3 import Nnet3
    from kprune.kaldi.transition import TransitionModel

# -- dimensions: what a component takes and gives -----------------------------

def component_dims(comp: Component | OpaqueComponent) -> tuple[int, int] | None:
    """``(input dim, output dim)`` as Kaldi's ``InputDim()``/``OutputDim()``; None for an opaque type."""
    if not isinstance(comp, Component):
        return None
    get, ctype = comp.get, comp.type
    weight = comp.weight_field
    if weight is not None:
        rows, cols = weight.value.shape
        if ctype == "TdnnComponent":
            return cols // max(1, len(get("<TimeOffsets>"))), rows
        if ctype == "BlockAffineComponent":
            return cols * get("<NumBlocks>"), rows
        return cols, rows
    if ctype in ("PnormComponent", "ElementwiseProductComponent"):
        return get("<InputDim>"), get("<OutputDim>")
    if ctype == "NormalizeComponent":
        dim = get("<InputDim>", get("<Dim>"))
        blocks = dim // get("<BlockDim>", dim)
        return dim, dim + (blocks if get("<AddLogStddev>") else 0)
    if ctype == "SumGroupComponent":
        sizes = get("<Sizes>")
        return int(sizes.sum()), len(sizes)
    if ctype == "FixedScaleComponent":
        return len(get("<Scales>")), len(get("<Scales>"))
    if ctype == "FixedBiasComponent":
        return len(get("<Bias>")), len(get("<Bias>"))
    dim = get("<Dim>")
    return (dim, dim) if dim is not None else None


# -- the graph: Nnet::Check ----------------------------------------------------

def descriptor_dim(d: tuple, node_dims: dict[str, int | None]) -> int | None:
    """The dimension of a parsed descriptor (None when it reads a node of unknown dim).

    Raises ValueError naming the mismatch when its parts disagree.
    """
    head = d[0]
    if head == "node":
        return node_dims.get(d[1])
    if head == "Const":
        return d[2]
    if head == "Scale":
        return descriptor_dim(d[2], node_dims)
    if head in ("Offset", "ReplaceIndex", "Round", "IfDefined"):
        return descriptor_dim(d[1], node_dims)
    dims = [descriptor_dim(a, node_dims) for a in d[1:]]
    if head == "Append":
        return None if None in dims else sum(dims)
    known = {x for x in dims if x is not None}
    if len(known) > 1:
        raise ValueError(f"{head}() of parts with different dims {dims}")
    return None if None in dims else dims[0]


def check_graph(r: Reader, nnet: "Nnet3", line_pos: Sequence[int]) -> dict[str, int | None]:
    """Every node's dimension against its descriptor and its component, as ``Nnet::Check``.

    ``line_pos[i]`` is the byte offset of config line ``i``.  Returns the nodes' output dims.
    """
    nodes = nnet.nodes

    def where(name: str) -> int | None:
        line = nodes[name].line
        return line_pos[line] if line is not None and line < len(line_pos) else None

    # A node's own dimension comes from its definition (as Kaldi's Nnet::OutputDim), so the
    # order of the lines and recurrent loops (IfDefined(Offset(c, -1))) do not matter.
    dims: dict[str, int | None] = {}
    for name, node in nodes.items():
        if node.kind == "input-node":
            if node.dim <= 0:
                raise r.error(f"expected input-node {name} with dim > 0, found dim={node.dim}", where(name))
            dims[name] = node.dim
        elif node.kind == "dim-range-node":
            dims[name] = node.dim
        elif node.kind == "component-node":
            io = component_dims(nnet.component(node.component))
            dims[name] = None if io is None else io[1]
    for name, node in nodes.items():
        if node.kind == "dim-range-node":
            source = dims.get(node.input_node)
            if node.dim <= 0 or node.dim_offset < 0 or (source is not None and node.dim_offset + node.dim > source):
                raise r.error(f"expected dim-range-node {name} within the dim {source} of {node.input_node}, "
                              f"found dim-offset={node.dim_offset} dim={node.dim}", where(name))
        if node.descriptor is None:
            continue
        try:
            got = descriptor_dim(node.descriptor, dims)
        except ValueError as e:
            raise r.error(f"expected the parts of node {name}'s input to agree, found {e}", where(name)) from None
        if node.kind == "output-node":
            dims[name] = got
            continue
        comp = nnet.component(node.component)
        io = component_dims(comp)
        if io is not None and got is not None and got != io[0]:
            raise r.error(f"expected the input of component-node {name} to have the input dim {io[0]} of "
                          f"{comp.type} {comp.name}, found dim {got}", where(name))
    return dims


# -- the transition model against the network ---------------------------------

def _tuple_pos(r: Reader, tm: "TransitionModel", i: int, start: int) -> int:
    """Where tuple ``i`` starts: 5 bytes per int32 in binary, one line per tuple in text."""
    first = getattr(tm, "tuples_pos", None)
    if first is None:
        return start
    if r.binary:
        width = 3 if tm.is_hmm else 4
        return first + 5 * width * i
    pos = first
    for _ in range(i + 1):
        found = r.buf.find(b"\n", pos)
        if found < 0:
            return first
        pos = found + 1
    return pos


def check_transition_model(r: Reader, tm: "TransitionModel", output_dim: int | None, start: int) -> None:
    """Tuples sorted and unique with pdf ids in ``[0, output dim)``, as Kaldi's readers and decoders need."""
    tuples = tm.tuples
    if len(tuples) == 0:
        raise r.error("expected transition tuples, found none", start)
    pdfs = tuples[:, 2:4]
    bad = np.flatnonzero((pdfs < 0).any(axis=1) | ((pdfs >= output_dim).any(axis=1) if output_dim else False))
    if len(bad):
        i = int(bad[0])
        raise r.error(f"expected pdf ids in [0, {output_dim}) (the network's output dim) in the transition tuples, "
                      f"found tuple {i} {tuple(tuples[i].tolist())}", _tuple_pos(r, tm, i, start))
    if len(tuples) > 1:
        rows = [tuple(t) for t in tuples.tolist()]
        bad = next((i for i in range(1, len(rows)) if rows[i - 1] >= rows[i]), None)
        if bad is not None:
            raise r.error(f"expected the transition tuples sorted and unique, found tuple {bad} {rows[bad]} after "
                          f"{rows[bad - 1]}", _tuple_pos(r, tm, bad, start))
    if output_dim is not None and tm.num_pdfs != output_dim:
        raise r.error(f"expected the transition model's pdfs to cover the network's output dim {output_dim}, "
                      f"found {tm.num_pdfs} pdfs", start)
    log_probs = tm.log_probs[1:]
    if len(log_probs) and (not np.isfinite(log_probs).all() or (log_probs > 1e-4).any()):
        raise r.error("expected <LogProbs> of finite log-probabilities <= 0, found "
                      f"{_show(log_probs[~np.isfinite(log_probs) | (log_probs > 1e-4)])}", start)
