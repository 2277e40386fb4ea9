"""Checks a parsed model the way Kaldi's readers and ``Check()`` functions do.

Kaldi reads each component field by field in a fixed order (``ExpectToken``)
and then checks it (``BatchNormComponent::Check``, ``TdnnComponent::Check``,
...); ``Nnet::Check`` checks every node's dimension against the components and
descriptors around it; ``TransitionModel::Check`` and the decoders check the
transition model against the network's output.  kprune parses components
generically (:mod:`kprune.kaldi.components`), so the same rules are stated
here as data: a field schema per component type, value constraints, and the
dimensions each component takes and gives.

Every failure is a :class:`KaldiFormatError` naming the component (or node),
the field and the byte offset (line, in text files).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from kprune.kaldi.components import Component, OpaqueComponent
from kprune.kaldi.io import Reader

if TYPE_CHECKING:
    from kprune.kaldi.nnet3 import Nnet3
    from kprune.kaldi.transition import TransitionModel

# -- field schemas: Kaldi's read order (shared/docs/kaldi-nnet3-format.md, 4) --

# One entry: the tokens accepted at that place (alternatives) and whether it is required.
Entry = tuple[tuple[str, ...], bool]


def _req(*tokens: str) -> Entry:
    return tokens, True


def _opt(*tokens: str) -> Entry:
    return tokens, False


# UpdatableComponent::ReadUpdatableCommon: every item is optional, in this order.
_HEADER = [_opt("<LearningRateFactor>"), _opt("<IsGradient>"), _opt("<MaxChange>"), _opt("<L2Regularize>"),
           _opt("<LearningRate>")]
# NonlinearComponent::Read.
_NONLINEAR = [_req("<Dim>"), _opt("<BlockDim>"), _req("<ValueAvg>"), _req("<DerivAvg>"), _req("<Count>"),
              _opt("<OderivRms>"), _opt("<OderivCount>"), _opt("<NumDimsSelfRepaired>"), _opt("<NumDimsProcessed>"),
              _opt("<SelfRepairLowerThreshold>"), _opt("<SelfRepairUpperThreshold>"), _opt("<SelfRepairScale>")]

SCHEMAS: dict[str, list[Entry]] = {
    "AffineComponent": _HEADER + [_req("<LinearParams>"), _req("<BiasParams>"), _opt("<IsGradient>"),
                                  _opt("<OrthonormalConstraint>")],
    "NaturalGradientAffineComponent": _HEADER + [
        _req("<LinearParams>"), _req("<BiasParams>"), _req("<RankIn>"), _req("<RankOut>"),
        _opt("<OrthonormalConstraint>"), _req("<UpdatePeriod>"), _req("<NumSamplesHistory>"), _req("<Alpha>"),
        _opt("<MaxChangePerSample>"), _opt("<IsGradient>"), _opt("<UpdateCount>"), _opt("<ActiveScalingCount>"),
        _opt("<MaxChangeScaleStats>")],
    "FixedAffineComponent": [_req("<LinearParams>"), _req("<BiasParams>")],
    "LinearComponent": _HEADER + [
        _req("<Params>"), _opt("<OrthonormalConstraint>"), _req("<UseNaturalGradient>"), _req("<RankInOut>"),
        _req("<Alpha>"), _req("<NumSamplesHistory>"), _req("<UpdatePeriod>")],
    "TdnnComponent": _HEADER + [
        _req("<TimeOffsets>"), _req("<LinearParams>"), _req("<BiasParams>"), _req("<OrthonormalConstraint>"),
        _req("<UseNaturalGradient>"), _req("<NumSamplesHistory>"), _req("<AlphaInOut>", "<Alpha>"),
        _req("<RankInOut>")],
    "BlockAffineComponent": _HEADER + [_req("<NumBlocks>"), _req("<LinearParams>"), _req("<BiasParams>"),
                                       _opt("<IsGradient>")],
    "RectifiedLinearComponent": _NONLINEAR, "SigmoidComponent": _NONLINEAR, "TanhComponent": _NONLINEAR,
    "SoftmaxComponent": _NONLINEAR, "LogSoftmaxComponent": _NONLINEAR,
    "BatchNormComponent": [_req("<Dim>"), _req("<BlockDim>"), _req("<Epsilon>"), _req("<TargetRms>"),
                           _req("<TestMode>"), _req("<Count>"), _req("<StatsMean>"), _req("<StatsVar>")],
    "NormalizeComponent": [_req("<InputDim>", "<Dim>"), _opt("<BlockDim>"), _req("<TargetRms>"),
                           _req("<AddLogStddev>"), _opt("<ValueAvg>"), _opt("<DerivAvg>"), _opt("<Count>")],
    "GeneralDropoutComponent": [_req("<Dim>"), _req("<BlockDim>"), _req("<TimePeriod>"), _req("<DropoutProportion>"),
                                _opt("<SpecAugmentMaxProportion>"), _opt("<SpecAugmentMaxRegions>"),
                                _opt("<TestMode>"), _opt("<Continuous>")],
    "DropoutComponent": [_req("<Dim>"), _req("<DropoutProportion>"), _opt("<DropoutPerFrame>"), _opt("<TestMode>")],
    "NoOpComponent": [_req("<Dim>"), _opt("<ValueAvg>"), _opt("<DerivAvg>"), _opt("<Count>"), _opt("<OderivRms>"),
                      _opt("<OderivCount>"), _opt("<NumDimsSelfRepaired>"), _opt("<NumDimsProcessed>"),
                      _opt("<SelfRepairLowerThreshold>"), _opt("<SelfRepairUpperThreshold>"),
                      _opt("<SelfRepairScale>"), _opt("<BackpropScale>")],
    "PnormComponent": [_req("<InputDim>"), _req("<OutputDim>")],
    "SumGroupComponent": [_req("<Sizes>")],
    "ScaleAndOffsetComponent": _HEADER + [_req("<Dim>"), _req("<Scales>"), _req("<Offsets>"),
                                          _opt("<UseNaturalGradient>"), _opt("<Rank>")],
    "ElementwiseProductComponent": [_req("<InputDim>"), _req("<OutputDim>")],
    "FixedScaleComponent": [_req("<Scales>")],
    "FixedBiasComponent": [_req("<Bias>")],
}


def _name(comp: Component) -> str:
    return f"{comp.type} {comp.name}"


def check_schema(r: Reader, comp: Component) -> None:
    """Each field once, where Kaldi's reader expects it; every required field present."""
    schema = SCHEMAS[comp.type]
    at = 0
    for f in comp.fields:
        while at < len(schema) and f.token not in schema[at][0]:
            if schema[at][1]:
                raise r.error(f"expected {'/'.join(schema[at][0])} in {_name(comp)}, found {f.token}",
                              _token_pos(f))
            at += 1
        if at == len(schema):
            where = "repeated or out of Kaldi's order" if any(f.token in e[0] for e in schema) else "not a field of it"
            raise r.error(f"expected the fields of {comp.type} in Kaldi's order, each once, in component "
                          f"{comp.name}, found {f.token} ({where})", _token_pos(f))
        at += 1
    missing = [e[0] for e in schema[at:] if e[1]]
    if missing:
        raise r.error(f"expected {'/'.join(missing[0])} in {_name(comp)}, found {comp.closing or 'its end'}",
                      comp.span[1] if comp.span else None)


def _token_pos(f) -> int | None:
    return None if f.span is None else f.span[0] - len(f.token) - 1


# -- field values: what each component's Check() asserts ----------------------

def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


_VALUE_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "<Dim>": (_positive, "> 0"), "<InputDim>": (_positive, "> 0"), "<OutputDim>": (_positive, "> 0"),
    "<BlockDim>": (_positive, "> 0"), "<NumBlocks>": (_positive, "> 0"),
    "<RankIn>": (_positive, "> 0"), "<RankOut>": (_positive, "> 0"), "<Rank>": (_positive, "> 0"),
    "<RankInOut>": (lambda v: v[0] > 0 and v[1] > 0, "> 0 (both)"),
    "<UpdatePeriod>": (_positive, "> 0"),
    "<NumSamplesHistory>": (lambda v: 0 < v <= 1e6, "in (0, 1e6]"),
    "<Alpha>": (_non_negative, ">= 0"), "<AlphaInOut>": (lambda v: v[0] >= 0 and v[1] >= 0, ">= 0 (both)"),
    "<TimePeriod>": (_non_negative, ">= 0"),
    "<DropoutProportion>": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "<SpecAugmentMaxProportion>": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "<SpecAugmentMaxRegions>": (_positive, "> 0"),
    "<Epsilon>": (_positive, "> 0"), "<TargetRms>": (_positive, "> 0"),
    "<Count>": (_non_negative, ">= 0"), "<OderivCount>": (_non_negative, ">= 0"),
    "<MaxChange>": (_non_negative, ">= 0"), "<L2Regularize>": (_non_negative, ">= 0"),
    "<LearningRate>": (_non_negative, ">= 0"), "<LearningRateFactor>": (_non_negative, ">= 0"),
    "<MaxChangePerSample>": (_non_negative, ">= 0"),
}


def _finite(v) -> bool:
    if isinstance(v, tuple):
        return all(math.isfinite(x) for x in v)
    return not isinstance(v, float) or math.isfinite(v)


def check_values(r: Reader, comp: Component) -> None:
    """Scalar ranges, then the dimensions of the vectors against the dims they describe."""
    for f in comp.fields:
        rule = _VALUE_RULES.get(f.token)
        if rule is not None and (not _finite(f.value) or not rule[0](f.value)):
            raise r.error(f"expected {f.token} {rule[1]} in {_name(comp)}, found {_show(f.value)}", f.span[0])
    get = comp.get
    ctype = comp.type
    if ctype in ("RectifiedLinearComponent", "SigmoidComponent", "TanhComponent", "SoftmaxComponent",
                 "LogSoftmaxComponent", "NoOpComponent"):
        dim = get("<Dim>")
        _divides(r, comp, "<BlockDim>", "<Dim>")
        for tok in ("<ValueAvg>", "<DerivAvg>", "<OderivRms>"):
            _vector_dim(r, comp, tok, (0, dim), "0 or <Dim>")
    elif ctype == "BatchNormComponent":
        _divides(r, comp, "<BlockDim>", "<Dim>")
        for tok in ("<StatsMean>", "<StatsVar>"):
            _vector_dim(r, comp, tok, (0, get("<BlockDim>")), "0 or <BlockDim>")
    elif ctype == "GeneralDropoutComponent":
        _divides(r, comp, "<BlockDim>", "<Dim>")
    elif ctype == "NormalizeComponent":
        if get("<BlockDim>") is not None:
            _divides(r, comp, "<BlockDim>", "<InputDim>" if comp.field("<InputDim>") else "<Dim>")
    elif ctype in ("PnormComponent", "ElementwiseProductComponent"):
        _divides(r, comp, "<OutputDim>", "<InputDim>")
    elif ctype == "SumGroupComponent":
        sizes = get("<Sizes>")
        if len(sizes) == 0 or (sizes <= 0).any():
            raise r.error(f"expected <Sizes> of positive group sizes in {_name(comp)}, found {_show(sizes)}",
                          comp.field("<Sizes>").span[0])
    elif ctype == "ScaleAndOffsetComponent":
        block = len(get("<Scales>"))
        _vector_dim(r, comp, "<Offsets>", (block,), f"{block} (the dim of <Scales>)")
        if block == 0 or get("<Dim>") % block:
            raise r.error(f"expected <Dim> a multiple of the dim of <Scales> ({block}) in {_name(comp)}, "
                          f"found {get('<Dim>')}", comp.field("<Dim>").span[0])
    elif ctype in ("FixedScaleComponent", "FixedBiasComponent"):
        tok = "<Scales>" if ctype == "FixedScaleComponent" else "<Bias>"
        if len(get(tok)) == 0:
            raise r.error(f"expected a non-empty {tok} in {_name(comp)}, found dim 0", comp.field(tok).span[0])
    if ctype == "TdnnComponent":
        offsets = get("<TimeOffsets>")
        if len(offsets) > 1 and not (np.diff(offsets) > 0).all():
            raise r.error(f"expected <TimeOffsets> sorted and unique in {_name(comp)}, found {_show(offsets)}",
                          comp.field("<TimeOffsets>").span[0])
    weight = comp.weight_field
    if weight is not None and 0 in weight.value.shape:
        raise r.error(f"expected a non-empty {weight.token} in {_name(comp)}, found {weight.value.shape[0]}x"
                      f"{weight.value.shape[1]}", weight.span[0])
    if ctype == "BlockAffineComponent" and weight is not None:
        rows = weight.value.shape[0]
        if rows % get("<NumBlocks>"):
            raise r.error(f"expected the rows of <LinearParams> ({rows}) a multiple of <NumBlocks> in "
                          f"{_name(comp)}, found <NumBlocks> {get('<NumBlocks>')}", comp.field("<NumBlocks>").span[0])


def _divides(r: Reader, comp: Component, part: str, whole: str) -> None:
    p, w = comp.get(part), comp.get(whole)
    if p is not None and w is not None and w % p:
        raise r.error(f"expected {whole} ({w}) a multiple of {part} in {_name(comp)}, found {part} {p}",
                      comp.field(part).span[0])


def _vector_dim(r: Reader, comp: Component, token: str, allowed: Sequence[int | None], what: str) -> None:
    f = comp.field(token)
    if f is not None and len(f.value) not in allowed:
        raise r.error(f"expected {token} of dim {what} ({'/'.join(str(a) for a in allowed)}) in {_name(comp)}, "
                      f"found dim {len(f.value)}", f.span[0])


def _show(v) -> str:
    if isinstance(v, np.ndarray):
        items = v.tolist()
        return "[" + " ".join(map(str, items[:8])) + (" ..." if len(items) > 8 else "") + "]"
    return repr(v)


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
