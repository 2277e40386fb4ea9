"""nnet3 components as torch functions, in test mode (as Kaldi decodes).

Each component of a parsed model (:class:`kprune.kaldi.Component`, fields
read with ``component.get("<Token>")``) becomes a :class:`ComponentOp`: a
function of a ``[..., input_dim]`` tensor giving ``[..., output_dim]``, plus
the time offsets at which it reads its input (only ``TdnnComponent`` has more
than ``[0]``; the graph gathers those frames and hands the op their
concatenation, offset-major, which is the column layout of Tdnn's weight).

The math follows Kaldi's ``Propagate`` functions
(``src/nnet3/nnet-simple-component.cc``, ``nnet-normalize-component.cc``,
``nnet-tdnn-component.cc``, ``nnet-general-component.cc``); see
``shared/docs/kaldi-nnet3-format.md`` section 5.4.  Test mode means what
``SetBatchnormTestMode(true)`` and ``SetDropoutTestMode(true)`` set, which both
Kaldi's decoders and Vosk do: batch norm uses its stored statistics, dropout is
the identity (``DropoutComponent`` scales by ``1 - proportion``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from kprune.errors import KaldiFormatError
from kprune.kaldi.components import Component, OpaqueComponent

#: Kaldi's floor on squared norms in NormalizeComponent (2^-66).
NORMALIZE_FLOOR = 2.0 ** -66
#: SoftmaxComponent floors its output here.
SOFTMAX_FLOOR = 1e-20
#: ScaleAndOffsetComponent keeps scales at least this far from zero.
SCALE_EPSILON = 1e-4


@dataclass
class ComponentOp:
    """One component as a torch function.

    ``weights`` holds the tensors the function reads (on the op's device);
    ``time_offsets`` the frames of its input it combines for one output frame.
    """

    name: str
    type: str
    input_dim: int
    output_dim: int
    fn: Callable[["ComponentOp", torch.Tensor], torch.Tensor]
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    time_offsets: tuple[int, ...] = (0,)
    params: dict[str, float | int | bool] = field(default_factory=dict)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self, x)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ComponentOp:
        """Moves the weights (in place) and returns self; ``dtype`` applies to floating-point ones only."""
        self.weights = {k: v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point() else v.dtype)
                        for k, v in self.weights.items()}
        return self


# --------------------------------------------------------------------------- builders

_BUILDERS: dict[str, Callable[[Component], ComponentOp]] = {}


def _builder(*types: str):
    def register(fn):
        for t in types:
            _BUILDERS[t] = fn
        return fn
    return register


def supported_types() -> frozenset[str]:
    """Component types :func:`make_op` can run."""
    return frozenset(_BUILDERS)


def make_op(component: Component | OpaqueComponent) -> ComponentOp:
    """The torch function of ``component``; an unsupported type is a :class:`KaldiFormatError`."""
    if isinstance(component, OpaqueComponent) or component.type not in _BUILDERS:
        raise KaldiFormatError(None, f"component {component.name}",
                               f"expected a component type kprune can run ({', '.join(sorted(_BUILDERS))}), "
                               f"found {component.type}")
    return _BUILDERS[component.type](component)


def _tensor(component: Component, token: str, *, required: bool = True) -> torch.Tensor | None:
    value = component.get(token)
    if value is None:
        if required:
            raise KaldiFormatError(None, f"component {component.name}",
                                   f"expected {token} in {component.type}, found none")
        return None
    # A copy: the runtime must not alias the file buffer (pruning edits it in place
    # and a device copy would not follow anyway).
    return torch.from_numpy(np.array(value, dtype=np.float32, copy=True))


def _int(component: Component, token: str, default: int | None = None) -> int:
    value = component.get(token, default)
    if value is None:
        raise KaldiFormatError(None, f"component {component.name}", f"expected {token} in {component.type}, found none")
    return int(value)


def _bad(component: Component, message: str) -> KaldiFormatError:
    return KaldiFormatError(None, f"component {component.name}", message)


# -- affine family -------------------------------------------------------------


def _affine_fn(op: ComponentOp, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, op.weights["weight"], op.weights.get("bias"))


@_builder("AffineComponent", "NaturalGradientAffineComponent", "FixedAffineComponent")
def _affine(c: Component) -> ComponentOp:
    weight = _tensor(c, "<LinearParams>")
    bias = _tensor(c, "<BiasParams>")
    return ComponentOp(c.name, c.type, weight.shape[1], weight.shape[0], _affine_fn, {"weight": weight, "bias": bias})


@_builder("LinearComponent")
def _linear(c: Component) -> ComponentOp:
    weight = _tensor(c, "<Params>")
    return ComponentOp(c.name, c.type, weight.shape[1], weight.shape[0], _affine_fn, {"weight": weight})


@_builder("TdnnComponent")
def _tdnn(c: Component) -> ComponentOp:
    weight = _tensor(c, "<LinearParams>")
    bias = _tensor(c, "<BiasParams>", required=False)
    offsets = c.get("<TimeOffsets>")
    if offsets is None or len(offsets) == 0:
        raise _bad(c, "expected non-empty <TimeOffsets> in TdnnComponent, found none")
    if weight.shape[1] % len(offsets):
        raise _bad(c, f"expected <LinearParams> columns to be a multiple of {len(offsets)} time offsets, "
                      f"found {weight.shape[1]}")
    weights = {"weight": weight}
    if bias is not None and bias.numel():
        weights["bias"] = bias
    return ComponentOp(c.name, c.type, weight.shape[1] // len(offsets), weight.shape[0], _affine_fn, weights,
                       time_offsets=tuple(int(o) for o in offsets))


def _block_affine_fn(op: ComponentOp, x: torch.Tensor) -> torch.Tensor:
    blocks = op.params["num_blocks"]
    w = op.weights["weight"]  # [out, in / blocks]
    out_per_block = w.shape[0] // blocks
    xb = x.reshape(*x.shape[:-1], blocks, w.shape[1])  # [..., B, in_b]
    wb = w.reshape(blocks, out_per_block, w.shape[1])  # [B, out_b, in_b]
    y = torch.einsum("...bi,boi->...bo", xb, wb).reshape(*x.shape[:-1], w.shape[0])
    return y + op.weights["bias"]


@_builder("BlockAffineComponent")
def _block_affine(c: Component) -> ComponentOp:
    weight = _tensor(c, "<LinearParams>")
    bias = _tensor(c, "<BiasParams>")
    blocks = _int(c, "<NumBlocks>")
    if blocks <= 0 or weight.shape[0] % blocks:
        raise _bad(c, f"expected <NumBlocks> dividing the {weight.shape[0]} output rows, found {blocks}")
    return ComponentOp(c.name, c.type, weight.shape[1] * blocks, weight.shape[0], _block_affine_fn,
                       {"weight": weight, "bias": bias}, params={"num_blocks": blocks})


# -- nonlinearities ---------------------------------------------------------------

_NONLINEAR: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "RectifiedLinearComponent": torch.relu,
    "SigmoidComponent": torch.sigmoid,
    "TanhComponent": torch.tanh,
    "SoftmaxComponent": lambda x: torch.softmax(x, dim=-1).clamp_min(SOFTMAX_FLOOR),
    "LogSoftmaxComponent": lambda x: torch.log_softmax(x, dim=-1),
}


@_builder(*_NONLINEAR)
def _nonlinear(c: Component) -> ComponentOp:
    dim = _int(c, "<Dim>")
    block = c.get("<BlockDim>")
    if block is not None and int(block) != dim and c.type in ("SoftmaxComponent", "LogSoftmaxComponent"):
        raise _bad(c, f"expected <BlockDim> equal to <Dim> {dim} in {c.type} (Kaldi normalises whole rows), "
                      f"found {block}")
    func = _NONLINEAR[c.type]
    return ComponentOp(c.name, c.type, dim, dim, lambda op, x: func(x))


def _identity(op: ComponentOp, x: torch.Tensor) -> torch.Tensor:
    return x


@_builder("NoOpComponent", "GeneralDropoutComponent")
def _noop(c: Component) -> ComponentOp:
    # GeneralDropout in test mode is the identity, whatever its proportion.
    dim = _int(c, "<Dim>")
    return ComponentOp(c.name, c.type, dim, dim, _identity)


@_builder("DropoutComponent")
def _dropout(c: Component) -> ComponentOp:
    dim = _int(c, "<Dim>")
    p = float(c.get("<DropoutProportion>", 0.0))
    if p == 0.0:
        return ComponentOp(c.name, c.type, dim, dim, _identity)
    return ComponentOp(c.name, c.type, dim, dim, lambda op, x: x * (1.0 - op.params["p"]), params={"p": p})


# -- normalisation -----------------------------------------------------------------


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    return x.reshape(*x.shape[:-1], x.shape[-1] // block, block)


def _batchnorm_fn(op: ComponentOp, x: torch.Tensor) -> torch.Tensor:
    w = op.weights
    return (_blocks(x, w["scale"].numel()) * w["scale"] + w["offset"]).reshape(x.shape)


@_builder("BatchNormComponent")
def _batchnorm(c: Component) -> ComponentOp:
    dim, block = _int(c, "<Dim>"), _int(c, "<BlockDim>")
    if block <= 0 or dim % block:
        raise _bad(c, f"expected <BlockDim> dividing <Dim> {dim}, found {block}")
    mean, var = _tensor(c, "<StatsMean>"), _tensor(c, "<StatsVar>")
    if mean.numel() != block or var.numel() != block:
        raise _bad(c, f"expected <StatsMean> and <StatsVar> of dim {block} for test mode, "
                      f"found {mean.numel()} and {var.numel()} (a batch norm that never saw data)")
    eps = float(c.get("<Epsilon>", 0.001))
    target_rms = float(c.get("<TargetRms>", 1.0))
    # Kaldi's test mode: scale = target_rms * (var + eps)^-1/2, offset = -mean * scale.
    scale = target_rms * torch.pow(var.double() + eps, -0.5)
    offset = -mean.double() * scale
    return ComponentOp(c.name, c.type, dim, dim, _batchnorm_fn,
                       {"scale": scale.float(), "offset": offset.float()})


def _normalize_fn(op: ComponentOp, x: torch.Tensor) -> torch.Tensor:
    block, rms, log_stddev = op.params["block_dim"], op.params["target_rms"], op.params["add_log_stddev"]
    xb = _blocks(x, block)
    sq = (xb * xb).sum(dim=-1, keepdim=True) / (block * rms * rms)
    inv = sq.clamp_min(NORMALIZE_FLOOR).rsqrt()
    y = xb * inv
    if log_stddev:
        y = torch.cat([y, -torch.log(inv) + math.log(rms)], dim=-1)
    return y.reshape(*x.shape[:-1], op.output_dim)


@_builder("NormalizeComponent")
def _normalize(c: Component) -> ComponentOp:
    dim = _int(c, "<InputDim>", c.get("<Dim>"))
    block = _int(c, "<BlockDim>", dim)
    if block <= 0 or dim % block:
        raise _bad(c, f"expected <BlockDim> dividing <InputDim> {dim}, found {block}")
    add_log = bool(c.get("<AddLogStddev>", False))
    out = dim + (dim // block if add_log else 0)
    return ComponentOp(c.name, c.type, dim, out, _normalize_fn,
                       params={"block_dim": block, "target_rms": float(c.get("<TargetRms>", 1.0)),
                               "add_log_stddev": add_log})


# -- grouping ---------------------------------------------------------------------


def _groups(c: Component) -> tuple[int, int, int]:
    """``<InputDim>``, ``<OutputDim>`` and how many inputs make one output (``<OutputDim>`` must divide)."""
    din, dout = _int(c, "<InputDim>"), _int(c, "<OutputDim>")
    if dout <= 0 or din % dout:
        raise _bad(c, f"expected <OutputDim> dividing <InputDim> {din}, found {dout}")
    return din, dout, din // dout


@_builder("PnormComponent")
def _pnorm(c: Component) -> ComponentOp:
    din, dout, group = _groups(c)
    return ComponentOp(c.name, c.type, din, dout,
                       lambda op, x: torch.linalg.vector_norm(_blocks(x, group), ord=2, dim=-1))


def _sum_group_fn(op: ComponentOp, x: torch.Tensor) -> torch.Tensor:
    return torch.segment_reduce(x.reshape(-1, x.shape[-1]).T, "sum", lengths=op.weights["sizes"], axis=0).T.reshape(
        *x.shape[:-1], op.output_dim)


@_builder("SumGroupComponent")
def _sum_group(c: Component) -> ComponentOp:
    sizes = c.get("<Sizes>")
    if sizes is None or len(sizes) == 0 or (np.asarray(sizes) <= 0).any():
        raise _bad(c, f"expected positive <Sizes> in SumGroupComponent, found {sizes}")
    sizes_t = torch.as_tensor(np.asarray(sizes, dtype=np.int64))
    return ComponentOp(c.name, c.type, int(sizes_t.sum()), len(sizes_t), _sum_group_fn, {"sizes": sizes_t})


@_builder("ElementwiseProductComponent")
def _elementwise_product(c: Component) -> ComponentOp:
    din, dout, k = _groups(c)
    # Input chunk i is columns [i*out, (i+1)*out); the output multiplies them.
    return ComponentOp(c.name, c.type, din, dout,
                       lambda op, x: torch.prod(x.reshape(*x.shape[:-1], k, dout), dim=-2))


# -- fixed scales and offsets ------------------------------------------------------------


def _scale_offset_fn(op: ComponentOp, x: torch.Tensor) -> torch.Tensor:
    w = op.weights
    n = w["scale"].numel() if "scale" in w else w["offset"].numel()
    xb = _blocks(x, n)
    if "scale" in w:
        xb = xb * w["scale"]
    if "offset" in w:
        xb = xb + w["offset"]
    return xb.reshape(x.shape)


@_builder("FixedScaleComponent")
def _fixed_scale(c: Component) -> ComponentOp:
    scales = _tensor(c, "<Scales>")
    return ComponentOp(c.name, c.type, scales.numel(), scales.numel(), _scale_offset_fn, {"scale": scales})


@_builder("FixedBiasComponent")
def _fixed_bias(c: Component) -> ComponentOp:
    bias = _tensor(c, "<Bias>")
    return ComponentOp(c.name, c.type, bias.numel(), bias.numel(), _scale_offset_fn, {"offset": bias})


@_builder("ScaleAndOffsetComponent")
def _scale_and_offset(c: Component) -> ComponentOp:
    scales, offsets = _tensor(c, "<Scales>"), _tensor(c, "<Offsets>")
    dim = _int(c, "<Dim>", scales.numel())
    if scales.numel() != offsets.numel() or scales.numel() == 0 or dim % scales.numel():
        raise _bad(c, f"expected <Scales> and <Offsets> of one dim dividing <Dim> {dim}, "
                      f"found {scales.numel()} and {offsets.numel()}")
    # EnsureNonzero: |s| < eps becomes +eps (s >= 0) or -eps (s < 0).
    small = scales.abs() < SCALE_EPSILON
    scales = torch.where(small, torch.where(scales < 0, -SCALE_EPSILON, SCALE_EPSILON), scales)
    return ComponentOp(c.name, c.type, dim, dim, _scale_offset_fn, {"scale": scales, "offset": offsets})
