"""``python -m kprune.info MODEL``: a table of a model's weight layers.

Columns: name, Kaldi component type, shape, number of weights, share of the
network's weights, mean |w|, fraction of weights already zero.  Layers that
``layers=all`` leaves out are marked: ``fixed`` (FixedAffine, e.g. LDA) and
``no-decode`` (feeds no output used for decoding, e.g. a chain model's xent
branch).  The total row counts the layers of the network-wide sparse rate
(trainable layers that feed decoding).
"""

from __future__ import annotations

import argparse
import sys

import torch

from kprune.errors import KpruneError
from kprune.model import Model, load_model


def layer_table(model: Model) -> list[dict]:
    """One dict per layer, plus a final ``TOTAL`` row over the default layers."""
    network = sum(layer.weight.numel() for layer in model.layers.values() if layer.prunable_by_default)
    rows = []
    tot_n = tot_abs = tot_zero = 0.0
    for layer in model.layers.values():
        w = layer.weight
        n = w.numel()
        abs_sum = float(w.abs().sum(dtype=torch.float64)) if n else 0.0
        zeros = int((w == 0).sum()) if n else 0
        note = "" if layer.prunable_by_default else ("fixed" if not layer.trainable else "no-decode")
        rows.append({
            "name": layer.name, "type": layer.type.removesuffix("Component"),
            "shape": "x".join(map(str, w.shape)), "weights": n,
            "share": 100.0 * n / network if network and layer.prunable_by_default else None,
            "mean_abs": abs_sum / n if n else 0.0, "zero": 100.0 * zeros / n if n else 0.0, "note": note,
        })
        if layer.prunable_by_default:
            tot_n, tot_abs, tot_zero = tot_n + n, tot_abs + abs_sum, tot_zero + zeros
    rows.append({"name": "TOTAL", "type": "", "shape": "", "weights": int(tot_n), "share": 100.0 if tot_n else None,
                 "mean_abs": tot_abs / tot_n if tot_n else 0.0, "zero": 100.0 * tot_zero / tot_n if tot_n else 0.0,
                 "note": "layers=all"})
    return rows


def format_table(rows: list[dict]) -> str:
    headers = ["layer", "type", "shape", "weights", "share %", "mean |w|", "zero %", ""]
    cells = [[r["name"], r["type"], r["shape"], f"{r['weights']:,}",
              "-" if r["share"] is None else f"{r['share']:.2f}", f"{r['mean_abs']:.5f}", f"{r['zero']:.2f}", r["note"]]
             for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    right = {3, 4, 5, 6}

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(widths[i]) if i in right else v.ljust(widths[i]) for i, v in enumerate(values)).rstrip()

    sep = "  ".join("-" * w for w in widths).rstrip()
    body = [line(c) for c in cells]
    return "\n".join([line(headers), sep, *body[:-1], sep, body[-1]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kprune.info", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a Kaldi nnet3 .mdl or .raw file, binary or text")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.model)
    except KpruneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    kind = "binary" if model.binary else "text"
    container = ".mdl" if model.file.is_mdl else ".raw"
    print(f"{args.model}: {kind} {container}, {len(model.file.nnet.components)} components, "
          f"{len(model.layers)} weight layers")
    if model.opaque:
        print("kept unread (unknown types): " + ", ".join(f"{n} ({t})" for n, t in model.opaque.items()))
    print(format_table(layer_table(model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
