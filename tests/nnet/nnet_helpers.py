"""Tiny hand-made nnet3 networks for the runtime tests."""

from __future__ import annotations

import numpy as np

from kprune.kaldi.components import Component, Field
from kprune.kaldi.schema import BOOL, F32, F64, FLAG, I32, IVEC, MAT, VEC
from kprune.kaldi.nnet3 import Nnet3

_KINDS = {MAT: "FM", VEC: "FV"}


def field(token: str, ftype: str, value) -> Field:
    if ftype in (MAT, VEC):
        value = np.asarray(value, dtype=np.float32)
    if ftype == IVEC:
        value = np.asarray(value, dtype=np.int32)
    return Field(token, ftype, value, kind=_KINDS.get(ftype))


def affine(name: str, weight, bias, ctype: str = "AffineComponent") -> Component:
    return Component(name, ctype, [field("<LinearParams>", MAT, weight), field("<BiasParams>", VEC, bias)])


def linear(name: str, weight) -> Component:
    return Component(name, "LinearComponent", [field("<Params>", MAT, weight)])


def tdnn(name: str, weight, offsets, bias=()) -> Component:
    return Component(name, "TdnnComponent", [field("<TimeOffsets>", IVEC, offsets),
                                             field("<LinearParams>", MAT, weight), field("<BiasParams>", VEC, bias)])


def nonlinear(name: str, ctype: str, dim: int) -> Component:
    return Component(name, ctype, [field("<Dim>", I32, dim), field("<ValueAvg>", VEC, []),
                                   field("<DerivAvg>", VEC, []), field("<Count>", F64, 0.0)])


def batchnorm(name: str, dim: int, block: int, mean, var, eps=0.001, rms=1.0) -> Component:
    return Component(name, "BatchNormComponent", [
        field("<Dim>", I32, dim), field("<BlockDim>", I32, block), field("<Epsilon>", F32, eps),
        field("<TargetRms>", F32, rms), field("<TestMode>", BOOL, False), field("<Count>", F64, 100.0),
        field("<StatsMean>", VEC, mean), field("<StatsVar>", VEC, var)])


def normalize(name: str, dim: int, block: int | None = None, rms: float = 1.0, log_stddev: bool = False) -> Component:
    fields = [field("<InputDim>", I32, dim)]
    if block is not None:
        fields.append(field("<BlockDim>", I32, block))
    fields += [field("<TargetRms>", F32, rms), field("<AddLogStddev>", BOOL, log_stddev)]
    return Component(name, "NormalizeComponent", fields)


def general_dropout(name: str, dim: int, proportion: float) -> Component:
    return Component(name, "GeneralDropoutComponent", [
        field("<Dim>", I32, dim), field("<BlockDim>", I32, dim), field("<TimePeriod>", I32, 0),
        field("<DropoutProportion>", F32, proportion), field("<Continuous>", FLAG, True)])


def net(lines: list[str], components: list[Component]) -> Nnet3:
    return Nnet3(list(lines), list(components))
