"""MFCC options from Kaldi config files, and features from torchaudio's Kaldi-compatible MFCC."""

from __future__ import annotations

import numpy as np
import pytest

from kprune.errors import ConfigError
from kprune.features.conf import read_kaldi_conf
from kprune.features.mfcc import MfccOptions, check_mfcc_dim, compute_mfcc


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (3000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def test_vosk_options(vosk_model_dir):
    opts = MfccOptions.from_file(vosk_model_dir / "conf" / "mfcc.conf")
    kw = opts.kwargs
    assert (kw["num_ceps"], kw["num_mel_bins"], kw["low_freq"], kw["high_freq"]) == (40, 40, 20.0, 7600.0)
    assert kw["use_energy"] is False and kw["dither"] == 0.0 and kw["energy_floor"] == 0.0
    assert opts.allow_downsample and opts.allow_upsample and opts.sample_frequency == 16000


def test_kaldi_defaults_without_a_file():
    opts = MfccOptions.from_file(None)
    assert (opts.num_ceps, opts.kwargs["num_mel_bins"], opts.sample_frequency) == (13, 23, 16000)
    assert opts.kwargs["use_energy"] is True and not opts.allow_downsample


def test_bad_options_are_refused(tmp_path):
    conf = tmp_path / "mfcc.conf"
    conf.write_text("--num-ceps=13\n--use-pitch=true\n")
    with pytest.raises(ConfigError, match="mfcc.conf: unknown MFCC option --use-pitch"):
        MfccOptions.from_file(conf)
    conf.write_text("--use-energy=maybe\n")
    with pytest.raises(ConfigError, match="--use-energy='maybe' is not true or false"):
        MfccOptions.from_file(conf)
    conf.write_text("--num-ceps=30\n--num-mel-bins=23\n")
    with pytest.raises(ConfigError, match="--num-ceps=30 exceeds --num-mel-bins=23"):
        MfccOptions.from_file(conf)
    conf.write_text("num-ceps=13\n")
    with pytest.raises(ConfigError, match="line 1: expected --name=value"):
        read_kaldi_conf(conf)


def test_frames_and_dims(vosk_model_dir):
    opts = MfccOptions.from_file(vosk_model_dir / "conf" / "mfcc.conf")
    feats = compute_mfcc(tone(1.0, 16000), 16000, opts)
    assert feats.shape == (98, 40)  # 1 + (16000 - 400) // 160 frames (snip-edges)
    assert np.isfinite(feats.numpy()).all()
    assert compute_mfcc(tone(0.02, 16000), 16000, opts).shape == (0, 40)  # shorter than one window


def test_other_rates(vosk_model_dir, tmp_path):
    opts = MfccOptions.from_file(vosk_model_dir / "conf" / "mfcc.conf")
    at8k = compute_mfcc(tone(1.0, 8000), 8000, opts)  # upsampled to 16 kHz, as Kaldi's pipeline does
    assert at8k.shape == (98, 40)
    strict = tmp_path / "mfcc.conf"
    strict.write_text("--num-ceps=13\n")
    with pytest.raises(ConfigError, match="audio at 8000 Hz.*16000 Hz.*--allow-upsample=true"):
        compute_mfcc(tone(1.0, 8000), 8000, MfccOptions.from_file(strict))


def test_model_input_dim_check():
    with pytest.raises(ConfigError, match="--num-ceps=13 gives 13-dim MFCCs, but the model m.mdl takes 40-dim"):
        check_mfcc_dim(MfccOptions.from_file(None), 40, "m.mdl")
