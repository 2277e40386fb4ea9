"""Fixtures of the evaluation tests: small data directories in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval_helpers import make_data_dir, tone


@pytest.fixture
def tone_data_dir(tmp_path: Path) -> Path:
    """Two utterances of tones at 16 kHz."""
    return make_data_dir(
        tmp_path / "data",
        {"u1": (tone(0.5, 16000), 16000, "가 나"), "u2": (tone(0.25, 16000, 880.0), 16000, "다")},
    )
