"""Planning an nnet3 computation over time indexes: which node is computed at which times.

A computation asks for some outputs at some times, given the inputs at some
times.  It is planned in three passes over sets of integer times, in the spirit
of Kaldi's ``ComputationGraphBuilder``:

1. *requested* (:func:`request`), from the outputs back to the inputs: every
   time any descriptor could read (both branches of ``Failover``, the inner
   part of ``IfDefined``);
2. *computable* (:func:`computable`), from the inputs forward: which of those
   times can be computed from what is provided;
3. *needed* (:func:`need`), backwards again: only the times actually read,
   given what is computable (``IfDefined`` reads where its part is computable,
   ``Failover`` its first part where it can, else its second).

Descriptors are the tuples of :func:`kprune.kaldi.nnet3.parse_descriptor`;
nodes are :class:`kprune.nnet.graph.GraphNode` (``kind``, ``source``,
``descriptor``, ``offsets``, ``deps``).  Nothing here touches a tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from kprune.errors import KaldiFormatError

if TYPE_CHECKING:
    from kprune.nnet.graph import GraphNode

Times = np.ndarray  # sorted, unique int64 time indexes
EMPTY = np.zeros(0, dtype=np.int64)

# Descriptor operators that read their arguments at times computed from the
# requested ones, whatever is computable (unlike IfDefined and Failover).
_FORWARDING = frozenset({"Append", "Sum", "Scale", "Offset", "ReplaceIndex", "Round", "Switch"})


@dataclass
class Plan:
    """Times at which each node is computed for one request, in evaluation order."""

    order: list[str]
    times: dict[str, Times]
    input_times: dict[str, Times]  # component nodes: times their descriptor is read at
    readers: dict[str, int] = field(default_factory=dict)

    def shifted(self, shift: int) -> Plan:
        """The same plan with every time moved by ``shift``."""
        if shift == 0:
            return self
        return Plan(self.order, {n: t + shift for n, t in self.times.items()},
                    {n: t + shift for n, t in self.input_times.items()}, self.readers)


# --------------------------------------------------------------------------- the three passes


def request(d: tuple, times: Times, req: dict[str, Times], optional: bool = True) -> None:
    """Pass 1: every time ``d`` may read, added to ``req`` per node.

    ``optional=False`` leaves out what is only optionally read (IfDefined parts,
    second Failover branches), as Kaldi's ``ComputeSimpleNnetContext`` does.
    """
    op = d[0]
    if not len(times) or op == "Const":
        return
    if op == "node":
        add_times(req, d[1], times)
    elif op in _FORWARDING:
        for child, child_times in read_times(d, times):
            request(child, child_times, req, optional)
    elif op == "IfDefined":
        if optional:
            request(d[1], times, req, optional)
    elif op == "Failover":
        request(d[1], times, req, optional)
        if optional:
            request(d[2], times, req, optional)


def computable(d: tuple, times: Times, comp: Mapping[str, Times]) -> np.ndarray:
    """Pass 2: a bool per time, True where ``d`` can be computed from ``comp`` (node -> computable times)."""
    op = d[0]
    if op == "node":
        return np.isin(times, comp.get(d[1], EMPTY), assume_unique=False)
    if op in ("Const", "IfDefined"):
        return np.ones(len(times), dtype=bool)
    if op in ("Append", "Sum"):
        ok = np.ones(len(times), dtype=bool)
        for a in d[1:]:
            ok &= computable(a, times, comp)
        return ok
    if op == "Scale":
        return computable(d[2], times, comp)
    if op == "Offset":
        return computable(d[1], times + d[2], comp)
    if op == "ReplaceIndex":
        if d[2] == "x":
            return computable(d[1], times, comp)
        return np.full(len(times), bool(computable(d[1], np.array([d[3]], dtype=np.int64), comp)[0]))
    if op == "Round":
        return computable(d[1], np.floor_divide(times, d[2]) * d[2], comp)
    if op == "Switch":
        k = len(d) - 1
        ok = np.zeros(len(times), dtype=bool)
        for i, a in enumerate(d[1:]):
            sel = times % k == i
            ok[sel] = computable(a, times[sel], comp)
        return ok
    if op == "Failover":
        return computable(d[1], times, comp) | computable(d[2], times, comp)
    raise AssertionError(op)


def need(d: tuple, times: Times, needed: dict[str, Times], comp: Mapping[str, Times]) -> None:
    """Pass 3: the times ``d`` actually reads, given what is computable, added to ``needed``."""
    op = d[0]
    if not len(times) or op == "Const":
        return
    if op == "IfDefined":
        need(d[1], times[computable(d[1], times, comp)], needed, comp)
    elif op == "Failover":
        first = computable(d[1], times, comp)
        need(d[1], times[first], needed, comp)
        need(d[2], times[~first], needed, comp)
    elif op == "node":
        add_times(needed, d[1], times)
    else:
        for child, child_times in read_times(d, times):
            need(child, child_times, needed, comp)


# --------------------------------------------------------------------------- whole networks


def requested_times(nodes: Mapping[str, GraphNode], order: Sequence[str], outputs: Mapping[str, Times],
                    optional: bool = True) -> dict[str, Times]:
    """Pass 1 over the network, outputs first: node -> every time it may be read at."""
    req: dict[str, Times] = {n: unique_times(t) for n, t in outputs.items()}
    for name in reversed(order):
        times = req.get(name)
        if times is None or not len(times):
            continue
        node = nodes[name]
        if node.kind == "dim-range":
            add_times(req, node.source, times)
        elif node.descriptor is not None:
            request(node.descriptor, shifted(times, node.offsets), req, optional)
    return req


def make_plan(nodes: Mapping[str, GraphNode], order: Sequence[str], inputs: Mapping[str, Times],
              outputs: Mapping[str, Times], context: tuple[int, int] = (0, 0)) -> Plan:
    """The times each node is computed at, for ``outputs`` given ``inputs`` (both node -> times).

    ``context`` (the network's left/right context) only goes into the error
    when an output cannot be computed.
    """
    req = requested_times(nodes, order, outputs)

    comp: dict[str, Times] = {}
    for name in order:
        node = nodes[name]
        times = req.get(name, EMPTY)
        if node.kind == "input":
            comp[name] = np.intersect1d(times, unique_times(inputs.get(name, EMPTY)))
        elif node.kind == "dim-range":
            comp[name] = np.intersect1d(times, comp[node.source])
        else:
            ok = np.ones(len(times), dtype=bool)
            for o in node.offsets:
                ok &= computable(node.descriptor, times + o, comp)
            comp[name] = times[ok]

    for name, times in outputs.items():
        missing = np.setdiff1d(unique_times(times), comp[name])
        if len(missing):
            have = {n: describe_times(unique_times(t)) for n, t in inputs.items()}
            raise KaldiFormatError(None, f"node {name}",
                                   f"expected output {name} to be computable at t={describe_times(missing)}, "
                                   f"found it is not, given inputs at {have} "
                                   f"(the network needs context {context[0]}/{context[1]})")

    needed: dict[str, Times] = {n: unique_times(t) for n, t in outputs.items()}
    input_times: dict[str, Times] = {}
    for name in reversed(order):
        times = needed.get(name)
        if times is None or not len(times):
            continue
        node = nodes[name]
        if node.kind == "dim-range":
            add_times(needed, node.source, times)
        elif node.descriptor is not None:
            at = shifted(times, node.offsets)
            input_times[name] = at
            need(node.descriptor, at, needed, comp)
    plan_order = [n for n in order if n in needed and len(needed[n])]
    readers: dict[str, int] = {}
    for name in plan_order:
        for dep in nodes[name].deps:
            readers[dep] = readers.get(dep, 0) + 1
    return Plan(plan_order, needed, input_times, readers)


def input_context(nodes: Mapping[str, GraphNode], order: Sequence[str], outputs: Sequence[str], modulus: int,
                  name: str) -> tuple[int, int]:
    """Frames of input ``name`` required before and after an output frame (see ``NnetGraph.input_context``)."""
    left = right = 0
    for t0 in range(modulus):
        req = requested_times(nodes, order, {out: np.array([t0], dtype=np.int64) for out in outputs},
                              optional=False)
        got = req.get(name, EMPTY)
        if len(got):
            left, right = max(left, t0 - int(got[0])), max(right, int(got[-1]) - t0)
    return left, right


# --------------------------------------------------------------------------- time sets


def unique_times(t) -> Times:
    return np.unique(np.asarray(t, dtype=np.int64))


def times_key(t) -> tuple:
    """A hashable key for a set of times (compact for evenly spaced ones)."""
    t = np.asarray(t, dtype=np.int64)
    if len(t) > 1 and np.all(np.diff(t) == t[1] - t[0]):
        return ("range", int(t[0]), int(t[1] - t[0]), len(t))
    return tuple(t.tolist())


def read_times(d: tuple, times: Times) -> list[tuple[tuple, Times]]:
    """The sub-descriptors a forwarding operator reads, each with the times it reads them at."""
    op = d[0]
    if op in ("Append", "Sum"):
        return [(a, times) for a in d[1:]]
    if op == "Scale":
        return [(d[2], times)]
    if op == "Offset":
        return [(d[1], times + d[2])]
    if op == "ReplaceIndex":
        return [(d[1], np.array([d[3]], dtype=np.int64) if d[2] == "t" else times)]
    if op == "Round":
        return [(d[1], np.unique(np.floor_divide(times, d[2]) * d[2]))]
    if op == "Switch":
        k = len(d) - 1
        return [(a, times[times % k == i]) for i, a in enumerate(d[1:])]
    raise AssertionError(op)


def add_times(req: dict[str, Times], name: str, times: Times) -> None:
    old = req.get(name)
    req[name] = np.unique(times) if old is None else np.union1d(old, times)


def shifted(times: Times, offsets: tuple[int, ...]) -> Times:
    """Every time plus every offset (a TdnnComponent reads its input at each of its offsets)."""
    if offsets == (0,):
        return times
    return np.unique(np.concatenate([times + o for o in offsets]))


def modulus(d: tuple) -> int:
    """Shifting every time by a multiple of this leaves ``d``'s reads unchanged (Round, Switch)."""
    if d[0] == "Round":
        return math.lcm(int(d[2]), modulus(d[1]))
    if d[0] == "Switch":
        m = len(d) - 1
        for a in d[1:]:
            m = math.lcm(m, modulus(a))
        return m
    m = 1
    for a in d[1:]:
        if isinstance(a, tuple):
            m = math.lcm(m, modulus(a))
    return m


def describe_times(t: Times) -> str:
    if not len(t):
        return "none"
    if len(t) == 1:
        return str(int(t[0]))
    if np.all(np.diff(t) == 1):
        return f"{t[0]}..{t[-1]}"
    shown = ", ".join(str(x) for x in t[:6])
    return f"[{shown}{', ...' if len(t) > 6 else ''}]"
