"""Scoring audio is never calibration audio: recordings compared by the digest of their samples."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kprune.data.datadir import check_no_shared_audio, read_data_dir, read_wav_info, recording_digests
from kprune.errors import EvaluationError
from kprune.kaldi.build import build_tdnn
from kprune.runner import PointSettings, run_point
from tests.eval_helpers import make_data_dir, tone

KO_CALIB = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ko-calib"


def _data(root: Path, entries: dict[str, Path], text: bool = True) -> Path:
    root.mkdir(parents=True)
    (root / "wav.scp").write_text("".join(f"{r} {p}\n" for r, p in entries.items()), encoding="utf-8")
    if text:
        (root / "text").write_text("".join(f"{r} 가\n" for r in entries), encoding="utf-8")
    return root


def test_the_same_samples_under_another_name_file_and_header_are_the_same_recording(tmp_path):
    first = make_data_dir(tmp_path / "a", {"u1": (tone(0.5, 16000), 16000, "가"),
                                           "u2": (tone(0.5, 16000, 880.0), 16000, "나")})
    # the samples of u2 again under another recording id, in a file with another header (a LIST chunk first)
    source = first / read_data_dir(first).wav_scp["u2"]
    with open(source, "rb") as f:
        info = read_wav_info(f, str(source))
        f.seek(info.data_offset)
        samples = f.read(info.data_bytes)
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    listing = b"INFOISFT\x06\x00\x00\x00kprune"
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", len(listing))
            + listing + b"data" + struct.pack("<I", len(samples)) + samples)
    copy = tmp_path / "copy.wav"
    copy.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert copy.read_bytes() != source.read_bytes()
    second = _data(tmp_path / "b", {"other-id": copy})
    digests_a, digests_b = recording_digests(read_data_dir(first)), recording_digests(read_data_dir(second))
    assert digests_b["other-id"] == digests_a["u2"] != digests_a["u1"]
    with pytest.raises(EvaluationError, match=r"share audio: recording other-id of eval.data is u2 of calib.data"):
        check_no_shared_audio(read_data_dir(second), read_data_dir(first, transcripts=False))
    disjoint = make_data_dir(tmp_path / "c", {"u3": (tone(0.5, 16000, 660.0), 16000, "다")})
    check_no_shared_audio(read_data_dir(disjoint), read_data_dir(first))  # nothing shared: no error


def test_a_calibrated_point_scored_on_its_calibration_audio_is_refused_before_pruning(tmp_path):
    tdnn_path = tmp_path / "model" / "final.mdl"
    tdnn_path.parent.mkdir()
    tdnn_path.write_bytes(build_tdnn(hidden_dim=32, num_pdfs=24))
    if not (KO_CALIB / "wav.scp").is_file():
        pytest.fail(f"expected the calibration set at {KO_CALIB} (a copy of shared/ beside the repository)")
    calib = read_data_dir(KO_CALIB, transcripts=False)
    recording = sorted(calib.wav_scp)[3]
    scored = _data(tmp_path / "scored", {"my-utt": KO_CALIB / calib.wav_scp[recording]})
    settings = PointSettings(model=tdnn_path, method="wanda", threshold=0.3, layers="all", exclude=[], device="cpu",
                             histograms=False, eval={"name": "vosk", "data": str(scored)},
                             calib={"data": str(KO_CALIB)})
    with pytest.raises(EvaluationError, match=f"recording my-utt of eval.data is {recording} of calib.data; "
                                              "never score on the calibration audio"):
        run_point(settings, tmp_path / "run", evaluator=lambda: None)
    assert not (tmp_path / "run" / tdnn_path.name).exists()  # nothing was pruned or written


def test_the_sensitivity_task_refuses_to_score_its_points_on_its_calibration_audio(tmp_path):
    import os
    import subprocess
    import sys

    if not (KO_CALIB / "wav.scp").is_file():
        pytest.fail(f"expected the calibration set at {KO_CALIB} (a copy of shared/ beside the repository)")
    calib = read_data_dir(KO_CALIB, transcripts=False)
    recording = sorted(calib.wav_scp)[0]
    scored = _data(tmp_path / "scored", {"my-utt": KO_CALIB / calib.wav_scp[recording]})
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "kprune.sensitivity", "method=wanda", f"calib.data={KO_CALIB}",
                           "eval=vosk", f"eval.data={scored}", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"recording my-utt of eval.data is {recording} of calib.data; never score on the calibration audio" \
        in done.stderr
    assert not (tmp_path / "run" / "sensitivity.csv").exists()
