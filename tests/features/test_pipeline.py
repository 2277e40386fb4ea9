"""Calibration features: computed from unlabelled audio as eval=torch computes them, cached by content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kprune.features.pipeline import CalibrationData, FeaturePipeline, load_calibration_features
from kprune.errors import ConfigError

KO_CALIB = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ko-calib"


@pytest.fixture
def calib_cut(tmp_path: Path) -> Path:
    """Three seconds of two ko-calib clips (segments over the original WAVs; no text)."""
    if not (KO_CALIB / "wav.scp").is_file():
        pytest.fail(f"expected the calibration set at {KO_CALIB} (a copy of shared/ beside the repository)")
    lines = (KO_CALIB / "wav.scp").read_text().splitlines()[:2]
    root = tmp_path / "calib"
    root.mkdir()
    recs = [line.split()[0] for line in lines]
    (root / "wav.scp").write_text("".join(f"{r} {KO_CALIB / line.split()[1]}\n" for r, line in zip(recs, lines)))
    (root / "segments").write_text("".join(f"{r}-a {r} 0.0 1.5\n" for r in recs))
    return root


def test_calibration_features_from_unlabelled_audio_are_cached(calib_cut, real_model_path, vosk_model_dir,
                                                              tmp_path, monkeypatch):
    calib = CalibrationData.from_config({"data": str(calib_cut), "cache_dir": str(tmp_path / "cache")})
    features = load_calibration_features(calib, real_model_path, input_dim=40, ivector_dim=100)
    assert features.utts == [f"{line.split()[0]}" for line in (calib_cut / "segments").read_text().splitlines()]
    assert [f.shape for f in features.feats] == [(148, 40), (148, 40)]  # 1.5 s at 10 ms, 25 ms windows
    assert [iv.shape for iv in features.ivectors] == [(15, 100), (15, 100)]  # one every 10 frames
    assert features.per_frame_ivectors(0).shape == (148, 100)
    # The same computation as eval=torch's pipeline.
    pipeline = FeaturePipeline(vosk_model_dir, ivector_dim=100)
    np.testing.assert_array_equal(features.ivectors[1], pipeline.ivectors([features.feats[1]])[0])
    assert len(list((tmp_path / "cache" / "calib").glob("*.pt"))) == 1

    def fail(*a, **k):
        raise AssertionError("computed again")

    monkeypatch.setattr(FeaturePipeline, "feature_set", fail)
    again = load_calibration_features(calib, real_model_path, input_dim=40, ivector_dim=100)
    assert all((a == b).all() for a, b in zip(again.feats, features.feats))
    limited = load_calibration_features(CalibrationData.from_config(
        {"data": str(calib_cut), "cache_dir": str(tmp_path / "cache"), "max_seconds": 2.0}),
        real_model_path, input_dim=40, ivector_dim=100)
    assert [len(f) for f in limited.feats] == [148, 52] and len(limited.ivectors[1]) == 6
    # Other audio is another cache entry.
    (calib_cut / "segments").write_text((calib_cut / "segments").read_text().replace("1.5", "1.4"))
    with pytest.raises(AssertionError, match="computed again"):
        load_calibration_features(calib, real_model_path, input_dim=40, ivector_dim=100)


def test_calibration_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="calib: expected calib.data=DIR .* or calib.feats=feats.scp"):
        CalibrationData.from_config({"data": None})
    with pytest.raises(ConfigError, match="calib.max_seconds: expected a number of seconds > 0 or null, found -1"):
        CalibrationData.from_config({"data": "x", "max_seconds": -1})
    with pytest.raises(ConfigError, match="calib: unknown setting.*wav"):
        CalibrationData.from_config({"data": "x", "wav": "y"})


def test_calibration_data_needs_wav_scp_only(tmp_path, real_model_path):
    (tmp_path / "empty").mkdir()
    calib = CalibrationData.from_config({"data": str(tmp_path / "empty"), "cache_dir": str(tmp_path / "c")})
    from kprune.errors import EvaluationError

    with pytest.raises(EvaluationError, match=r"empty/wav.scp: missing; a Kaldi data directory needs wav.scp$"):
        load_calibration_features(calib, real_model_path, input_dim=40, ivector_dim=100)
