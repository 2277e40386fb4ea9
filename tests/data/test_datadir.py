"""Data directories and audio: clear errors for bad input, resampling where that is the fix."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest

from kprune.errors import EvaluationError
from kprune.data.datadir import (
    FeatureConf,
    prepare_audio,
    read_data_dir,
    read_feature_conf,
    read_wav_info,
    resample,
    write_wav,
)

from eval_helpers import make_data_dir, tone, wav_bytes

MODEL_16K = FeatureConf(16000, allow_upsample=True, allow_downsample=True, source="conf/mfcc.conf")
STRICT_16K = FeatureConf(16000, allow_upsample=False, allow_downsample=False, source="conf/mfcc.conf")


def test_reads_the_real_dev_set(ko_dev: Path, tmp_path: Path) -> None:
    data = read_data_dir(ko_dev)
    assert len(data.text) == 8
    assert data.text["zeroth_104_003_0253"].startswith("현재 백화점과")
    audio = prepare_audio(data, MODEL_16K, tmp_path)
    assert audio.seconds == pytest.approx(75.13, abs=0.01)
    # Plain 16 kHz WAVs are read in place, not copied.
    assert all(item.path.parent == ko_dev / "wav" and item.offset == 44 for item in audio.items)
    assert list(tmp_path.iterdir()) == []


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match=f"eval.data: .* at {tmp_path / 'nope'}, but it does not exist"):
        read_data_dir(tmp_path / "nope")


def test_data_dir_without_text(tone_data_dir: Path) -> None:
    (tone_data_dir / "text").unlink()
    with pytest.raises(EvaluationError, match=f"{tone_data_dir / 'text'}: missing"):
        read_data_dir(tone_data_dir)


def test_empty_text(tone_data_dir: Path) -> None:
    (tone_data_dir / "text").write_text("\n\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match=f"{tone_data_dir / 'text'}: empty"):
        read_data_dir(tone_data_dir)


def test_utterance_missing_from_wav_scp(tone_data_dir: Path) -> None:
    (tone_data_dir / "wav.scp").write_text("u1 wav/u1.wav\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"wav.scp: 1 utterances of text have no entry: u2"):
        read_data_dir(tone_data_dir)


def test_duplicate_utterance_names_its_line(tone_data_dir: Path) -> None:
    (tone_data_dir / "text").write_text("u1 가\nu2 나\nu1 다\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"text, line 3: utterance u1 appears a second time"):
        read_data_dir(tone_data_dir)


def test_missing_audio_file(tone_data_dir: Path, tmp_path: Path) -> None:
    (tone_data_dir / "wav" / "u2.wav").unlink()
    with pytest.raises(EvaluationError, match=r"audio file .*u2.wav does not exist"):
        prepare_audio(read_data_dir(tone_data_dir), MODEL_16K, tmp_path / "stage")


@pytest.mark.parametrize(
    "content, message",
    [
        (wav_bytes(bytes(800), 16000, bits=8), "expected 16-bit PCM WAV, found 8-bit PCM"),
        (wav_bytes(bytes(1600), 16000, tag=3, bits=32), "expected 16-bit PCM WAV, found 32-bit IEEE float"),
        (wav_bytes(bytes(1200), 16000, bits=24), "expected 16-bit PCM WAV, found 24-bit PCM"),
        (wav_bytes(bytes(1600), 16000, channels=2), "expected mono 16-bit PCM WAV, found 2 channels"),
        (b"fLaC" + bytes(100), "expected a 16-bit PCM WAV file .RIFF/WAVE header., found a file starting with b'fLaC'"),
        (b"", "found an empty file"),
    ],
)
def test_audio_that_is_not_16_bit_pcm(tone_data_dir: Path, tmp_path: Path, content: bytes, message: str) -> None:
    bad = tone_data_dir / "wav" / "u2.wav"
    bad.write_bytes(content)
    with pytest.raises(EvaluationError, match=message) as info:
        prepare_audio(read_data_dir(tone_data_dir), MODEL_16K, tmp_path / "stage")
    assert str(bad) in str(info.value)


def test_extensible_pcm_header_is_accepted() -> None:
    samples = tone(0.1, 16000).tobytes()
    fmt = struct.pack("<HHIIHH", 0xFFFE, 1, 16000, 32000, 2, 16) + struct.pack("<HHI", 22, 16, 4)
    fmt += struct.pack("<H", 1) + bytes(14)  # SubFormat GUID starting with PCM's tag
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(samples)) + samples
    info = read_wav_info(io.BytesIO(b"RIFF" + struct.pack("<I", len(body)) + body), "x.wav")
    assert (info.format_tag, info.rate, info.num_samples) == (1, 16000, 1600)


def test_empty_audio_names_the_utterance(tone_data_dir: Path, tmp_path: Path) -> None:
    write_wav(tone_data_dir / "wav" / "u2.wav", np.zeros(0, dtype=np.int16), 16000)
    with pytest.raises(EvaluationError, match=r"u2.wav: no audio samples for utterance u2; the file holds 0.00 s"):
        prepare_audio(read_data_dir(tone_data_dir), MODEL_16K, tmp_path / "stage")


def test_streamed_wav_with_unknown_length_reads_to_the_end() -> None:
    content = bytearray(wav_bytes(tone(0.1, 16000).tobytes(), 16000))
    content[40:44] = struct.pack("<I", 0xFFFFFFFF)  # what `sox ... -t wav - |` writes
    info = read_wav_info(io.BytesIO(bytes(content)), "pipe", total_size=len(content))
    assert info.num_samples == 1600


def test_lower_rate_is_passed_to_kaldi_when_the_model_allows_upsampling(tone_data_dir: Path, tmp_path: Path) -> None:
    write_wav(tone_data_dir / "wav" / "u2.wav", tone(0.5, 8000), 8000)
    audio = prepare_audio(read_data_dir(tone_data_dir), MODEL_16K, tmp_path / "stage")
    item = audio.items[1]
    # Vosk gets the file's own rate; Kaldi's LinearResample in the feature pipeline resamples.
    assert (item.rate, item.nbytes, item.path.name) == (8000, 8000, "u2.wav")


def test_higher_rate_is_resampled_here_when_the_model_forbids_downsampling(tone_data_dir: Path, tmp_path: Path) -> None:
    write_wav(tone_data_dir / "wav" / "u2.wav", tone(0.5, 44100), 44100)
    audio = prepare_audio(read_data_dir(tone_data_dir), STRICT_16K, tmp_path / "stage")
    item = audio.items[1]
    assert item.rate == 16000
    assert item.nbytes == 2 * 8000
    assert item.path == tmp_path / "stage" / "resampled.pcm"
    samples = np.fromfile(item.path, dtype="<i2", count=item.nbytes // 2, offset=item.offset)
    assert np.abs(samples).max() == pytest.approx(8000, rel=0.05)


def test_rate_the_model_cannot_take(tone_data_dir: Path, tmp_path: Path) -> None:
    write_wav(tone_data_dir / "wav" / "u1.wav", tone(0.5, 8000), 8000)
    with pytest.raises(EvaluationError, match=r"u1.wav: sample rate 8000 Hz is below the 16000 Hz .*--allow-upsample"):
        prepare_audio(read_data_dir(tone_data_dir), STRICT_16K, tmp_path / "stage")


def test_resample_keeps_a_tone_and_removes_what_is_above_nyquist() -> None:
    rate_in, rate_out = 44100, 16000
    t = np.arange(rate_in) / rate_in
    kept = resample(np.sin(2 * np.pi * 1000 * t), rate_in, rate_out)
    assert len(kept) == rate_out
    spectrum = np.abs(np.fft.rfft(kept[1000:-1000]))
    freqs = np.fft.rfftfreq(len(kept) - 2000, 1 / rate_out)
    assert freqs[spectrum.argmax()] == pytest.approx(1000, abs=2)
    assert np.abs(kept[1000:-1000]).max() == pytest.approx(1.0, abs=0.01)
    aliased = resample(np.sin(2 * np.pi * 10000 * t), rate_in, rate_out)  # above 8 kHz
    assert np.abs(aliased[1000:-1000]).max() < 0.01


def test_relative_wav_paths_are_taken_from_the_data_dir(tone_data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path / "..")
    audio = prepare_audio(read_data_dir(tone_data_dir), MODEL_16K, tmp_path / "stage")
    assert audio.items[0].path == tone_data_dir / "wav" / "u1.wav"


def test_wav_scp_commands_are_run(tone_data_dir: Path, tmp_path: Path) -> None:
    (tone_data_dir / "wav.scp").write_text("u1 cat wav/u1.wav |\nu2 wav/u2.wav\n", encoding="utf-8")
    audio = prepare_audio(read_data_dir(tone_data_dir), MODEL_16K, tmp_path / "stage")
    assert audio.items[0].path.parent == tmp_path / "stage"
    assert audio.items[0].nbytes == 16000
    (tone_data_dir / "wav.scp").write_text("u1 false |\nu2 wav/u2.wav\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match="command 'false' failed with exit status 1"):
        prepare_audio(read_data_dir(tone_data_dir), MODEL_16K, tmp_path / "stage2")


def test_segments_cut_recordings(tmp_path: Path) -> None:
    data = make_data_dir(tmp_path / "data", {"rec": (tone(1.0, 16000), 16000, "")})
    (data / "text").write_text("a 가\nb 나\n", encoding="utf-8")
    (data / "segments").write_text("a rec 0.0 0.25\nb rec 0.5 1.0\n", encoding="utf-8")
    audio = prepare_audio(read_data_dir(data), MODEL_16K, tmp_path / "stage")
    assert [(i.utt_id, i.offset, i.nbytes) for i in audio.items] == [("a", 44, 8000), ("b", 44 + 16000, 16000)]


def test_digest_changes_with_the_audio(tone_data_dir: Path, tmp_path: Path) -> None:
    first = prepare_audio(read_data_dir(tone_data_dir), MODEL_16K, tmp_path / "s1").digest
    again = prepare_audio(read_data_dir(tone_data_dir), MODEL_16K, tmp_path / "s2").digest
    write_wav(tone_data_dir / "wav" / "u2.wav", tone(0.25, 16000, 881.0), 16000)
    changed = prepare_audio(read_data_dir(tone_data_dir), MODEL_16K, tmp_path / "s3").digest
    assert first == again != changed


def test_read_feature_conf(tmp_path: Path, vosk_model_dir: Path) -> None:
    def fields(c: FeatureConf) -> tuple[int, bool, bool]:
        return c.rate, c.allow_upsample, c.allow_downsample

    assert fields(read_feature_conf(vosk_model_dir / "conf" / "mfcc.conf")) == (16000, True, True)
    conf = tmp_path / "mfcc.conf"
    conf.write_text("--sample-frequency=8000 # telephone\n--allow_downsample=true\n", encoding="utf-8")
    assert fields(read_feature_conf(conf)) == (8000, False, True)
    assert read_feature_conf(tmp_path / "absent.conf") == FeatureConf()


def test_wav_scp_commands_are_refused_when_pipes_are_not_allowed(tone_data_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tone_data_dir / "wav.scp").write_text(f"u1 touch {marker}; cat wav/u1.wav |\nu2 wav/u2.wav\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"wav\.scp \(u1\): expected a WAV file, found the shell command "
                                              r"'touch .* \|', which eval\.allow_pipes=false refuses to run"):
        prepare_audio(read_data_dir(tone_data_dir), MODEL_16K, tmp_path / "stage", allow_pipes=False)
    assert not marker.exists()
    (tone_data_dir / "wav.scp").write_text("u1 wav/u1.wav\nu2 wav/u2.wav\n", encoding="utf-8")
    audio = prepare_audio(read_data_dir(tone_data_dir), MODEL_16K, tmp_path / "stage2", allow_pipes=False)
    assert len(audio.items) == 2


def test_the_evaluators_take_allow_pipes(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from kprune.errors import ConfigError
    from kprune.evaluate.base import bool_setting
    from kprune.evaluate.torch_backend import TorchEvaluator
    from kprune.evaluate.vosk_backend import VoskEvaluator

    repo = Path(__file__).resolve().parents[2]
    for name, cls in (("vosk", VoskEvaluator), ("torch", TorchEvaluator)):
        cfg = OmegaConf.load(repo / "kprune" / "conf" / "eval" / f"{name}.yaml")
        assert cfg.allow_pipes is True and "allow_pipes" in cls.SETTINGS
    assert bool_setting({"allow_pipes": False}, "allow_pipes", True) is False
    with pytest.raises(ConfigError, match="eval.allow_pipes: expected true or false, found 'no'"):
        bool_setting({"allow_pipes": "no"}, "allow_pipes", True)
