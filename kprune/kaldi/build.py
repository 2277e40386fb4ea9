"""Builds synthetic nnet3 models, for tests and benchmarks.

:func:`build_tdnn` makes a classic nnet3 TDNN acoustic model in the layout of
Kaldi's WSJ recipe (``lda``, ``affine1`` ... ``affineN``, ``final-affine``,
``final-log-softmax``): the kind of model the original pruning experiments
used.  :func:`build_all_types` makes a small chain-style model holding every
component type kprune reads, plus one type it does not (kept as raw bytes).
The weights are random (Laplace, like trained weights); only the layout is
Kaldi's.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kprune.kaldi.components import Component, Field, OpaqueComponent
from kprune.kaldi.schema import BOOL, F32, F32X2, F64, FLAG, I32, I32X2, IVEC, MAT, VEC
from kprune.kaldi.io import make_writer
from kprune.kaldi.nnet3 import Nnet3
from kprune.kaldi.transition import HmmState, TransitionModel



def _f(token: str, ftype: str, value) -> Field:
    return Field(token, ftype, value, kind={MAT: "FM", VEC: "FV"}.get(ftype))


def _laplace(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    return rng.laplace(0.0, scale, size=shape).astype(np.float32)


def _updatable_header(lr: float = 0.001, max_change: float = 0.75) -> list[Field]:
    return [_f("<MaxChange>", F32, max_change), _f("<L2Regularize>", F32, 0.001), _f("<LearningRate>", F32, lr)]


def affine(rng, name: str, out_dim: int, in_dim: int, *, natural_gradient: bool = False,
           fixed: bool = False) -> Component:
    scale = 1.0 / np.sqrt(in_dim)
    weights = [_f("<LinearParams>", MAT, _laplace(rng, (out_dim, in_dim), scale)),
               _f("<BiasParams>", VEC, _laplace(rng, (out_dim,), 0.1))]
    if fixed:
        return Component(name, "FixedAffineComponent", weights)
    if natural_gradient:
        return Component(name, "NaturalGradientAffineComponent", _updatable_header() + weights + [
            _f("<RankIn>", I32, 20), _f("<RankOut>", I32, 80), _f("<UpdatePeriod>", I32, 4),
            _f("<NumSamplesHistory>", F32, 2000.0), _f("<Alpha>", F32, 4.0)])
    return Component(name, "AffineComponent", _updatable_header() + weights)


def nonlinear(rng, name: str, ctype: str, dim: int, *, stats: bool = True) -> Component:
    n = dim if stats else 0
    return Component(name, ctype, [
        _f("<Dim>", I32, dim),
        _f("<ValueAvg>", VEC, np.abs(_laplace(rng, (n,), 0.3))),
        _f("<DerivAvg>", VEC, np.abs(_laplace(rng, (n,), 0.3))),
        _f("<Count>", F64, 12345.0 if stats else 0.0),
        _f("<OderivRms>", VEC, np.zeros(dim, dtype=np.float32)),
        _f("<OderivCount>", F64, 0.0),
        _f("<NumDimsSelfRepaired>", F64, 0.0),
        _f("<NumDimsProcessed>", F64, 0.0),
        _f("<SelfRepairScale>", F32, 1e-05)])


def normalize(name: str, dim: int) -> Component:
    return Component(name, "NormalizeComponent", [
        _f("<InputDim>", I32, dim), _f("<TargetRms>", F32, 1.0), _f("<AddLogStddev>", BOOL, False)])


def _transition_model(num_pdfs: int) -> TransitionModel:
    """One 2-state HMM topology (an HMM: forward pdf class == self-loop pdf class)."""
    phones = list(range(1, num_pdfs + 1))
    entry = [HmmState(0, 0, [(0, 0.75), (1, 0.25)]), HmmState(-1, -1, [])]
    tuples = np.array([(p, 0, p - 1, p - 1) for p in phones], dtype=np.int32).reshape(-1, 4)
    log_probs = np.array([0.0] + [np.log(0.75), np.log(0.25)] * num_pdfs, dtype=np.float32)
    return TransitionModel(phones, [-1] + [0] * num_pdfs, [entry], tuples, log_probs)


def build_tdnn(*, feat_dim: int = 40, hidden_dim: int = 768, num_pdfs: int = 1536,
               splices: Sequence[Sequence[int]] = ((-2, -1, 0, 1, 2), (-1, 0, 1), (-1, 0, 1),
                                                   (-3, 0, 3), (-3, 0, 3), (-6, -3, 0)),
               seed: int = 0, binary: bool = True, raw: bool = False) -> bytes:
    """A WSJ-style nnet3 TDNN ``final.mdl`` (or ``.raw``): ``affine1`` ... ``affineN``, ``final-affine``.

    ``splices[0]`` is the LDA input splicing; ``splices[1:]`` the input offsets
    of ``affine2`` ... ``affineN`` (``affine1`` reads ``lda``).  The defaults
    give ``affine1`` ... ``affine6`` and ``final-affine``: 7 trainable weight
    layers and about 10 M weights, the size of the WSJ TDNN.
    """
    rng = np.random.default_rng(seed)
    lda_dim = feat_dim * len(splices[0])
    lines = [f"input-node name=input dim={feat_dim}",
             f"component-node name=lda component=lda input={_append('input', splices[0])}",
             "component-node name=affine1 component=affine1 input=lda",
             "component-node name=relu1 component=relu1 input=affine1",
             "component-node name=renorm1 component=renorm1 input=relu1"]
    comps = [affine(rng, "lda", lda_dim, lda_dim, fixed=True), affine(rng, "affine1", hidden_dim, lda_dim),
             nonlinear(rng, "relu1", "RectifiedLinearComponent", hidden_dim), normalize("renorm1", hidden_dim)]
    for i, offsets in enumerate(splices[1:], start=2):
        lines += [f"component-node name=affine{i} component=affine{i} input={_append(f'renorm{i - 1}', offsets)}",
                  f"component-node name=relu{i} component=relu{i} input=affine{i}",
                  f"component-node name=renorm{i} component=renorm{i} input=relu{i}"]
        comps += [affine(rng, f"affine{i}", hidden_dim, hidden_dim * len(offsets)),
                  nonlinear(rng, f"relu{i}", "RectifiedLinearComponent", hidden_dim), normalize(f"renorm{i}", hidden_dim)]
    last = f"renorm{len(splices)}"
    lines += [f"component-node name=final-affine component=final-affine input={last}",
              "component-node name=final-log-softmax component=final-log-softmax input=final-affine",
              "output-node name=output input=final-log-softmax objective=linear"]
    comps += [affine(rng, "final-affine", num_pdfs, hidden_dim),
              nonlinear(rng, "final-log-softmax", "LogSoftmaxComponent", num_pdfs, stats=False)]
    priors = np.full(num_pdfs, 1.0 / num_pdfs, dtype=np.float32)
    left = sum(-min(o) for o in splices)
    right = sum(max(o) for o in splices)
    return _encode(Nnet3(lines, comps), None if raw else _transition_model(num_pdfs), left, right, priors, binary)


def _append(node: str, offsets: Sequence[int]) -> str:
    parts = [node if o == 0 else f"Offset({node}, {o})" for o in offsets]
    return parts[0] if len(parts) == 1 else f"Append({', '.join(parts)})"


def build_all_types(*, seed: int = 0, binary: bool = True, unknown: bool = True) -> bytes:
    """A small chain-style model with every component type kprune reads.

    With ``unknown``, one component of a type kprune does not read
    (``CustomScaleComponent``) sits before ``output.affine``.
    """
    rng = np.random.default_rng(seed)
    d, iv = 8, 4
    comps: list = [
        affine(rng, "lda", 3 * d + iv, 3 * d + iv, fixed=True),
        affine(rng, "tdnn1.affine", 16, 3 * d + iv, natural_gradient=True),
        nonlinear(rng, "tdnn1.relu", "RectifiedLinearComponent", 16),
        Component("tdnn1.batchnorm", "BatchNormComponent", [
            _f("<Dim>", I32, 16), _f("<BlockDim>", I32, 16), _f("<Epsilon>", F32, 0.001),
            _f("<TargetRms>", F32, 1.0), _f("<TestMode>", BOOL, False), _f("<Count>", F64, 185024.0),
            _f("<StatsMean>", VEC, _laplace(rng, (16,), 0.5)), _f("<StatsVar>", VEC, np.abs(_laplace(rng, (16,), 0.5)))]),
        Component("tdnn1.dropout", "GeneralDropoutComponent", [
            _f("<Dim>", I32, 16), _f("<BlockDim>", I32, 16), _f("<TimePeriod>", I32, 0),
            _f("<DropoutProportion>", F32, 0.0), _f("<Continuous>", FLAG, True)]),
        Component("tdnnf2.linear", "TdnnComponent", _updatable_header() + [
            _f("<TimeOffsets>", IVEC, np.array([-1, 0], dtype=np.int32)),
            _f("<LinearParams>", MAT, _laplace(rng, (6, 32), 0.1)), _f("<BiasParams>", VEC, np.zeros(0, np.float32)),
            _f("<OrthonormalConstraint>", F32, -1.0), _f("<UseNaturalGradient>", BOOL, True),
            _f("<NumSamplesHistory>", F32, 2000.0), _f("<AlphaInOut>", F32X2, (4.0, 4.0)),
            _f("<RankInOut>", I32X2, (20, 32))]),
        Component("tdnnf2.affine", "TdnnComponent", _updatable_header() + [
            _f("<TimeOffsets>", IVEC, np.array([0, 1], dtype=np.int32)),
            _f("<LinearParams>", MAT, _laplace(rng, (16, 12), 0.1)), _f("<BiasParams>", VEC, _laplace(rng, (16,), 0.1)),
            _f("<OrthonormalConstraint>", F32, 0.0), _f("<UseNaturalGradient>", BOOL, True),
            _f("<NumSamplesHistory>", F32, 2000.0), _f("<AlphaInOut>", F32X2, (4.0, 4.0)),
            _f("<RankInOut>", I32X2, (20, 32))]),
        Component("tdnnf2.noop", "NoOpComponent", [_f("<Dim>", I32, 16), _f("<BackpropScale>", F32, 1.0)]),
        Component("block", "BlockAffineComponent", _updatable_header() + [
            _f("<NumBlocks>", I32, 2), _f("<LinearParams>", MAT, _laplace(rng, (16, 8), 0.1)),
            _f("<BiasParams>", VEC, _laplace(rng, (16,), 0.1))]),
        Component("pnorm", "PnormComponent", [_f("<InputDim>", I32, 16), _f("<OutputDim>", I32, 8)]),
        nonlinear(rng, "sigmoid", "SigmoidComponent", 8),
        nonlinear(rng, "tanh", "TanhComponent", 8),
        Component("dropout", "DropoutComponent", [
            _f("<Dim>", I32, 8), _f("<DropoutProportion>", F32, 0.1), _f("<DropoutPerFrame>", BOOL, False),
            _f("<TestMode>", BOOL, True)]),
        normalize("renorm", 8),
        Component("sumgroup", "SumGroupComponent", [_f("<Sizes>", IVEC, np.array([2, 2, 2, 2], dtype=np.int32))]),
        Component("prefinal-l", "LinearComponent", _updatable_header() + [
            _f("<Params>", MAT, _laplace(rng, (4, 4), 0.3)), _f("<OrthonormalConstraint>", F32, -1.0),
            _f("<UseNaturalGradient>", BOOL, True), _f("<RankInOut>", I32X2, (20, 32)), _f("<Alpha>", F32, 4.0),
            _f("<NumSamplesHistory>", F32, 2000.0), _f("<UpdatePeriod>", I32, 4)]),
        affine(rng, "output.affine", 6, 4, natural_gradient=True),
        nonlinear(rng, "output.softmax", "SoftmaxComponent", 6, stats=False),
        affine(rng, "output-xent.affine", 6, 4, natural_gradient=True),
        nonlinear(rng, "output-xent.log-softmax", "LogSoftmaxComponent", 6, stats=False),
    ]
    names = [c.name for c in comps]
    chain = names[1:names.index("prefinal-l") + 1]
    lines = [f"input-node name=input dim={d}", f"input-node name=ivector dim={iv}",
             "component-node name=lda component=lda input=Append(Offset(input, -1), input, Offset(input, 1), "
             "ReplaceIndex(ivector, t, 0))"]
    prev = "lda"
    for name in chain:
        lines.append(f"component-node name={name} component={name} input={prev}")
        prev = name
    if unknown:
        lines.append("component-node name=custom component=custom input=prefinal-l")
    lines += [f"component-node name=output.affine component=output.affine input={'custom' if unknown else 'prefinal-l'}",
              "component-node name=output.softmax component=output.softmax input=output.affine",
              "output-node name=output input=output.softmax objective=linear",
              "component-node name=output-xent.affine component=output-xent.affine input=prefinal-l",
              "component-node name=output-xent.log-softmax component=output-xent.log-softmax "
              "input=output-xent.affine",
              "output-node name=output-xent input=output-xent.log-softmax objective=linear"]
    if unknown:
        comps.insert(names.index("output.affine"), _custom_component(binary))
    return _encode(Nnet3(lines, comps), _transition_model(6), 3, 3, np.zeros(0, np.float32), binary)


def _custom_component(binary: bool) -> OpaqueComponent:
    w = make_writer(binary)
    w.parts.clear()
    w.token("<CustomScaleComponent>")
    w.token("<Dim>")
    w.int32(4)
    w.token("<Scale>")
    w.float32(0.5)
    w.token("</CustomScaleComponent>")
    return OpaqueComponent("custom", "CustomScaleComponent", w.getvalue(), binary)


def _encode(nnet: Nnet3, tm: TransitionModel | None, left: int, right: int, priors: np.ndarray,
            binary: bool) -> bytes:
    from kprune.kaldi.model_file import NnetFile

    model = NnetFile(None, binary, bytearray(), nnet, tm, left, right,
                     _f("<Priors>", VEC, priors) if tm is not None else None)
    return model.encode(binary)
