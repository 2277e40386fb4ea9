#!/usr/bin/env python3
"""One sweep point's evaluation: eval=signals against eval=vosk on the same pruned model, in one run.

Prunes the default model (``pct`` at ``--threshold``), writes it once, and
evaluates it ``--repeat`` times with each backend (``evaluate()``, as a sweep
point does; the baselines and, for signals, the features and the dense
outputs are prepared first and not counted, as in a multirun after its first
point).  Prints the median seconds per point and the ratio.

    python tools/bench_signals.py                       # ../shared/data/ko-dev
    python tools/bench_signals.py --data DIR --threshold 0.5 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kprune.evaluate import build_evaluator  # noqa: E402
from kprune.runner import prune  # noqa: E402
from kprune.session import default_model_path, load_model_once  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ko-dev")
    parser.add_argument("--threshold", type=float, default=0.4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model = default_model_path()
    loaded = load_model_once(model)
    prune(loaded, "pct", args.threshold)
    out: dict = {"data": str(args.data), "threshold": args.threshold}
    with tempfile.TemporaryDirectory(prefix="kprune-bench-") as tmp:
        pruned = Path(tmp) / "final.mdl"
        loaded.model.save(pruned)
        loaded.model.restore(loaded.snapshot)
        for name, cfg in (("signals", {"name": "signals", "data": str(args.data), "device": "cpu"}),
                          ("signals_per_frame", {"name": "signals", "data": str(args.data), "device": "cpu",
                                                 "per_frame_ivectors": True}),
                          ("vosk", {"name": "vosk", "data": str(args.data), "jobs": 0, "progress": False})):
            start = time.perf_counter()
            ev = build_evaluator(cfg, model)
            ev.baseline()
            prepare = time.perf_counter() - start
            times, metrics = [], {}
            for i in range(args.repeat):
                start = time.perf_counter()
                metrics = ev.evaluate(pruned, Path(tmp) / f"{name}{i}")
                times.append(time.perf_counter() - start)
            keep = {k: metrics[k] for k in ("cer", "wer", "kl", "argmax_agreement", "snr_db") if k in metrics}
            out[name] = {"prepare_seconds": prepare, "point_seconds": times, "median": statistics.median(times),
                         "metrics": keep}
            print(f"eval={name:17s} prepare {prepare:6.1f} s  point {statistics.median(times):6.2f} s "
                  f"(runs {', '.join(f'{t:.2f}' for t in times)})  {keep}")
            ev.close()
    for name in ("signals", "signals_per_frame"):
        ratio = out["vosk"]["median"] / out[name]["median"]
        out[f"ratio_{name}"] = ratio
        print(f"eval={name} takes 1/{ratio:.1f} of eval=vosk's time per point")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
