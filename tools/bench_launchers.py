#!/usr/bin/env python3
"""A decoding sweep run sequentially and with Hydra's joblib launcher: wall time of each, and the ratio.

    tools/bench_launchers.py [--workers 2] [--data ../shared/data/ko-dev] [--out /tmp/bench_launchers]

Both sweeps decode the same points (``eval=vosk``, ``global_pct``) into
fresh sweep directories.  The baseline decode is cached first, so neither run
pays for it.  The sequential run gives each point every core
(``eval.jobs=0``); the parallel run gives each of ``--workers`` processes
``cores / workers`` decoding threads, as docs/sweeps.md advises.  The CER of every
point must be the same in both.

It also reports the CPU time of each sweep (its processes' user + system
time).  A sweep cannot finish faster than its CPU time spread over every core,
so ``cpu / (cores * wall)`` of the sequential run, its use of the machine,
bounds from below the ratio any launcher can reach on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

THRESHOLDS = "0.1,0.2,0.3,0.4,0.5,0.6"


def sweep(out: Path, name: str, data: str, extra: list[str], thresholds: str = THRESHOLDS) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the sweep's processes, workers included)."""
    cmd = [sys.executable, "-m", "kprune", "-m", "eval=vosk", f"eval.data={data}", "eval.progress=false",
           "method=global_pct", f"threshold={thresholds}", "tensorboard.histograms=false",
           f"hydra.sweep.dir={out / name}", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cers(root: Path) -> dict[str, float]:
    return {p.parent.name: json.loads(p.read_text()).get("cer") for p in sorted(root.glob("*/metrics.json"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/ko-dev"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_launchers"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    cores = os.cpu_count() or 1
    threads = max(1, cores // args.workers)

    warm, _ = sweep(args.out, "warmup", args.data, [], thresholds="0.05")
    sequential, sequential_cpu = sweep(args.out, "sequential", args.data, ["eval.jobs=0"])
    parallel, parallel_cpu = sweep(args.out, "parallel", args.data,
                                   [f"eval.jobs={threads}", "hydra/launcher=joblib",
                                    f"hydra.launcher.n_jobs={args.workers}"])
    same = cers(args.out / "sequential") == cers(args.out / "parallel")
    use = sequential_cpu / (cores * sequential)
    print(f"cores {cores}; 6 points, eval=vosk on {args.data}")
    print(f"warm-up (baseline cached): {warm:.1f} s")
    print(f"sequential (eval.jobs=0):            {sequential:.1f} s wall, {sequential_cpu:.1f} s CPU")
    print(f"joblib, {args.workers} workers (eval.jobs={threads}): {parallel:.1f} s wall, {parallel_cpu:.1f} s CPU")
    print(f"ratio parallel / sequential: {parallel / sequential:.2f}")
    print(f"sequential run's use of the {cores} cores: {use:.2f} "
          f"(no launcher can bring the ratio below about this, for the same CPU work)")
    print(f"same CER at every point: {same}")
    print(json.dumps({"sequential": cers(args.out / 'sequential'), "parallel": cers(args.out / 'parallel')}))


if __name__ == "__main__":
    main()
