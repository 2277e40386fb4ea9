"""Statistics of a layer's inputs on calibration audio: what calibrated rules and repairs read.

A layer ``y = W x + b`` sees inputs ``x`` (for a TdnnComponent, its time
offsets spliced, in the column layout of ``W``).  :class:`InputStatistics`
keeps, in float64, the frame count ``n``, ``Σx``, ``Σx xᵀ`` (the Hessian of
the layer-wise squared error, up to a factor 2) and, when a target is given,
``Σ y* xᵀ`` for a target output ``y*``: never the activations themselves, so
memory is bounded by the input dimension, not by the amount of audio (like
SparseGPT's ``add_batch``).  Products are formed in float32 over blocks of
frames and summed in float64.
"""

from __future__ import annotations

import torch

#: Frames per float32 product before it is added to the float64 sums.
BLOCK_FRAMES = 4096


class InputStatistics:
    """Running ``n``, ``Σx``, per-column ``Σx²``, ``Σx xᵀ`` (unless ``full=False``) and optionally
    ``Σ y* xᵀ`` of a layer's inputs."""

    def __init__(self, dim: int, device: torch.device | str = "cpu", *, full: bool = True):
        self.dim = dim
        self.count = 0
        self.full = full
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros(dim, dtype=torch.float64, device=device)
        self.gram = torch.zeros(dim, dim, dtype=torch.float64, device=device) if full else None
        self.cross: torch.Tensor | None = None
        self.target_sum: torch.Tensor | None = None

    def add(self, x: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """Adds frames ``x`` ``[frames, dim]`` (and their targets ``[frames, out]``)."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected inputs [frames, {self.dim}], found {list(x.shape)}")
        if target is not None and self.cross is None:
            self.cross = torch.zeros(target.shape[1], self.dim, dtype=torch.float64, device=self.sum.device)
            self.target_sum = torch.zeros(target.shape[1], dtype=torch.float64, device=self.sum.device)
        for start in range(0, len(x), BLOCK_FRAMES):
            xb = x[start:start + BLOCK_FRAMES].float()
            if self.full:
                self.gram += (xb.T @ xb).double()
            self.sum += xb.sum(dim=0).double()
            self.sumsq += xb.square().sum(dim=0).double()
            if target is not None:
                tb = target[start:start + BLOCK_FRAMES].float()
                self.cross += (tb.T @ xb).double()
                self.target_sum += tb.sum(dim=0).double()
        self.count += len(x)

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)

    @property
    def column_norms(self) -> torch.Tensor:
        """‖X_j‖₂ over the frames, per input column (Wanda's activation norm)."""
        return self.sumsq.clamp_min(0).sqrt()

    def augmented(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``Σ x̃ x̃ᵀ`` and ``Σ y* x̃ᵀ`` for ``x̃ = [x; 1]``: the bias as a constant-1 input (last column)."""
        if self.gram is None:
            raise ValueError("these statistics were gathered without Σ x xᵀ (full=False)")
        d = self.dim
        gram = torch.empty(d + 1, d + 1, dtype=torch.float64, device=self.gram.device)
        gram[:d, :d] = self.gram
        gram[:d, d] = gram[d, :d] = self.sum
        gram[d, d] = self.count
        cross = None
        if self.cross is not None:
            cross = torch.cat([self.cross, self.target_sum[:, None]], dim=1)
        return gram, cross


class MomentStatistics:
    """Per-column mean and variance of a BatchNorm input over blocks of ``block_dim`` columns."""

    def __init__(self, block_dim: int, device: torch.device | str = "cpu"):
        self.block_dim = block_dim
        self.count = 0
        self.sum = torch.zeros(block_dim, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros(block_dim, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, self.block_dim).double()
        self.sum += x.sum(dim=0)
        self.sumsq += (x * x).sum(dim=0)
        self.count += len(x)

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)

    @property
    def var(self) -> torch.Tensor:
        """The population variance (Kaldi's ``<StatsVar>``: E[x²] - E[x]²), floored at 0."""
        return (self.sumsq / max(self.count, 1) - self.mean ** 2).clamp_min(0)
