"""Torch's CPU threads, narrowed to one for work made of many small ops.

On a 2-core machine where another process holds a core (a decoder, a parallel
sweep job), each of many small torch ops waits for the descheduled second
thread: a signals point took 11 s with torch's two threads and 1.3 s with one
(``tools/bench_signals.py``); TensorBoard's weight histograms, about 600 small
ops, took 1-8 s instead of 0.1 s.  One thread costs about 20 ms more on an idle
machine.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def single_cpu_thread(device: torch.device | str = "cpu") -> Iterator[None]:
    """Torch's CPU ops on one thread for a while (nothing changes on a GPU)."""
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
