"""Structural mutations of a model file, for the fuzz test (and ``python tests/kaldi/fuzz.py`` counts).

Each mutation changes the model's structure in a way Kaldi refuses: a
dimension set to 0, -1 or one more, a vector one element short or long, a
natural-gradient option out of range, a field missing, repeated, renamed or
out of order, transition tuples out of order or naming pdfs the network does
not have, and config edits (a renamed output node, a component of other
dimensions, an input dim changed, a repeated key).  The model is parsed once,
changed in memory, encoded anew (so that sizes and offsets stay consistent
and only the meaning is wrong) and changed back.

Only public parsing/encoding APIs are used, so the same mutations can be run
against an older kprune to count what it let through.
"""

from __future__ import annotations

import copy
import re
import sys
from collections import Counter
from typing import Callable, Iterator

import numpy as np

DIM_FIELDS = ("<Dim>", "<BlockDim>", "<InputDim>", "<OutputDim>", "<NumBlocks>")
# Options whose 0 and -1 Kaldi refuses (their +1 is a valid model).
POSITIVE_FIELDS = ("<RankIn>", "<RankOut>", "<UpdatePeriod>", "<Rank>", "<Epsilon>", "<TargetRms>",
                   "<SpecAugmentMaxRegions>")
STAT_VECTORS = ("<ValueAvg>", "<DerivAvg>", "<OderivRms>", "<StatsMean>", "<StatsVar>")

Mutation = tuple[str, Callable[[], Callable[[], None]]]  # (label, apply) where apply() returns undo


def _set_field(comp, index: int, value) -> Callable[[], None]:
    f = comp.fields[index]
    old, span = f.value, f.span
    f.value = value

    def undo():
        f.value, f.span = old, span
    return undo


def _set_fields(comp, fields: list) -> Callable[[], None]:
    old = comp.fields
    comp.fields = fields

    def undo():
        comp.fields = old
    return undo


def component_mutations(model) -> Iterator[Mutation]:
    from kprune.kaldi.schema import FIELD_TYPES

    # For renames: tokens of each value type.
    by_type: dict[str, list[str]] = {}
    for token, ftype in FIELD_TYPES.items():
        by_type.setdefault(ftype, []).append(token)
    for comp in model.nnet.components:
        fields = getattr(comp, "fields", None)
        if fields is None:
            continue  # opaque
        tokens = [f.token for f in fields]
        for i, f in enumerate(fields):
            label = f"{comp.type} {comp.name} {f.token}"
            if f.token in DIM_FIELDS:
                for v in (0, -1, f.value + 1, (1 << 31) - 1):
                    yield f"{label}={v}", (lambda c=comp, i=i, v=v: _set_field(c, i, v))
            if f.token in POSITIVE_FIELDS:
                for v in (0, -1):
                    yield f"{label}={v}", (lambda c=comp, i=i, v=type(f.value)(v): _set_field(c, i, v))
            if f.token == "<RankInOut>":
                for v in ((0, f.value[1]), (f.value[0], -1)):
                    yield f"{label}={v}", (lambda c=comp, i=i, v=v: _set_field(c, i, v))
            if f.token == "<NumSamplesHistory>":
                for v in (0.0, -1.0):
                    yield f"{label}={v}", (lambda c=comp, i=i, v=v: _set_field(c, i, v))
            if f.token == "<TimePeriod>":
                yield f"{label}=-1", (lambda c=comp, i=i: _set_field(c, i, -1))
            if f.token == "<DropoutProportion>":
                yield f"{label}=1.5", (lambda c=comp, i=i: _set_field(c, i, 1.5))
            if f.token in STAT_VECTORS and len(f.value):
                for v in (f.value[:-1], np.concatenate([f.value, f.value[:1]]), f.value[:1]):
                    yield f"{label} of dim {len(v)}", (lambda c=comp, i=i, v=v: _set_field(c, i, np.array(v)))
            if f.token == "<BiasParams>" and len(f.value):
                v = np.concatenate([f.value, f.value[:1]])
                yield f"{label} of dim {len(v)}", (lambda c=comp, i=i, v=v: _set_field(c, i, v))
            if f.type == "matrix" and f.value.size:
                w = np.asarray(f.value)
                yield f"{label} one more row", (lambda c=comp, i=i, w=np.concatenate([w, w[:1]]): _set_field(c, i, w))
                yield f"{label} one more column", (
                    lambda c=comp, i=i, w=np.concatenate([w, w[:, :1]], axis=1): _set_field(c, i, w))
            if f.token == "<TimeOffsets>" and len(f.value) > 1:
                v = f.value[::-1].copy()
                yield f"{label} reversed", (lambda c=comp, i=i, v=v: _set_field(c, i, v))
            if f.token == "<Sizes>":
                v = f.value.copy()
                v[0] = 0
                yield f"{label} with a 0", (lambda c=comp, i=i, v=v: _set_field(c, i, v))
            # The field list: repeated, out of order, renamed, missing.
            yield f"{label} twice", (lambda c=comp, i=i: _set_fields(c, c.fields[:i + 1] + [c.fields[i]] + c.fields[i + 1:]))
            if i + 1 < len(fields):
                yield f"{label} swapped with {fields[i + 1].token}", (
                    lambda c=comp, i=i: _set_fields(c, c.fields[:i] + [c.fields[i + 1], c.fields[i]] + c.fields[i + 2:]))
            for other in by_type.get(f.type, []):
                if (other != f.token and other not in tokens and other not in _ALTERNATIVES.get(f.token, ())
                        and other not in _HEADER and not _required(comp.type, other)):
                    renamed = copy.copy(f)
                    renamed.token = other
                    yield f"{label} renamed {other}", (
                        lambda c=comp, i=i, g=renamed: _set_fields(c, c.fields[:i] + [g] + c.fields[i + 1:]))
                    break  # one rename per field
            if _required(comp.type, f.token):
                yield f"{label} missing", (lambda c=comp, i=i: _set_fields(c, c.fields[:i] + c.fields[i + 1:]))


# UpdatableComponent's optional header fields: renaming one into another can give a valid layout.
_HEADER = {"<LearningRateFactor>", "<IsGradient>", "<MaxChange>", "<L2Regularize>", "<LearningRate>"}
# Tokens Kaldi accepts in place of each other.
_ALTERNATIVES = {"<InputDim>": ("<Dim>",), "<Dim>": ("<InputDim>",), "<AlphaInOut>": ("<Alpha>",),
                 "<Alpha>": ("<AlphaInOut>",)}
# Fields Kaldi's readers expect (ExpectToken), per component type (shared/docs/kaldi-nnet3-format.md, 4).
_NONLINEAR_REQUIRED = {"<Dim>", "<ValueAvg>", "<DerivAvg>", "<Count>"}
_REQUIRED = {
    "AffineComponent": {"<LinearParams>", "<BiasParams>"},
    "NaturalGradientAffineComponent": {"<LinearParams>", "<BiasParams>", "<RankIn>", "<RankOut>", "<UpdatePeriod>",
                                       "<NumSamplesHistory>", "<Alpha>"},
    "FixedAffineComponent": {"<LinearParams>", "<BiasParams>"},
    "LinearComponent": {"<Params>", "<UseNaturalGradient>", "<RankInOut>", "<Alpha>", "<NumSamplesHistory>",
                        "<UpdatePeriod>"},
    "TdnnComponent": {"<TimeOffsets>", "<LinearParams>", "<BiasParams>", "<OrthonormalConstraint>",
                      "<UseNaturalGradient>", "<NumSamplesHistory>", "<AlphaInOut>", "<RankInOut>"},
    "BlockAffineComponent": {"<NumBlocks>", "<LinearParams>", "<BiasParams>"},
    "BatchNormComponent": {"<Dim>", "<BlockDim>", "<Epsilon>", "<TargetRms>", "<TestMode>", "<Count>", "<StatsMean>",
                           "<StatsVar>"},
    "NormalizeComponent": {"<InputDim>", "<Dim>", "<TargetRms>", "<AddLogStddev>"},
    "GeneralDropoutComponent": {"<Dim>", "<BlockDim>", "<TimePeriod>", "<DropoutProportion>"},
    "DropoutComponent": {"<Dim>", "<DropoutProportion>"},
    "NoOpComponent": {"<Dim>"},
    "PnormComponent": {"<InputDim>", "<OutputDim>"},
    "SumGroupComponent": {"<Sizes>"},
}


def _required(ctype: str, token: str) -> bool:
    if ctype in ("RectifiedLinearComponent", "SigmoidComponent", "TanhComponent", "SoftmaxComponent",
                 "LogSoftmaxComponent"):
        return token in _NONLINEAR_REQUIRED
    return token in _REQUIRED.get(ctype, ())


def _set_attr(obj, name: str, value) -> Callable[[], None]:
    old = getattr(obj, name)
    setattr(obj, name, value)

    def undo():
        setattr(obj, name, old)
    return undo


def _set_lines(nnet, lines: list[str]) -> Callable[[], None]:
    old, old_nodes = nnet.config_lines, getattr(nnet, "_nodes", None)
    nnet.config_lines = lines
    nnet._nodes = None

    def undo():
        nnet.config_lines = old
        nnet._nodes = old_nodes
    return undo


def transition_mutations(model) -> Iterator[Mutation]:
    tm = model.transition_model
    if tm is None:
        return
    tuples = tm.tuples
    num_pdfs = int(tuples[:, 2:4].max()) + 1
    for i in range(0, len(tuples) - 1, max(1, len(tuples) // 40)):
        if tuple(tuples[i]) != tuple(tuples[i + 1]):
            t = tuples.copy()
            t[[i, i + 1]] = t[[i + 1, i]]
            yield f"tuples {i} and {i + 1} swapped", (lambda t=t: _set_attr(tm, "tuples", t))
    hmm = all(s.forward_pdf_class == s.self_loop_pdf_class for e in tm.entries for s in e)
    for i in range(0, len(tuples), max(1, len(tuples) // 20)):
        for col in (2,) if hmm else (2, 3):  # an HMM's triples hold one pdf
            for v in (-1, num_pdfs, 268436901):
                t = tuples.copy()
                t[i, col] = v
                yield f"tuple {i} pdf {v}", (lambda t=t: _set_attr(tm, "tuples", t))
    if model.priors is not None and len(model.priors.value) > 1:
        priors = copy.copy(model.priors)
        priors.value = model.priors.value[:-1]
        priors.span = None
        yield "priors one short", (lambda p=priors: _set_attr(model, "priors", p))


def component_dims(comp) -> tuple[int, int] | None:
    """Input and output dims, roughly (enough to pick a component that does not fit)."""
    fields = getattr(comp, "fields", None)
    if fields is None:
        return None
    get = {f.token: f.value for f in fields}
    for token in ("<LinearParams>", "<Params>"):
        if token in get:
            rows, cols = get[token].shape
            return cols // max(1, len(get.get("<TimeOffsets>", [0]))) * get.get("<NumBlocks>", 1), rows
    dim = get.get("<InputDim>", get.get("<Dim>"))
    return None if dim is None else (dim, get.get("<OutputDim>", dim))


def config_mutations(model) -> Iterator[Mutation]:
    nnet = model.nnet
    lines = list(nnet.config_lines)
    comps = [c for c in nnet.components if component_dims(c) is not None]

    def edit(i: int, new: str) -> Callable[[], Callable[[], None]]:
        return lambda: _set_lines(nnet, lines[:i] + [new] + lines[i + 1:])

    for i, line in enumerate(lines):
        if line.startswith("output-node") and " name=output " in line + " ":
            yield "output node renamed", edit(i, line.replace("name=output", "name=outputx", 1))
        m = re.match(r"input-node name=(\S+) dim=(\d+)", line)
        if m:
            for v in (0, -1, int(m.group(2)) + 1):
                yield f"input-node {m.group(1)} dim={v}", edit(i, f"input-node name={m.group(1)} dim={v}")
        m = re.search(r" component=(\S+)", line)
        if m:
            own = nnet.component(m.group(1))
            dims = component_dims(own) if own is not None else None
            other = next((c for c in comps if dims is not None and component_dims(c)[0] != dims[0]), None)
            if other is not None:
                yield f"node {m.group(1)} uses {other.name}", edit(i, line.replace(m.group(0), f" component={other.name}", 1))
        m = re.search(r" input=(\S+)", line)
        if m and i % 3 == 0:
            yield f"line {i} input= twice", edit(i, line + f" input={m.group(1)}")
        m = re.search(r" dim=(\d+)", line)
        if line.startswith("dim-range-node") and m:
            yield f"dim-range line {i} dim+big", edit(i, line.replace(m.group(0), f" dim={int(m.group(1)) + 100000}", 1))


def all_mutations(model) -> Iterator[Mutation]:
    yield from component_mutations(model)
    yield from transition_mutations(model)
    yield from config_mutations(model)


def run(data: bytes, binary: bool, name: str = "final.mdl", limit: int | None = None,
        rng: np.random.Generator | None = None) -> dict[str, list[str]]:
    """Applies every mutation (or a seeded sample of ``limit``) to ``data``; returns labels by outcome:
    ``refused`` (KaldiFormatError), ``loaded`` and ``crashed`` (any other exception)."""
    from kprune.errors import KaldiFormatError
    from kprune.kaldi import read_nnet_file

    model = read_nnet_file(bytearray(data), name)
    mutations = list(all_mutations(model))
    if limit is not None and len(mutations) > limit:
        rng = rng or np.random.default_rng(0)
        mutations = [mutations[i] for i in sorted(rng.choice(len(mutations), limit, replace=False).tolist())]
    out: dict[str, list[str]] = {"refused": [], "loaded": [], "crashed": []}
    for label, apply in mutations:
        undo = apply()
        try:
            mutated = model.encode(binary)
        finally:
            undo()
        try:
            read_nnet_file(bytearray(mutated), name)
        except KaldiFormatError as e:
            message = str(e)
            out["refused" if "\n" not in message else "crashed"].append(label)
        except Exception as e:  # noqa: BLE001 - a crash is what we count
            out["crashed"].append(f"{label}: {type(e).__name__}: {e}")
        else:
            out["loaded"].append(label)
    return out


def main() -> None:
    """Prints the counts for the synthetic model (binary and text) and the real model."""
    from kprune.kaldi.build import build_all_types, build_tdnn

    cases = [("all_types binary", build_all_types(unknown=False), True),
             ("all_types text", build_all_types(binary=False, unknown=False), False),
             ("tdnn binary", build_tdnn(hidden_dim=32, num_pdfs=24), True),
             ("tdnn raw", build_tdnn(hidden_dim=32, num_pdfs=24, raw=True), True)]
    if len(sys.argv) > 1:
        cases.append(("real binary", open(sys.argv[1], "rb").read(), True))
    for name, data, binary in cases:
        out = run(data, binary)
        total = sum(map(len, out.values()))
        print(f"{name}: {total} mutations, {len(out['refused'])} refused, {len(out['loaded'])} loaded, "
              f"{len(out['crashed'])} crashed")
        kinds = Counter(re.sub(r"=.*| of dim.*| twice| swapped.*| renamed.*| missing| one more.*|\d+", "", x)
                        for x in out["loaded"])
        for kind, n in kinds.most_common(12):
            print(f"    loaded {n:4d}  {kind}")
        for x in out["crashed"][:5]:
            print(f"    crashed: {x[:150]}")


if __name__ == "__main__":
    main()
