#!/usr/bin/env python3
"""A stand-in for a Kaldi recipe's decode script, for the tests of eval=kaldi.

Called like ``steps/nnet3/decode.sh [--nj N] <graph-dir> <data-dir> <decode-dir>``
and, like it, reads the model from the decode directory's parent
(``<decode-dir>/../final.mdl``) and checks its inputs.  It does not decode:
the test "models" are text files whose lines set what happens:

    damage K    the first K words of every utterance come out wrong at the
                best LM weight (10) and penalty (0.0); more at the others
    fail        print a Kaldi-style ERROR and exit with status 1
    sleep S     sleep S seconds first (to run past a timeout)

It then writes what ``steps/score_kaldi.sh`` writes, in Kaldi's exact
formats: ``wer_LMWT_PENALTY`` (compute-wer output),
``scoring_kaldi/best_wer`` (utils/best_wer.sh), ``scoring_kaldi/test_filt.txt``,
``scoring_kaldi/penalty_P/LMWT.txt`` and ``scoring_kaldi/wer_details/per_utt``,
plus ``lat.N.gz`` and ``log/decode.N.log``.  ``--no-best-wer`` leaves
``best_wer`` out; ``--cer`` adds ``cer_LMWT_PENALTY`` files (characters
without spaces).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from pathlib import Path

LMWTS = range(7, 13)
PENALTIES = ("0.0", "0.5", "1.0")


def report(errors: int, total: int) -> str:
    return f"%WER {100.0 * errors / total:.2f} [ {errors} / {total}, 0 ins, 0 del, {errors} sub ]"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nj", type=int, default=4)
    parser.add_argument("--no-best-wer", action="store_true")
    parser.add_argument("--cer", action="store_true")
    parser.add_argument("graph_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("decode_dir", type=Path)
    args = parser.parse_args()

    srcdir = args.decode_dir.parent
    model = srcdir / "final.mdl"
    for needed in (args.graph_dir / "HCLG.fst", args.data_dir / "text", model, srcdir / "frame_subsampling_factor"):
        if not needed.is_file():
            print(f"recipe_decode.py: expected file {needed} to exist", file=sys.stderr)
            return 1
    settings = {}
    for line in model.read_text().splitlines():
        if line.strip():
            key, _, value = line.strip().partition(" ")
            settings[key] = value
    if "sleep" in settings:
        (args.decode_dir.parent / "decode.pid").write_text(str(os.getpid()))
        time.sleep(float(settings["sleep"]))
    if "fail" in settings:
        print("ERROR (nnet3-latgen-faster[5.5]:ReadToken():io-funcs.cc:155) Failure reading token", file=sys.stderr)
        return 1
    damage = int(settings.get("damage", "0"))

    refs = {}
    for line in (args.data_dir / "text").read_text(encoding="utf-8").splitlines():
        utt, _, words = line.partition(" ")
        refs[utt] = words.split()
    total_words = sum(len(w) for w in refs.values())
    total_chars = sum(len("".join(w)) for w in refs.values())

    out = args.decode_dir
    scoring = out / "scoring_kaldi"
    (scoring / "wer_details").mkdir(parents=True, exist_ok=True)
    (out / "log").mkdir(exist_ok=True)
    (scoring / "test_filt.txt").write_text("".join(f"{u} {' '.join(w)}\n" for u, w in refs.items()), encoding="utf-8")
    for job in range(1, args.nj + 1):
        with gzip.open(out / f"lat.{job}.gz", "wb") as f:
            f.write(b"lattice\n")
        (out / "log" / f"decode.{job}.log").write_text(f"# decode job {job} of {args.nj}\n")

    best = None
    for lmwt in LMWTS:
        for penalty in PENALTIES:
            wrong = damage + abs(lmwt - 10) + (penalty != "0.0")
            hyps = {u: ["X"] * min(wrong, len(w)) + w[wrong:] for u, w in refs.items()}
            errors = sum(min(wrong, len(w)) for w in refs.values())
            char_errors = sum(len("".join(w[:wrong])) for w in refs.values())
            wrong_utts = sum(1 for w in refs.values() if wrong and w)
            (scoring / f"penalty_{penalty}").mkdir(exist_ok=True)
            (scoring / f"penalty_{penalty}" / f"{lmwt}.txt").write_text(
                "".join(f"{u} {' '.join(h)}\n" for u, h in hyps.items()), encoding="utf-8"
            )
            tail = (
                f"%SER {100.0 * wrong_utts / len(refs):.2f} [ {wrong_utts} / {len(refs)} ]\n"
                f"Scored {len(refs)} sentences, 0 not present in hyp.\n"
            )
            head = f"compute-wer --text --mode=present ark:{scoring}/test_filt.txt ark,p:- \n"
            (out / f"wer_{lmwt}_{penalty}").write_text(head + report(errors, total_words) + "\n" + tail)
            if args.cer:
                (out / f"cer_{lmwt}_{penalty}").write_text(head + report(char_errors, total_chars) + "\n" + tail)
            if best is None or errors < best[0]:
                best = (errors, lmwt, penalty, hyps)
    errors, lmwt, penalty, hyps = best
    if not args.no_best_wer:
        (scoring / "best_wer").write_text(f"{report(errors, total_words)} {out}/wer_{lmwt}_{penalty}\n")
    per_utt = []
    for u, w in refs.items():
        h = hyps[u]
        ops = ["S" if a != b else "C" for a, b in zip(w, h)]
        per_utt += [f"{u} ref  {' '.join(w)}", f"{u} hyp  {' '.join(h)}", f"{u} op   {' '.join(ops)}",
                    f"{u} #csid {ops.count('C')} {ops.count('S')} 0 0"]
    (scoring / "wer_details" / "per_utt").write_text("\n".join(per_utt) + "\n", encoding="utf-8")
    print(f"recipe_decode.py: decoded {len(refs)} utterances with {model.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
