"""Writing a sensitivity analysis: ``sensitivity.csv``, the ``sensitivity.png`` heat map, TensorBoard curves."""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any, Mapping

from kprune.fileio import write_atomically

log = logging.getLogger(__name__)

CSV = "sensitivity.csv"
PLOT = "sensitivity.png"
COLUMNS = ("layer", "level", "layer_sparsity", "network_sparsity", "kl", "argmax_agreement", "snr_db", "cer", "wer",
           "seconds")

Table = Mapping[str, Mapping[float, Mapping[str, Any]]]


def write_csv(table: Table, path: Path) -> None:
    """One row per layer and level; sparsities in %, ``cer``/``wer`` empty where nothing was decoded."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for layer, levels in table.items():
        for level, m in levels.items():
            row = [layer, f"{level:g}"]
            for key in COLUMNS[2:]:
                value = m.get(key)
                row.append("" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value))
            writer.writerow(row)
    write_atomically(Path(path), buffer.getvalue())


def read_csv(path: Path) -> dict[str, dict[float, dict[str, float]]]:
    """The table of :func:`write_csv` back (numbers as floats, empty cells left out)."""
    out: dict[str, dict[float, dict[str, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if k not in ("layer", "level") and v not in ("", None)}
            out.setdefault(row["layer"], {})[float(row["level"])] = values
    return out


def plot_heatmap(table: Table, path: Path, signal: str = "kl") -> bool:
    """Layers x levels coloured by ``signal`` (log scale for kl); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import LogNorm
    except ImportError:
        log.warning("matplotlib is not installed: no %s (pip install matplotlib)", path)
        return False
    import numpy as np

    layers = list(table)
    levels = sorted({lv for d in table.values() for lv in d})
    grid = np.full((len(layers), len(levels)), np.nan)
    for i, layer in enumerate(layers):
        for j, level in enumerate(levels):
            value = table[layer].get(level, {}).get(signal)
            if value is not None and math.isfinite(value):
                grid[i, j] = value
    fig, ax = plt.subplots(figsize=(2.5 + 0.7 * len(levels), 1.5 + 0.28 * len(layers)), layout="constrained")
    norm = None
    if signal == "kl" and np.nanmax(grid) > 0:
        positive = grid[grid > 0]
        norm = LogNorm(vmin=max(float(positive.min()), 1e-6), vmax=float(positive.max()))
        grid = np.where(grid > 0, grid, norm.vmin)
    image = ax.imshow(grid, aspect="auto", cmap="magma_r", norm=norm)
    ax.set_xticks(range(len(levels)), [f"{lv:g}" for lv in levels])
    ax.set_yticks(range(len(layers)), layers, fontsize=7)
    ax.set_xlabel("fraction of the layer pruned")
    ax.set_title(f"{signal} when one layer is pruned alone")
    fig.colorbar(image, ax=ax, label=signal)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_atomically(Path(path), buffer.getvalue())
    return True
