"""Where torch runs: the device that ``device=`` names, and CPU threads for many small ops.

:func:`resolve_device` reads ``device=auto|cpu|cuda|cuda:N`` (the run's, and
the torch backends' ``eval.device``).  :func:`single_cpu_thread` narrows torch
to one CPU thread for work made of many small ops:
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

from kprune.errors import ConfigError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (CUDA when available, else CPU; also for None), ``cpu``, ``cuda`` or ``cuda:N``."""
    name = "auto" if device is None else str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        found = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={name}: expected auto, cpu, cuda or cuda:N") from None
    if found.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name}: CUDA is not available on this machine (torch sees no CUDA device); "
                              "use device=cpu or auto")
        if found.index is not None and found.index >= torch.cuda.device_count():
            raise ConfigError(f"device={name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif found.type != "cpu":
        raise ConfigError(f"device={name}: expected auto, cpu, cuda or cuda:N")
    return found


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
