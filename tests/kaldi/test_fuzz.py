"""Fuzz: seeded structural mutations of synthetic models and the real one; none may load.

The mutations are in ``tests/kaldi/fuzz.py`` (``python tests/kaldi/fuzz.py [final.mdl]`` prints the counts).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import fuzz  # noqa: E402

from kprune.kaldi.build import build_all_types, build_tdnn  # noqa: E402


@pytest.mark.parametrize("name, make, binary", [
    ("all types, binary", lambda: build_all_types(unknown=False), True),
    ("all types, text", lambda: build_all_types(binary=False, unknown=False), False),
    ("tdnn .mdl", lambda: build_tdnn(hidden_dim=32, num_pdfs=24), True),
    ("tdnn .raw, text", lambda: build_tdnn(feat_dim=8, hidden_dim=12, num_pdfs=10, raw=True, binary=False), False),
])
def test_no_structural_mutation_of_a_synthetic_model_loads(name, make, binary):
    out = fuzz.run(make(), binary)
    assert len(out["refused"]) > 500
    assert out["crashed"] == [] and out["loaded"] == [], (out["loaded"] + out["crashed"])[:20]


def test_no_structural_mutation_of_the_real_model_loads(real_model_bytes):
    out = fuzz.run(real_model_bytes, True, limit=400, rng=np.random.default_rng(9))
    assert len(out["refused"]) == 400
    assert out["crashed"] == [] and out["loaded"] == [], (out["loaded"] + out["crashed"])[:20]
