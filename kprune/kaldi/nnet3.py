"""The nnet3 network object: config lines (the graph) and components.

``Nnet::Write`` writes ``<Nnet3>``, a newline, one config line per node, an
empty line, ``<NumComponents>`` and then each component after
``<ComponentName> name`` (``shared/docs/kaldi-nnet3-format.md`` section 3).
The config lines are kept as text, exactly as read; :func:`parse_config` turns
them into nodes with parsed descriptors (section 5) to answer questions about
the graph, such as which components feed a given output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Union

from kprune.errors import KaldiFormatError
from kprune.kaldi.check import check_graph
from kprune.kaldi.components import Component, OpaqueComponent, read_component
from kprune.kaldi.io import Reader, Writer

AnyComponent = Union[Component, OpaqueComponent]


@dataclass
class Nnet3:
    config_lines: list[str]
    components: list[AnyComponent]
    span: tuple[int, int] | None = None
    _nodes: dict[str, "Node"] | None = field(default=None, repr=False)
    node_dims: dict[str, int | None] = field(default_factory=dict, repr=False)  # checked on read

    def component(self, name: str) -> AnyComponent | None:
        return next((c for c in self.components if c.name == name), None)

    @property
    def nodes(self) -> dict[str, "Node"]:
        if self._nodes is None:
            self._nodes = parse_config(self.config_lines)
        return self._nodes

    def components_feeding(self, output: str = "output") -> set[str]:
        """Names of the components whose values the output node ``output`` depends on."""
        nodes = self.nodes
        if output not in nodes or nodes[output].kind != "output-node":
            raise KaldiFormatError(None, "nnet3 config", f"expected an output-node named {output!r}, "
                                   f"found output nodes {sorted(n for n, v in nodes.items() if v.kind == 'output-node')}")
        used: set[str] = set()
        seen: set[str] = set()
        stack = [output]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            node = nodes.get(name)
            if node is None:
                raise KaldiFormatError(None, "nnet3 config", f"expected a node named {name!r}, found none")
            if node.kind == "component-node":
                used.add(node.component)
            if node.kind == "dim-range-node":
                stack.append(node.input_node)
            if node.descriptor is not None:
                stack.extend(descriptor_nodes(node.descriptor))
        return used

    def write(self, w: Writer) -> None:
        w.token("<Nnet3>")
        w.raw(b"\n" + "".join(line + "\n" for line in self.config_lines).encode("utf-8") + b"\n")
        w.token("<NumComponents>")
        w.int32(len(self.components))
        w.newline()
        for c in self.components:
            w.token("<ComponentName>")
            w.token(c.name)
            c.write(w)
            w.newline()
        w.token("</Nnet3>")


def read_nnet3(r: Reader) -> Nnet3:
    start = r.pos
    r.expect_token("<Nnet3>")
    first = r.read_line()
    if first.strip():
        raise r.error(f"expected a newline after <Nnet3>, found {first[:40]!r}")
    lines: list[str] = []
    line_pos: list[int] = []
    while True:
        line_pos.append(r.pos)
        if r.at_end():
            raise r.error("expected an empty line ending the nnet3 config section, found end of file")
        line = r.read_line()
        if not line.strip():
            break
        if len(lines) > 1_000_000:
            raise r.error("expected an empty line ending the nnet3 config section, found none", line_pos[-1])
        lines.append(line)
    r.expect_token("<NumComponents>")
    count_pos = r.pos
    n = r.read_int32()
    if not 0 <= n < 100000:
        raise r.error(f"expected a number of components in [0, 100000), found {n}", count_pos)
    components: list[AnyComponent] = []
    names: set[str] = set()
    for _ in range(n):
        r.expect_token("<ComponentName>")
        name_pos = r.pos
        name = r.read_token()
        if name in names:
            raise r.error(f"expected unique component names, found {name!r} twice", name_pos)
        names.add(name)
        components.append(read_component(r, name))
    r.expect_token("</Nnet3>")
    nnet = Nnet3(lines, components, (start, r.pos))
    try:
        nodes = nnet.nodes
    except ConfigLineError as e:
        raise r.error(f"bad nnet3 config line {e.line + 1}: {e.reason}", line_pos[e.line]) from None
    except KaldiFormatError as e:
        raise r.error(f"bad nnet3 config: {e.reason}", start) from None
    for node in nodes.values():
        at = line_pos[node.line] if node.line is not None else start
        if node.kind == "component-node" and node.component not in names:
            raise r.error(f"expected component {node.component!r} used by node {node.name!r}, found no such component", at)
        needed = descriptor_nodes(node.descriptor) if node.descriptor is not None else []
        if node.kind == "dim-range-node":
            needed = [node.input_node]
        for name in needed:
            if name not in nodes or nodes[name].kind == "output-node":
                raise r.error(f"expected node {name!r} read by node {node.name!r} in the nnet3 config, found none",
                              at)
    if "output" not in nodes or nodes["output"].kind != "output-node":
        outputs = sorted(n for n, v in nodes.items() if v.kind == "output-node")
        raise r.error(f"expected an output-node named 'output' in the nnet3 config, found output nodes {outputs}",
                      start)
    nnet.node_dims = check_graph(r, nnet, line_pos)
    return nnet


# ---------------------------------------------------------------------------
# Config lines and descriptors
# ---------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_KEY = re.compile(r"([A-Za-z0-9_\-]+)=")
_NODE_KEYS = {
    "input-node": {"name", "dim"},
    "component-node": {"name", "component", "input"},
    "output-node": {"name", "input", "objective"},
    "dim-range-node": {"name", "input-node", "dim-offset", "dim"},
}


@dataclass
class Node:
    """One config line: ``input-node``, ``component-node``, ``output-node`` or ``dim-range-node``."""

    kind: str
    name: str
    dim: int | None = None
    component: str | None = None
    descriptor: tuple | None = None
    objective: str | None = None
    input_node: str | None = None
    dim_offset: int | None = None
    line: int | None = None  # index of its config line


def parse_config_line(line: str) -> tuple[str, dict[str, str]]:
    """Splits ``kind key=value key=value`` (values may contain spaces)."""
    text = line.split("#", 1)[0].strip()
    kind, _, rest = text.partition(" ")
    matches = list(_KEY.finditer(rest))
    pairs: dict[str, str] = {}
    if matches and rest[:matches[0].start()].strip():
        raise KaldiFormatError(None, "nnet3 config", f"expected key=value pairs, found {rest[:40]!r} in line {line!r}")
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(rest)
        value = rest[m.end():end].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if m.group(1) in pairs:
            raise KaldiFormatError(None, "nnet3 config", f"expected each key once, found {m.group(1)}= twice in "
                                   f"line {line[:80]!r}")
        pairs[m.group(1)] = value
    return kind, pairs


def parse_config(lines: list[str]) -> dict[str, Node]:
    nodes: dict[str, Node] = {}
    for number, line in enumerate(lines):
        if not line.split("#", 1)[0].strip():
            continue
        try:
            kind, kv = parse_config_line(line)
        except KaldiFormatError as e:
            raise ConfigLineError(number, e.reason) from None
        try:
            node = _parse_node(kind, kv, line, nodes)
        except KaldiFormatError as e:
            raise ConfigLineError(number, e.reason) from None
        node.line = number
        nodes[node.name] = node
    return nodes


class ConfigLineError(KaldiFormatError):
    """A bad config line; ``line`` is its index in the config lines."""

    def __init__(self, line: int, message: str):
        super().__init__(None, "nnet3 config", message)
        self.line = line


def _parse_node(kind: str, kv: dict[str, str], line: str, nodes: dict[str, Node]) -> Node:
    allowed = _NODE_KEYS.get(kind)
    if allowed is None:
        raise KaldiFormatError(None, "nnet3 config", f"expected a line starting with one of {sorted(_NODE_KEYS)}, found {line[:60]!r}")
    unknown = set(kv) - allowed
    if unknown or "name" not in kv or not _NAME.fullmatch(kv["name"]):
        raise KaldiFormatError(None, "nnet3 config", f"expected {kind} with keys {sorted(allowed)} and a valid name, found {line[:80]!r}")
    name = kv["name"]
    if name in nodes:
        raise KaldiFormatError(None, "nnet3 config", f"expected unique node names, found {name!r} twice")
    try:
        if kind == "input-node":
            node = Node(kind, name, dim=int(kv["dim"]))
        elif kind == "component-node":
            node = Node(kind, name, component=kv["component"], descriptor=parse_descriptor(kv["input"]))
        elif kind == "output-node":
            node = Node(kind, name, descriptor=parse_descriptor(kv["input"]), objective=kv.get("objective", "linear"))
        else:
            node = Node(kind, name, input_node=kv["input-node"], dim_offset=int(kv["dim-offset"]), dim=int(kv["dim"]))
    except (KeyError, ValueError) as e:
        raise KaldiFormatError(None, "nnet3 config", f"expected a complete {kind} line, found {line[:80]!r} ({e})") from None
    if kind == "output-node" and node.objective not in ("linear", "quadratic"):  # Kaldi's ObjectiveType
        raise KaldiFormatError(None, "nnet3 config", f"expected objective=linear or quadratic in output-node "
                               f"{name}, found objective={node.objective}")
    return node


#: Kaldi's descriptors nest a few levels (Append(Offset(Sum(...)))); deeper is not a real model.
MAX_DESCRIPTOR_DEPTH = 64
_DESC_TOKEN = re.compile(r"\s*([(),]|[^\s(),]+)")
_OPS = {"Append", "Sum", "Scale", "Const", "Offset", "ReplaceIndex", "IfDefined", "Failover", "Round", "Switch"}


def tokenize_descriptor(text: str) -> list[str]:
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _DESC_TOKEN.match(text, pos)
        if m is None:
            break
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


def parse_descriptor(text: str) -> tuple:
    """Parses a descriptor into nested tuples.

    ``("node", name)``, ``("Append", d1, d2, ...)``, ``("Sum", d1, d2, ...)``,
    ``("Scale", alpha, d)``, ``("Const", value, dim)``, ``("Offset", d, t, x)``,
    ``("ReplaceIndex", d, "t"|"x", value)``, ``("IfDefined", d)``,
    ``("Failover", d1, d2)``, ``("Round", d, modulus)``, ``("Switch", d1, ...)``.
    """
    tokens = tokenize_descriptor(text)
    pos = 0
    depth = deepest = 0
    for tok in tokens:  # the parser recurses once per level: bound it before parsing
        depth += (tok == "(") - (tok == ")")
        deepest = max(deepest, depth)
    if deepest > MAX_DESCRIPTOR_DEPTH:
        raise KaldiFormatError(None, "nnet3 config", f"expected descriptors nested at most {MAX_DESCRIPTOR_DEPTH} "
                               f"deep, found {deepest} levels in descriptor {text[:60]!r}...")

    def fail(expected: str) -> KaldiFormatError:
        found = tokens[pos] if pos < len(tokens) else "end of descriptor"
        return KaldiFormatError(None, "nnet3 config", f"expected {expected} in descriptor {text!r}, found {found!r}")

    def take(expected: str | None = None) -> str:
        nonlocal pos
        if pos >= len(tokens) or (expected is not None and tokens[pos] != expected):
            raise fail(repr(expected) if expected else "more input")
        pos += 1
        return tokens[pos - 1]

    def number(kind: type) -> float | int:
        tok = take()
        try:
            return kind(tok)
        except ValueError:
            nonlocal pos
            pos -= 1
            raise fail(f"a{'n integer' if kind is int else ' number'}") from None

    def desc() -> tuple:
        head = take()
        if head not in _OPS:
            if not _NAME.fullmatch(head):
                pos_back()
                raise fail("a node name or descriptor")
            return ("node", head)
        take("(")
        if head == "Scale":
            alpha = number(float)
            take(",")
            out: tuple = ("Scale", alpha, desc())
        elif head == "Const":
            value = number(float)
            take(",")
            out = ("Const", value, number(int))
        elif head == "Offset":
            inner = desc()
            take(",")
            t = number(int)
            x = 0
            if pos < len(tokens) and tokens[pos] == ",":
                take(",")
                x = number(int)
            out = ("Offset", inner, t, x)
        elif head == "ReplaceIndex":
            inner = desc()
            take(",")
            var = take()
            if var not in ("t", "x"):
                raise fail("t or x")
            take(",")
            out = ("ReplaceIndex", inner, var, number(int))
        elif head == "Round":
            inner = desc()
            take(",")
            out = ("Round", inner, number(int))
        else:  # Append, Sum, IfDefined, Failover, Switch
            args = [desc()]
            while pos < len(tokens) and tokens[pos] == ",":
                take(",")
                args.append(desc())
            expected_args = {"IfDefined": 1, "Failover": 2}.get(head)
            if expected_args is not None and len(args) != expected_args:
                raise fail(f"{expected_args} argument(s) to {head}")
            out = (head, *args)
        take(")")
        return out

    def pos_back() -> None:
        nonlocal pos
        pos -= 1

    result = desc()
    if pos != len(tokens):
        raise fail("the end of the descriptor")
    return result


def descriptor_nodes(d: tuple) -> list[str]:
    """Names of the nodes a descriptor reads."""
    if d[0] == "node":
        return [d[1]]
    if d[0] == "Const":
        return []
    return [n for arg in d[1:] if isinstance(arg, tuple) for n in descriptor_nodes(arg)]
