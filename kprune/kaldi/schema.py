"""What Kaldi's readers expect of each nnet3 component type, and the checks of one component against it.

Each field token has one value type (``shared/docs/kaldi-nnet3-format.md``
section 4); Kaldi reads each component's fields in a fixed order
(``ExpectToken``) and then checks their values (``BatchNormComponent::Check``,
``TdnnComponent::Check``, ...).  :mod:`kprune.kaldi.components` reads and
writes components with these tables; :mod:`kprune.kaldi.check` checks the
network around them.

Every failure is a :class:`KaldiFormatError` naming the component, the field
and the byte offset (line, in text files).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    from kprune.kaldi.io import Reader
    from kprune.kaldi.components import Component


# Value types.
I32, F32, F64, BOOL, FLAG, IVEC, MAT, VEC, F32X2, I32X2 = (
    "int32", "float", "double", "bool", "flag", "int-vector", "matrix", "vector", "float-pair", "int-pair")

# The type of each field token, shared by all components ...
FIELD_TYPES: dict[str, str] = {
    # UpdatableComponent common header (section 4.1)
    "<LearningRateFactor>": F32, "<IsGradient>": BOOL, "<MaxChange>": F32,
    "<L2Regularize>": F32, "<LearningRate>": F32,
    # weights
    "<LinearParams>": MAT, "<Params>": MAT, "<BiasParams>": VEC,
    "<OrthonormalConstraint>": F32, "<NumBlocks>": I32, "<TimeOffsets>": IVEC,
    # natural-gradient options
    "<RankIn>": I32, "<RankOut>": I32, "<UpdatePeriod>": I32, "<NumSamplesHistory>": F32,
    "<Alpha>": F32, "<AlphaInOut>": F32X2, "<RankInOut>": I32X2, "<UseNaturalGradient>": BOOL,
    "<MaxChangePerSample>": F32, "<UpdateCount>": F64, "<ActiveScalingCount>": F64,
    "<MaxChangeScaleStats>": F64, "<Rank>": I32,
    # dimensions
    "<Dim>": I32, "<InputDim>": I32, "<OutputDim>": I32, "<BlockDim>": I32, "<Sizes>": IVEC,
    # NonlinearComponent statistics (section 4.2); counts are doubles
    "<ValueAvg>": VEC, "<DerivAvg>": VEC, "<Count>": F64, "<OderivRms>": VEC,
    "<OderivCount>": F64, "<NumDimsSelfRepaired>": F64, "<NumDimsProcessed>": F64,
    "<SelfRepairLowerThreshold>": F32, "<SelfRepairUpperThreshold>": F32, "<SelfRepairScale>": F32,
    # BatchNorm / Normalize
    "<Epsilon>": F32, "<TargetRms>": F32, "<TestMode>": BOOL, "<StatsMean>": VEC, "<StatsVar>": VEC,
    "<AddLogStddev>": BOOL,
    # dropout
    "<DropoutProportion>": F32, "<DropoutPerFrame>": BOOL, "<TimePeriod>": I32,
    "<SpecAugmentMaxProportion>": F32, "<SpecAugmentMaxRegions>": I32, "<Continuous>": FLAG,
    # misc
    "<BackpropScale>": F32, "<Scales>": VEC, "<Offsets>": VEC, "<Bias>": VEC,
}

# ... except where a component gives a token another meaning.
_OVERRIDES: dict[str, dict[str, str]] = {
    "GeneralDropoutComponent": {"<TestMode>": FLAG},
}

# Component types whose weight matrix kprune exposes as a layer, with the
# token that holds the weight.
WEIGHT_FIELD: dict[str, str] = {
    "AffineComponent": "<LinearParams>",
    "NaturalGradientAffineComponent": "<LinearParams>",
    "FixedAffineComponent": "<LinearParams>",
    "BlockAffineComponent": "<LinearParams>",
    "TdnnComponent": "<LinearParams>",
    "LinearComponent": "<Params>",
}

# Component types read field by field.  Anything else is opaque.
KNOWN_TYPES: frozenset[str] = frozenset(WEIGHT_FIELD) | frozenset({
    "RectifiedLinearComponent", "SigmoidComponent", "TanhComponent", "SoftmaxComponent",
    "LogSoftmaxComponent", "BatchNormComponent", "NormalizeComponent", "GeneralDropoutComponent",
    "DropoutComponent", "NoOpComponent", "PnormComponent", "SumGroupComponent",
    "ScaleAndOffsetComponent", "ElementwiseProductComponent", "FixedScaleComponent",
    "FixedBiasComponent",
})


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
