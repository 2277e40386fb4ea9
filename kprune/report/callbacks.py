"""Hydra callbacks of kprune (``hydra.callbacks``): what happens around a whole run or sweep."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kprune.errors import KpruneError

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """``+hydra/callbacks=sweep_summary``: summarize a sweep when it ends.

    Writes into the sweep directory what ``tools/summarize SWEEP_DIR
    --tensorboard`` writes: ``summary.tsv``, ``summary.md``, the plots (when
    matplotlib is installed) and a TensorBoard summary run per group in
    ``_sweep/<group>/``.  A failure is logged; it never fails the sweep.
    """

    def __init__(self, plots: bool = True) -> None:
        self.plots = plots

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from kprune.report.summary import summarize

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            summary = summarize([sweep_dir], plots=self.plots, tensorboard=True)
        except KpruneError as e:
            if self.plots and "matplotlib" in str(e):
                summary = summarize([sweep_dir], plots=False, tensorboard=True)
            else:
                log.warning("no summary of %s: %s", sweep_dir, e)
                return
        except Exception as e:  # a summary must never cost a sweep
            log.warning("no summary of %s: %s", sweep_dir, e)
            return
        log.info("summary of %d points written to %s", len(summary.runs), sweep_dir)
