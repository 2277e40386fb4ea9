"""Builders of small Kaldi data directories and WAV files (imported by the tests here)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from kprune.data.datadir import write_wav


def wav_bytes(samples: bytes, rate: int, *, tag: int = 1, bits: int = 16, channels: int = 1) -> bytes:
    """A RIFF/WAVE file with any format tag, sample size and channel count."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(samples)) + samples
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def make_data_dir(root: Path, utts: dict[str, tuple[np.ndarray, int, str]]) -> Path:
    """A data dir with one 16-bit WAV per utterance: {utt: (samples, rate, transcript)}."""
    (root / "wav").mkdir(parents=True)
    scp, text = [], []
    for utt, (samples, rate, transcript) in utts.items():
        write_wav(root / "wav" / f"{utt}.wav", samples, rate)
        scp.append(f"{utt} wav/{utt}.wav")
        text.append(f"{utt} {transcript}")
    (root / "wav.scp").write_text("\n".join(scp) + "\n", encoding="utf-8")
    (root / "text").write_text("\n".join(text) + "\n", encoding="utf-8")
    return root
