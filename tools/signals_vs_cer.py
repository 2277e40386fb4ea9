#!/usr/bin/env python3
"""How well the decoder-free signals track the decoded CER, on points that were decoded already.

For every sweep point under the given directories that has a ``metrics.json``
with a ``cer`` and its pruned model file, runs ``eval=signals`` on the model
(the points' own ``eval.data`` is not read: ``--data``, default ko-dev) and
prints, per signal, Spearman's rho against the CER over all points.

    python tools/signals_vs_cer.py outputs/sweeps/alloc_pct outputs/sweeps/alloc_sparsegpt
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kprune.evaluate import build_evaluator  # noqa: E402
from kprune.report.summary import spearman_rho  # noqa: E402
from kprune.session import default_model_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIGNALS = ("kl", "argmax_agreement", "snr_db")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ko-dev")
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model = args.model or default_model_path()
    ev = build_evaluator({"name": "signals", "data": str(args.data), "device": "cpu"}, model)
    rows = []
    for metrics_path in sorted(p for d in args.sweeps for p in d.rglob("metrics.json")):
        point = metrics_path.parent
        metrics = json.loads(metrics_path.read_text())
        pruned = point / model.name
        if metrics.get("cer") is None or not pruned.is_file():
            continue
        signals = ev.evaluate(pruned, Path(tempfile.mkdtemp(prefix="kprune-signals-")))  # writes nothing
        rows.append((point, metrics["cer"], signals))
        print(f"{point.parent.name}/{point.name}: CER {metrics['cer']:.2f}  "
              + "  ".join(f"{k} {signals[k]:.4g}" for k in SIGNALS))
    if len(rows) < 3:
        print("fewer than 3 decoded points: no correlation")
        return 1
    cers = [r[1] for r in rows]
    for key in SIGNALS:
        print(f"Spearman rho ({key}, CER) over {len(rows)} points: {spearman_rho([r[2][key] for r in rows], cers):+.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
