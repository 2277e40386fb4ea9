"""Shared caches under concurrency: one process makes an entry, the others wait and read it."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from kprune.fileio import write_atomically
from kprune.kaldi.build import build_tdnn
from kprune.locks import LockTimeout, file_lock, load_or_make, locked_cache_entry

# spawn, not fork: a child forked after torch started its thread pools can hang in a forward pass.
SPAWN = multiprocessing.get_context("spawn")


def _make_entry(path: str, log: str, start: float) -> str:
    time.sleep(max(0.0, start - time.time()))  # all processes ask at the same moment

    def make(p: Path) -> str:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough for every other process to find the entry missing
        write_atomically(p, f"made by {os.getpid()}")
        return p.read_text()

    return load_or_make(Path(path), lambda p: p.read_text() if p.exists() else None, make)


def test_an_entry_is_made_once_by_concurrent_processes(tmp_path):
    entry, log = tmp_path / "cache" / "entry.txt", tmp_path / "makers.log"
    with SPAWN.Pool(4) as pool:
        results = pool.starmap(_make_entry, [(str(entry), str(log), time.time() + 5.0)] * 4)
    assert len(log.read_text().split()) == 1
    assert len(set(results)) == 1 and results[0] == entry.read_text()
    assert sorted(p.name for p in entry.parent.iterdir()) == ["entry.txt", "entry.txt.lock"]  # no temp files


def _hold(path: str, seconds: float, ready) -> None:
    with file_lock(path):
        ready.set()
        time.sleep(seconds)


def test_a_lock_held_elsewhere_times_out_with_its_path(tmp_path):
    lock = tmp_path / "x.lock"
    ready = SPAWN.Event()
    holder = SPAWN.Process(target=_hold, args=(str(lock), 3.0, ready))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(LockTimeout, match=r"x\.lock: still locked by another process after 0.2 s"):
            with file_lock(lock, timeout=0.2):
                pass
    finally:
        holder.join()
    with file_lock(lock, timeout=0):  # free again
        pass


def test_a_cache_directory_is_renamed_into_place(tmp_path):
    target = tmp_path / "graphs" / "abc"
    with locked_cache_entry(target) as entry:
        assert not entry.exists()
        tmp = entry.temporary_dir()
        (tmp / "HCLG.fst").write_text("graph")
        entry.commit_dir(tmp)
    assert (target / "HCLG.fst").read_text() == "graph"
    assert sorted(p.name for p in target.parent.iterdir()) == ["abc", "abc.lock"]


def _baseline_decodes(model: str, cache: str, start: float) -> tuple[int, float]:
    import frame_error

    evaluator = frame_error.FrameErrorEvaluator(Path(model), cache_dir=Path(cache))
    time.sleep(max(0.0, start - time.time()))
    cer = evaluator.baseline()["cer"]
    return evaluator.baseline_decodes, cer


def test_parallel_points_decode_the_baseline_once(tmp_path):
    model = tmp_path / "final.mdl"
    model.write_bytes(build_tdnn(hidden_dim=32, num_pdfs=24))
    cache = tmp_path / "cache"
    with SPAWN.Pool(3) as pool:
        results = pool.starmap(_baseline_decodes, [(str(model), str(cache), time.time() + 8.0)] * 3)
    assert sum(decodes for decodes, _ in results) == 1
    assert len({cer for _, cer in results}) == 1 and 0 < results[0][1] < 100
    (entry,) = (cache / "baseline").glob("frame_error-*.json")
    assert (cache / "baseline" / f"{entry.name}.lock").exists()
