#!/usr/bin/env python3
"""The recipe table: each evaluated point's error with its interval, its score against the dense decode,
and the sparsity counted from the model file it wrote.

    python tools/recipe_table.py outputs/sweeps/uniform outputs/sweeps/2of4 [--measure cer]

One Markdown row per point, ordered by recipe and target: the sparse rate
as read back from the point's written ``final.mdl`` (zeros over the decoding
layers the network prunes by default, counted in the file, not taken from
``metrics.json``), the rate with its 95 % interval, its paired change from the
dense model, the rate against the dense model's decode, and the seconds the
point took (prune + export + decode).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kprune.errors import KpruneError  # noqa: E402
from kprune.model import load_model  # noqa: E402
from kprune.report.selection import target_of  # noqa: E402
from kprune.report.summary import collect_runs, rate_label  # noqa: E402


def written_sparsity(run_dir: Path) -> float | None:
    """Zeros over the default-prunable layers of the ``.mdl`` in ``run_dir``, in %."""
    models = sorted(run_dir.glob("*.mdl")) or sorted(run_dir.glob("*.raw"))
    if not models:
        return None
    model = load_model(models[0])
    layers = [model.layers[n].weight for n in model.default_layers]
    return 100.0 * sum(int((w == 0).sum()) for w in layers) / sum(w.numel() for w in layers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--measure", default="cer")
    args = parser.parse_args(argv)
    try:
        runs = [r for r in collect_runs(args.dirs) if not r.failed and r.value(args.measure) is not None]
    except KpruneError as e:
        print(f"recipe_table: error: {e}", file=sys.stderr)
        return 2
    m = rate_label(args.measure)
    print(f"| recipe | target | sparsity in the file (%) | {m} % [95% CI] | change from dense [95% CI] "
          f"| {m} to dense % [95% CI] | s per point |")
    print("|---|---|---:|---|---|---|---:|")

    def bounds(run, key, signed=False):
        b = run.interval(key)
        if b is None:
            return ""
        return f" [{b[0]:+.2f}, {b[1]:+.2f}]" if signed else f" [{b[0]:.2f}, {b[1]:.2f}]"

    for run in sorted(runs, key=lambda r: (r.method.split(" ")[0], target_of(r), str(r.run_dir))):
        sparsity = written_sparsity(run.run_dir)
        delta = run.value(f"{args.measure}_delta_abs")
        to_dense = run.value(f"{args.measure}_to_dense")
        seconds = run.value("seconds")
        print(" | ".join([
            f"| {run.method}", target_of(run), "" if sparsity is None else f"{sparsity:.2f}",
            f"{run.value(args.measure):.2f}{bounds(run, args.measure)}",
            "" if delta is None else f"{delta:+.2f}{bounds(run, args.measure + '_delta', signed=True)}",
            "" if to_dense is None else f"{to_dense:.2f}{bounds(run, args.measure + '_to_dense')}",
            "" if seconds is None else f"{seconds:.0f} |"]))
    dense = next((r for r in runs if r.value(f"baseline_{args.measure}") is not None), None)
    if dense is not None:
        print(f"\nDense: {m} {dense.value(f'baseline_{args.measure}'):.2f} %{bounds(dense, 'baseline_' + args.measure)}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
