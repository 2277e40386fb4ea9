"""The nnet3 graph, planned over time indexes and evaluated in torch.

An nnet3 network is a set of nodes (``input-node``, ``component-node``,
``dim-range-node``, ``output-node``) whose inputs are *descriptors*: small
expressions over other nodes at shifted times (``Append``, ``Offset``,
``Sum``, ``Scale``, ``Const``, ``ReplaceIndex``, ``IfDefined``, ``Failover``,
``Round``, ``Switch``; ``shared/docs/kaldi-nnet3-format.md`` section 5.2).

A computation asks for some outputs at some times, given the inputs at some
times, for a batch of sequences that share that layout.  :mod:`kprune.nnet.plan`
works out which node is computed at which times (three passes over sets of
integer times, as Kaldi's ``ComputationGraphBuilder`` does).  Then each node is evaluated once, at its needed times, as a tensor
``[batch, times, dim]``; a node's value is dropped as soon as its last reader
is done, so memory follows the width of the network, not its depth.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from kprune.errors import KaldiFormatError
from kprune.kaldi.nnet3 import Nnet3, Node, descriptor_nodes
from kprune.nnet import plan as planning
from kprune.nnet.components import ComponentOp, make_op
from kprune.nnet.plan import Plan, Times, computable, shifted, times_key, unique_times

log = logging.getLogger(__name__)

#: ``observe(node, x, times)``: called with a component node's input ``x``
#: ``[batch, len(times), input_dim]`` (time offsets spliced, in the column
#: layout of the component's weight) just before the component is applied.
#: It may change the component (:meth:`NnetGraph.reload_component`): the
#: node's output is then computed with the new parameters.
Observer = Callable[["GraphNode", torch.Tensor, np.ndarray], None]

def _where(name: str) -> str:
    return f"node {name}"


def _error(where: str, message: str) -> KaldiFormatError:
    return KaldiFormatError(None, where, message)


@dataclass
class GraphNode:
    """A node of the graph as the runtime sees it."""

    kind: str  # "input", "component", "dim-range", "output"
    name: str
    dim: int
    descriptor: tuple | None = None
    op: ComponentOp | None = None
    source: str | None = None  # dim-range: the node it slices
    dim_offset: int = 0
    deps: tuple[str, ...] = ()

    @property
    def offsets(self) -> tuple[int, ...]:
        return self.op.time_offsets if self.op is not None else (0,)


class NnetGraph:
    """An nnet3 network ready to evaluate in torch.

    ``outputs`` names the output nodes to compute (the decoding output by
    default; a chain model's ``output-xent`` branch is then never built).
    ``per_frame_inputs``, when true, rewrites ``ReplaceIndex(<input>, t, 0)``
    for input nodes other than ``input`` (the i-vector) into the bare node, so
    that the i-vector is read at every frame: it can then change over the
    utterance, as it does in online decoding (Kaldi's looped decoders rewrite
    it into ``Round(ivector, period)`` for the same purpose).
    """

    def __init__(self, nnet: Nnet3, outputs: Sequence[str] = ("output",), *,
                 per_frame_inputs: bool = False, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.dtype = dtype
        config = nnet.nodes
        for out in outputs:
            if out not in config or config[out].kind != "output-node":
                found = sorted(n for n, v in config.items() if v.kind == "output-node")
                raise _error("nnet3 config", f"expected an output-node named {out!r}, found output nodes {found}")
        self.outputs = tuple(outputs)
        self.per_frame_inputs = per_frame_inputs
        components = {c.name: c for c in nnet.components}
        #: Every input node of the network, name -> dim.
        self.config_inputs = {n: v.dim for n, v in config.items() if v.kind == "input-node"}
        self.nodes: dict[str, GraphNode] = {}
        self.order = self._topological_order(config)
        for name in self.order:
            self.nodes[name] = self._build_node(config[name], components)
        #: The input nodes the requested outputs read, name -> dim.
        self.input_dims = {n: v.dim for n, v in self.nodes.items() if v.kind == "input"}
        self.output_dims = {n: self.nodes[n].dim for n in self.outputs}
        #: Shifting every time by a multiple of this leaves the computation unchanged.
        self.modulus = 1
        for node in self.nodes.values():
            if node.descriptor is not None:
                self.modulus = math.lcm(self.modulus, planning.modulus(node.descriptor))
        self.left_context, self.right_context = self.input_context("input")
        self._plans: OrderedDict[tuple, Plan] = OrderedDict()

    # ------------------------------------------------------------------ building

    def _topological_order(self, config: Mapping[str, Node]) -> list[str]:
        order: list[str] = []
        state: dict[str, int] = {}  # 1 = visiting, 2 = done

        def deps(name: str) -> list[str]:
            node = config[name]
            if node.kind == "dim-range-node":
                return [node.input_node]
            return descriptor_nodes(node.descriptor) if node.descriptor is not None else []

        for out in self.outputs:
            stack: list[tuple[str, Iterable[str]]] = [(out, iter(deps(out)))]
            state[out] = 1
            while stack:
                name, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    state[name] = 2
                    order.append(name)
                    continue
                if nxt not in config:
                    raise _error(_where(name), f"expected a node named {nxt!r} (read by {name}), found none")
                if state.get(nxt) == 1:
                    raise _error(_where(nxt), "expected a network without recurrence; found a cycle through "
                                              f"{nxt!r} (recurrent nnet3 networks are not supported)")
                if nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, iter(deps(nxt))))
        return order

    def _build_node(self, node: Node, components: Mapping) -> GraphNode:
        name = node.name
        if node.kind == "input-node":
            return GraphNode("input", name, node.dim)
        if node.kind == "dim-range-node":
            src = self.nodes[node.input_node]
            if src.kind not in ("input", "component") or node.dim_offset < 0 or node.dim <= 0 \
                    or node.dim_offset + node.dim > src.dim:
                raise _error(_where(name), f"expected a dim range inside the {src.dim} dims of input or component "
                                           f"node {src.name}, found offset {node.dim_offset} dim {node.dim}")
            return GraphNode("dim-range", name, node.dim, source=src.name, dim_offset=node.dim_offset,
                             deps=(src.name,))
        descriptor = self._rewrite(node.descriptor)
        in_dim = self._descriptor_dim(descriptor, name)
        deps = tuple(dict.fromkeys(descriptor_nodes(descriptor)))
        if node.kind == "output-node":
            return GraphNode("output", name, in_dim, descriptor, deps=deps)
        component = components.get(node.component)
        if component is None:
            raise _error(_where(name), f"expected component {node.component!r}, found no such component")
        op = make_op(component).to(self.device, self.dtype)
        if in_dim != op.input_dim:
            raise _error(_where(name), f"expected input dim {op.input_dim} for component {component.name} "
                                       f"({component.type}), found a descriptor of dim {in_dim}")
        return GraphNode("component", name, op.output_dim, descriptor, op, deps=deps)

    def _rewrite(self, d: tuple) -> tuple:
        if not self.per_frame_inputs:
            return d
        if d[0] == "ReplaceIndex" and d[2] == "t" and d[1][0] == "node" \
                and d[1][1] != "input" and d[1][1] in self.config_inputs:
            return d[1]
        if d[0] in ("node", "Const"):
            return d
        return (d[0], *[self._rewrite(a) if isinstance(a, tuple) else a for a in d[1:]])

    def _descriptor_dim(self, d: tuple, where: str) -> int:
        op = d[0]
        if op == "node":
            return self.nodes[d[1]].dim
        if op == "Const":
            return int(d[2])
        if op == "Append":
            return sum(self._descriptor_dim(a, where) for a in d[1:])
        if op in ("Sum", "Failover", "Switch"):
            dims = {self._descriptor_dim(a, where) for a in d[1:]}
            if len(dims) != 1:
                raise _error(_where(where), f"expected the parts of {op} to have one dim, found dims {sorted(dims)}")
            return dims.pop()
        if op == "Scale":
            return self._descriptor_dim(d[2], where)
        if op == "Offset":
            if d[3] != 0:
                raise _error(_where(where), f"expected Offset on t only (acoustic models use x = 0), found x offset {d[3]}")
            return self._descriptor_dim(d[1], where)
        if op == "ReplaceIndex":
            if d[2] == "x" and d[3] != 0:
                raise _error(_where(where), f"expected ReplaceIndex on t (acoustic models use x = 0), "
                                            f"found x replaced by {d[3]}")
            return self._descriptor_dim(d[1], where)
        if op in ("IfDefined", "Round"):
            if op == "Round" and d[2] <= 0:
                raise _error(_where(where), f"expected a positive modulus in Round, found {d[2]}")
            return self._descriptor_dim(d[1], where)
        raise _error(_where(where), f"expected a descriptor, found {op}")

    def input_context(self, name: str = "input") -> tuple[int, int]:
        """Frames of input ``name`` needed before and after an output frame (Kaldi's left/right context).

        Only what is required counts: IfDefined parts and second Failover
        branches are optional, as in Kaldi's ``ComputeSimpleNnetContext``.
        An input read at one fixed time (``ReplaceIndex``) has no context: (0, 0).
        """
        if name not in self.input_dims:
            return 0, 0
        return planning.input_context(self.nodes, self.order, self.outputs, self.modulus, name)

    def plan(self, inputs: Mapping[str, Times], outputs: Mapping[str, Times]) -> Plan:
        """The times each node is computed at, for ``outputs`` given ``inputs`` (both name -> times).

        Plans are cached in relative time: a request shifted by a multiple of
        the network's modulus reuses the plan, shifted.
        """
        for name in outputs:
            if name not in self.outputs:
                raise _error("nnet3 config", f"expected one of the outputs {list(self.outputs)}, found {name!r}")
        firsts = [int(np.min(t)) for t in outputs.values() if len(t)]
        shift = (min(firsts) // self.modulus) * self.modulus if firsts else 0
        inputs = {n: unique_times(t) - shift for n, t in inputs.items()}
        outputs = {n: np.asarray(t, dtype=np.int64) - shift for n, t in outputs.items()}
        key = (tuple((n, times_key(t)) for n, t in sorted(inputs.items())),
               tuple((n, times_key(t)) for n, t in sorted(outputs.items())))
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
        else:
            plan = planning.make_plan(self.nodes, self.order, inputs, outputs,
                                      (self.left_context, self.right_context))
            self._plans[key] = plan
            if len(self._plans) > 32:
                self._plans.popitem(last=False)
        return plan.shifted(shift)

    # ------------------------------------------------------------------ evaluation

    def reload_component(self, component) -> None:
        """Rebuilds the op of every node that runs ``component`` from its current fields.

        The ops hold copies of the parameters (on the graph's device), so a
        change to the model file's values reaches the computation only through
        this call.
        """
        for node in self.nodes.values():
            if node.op is not None and node.op.name == component.name:
                node.op = make_op(component).to(self.device, self.dtype)

    def component_nodes(self) -> dict[str, list[str]]:
        """Component name -> the names of the nodes that run it, in computation order."""
        out: dict[str, list[str]] = {}
        for name in self.order:
            node = self.nodes[name]
            if node.op is not None:
                out.setdefault(node.op.name, []).append(name)
        return out

    @torch.inference_mode()
    def compute(self, inputs: Mapping[str, tuple[torch.Tensor, Times]],
                outputs: Mapping[str, Times], cache: dict | None = None,
                observe: Observer | None = None) -> dict[str, torch.Tensor]:
        """Evaluate ``outputs`` (name -> times) from ``inputs`` (name -> (tensor [B, T, D], times)).

        Every input tensor has the batch size B; row ``i`` of its time axis is
        the value at ``times[i]``.  Returns name -> tensor ``[B, len(times), dim]``
        in the order of the requested times.

        ``cache`` (a dict kept by the caller between calls on the same
        sequences, in the same time coordinates) holds the component values of
        the previous call; times already there are not computed again.  This is
        Kaldi's looped computation: a stream of requests that overlap by the
        context computes each frame once.  It is valid only while the inputs at
        those times do not change.

        ``observe`` (see :data:`Observer`) sees every component node's input
        before the component is applied; the capture of calibration
        statistics uses it.
        """
        batch = None
        values: dict[str, tuple[Times, torch.Tensor]] = {}
        provided: dict[str, Times] = {}
        for name, (tensor, times) in inputs.items():
            node = self.nodes.get(name)
            if node is None or node.kind != "input":
                if name in self.config_inputs:
                    continue  # an input the requested outputs do not read
                raise _error(_where(name), f"expected one of the input nodes {sorted(self.config_inputs)}, "
                                           f"found {name!r}")
            times = unique_times(times)
            if tensor.dim() != 3 or tensor.shape[1] != len(times) or tensor.shape[2] != node.dim:
                raise _error(_where(name), f"expected input {name} as [batch, {len(times)}, {node.dim}], "
                                           f"found {list(tensor.shape)}")
            if np.any(np.diff(times) <= 0):
                raise _error(_where(name), f"expected increasing times for input {name}")
            if batch is None:
                batch = tensor.shape[0]
            elif tensor.shape[0] != batch:
                raise _error(_where(name), f"expected batch size {batch} for input {name}, found {tensor.shape[0]}")
            values[name] = (times, tensor.to(device=self.device, dtype=self.dtype))
            provided[name] = times
        if batch is None:
            raise _error("nnet3 config", f"expected at least one of the inputs {sorted(self.input_dims)}, found none")
        plan = self.plan(provided, outputs)
        readers = dict(plan.readers)
        results: dict[str, torch.Tensor] = {}
        for name in plan.order:
            node = self.nodes[name]
            times = plan.times[name]
            if node.kind == "input":
                src_times, tensor = values[name]
                values[name] = (times, _take(tensor, np.searchsorted(src_times, times)))
                continue
            if node.kind == "dim-range":
                src_times, src = values[node.source]
                value = _take(src, np.searchsorted(src_times, times))[..., node.dim_offset:node.dim_offset + node.dim]
            elif node.kind == "output":
                value = self._evaluate(node.descriptor, times, values, batch)
            else:
                old = cache.get(name) if cache is not None else None
                if old is not None and old[1].shape[0] == batch:
                    value = self._merge(node, times, old, values, batch)
                else:
                    value = self._component(node, times, values, batch, observe)
                if cache is not None:
                    cache[name] = (times, value)
            for dep in node.deps:
                readers[dep] -= 1
                if readers[dep] == 0 and dep not in outputs:
                    del values[dep]
            if node.kind == "output":
                results[name] = value
            else:
                values[name] = (times, value)
        out: dict[str, torch.Tensor] = {}
        for name, times in outputs.items():
            want = np.asarray(times, dtype=np.int64)
            out[name] = _take(results[name], np.searchsorted(plan.times[name], want))
        return out

    def _component(self, node: GraphNode, times: Times, values, batch: int,
                   observe: Observer | None = None) -> torch.Tensor:
        at = shifted(times, node.offsets)
        x = self._evaluate(node.descriptor, at, values, batch)
        if node.offsets != (0,):
            x = torch.cat([_take(x, np.searchsorted(at, times + o)) for o in node.offsets], dim=-1)
        if observe is not None:
            observe(node, x, times)
        return node.op(x)

    def _merge(self, node: GraphNode, times: Times, old: tuple[Times, torch.Tensor], values, batch: int) -> torch.Tensor:
        """The node at ``times``: cached values where there are some, computed ones elsewhere."""
        old_times, old_value = old
        pos = np.minimum(np.searchsorted(old_times, times), len(old_times) - 1)
        have = old_times[pos] == times
        if have.all():
            return _take(old_value, np.searchsorted(old_times, times))
        new = self._component(node, times[~have], values, batch)
        if not have.any():
            return new
        kept = _take(old_value, np.searchsorted(old_times, times[have]))
        if have[:len(kept[0])].all() and not have[len(kept[0]):].any():
            return torch.cat([kept, new], dim=1)  # the usual case: old frames, then new ones
        out = torch.empty(batch, len(times), new.shape[-1], device=new.device, dtype=new.dtype)
        out[:, torch.from_numpy(np.flatnonzero(have)).to(new.device)] = kept
        out[:, torch.from_numpy(np.flatnonzero(~have)).to(new.device)] = new
        return out

    def _evaluate(self, d: tuple, times: Times, values: Mapping[str, tuple[Times, torch.Tensor]],
                  batch: int) -> torch.Tensor:
        """``d`` at ``times`` (all computable), as [batch, len(times), dim]."""
        op = d[0]
        if op == "node":
            node_times, value = values[d[1]]
            return _take(value, np.searchsorted(node_times, times))
        if op == "Append":
            return torch.cat([self._evaluate(a, times, values, batch) for a in d[1:]], dim=-1)
        if op == "Sum":
            total = self._evaluate(d[1], times, values, batch)
            for a in d[2:]:
                total = total + self._evaluate(a, times, values, batch)
            return total
        if op == "Scale":
            return self._evaluate(d[2], times, values, batch) * d[1]
        if op == "Const":
            return torch.full((batch, len(times), int(d[2])), float(d[1]), device=self.device, dtype=self.dtype)
        if op == "Offset":
            return self._evaluate(d[1], times + d[2], values, batch)
        if op == "ReplaceIndex":
            if d[2] == "x":
                return self._evaluate(d[1], times, values, batch)
            one = self._evaluate(d[1], np.array([d[3]], dtype=np.int64), values, batch)
            return one.expand(batch, len(times), one.shape[-1])
        if op == "Round":
            return self._evaluate(d[1], np.floor_divide(times, d[2]) * d[2], values, batch)
        comp = {n: t for n, (t, _) in values.items()}
        if op == "IfDefined":
            ok = computable(d[1], times, comp)
            if ok.all():
                return self._evaluate(d[1], times, values, batch)
            dim = self._descriptor_dim(d[1], "IfDefined")
            out = torch.zeros(batch, len(times), dim, device=self.device, dtype=self.dtype)
            if ok.any():
                out[:, torch.from_numpy(np.flatnonzero(ok)).to(self.device)] = \
                    self._evaluate(d[1], times[ok], values, batch)
            return out
        if op in ("Failover", "Switch"):
            if op == "Failover":
                first = computable(d[1], times, comp)
                parts = [(d[1], first), (d[2], ~first)]
            else:
                k = len(d) - 1
                parts = [(a, times % k == i) for i, a in enumerate(d[1:])]
            dim = self._descriptor_dim(d[1], op)
            out = torch.empty(batch, len(times), dim, device=self.device, dtype=self.dtype)
            for part, sel in parts:
                if sel.any():
                    out[:, torch.from_numpy(np.flatnonzero(sel)).to(self.device)] = \
                        self._evaluate(part, times[sel], values, batch)
            return out
        raise AssertionError(op)


# --------------------------------------------------------------------------- helpers


def _take(value: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    """Rows ``idx`` of the time axis: a view for regular strides, else a gather."""
    n = len(idx)
    if n == 0:
        return value[:, :0]
    start = int(idx[0])
    if n == 1:
        return value[:, start:start + 1]
    step = int(idx[1] - idx[0])
    if step > 0 and int(idx[-1]) == start + step * (n - 1) and (n == 2 or np.all(np.diff(idx) == step)):
        if step == 1 and start == 0 and n == value.shape[1]:
            return value
        return value[:, start:start + step * (n - 1) + 1:step]
    return value.index_select(1, torch.from_numpy(idx.astype(np.int64)).to(value.device))
