"""Online i-vector extraction against Kaldi's definitions, on a tiny extractor and on the real one."""

from __future__ import annotations

import numpy as np
import pytest

from kprune.errors import ConfigError, KaldiFormatError
from kprune.features.ivector import (DiagGmm, IvectorConfig, IvectorExtractor, IvectorStream, OnlineIvectorExtractor,
                                     linear_cgd, posterior_entries, read_diag_gmm)

rng = np.random.default_rng(3)
D, G, S = 2, 3, 4  # feature dim, Gaussians, i-vector dim


def tiny(config: IvectorConfig | None = None) -> OnlineIvectorExtractor:
    means = rng.standard_normal((G, D))
    inv_vars = np.full((G, D), 2.0)
    weights = np.full(G, 1.0 / G)
    gconsts = np.log(weights) - 0.5 * D * np.log(2 * np.pi) + (0.5 * np.log(inv_vars) - 0.5 * means ** 2 * inv_vars).sum(1)
    ubm = DiagGmm(gconsts, weights, means * inv_vars, inv_vars)
    M = rng.standard_normal((G, D, S))
    sigma_inv = np.stack([np.diag(rng.uniform(0.5, 2.0, D)) for _ in range(G)])
    extractor = IvectorExtractor(M, sigma_inv, prior_offset=10.0)
    # Upstream Kaldi's CMVN (no --cmn-min-energy): the statistics tests below write its math out.
    cfg = config or IvectorConfig(left_context=0, right_context=0, num_gselect=2, min_post=0.0, num_cg_iters=50,
                                  cmn_min_energy=None)
    global_cmvn = np.array([[4.0, -2.0, 2.0], [0.0, 0.0, 0.0]])  # mean (2, -1) over 2 frames
    return OnlineIvectorExtractor(ubm, extractor, np.eye(D), global_cmvn, cfg, "tiny")


def test_online_cmvn_window_and_global_top_up():
    cfg = IvectorConfig(left_context=0, right_context=0, cmn_window=3, global_frames=2)
    ex = tiny(cfg)
    x = rng.standard_normal((6, D)).astype(np.float32)
    out = ex.online_cmvn(x)
    for t in range(6):
        window = x[max(0, t - 2):t + 1].astype(np.float64)
        n = len(window)
        g = min(3 - n, 2)  # frames of global stats (mean (2, -1)) that top the window up to 3
        mean = (window.sum(0) + g * np.array([2.0, -1.0])) / (n + g)
        np.testing.assert_allclose(out[t], x[t] - mean, rtol=1e-5, atol=1e-6)


def reference_vosk_cmvn(ex: OnlineIvectorExtractor, x: np.ndarray) -> np.ndarray:
    """Vosk's OnlineCmvn::GetFrame, call by call, in the splicing's order: spliced normalised frames [T, (L+1+R)*D]."""
    cfg = ex.config
    T, D = x.shape
    g_sum, g_count = ex.global_cmvn[0, :D], ex.global_cmvn[0, D]
    stats_sum, stats_count = np.zeros(D), 0.0  # temp_stats_, zero at construction
    out = []
    for t in range(T):
        row = []
        for t2 in range(t - cfg.left_context, t + cfg.right_context + 1):
            f = min(max(t2, 0), T - 1)
            if x[f, 0] > cfg.cmn_min_energy:  # ComputeStatsForFrame: the window ending at f
                lo = max(0, f - cfg.cmn_window + 1)
                stats_sum, stats_count = x[lo:f + 1].astype(np.float64).sum(0), float(f + 1 - lo)
            if stats_count < cfg.cmn_window:  # SmoothOnlineCmvnStats, in place
                add = min(cfg.cmn_window - stats_count, cfg.global_frames)
                stats_sum, stats_count = stats_sum + add / g_count * g_sum, stats_count + add
            row.append(x[f] - stats_sum / stats_count)
        out.append(np.concatenate(row))
    return np.array(out)


@pytest.mark.parametrize("context", [0, 2])
def test_cmn_min_energy_keeps_the_previous_calls_statistics(context):
    cfg = IvectorConfig(left_context=context, right_context=context, cmn_window=5, global_frames=3,
                        cmn_min_energy=50.0)
    base = tiny()
    lda = rng.standard_normal((D, D * (2 * context + 1)))  # every spliced frame counts
    ex = OnlineIvectorExtractor(base.ubm, base.extractor, lda, base.global_cmvn, cfg)
    x = rng.standard_normal((12, D)).astype(np.float32)
    x[:, 0] += np.array([40, 45, 60, 70, 49, 48, 47, 80, 90, 30, 30, 65])  # c0 below 50: statistics not updated
    want = reference_vosk_cmvn(ex, x) @ ex.lda_linear.T
    np.testing.assert_allclose(ex.posterior_features(x), want, rtol=1e-5, atol=1e-5)
    # Without the threshold (upstream Kaldi) every frame is normalised with its own window.
    cfg.cmn_min_energy = None
    np.testing.assert_allclose(ex.posterior_features(x), ex.lda_features(ex.online_cmvn(x)), rtol=1e-6, atol=1e-6)
    assert not np.allclose(ex.posterior_features(x), want, atol=1e-3)


def test_posterior_entries_follow_vector_to_posterior_entry():
    # Kaldi prunes relative to the best Gaussian and to the sum of those it keeps, not to all Gaussians:
    # a second Gaussian at exp(-3) = 0.0498 of the best stays with min_post 0.025 (cutoff 0.025 * 1.0498),
    # however much mass Gaussians beyond the num_gselect best have.
    top = np.array([[0.0, -3.0, -4.0, -4.0, -4.0]])
    np.testing.assert_allclose(posterior_entries(top, np.array([0.025])),
                               [[1 / (1 + np.exp(-3)), np.exp(-3) / (1 + np.exp(-3)), 0, 0, 0]], rtol=1e-12)
    # A near tie with min_post 0.99 (a frame of weight 0.001): both pass the first cut, the second is
    # then below 0.99 times their sum, so only the best stays.
    np.testing.assert_array_equal(posterior_entries(np.array([[0.0, -0.005]]), np.array([0.99])), [[1.0, 0.0]])
    # min_post 0: the num_gselect best, normalised.
    p = posterior_entries(np.array([[0.0, -1.0, -2.0]]), np.array([0.0]))
    np.testing.assert_allclose(p, np.exp([[0.0, -1.0, -2.0]]) / np.exp([0.0, -1.0, -2.0]).sum(), rtol=1e-12)


def test_splice_pads_with_edge_frames():
    ex = tiny()
    lda = np.zeros((D, 3 * D))
    lda[0, 0] = lda[1, 2 * D] = 1.0  # dim 0 of the previous frame, dim 0 of the next one
    ex = OnlineIvectorExtractor(ex.ubm, ex.extractor, lda, ex.global_cmvn, IvectorConfig(left_context=1, right_context=1))
    x = np.arange(8, dtype=np.float32).reshape(4, D)
    out = ex.lda_features(x)
    np.testing.assert_array_equal(out[0], [x[0, 0], x[1, 0]])
    np.testing.assert_array_equal(out[3], [x[2, 0], x[3, 0]])


def expected_ivector(ex: OnlineIvectorExtractor, x: np.ndarray, weights=None) -> np.ndarray:
    """The i-vector from stats of all frames of x, solved exactly (Kaldi's math, written out)."""
    cfg, ie = ex.config, ex.extractor
    feats = x.astype(np.float64) @ ex.lda_linear.T + ex.lda_offset
    norm = ex.online_cmvn(x).astype(np.float64) @ ex.lda_linear.T + ex.lda_offset
    loglike = ex.ubm.gconsts + norm @ ex.ubm.means_invvars.T - 0.5 * (norm ** 2) @ ex.ubm.inv_vars.T
    post = np.exp(loglike - loglike.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    linear = np.zeros(S)
    linear[0] = ie.prior_offset
    quad = np.eye(S)
    for t in range(len(x)):
        w = 1.0 if weights is None else weights[t]
        top = np.argsort(-post[t])[:cfg.num_gselect]
        p = post[t, top] / post[t, top].sum() * cfg.posterior_scale * w
        for g, pg in zip(top, p):
            linear += pg * (ie.M[g].T @ ie.sigma_inv[g] @ feats[t])
            quad += pg * (ie.M[g].T @ ie.sigma_inv[g] @ ie.M[g])
    ivec = np.linalg.solve(quad, linear)
    ivec[0] -= ie.prior_offset
    return ivec


def test_ivector_statistics_match_the_extractor_math():
    ex = tiny()
    x = rng.standard_normal((20, D)).astype(np.float32)
    got = ex.ivectors_at(x, [4, 19])
    np.testing.assert_allclose(got[0], expected_ivector(ex, x[:5]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1], expected_ivector(ex, x), rtol=1e-4, atol=1e-4)
    online = ex.online_ivectors(x, 5)
    assert online.shape == (4, S)
    np.testing.assert_allclose(online[0], expected_ivector(ex, x[:1]), rtol=1e-4, atol=1e-4)


def test_frame_weights_scale_the_statistics():
    ex = tiny()
    x = rng.standard_normal((10, D)).astype(np.float32)
    w = np.array([1.0] * 5 + [0.0] * 5)
    np.testing.assert_allclose(ex.ivectors_at(x, [9], w)[0], ex.ivectors_at(x, [4])[0], rtol=1e-5, atol=1e-5)
    half = np.full(10, 0.5)
    np.testing.assert_allclose(ex.ivectors_at(x, [9], half)[0], expected_ivector(ex, x, half), rtol=1e-4, atol=1e-4)


def test_stream_counts_weights_only_up_to_the_requested_frame():
    ex = tiny()
    x = rng.standard_normal((10, D)).astype(np.float32)
    stream = IvectorStream(ex, x)
    stream.update_weights([(t, 1.0) for t in range(10)])
    first = stream.get(4)
    np.testing.assert_allclose(first, ex.ivectors_at(x, [4])[0], rtol=1e-5, atol=1e-5)
    stream.update_weights([(2, -1.0)])  # frame 2 becomes silence: counts only from the next update on
    np.testing.assert_array_equal(stream.get(4), first)  # no new frame, no update
    w = np.ones(10)
    w[2] = 0.0
    np.testing.assert_allclose(stream.get(9), expected_ivector(ex, x, w), rtol=1e-4, atol=1e-4)


def test_max_count_scales_the_prior_up():
    cfg = IvectorConfig(left_context=0, right_context=0, num_gselect=2, min_post=0.0, num_cg_iters=50,
                        posterior_scale=1.0, max_count=5.0)
    ex = tiny(cfg)
    x = rng.standard_normal((20, D)).astype(np.float32)
    # 20 frames of count 1 against max-count 5: the prior counts 20 / 5 = 4 times, i.e. stats scaled by 1/4.
    loose = tiny(IvectorConfig(left_context=0, right_context=0, num_gselect=2, min_post=0.0, num_cg_iters=50,
                               posterior_scale=0.25))
    loose.ubm, loose.extractor, loose.global_cmvn = ex.ubm, ex.extractor, ex.global_cmvn
    np.testing.assert_allclose(ex.ivectors_at(x, [19])[0], loose.ivectors_at(x, [19])[0], rtol=1e-4, atol=1e-4)


def test_linear_cgd():
    a = rng.standard_normal((6, 6))
    spd = a @ a.T + 6 * np.eye(6)
    b = rng.standard_normal(6)
    np.testing.assert_allclose(linear_cgd(spd, b, np.zeros(6), 20), np.linalg.solve(spd, b), rtol=1e-8, atol=1e-10)
    one = linear_cgd(spd, b, np.zeros(6), 1)  # one step of steepest descent from 0
    alpha = (b @ b) / (b @ spd @ b)
    np.testing.assert_allclose(one, alpha * b, rtol=1e-10)


def test_real_extractor(vosk_model_dir):
    ex = OnlineIvectorExtractor.load(vosk_model_dir / "ivector", max_count=100)
    assert ex.ubm.means_invvars.shape == (512, 40) and ex.extractor.M.shape == (512, 40, 100)
    assert (ex.config.left_context, ex.config.right_context, ex.config.max_count) == (3, 3, 100.0)
    assert ex.lda_linear.shape == (40, 280)  # final.mat is 40 x 281: an offset column
    x = rng.standard_normal((50, 40)).astype(np.float32) * 5
    ivecs = ex.online_ivectors(x)
    assert ivecs.shape == (5, 100) and np.isfinite(ivecs).all()
    silent = IvectorStream(ex, x)
    silent.update_weights([(t, 0.0) for t in range(50)])
    np.testing.assert_array_equal(silent.get(49), np.zeros(100))  # no statistics: the prior mean, offset removed


def test_missing_and_bad_files(tmp_path, vosk_model_dir):
    with pytest.raises(ConfigError, match="expected an i-vector directory"):
        OnlineIvectorExtractor.load(tmp_path / "nope")
    bad = tmp_path / "final.dubm"
    bad.write_bytes(b"\x00B<DiagGMM> <FOO> ")
    with pytest.raises(KaldiFormatError, match="final.dubm.*expected a DiagGMM field.*found '<FOO>'"):
        read_diag_gmm(bad)
    (tmp_path / "ivector_extractor.conf").write_text("--num-gselect=5\n--frobnicate=1\n")
    for name in ("final.dubm", "final.ie", "final.mat", "global_cmvn.stats"):
        (tmp_path / name).write_bytes((vosk_model_dir / "ivector" / name).read_bytes())
    with pytest.raises(ConfigError, match="unknown option --frobnicate"):
        OnlineIvectorExtractor.load(tmp_path)


def test_cmn_min_energy_option(tmp_path, vosk_model_dir):
    for name in ("final.dubm", "final.ie", "final.mat", "global_cmvn.stats", "splice.conf"):
        (tmp_path / name).write_bytes((vosk_model_dir / "ivector" / name).read_bytes())
    assert OnlineIvectorExtractor.load(tmp_path).config.cmn_min_energy == 50.0  # Vosk's default
    (tmp_path / "online_cmvn.conf").write_text("--cmn-min-energy=42.5\n")
    assert OnlineIvectorExtractor.load(tmp_path).config.cmn_min_energy == 42.5
