"""MFCCs as Kaldi computes them, from a model's ``conf/mfcc.conf``.

The options of ``compute-mfcc-feats`` / ``OnlineMfcc`` (``src/feat/feature-mfcc.h``,
``feature-window.h``, ``mel-computations.h``) are read from the config file
and passed to ``torchaudio.compliance.kaldi.mfcc``, which implements the same
computation.  Two defaults differ on purpose:

* ``--dither``: Kaldi's default is 1.0 (random noise added to every sample);
  kprune uses 0.0 unless the file sets it, so that features are reproducible.
* ``--energy-floor``: torchaudio's default is 1.0, Kaldi's is 0.0; Kaldi's is used.

Samples are int16 values as floats (Kaldi does not scale them to [-1, 1]).
Audio at another rate is resampled to ``--sample-frequency`` when the config
allows it (``--allow-downsample`` / ``--allow-upsample``, as Kaldi's online
feature pipeline does), else refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kprune.errors import ConfigError
from kprune.features.conf import read_kaldi_conf

# Kaldi option name -> (torchaudio keyword, type, Kaldi default).
_OPTIONS: dict[str, tuple[str | None, type, Any]] = {
    "sample-frequency": ("sample_frequency", float, 16000.0),
    "frame-length": ("frame_length", float, 25.0),
    "frame-shift": ("frame_shift", float, 10.0),
    "dither": ("dither", float, 0.0),  # Kaldi: 1.0; see the module doc
    "preemphasis-coefficient": ("preemphasis_coefficient", float, 0.97),
    "remove-dc-offset": ("remove_dc_offset", bool, True),
    "window-type": ("window_type", str, "povey"),
    "round-to-power-of-two": ("round_to_power_of_two", bool, True),
    "blackman-coeff": ("blackman_coeff", float, 0.42),
    "snip-edges": ("snip_edges", bool, True),
    "num-mel-bins": ("num_mel_bins", int, 23),
    "low-freq": ("low_freq", float, 20.0),
    "high-freq": ("high_freq", float, 0.0),
    "vtln-low": ("vtln_low", float, 100.0),
    "vtln-high": ("vtln_high", float, -500.0),
    "vtln-warp": ("vtln_warp", float, 1.0),
    "num-ceps": ("num_ceps", int, 13),
    "use-energy": ("use_energy", bool, True),
    "energy-floor": ("energy_floor", float, 0.0),
    "raw-energy": ("raw_energy", bool, True),
    "cepstral-lifter": ("cepstral_lifter", float, 22.0),
    "htk-compat": ("htk_compat", bool, False),
    "allow-downsample": (None, bool, False),
    "allow-upsample": (None, bool, False),
    # Accepted and ignored: they change nothing in the features.
    "debug-mel": (None, bool, False),
    "max-feature-vectors": (None, int, -1),
    "output-format": (None, str, "kaldi"),
}


def _parse(value: str, kind: type, key: str, where: str):
    if kind is bool:
        low = value.lower()
        if low in ("true", "1", "t"):
            return True
        if low in ("false", "0", "f"):
            return False
        raise ConfigError(f"{where}: --{key}={value!r} is not true or false")
    try:
        return kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number" if kind is float else "a value"
        raise ConfigError(f"{where}: --{key}={value!r} is not {what}") from None


@dataclass
class MfccOptions:
    """The MFCC options of a Kaldi config file, as torchaudio keyword arguments."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    allow_downsample: bool = False
    allow_upsample: bool = False
    source: str = "Kaldi defaults"

    @property
    def sample_frequency(self) -> int:
        return int(self.kwargs["sample_frequency"])

    @property
    def num_ceps(self) -> int:
        return int(self.kwargs["num_ceps"])

    @property
    def frame_shift_seconds(self) -> float:
        return self.kwargs["frame_shift"] / 1000.0

    @classmethod
    def from_file(cls, path: str | os.PathLike | None) -> MfccOptions:
        """Read ``path`` (``--name=value`` lines); None gives Kaldi's defaults."""
        values = read_kaldi_conf(path) if path is not None else {}
        where = str(path)
        unknown = sorted(set(values) - set(_OPTIONS))
        if unknown:
            raise ConfigError(f"{where}: unknown MFCC option --{unknown[0]}; expected options of compute-mfcc-feats "
                              f"({', '.join(sorted(_OPTIONS))})")
        kwargs = {}
        flags = {}
        for key, (name, kind, default) in _OPTIONS.items():
            value = _parse(values[key], kind, key, where) if key in values else default
            if name is not None:
                kwargs[name] = value
            else:
                flags[key] = value
        if kwargs["num_ceps"] > kwargs["num_mel_bins"]:
            raise ConfigError(f"{where}: --num-ceps={kwargs['num_ceps']} exceeds --num-mel-bins={kwargs['num_mel_bins']}")
        return cls(kwargs, flags["allow-downsample"], flags["allow-upsample"], where if path is not None else cls.source)


def compute_mfcc(samples: np.ndarray | torch.Tensor, rate: int, options: MfccOptions) -> torch.Tensor:
    """MFCCs ``[frames, num_ceps]`` (float32) of int16-valued ``samples`` at ``rate`` Hz."""
    import torchaudio.compliance.kaldi as ta_kaldi

    wave = torch.as_tensor(np.asarray(samples, dtype=np.float32) if not isinstance(samples, torch.Tensor) else samples)
    wave = wave.float().reshape(1, -1)
    target = options.sample_frequency
    if rate != target:
        if (rate > target and not options.allow_downsample) or (rate < target and not options.allow_upsample):
            which = "--allow-downsample" if rate > target else "--allow-upsample"
            raise ConfigError(f"audio at {rate} Hz, but the model's features take {target} Hz and "
                              f"{options.source} does not set {which}=true")
        wave = resample(wave, rate, target)
    window = int(options.kwargs["sample_frequency"] * options.kwargs["frame_length"] / 1000.0)
    if wave.shape[1] < window:
        return torch.zeros(0, options.num_ceps)
    return ta_kaldi.mfcc(wave, **options.kwargs)


def resample(wave: torch.Tensor, rate_in: int, rate_out: int) -> torch.Tensor:
    """Band-limited resampling (Kaldi's LinearResample design, through kprune's implementation)."""
    from kprune.data.datadir import resample as kaldi_resample

    out = kaldi_resample(wave.reshape(-1).numpy().astype(np.float64), rate_in, rate_out)
    return torch.from_numpy(np.asarray(out, dtype=np.float32)).reshape(1, -1)


def check_mfcc_dim(options: MfccOptions, input_dim: int, model: str) -> None:
    """A model whose ``input`` is not ``num_ceps`` wide cannot take these MFCCs."""
    if options.num_ceps != input_dim:
        raise ConfigError(f"{options.source}: --num-ceps={options.num_ceps} gives {options.num_ceps}-dim MFCCs, "
                          f"but the model {model} takes {input_dim}-dim input features")


def default_mfcc_conf(model_dir: Path) -> Path | None:
    """``conf/mfcc.conf`` (Vosk layout) or ``mfcc.conf`` of a model directory."""
    for candidate in (model_dir / "conf" / "mfcc.conf", model_dir / "mfcc.conf"):
        if candidate.is_file():
            return candidate
    return None
