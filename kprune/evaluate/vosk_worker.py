"""Decoding with Vosk: one model, several threads.

One ``vosk.Model`` is loaded and shared by ``jobs`` threads, each running its
own ``KaldiRecognizer`` on one utterance at a time.  vosk's calls go through
cffi, which releases the GIL, so the threads decode in parallel and share the
model's memory (measured on the 2-core dev machine: 19.3 s with 1 thread,
9.1 s with 2, for 75 s of speech; see ``tools/bench_eval.py``).

The evaluator runs this module as a subprocess for every sweep point
(``python -m kprune.evaluate.vosk_worker REQUEST.json``), so that a timeout
can kill the decode outright and a crash in the native code cannot take the
sweep down.  It prints one JSON object per line on stdout::

    {"loaded": 1.83}                                # model load seconds
    {"utt": "...", "text": "...", "seconds": 2.1}   # one per utterance
    {"cpu": 21.4}                                   # CPU seconds of the worker
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Sequence

#: Audio is fed to the recogniser in pieces of this many seconds, so that a
#: stop request is noticed quickly.  Endpoints are ignored (Result() is never
#: called mid-utterance), so the whole utterance stays one decoding segment.
CHUNK_SECONDS = 0.5


class Stopped(Exception):
    """The decode was asked to stop (timeout) before it finished."""


@dataclass(frozen=True)
class WorkItem:
    """An utterance as the worker reads it: a byte range of 16-bit samples."""

    utt_id: str
    path: str
    offset: int
    nbytes: int
    rate: int


def load_model(model_dir: str):  # -> vosk.Model
    """Load a Vosk model directory quietly; raise RuntimeError when Vosk refuses it."""
    try:
        import vosk
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise RuntimeError("eval=vosk needs the vosk package: pip install 'kprune[vosk]'") from e
    vosk.SetLogLevel(-1)
    try:
        return vosk.Model(model_dir)
    except Exception as e:  # vosk raises a bare Exception
        raise RuntimeError(f"Vosk could not load the staged model directory {model_dir} ({e})") from e


def decode_item(model, item: WorkItem, stop: threading.Event, chunk_seconds: float = CHUNK_SECONDS) -> str:
    """Decode one utterance and return the recognised text."""
    import vosk

    with open(item.path, "rb") as f:
        f.seek(item.offset)
        data = f.read(item.nbytes)
    recognizer = vosk.KaldiRecognizer(model, item.rate)
    chunk = max(2, int(chunk_seconds * item.rate) * 2)
    for start in range(0, len(data), chunk):
        if stop.is_set():
            raise Stopped(item.utt_id)
        try:
            recognizer.AcceptWaveform(data[start : start + chunk])
        except Exception as e:
            raise RuntimeError(f"Vosk failed on utterance {item.utt_id} from {item.path} ({e})") from e
    return json.loads(recognizer.FinalResult()).get("text", "")


def decode_items(
    model,
    items: Sequence[WorkItem],
    jobs: int,
    on_result: Callable[[str, str, float], None],
    stop: threading.Event,
    chunk_seconds: float = CHUNK_SECONDS,
) -> None:
    """Decode ``items`` with ``jobs`` threads sharing ``model``.

    ``on_result(utt_id, text, seconds)`` is called from the calling thread as
    results come in.  The longest utterances start first, so the threads end
    together.  Raises the first error; the other threads stop at their next
    chunk.
    """
    order = sorted(items, key=lambda it: -it.nbytes)

    def run(item: WorkItem) -> tuple[str, str, float]:
        start = time.perf_counter()
        text = decode_item(model, item, stop, chunk_seconds)
        return item.utt_id, text, time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="vosk") as pool:
        futures = [pool.submit(run, item) for item in order]
        try:
            for future in as_completed(futures):
                on_result(*future.result())
        except BaseException:
            stop.set()
            raise


def main(argv: Sequence[str] | None = None) -> int:
    """Subprocess entry: decode the request and stream results as JSON lines."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m kprune.evaluate.vosk_worker REQUEST.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        request = json.load(f)
    out = sys.stdout

    def emit(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        start = time.perf_counter()
        model = load_model(request["model_dir"])
        emit({"loaded": time.perf_counter() - start})
        items = [WorkItem(**item) for item in request["items"]]
        decode_items(
            model,
            items,
            int(request["jobs"]),
            lambda utt, text, seconds: emit({"utt": utt, "text": text, "seconds": seconds}),
            threading.Event(),
            float(request.get("chunk_seconds", CHUNK_SECONDS)),
        )
        usage = resource.getrusage(resource.RUSAGE_SELF)
        emit({"cpu": usage.ru_utime + usage.ru_stime})
    except RuntimeError as e:
        print(f"kprune-vosk-worker: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
