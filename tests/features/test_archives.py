"""Kaldi feature and online i-vector archives read with kaldiio."""

from __future__ import annotations

import numpy as np
import pytest

from kprune.errors import ConfigError
from kprune.features.archives import load_feature_archives, read_ivector_period


@pytest.fixture
def archives(tmp_path):
    import kaldiio

    rng = np.random.default_rng(0)
    feats = {"u1": rng.standard_normal((25, 4)).astype(np.float32), "u2": rng.standard_normal((7, 4)).astype(np.float32)}
    ivecs = {"u1": rng.standard_normal((3, 2)).astype(np.float32), "u2": rng.standard_normal((1, 2)).astype(np.float32)}
    (tmp_path / "ivec").mkdir()
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/feats.ark,{tmp_path}/feats.scp") as w:
        for k, v in feats.items():
            w(k, v)
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/ivec/iv.ark,{tmp_path}/ivec/ivector_online.scp") as w:
        for k, v in ivecs.items():
            w(k, v)
    (tmp_path / "ivec" / "ivector_period").write_text("10\n")
    return tmp_path, feats, ivecs


def test_features_and_online_ivectors(archives):
    d, feats, ivecs = archives
    out = load_feature_archives(d / "feats.scp", d / "ivec" / "ivector_online.scp")
    assert list(out) == ["u1", "u2"]
    for utt in out:
        np.testing.assert_array_equal(out[utt].feats, feats[utt])
        np.testing.assert_array_equal(out[utt].ivectors, ivecs[utt])
        assert out[utt].ivector_period == 10
    assert load_feature_archives(d / "feats.scp")["u2"].ivectors is None


def test_missing_pieces(archives):
    d, _, _ = archives
    (d / "ivec" / "ivector_period").unlink()
    with pytest.raises(ConfigError, match="ivector_period: missing"):
        load_feature_archives(d / "feats.scp", d / "ivec" / "ivector_online.scp")
    assert load_feature_archives(d / "feats.scp", d / "ivec" / "ivector_online.scp", 5)["u1"].ivector_period == 5
    (d / "ivec" / "ivector_period").write_text("ten")
    with pytest.raises(ConfigError, match="expected a number of frames, found 'ten'"):
        read_ivector_period(d / "ivec")
    (d / "ivec" / "ivector_online.scp").write_text((d / "ivec" / "ivector_online.scp").read_text().splitlines()[0] + "\n")
    with pytest.raises(ConfigError, match="no i-vectors for utterance u2"):
        load_feature_archives(d / "feats.scp", d / "ivec" / "ivector_online.scp", 10)
    with pytest.raises(ConfigError, match="no such feature list"):
        load_feature_archives(d / "nope.scp")
