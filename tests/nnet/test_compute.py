"""Whole utterances as Kaldi's simple decodable computes them: padding, subsampling, priors, chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kprune.errors import ConfigError
from kprune.kaldi.build import build_tdnn
from kprune.kaldi.schema import VEC
from kprune.kaldi.model_file import NnetFile, read_nnet_file
from kprune.device import resolve_device
from kprune.nnet.compute import AcousticModel, Segment
from nnet_helpers import field, net

ROWS = np.arange(1, 13, dtype=np.float32)


def window_model(priors=None, **kwargs) -> AcousticModel:
    """output(t) = [x(t-1), x(t), x(t+1), ivector] with 1-dim x: shows which frames and i-vector each row read."""
    lines = ["input-node name=input dim=1", "input-node name=ivector dim=1",
             "output-node name=output input=Append(Offset(input, -1), input, Offset(input, 1), "
             "ReplaceIndex(ivector, t, 0))"]
    pri = field("<Priors>", VEC, [] if priors is None else priors)
    return AcousticModel(NnetFile(None, True, bytearray(), net(lines, []), priors=pri), **kwargs)


def feats(n: int) -> torch.Tensor:
    return torch.from_numpy(ROWS[:n].reshape(-1, 1).copy())


def test_edges_repeat_the_first_and_last_frame():
    am = window_model(device="cpu")
    assert (am.left_context, am.right_context) == (1, 1)
    out = am.compute([feats(4)], [np.array([7.0])])[0].numpy()
    np.testing.assert_array_equal(out, [[1, 1, 2, 7], [1, 2, 3, 7], [2, 3, 4, 7], [3, 4, 4, 7]])


def test_frame_subsampling_gives_every_fth_frame():
    full = window_model(device="cpu").compute([feats(7)], [np.zeros(1)])[0]
    sub = window_model(device="cpu", frame_subsampling_factor=3).compute([feats(7)], [np.zeros(1)])[0]
    assert sub.shape == (3, 4)  # ceil(7 / 3)
    np.testing.assert_array_equal(sub.numpy(), full.numpy()[[0, 3, 6]])


def test_priors_are_subtracted_and_scaled():
    priors = np.array([0.5, 0.25, 0.125, 1.0], dtype=np.float32)
    am = window_model(priors=priors, acoustic_scale=0.1, device="cpu")
    plain = window_model(device="cpu").compute([feats(3)], [np.ones(1)])[0].numpy()
    out = am.compute([feats(3)], [np.ones(1)])[0].numpy()
    np.testing.assert_allclose(out, 0.1 * (plain - np.log(priors)), rtol=1e-6)
    raw = window_model(priors=priors, device="cpu", use_priors=False)
    assert raw.log_priors is None


def test_online_ivectors_are_chosen_per_chunk_as_kaldi_does():
    am = window_model(device="cpu")
    online = np.arange(6, dtype=np.float32).reshape(-1, 1)  # row k = i-vector of frame 2k
    out = am.compute([feats(12)], [online], online_ivector_period=2, frames_per_chunk=4)[0].numpy()
    # chunk [0,3]: frame 0 + 3 // 2 = 1 -> row 0; [4,7]: 5 -> row 2; [8,11]: 9 -> row 4
    np.testing.assert_array_equal(out[:, 3], [0] * 4 + [2] * 4 + [4] * 4)
    np.testing.assert_array_equal(out[:, 1], ROWS[:12])  # chunks still read their neighbours' frames


def test_per_frame_ivectors_are_read_at_each_frame():
    am = window_model(device="cpu")
    per_frame = np.arange(5, dtype=np.float32).reshape(-1, 1) * 10
    out = am.compute([feats(5)], [per_frame])[0].numpy()
    np.testing.assert_array_equal(out[:, 3], [0, 10, 20, 30, 40])
    seg = Segment(feats(5), 1, 3, np.array([[1.0], [2.0], [3.0]], np.float32), ivector_start=2)
    rows = am.compute_segments([seg])[0].numpy()
    np.testing.assert_array_equal(rows[:, 3], [1, 1, 2])  # times 1, 2, 3; time 1 clamps to row 0


def test_chunking_and_batching_do_not_change_outputs():
    am = AcousticModel(read_nnet_file(bytearray(build_tdnn(hidden_dim=16, num_pdfs=10))), device="cpu")
    gen = torch.Generator().manual_seed(0)
    utts = [torch.randn(n, 40, generator=gen) for n in (230, 57, 3)]
    whole = [am.compute([u])[0] for u in utts]
    batched = am.compute(utts)
    chunked = am.compute(utts, max_chunk_frames=16, batch_frames=150)
    for w, b, c in zip(whole, batched, chunked):
        assert w.shape == b.shape == c.shape
        torch.testing.assert_close(b, w, rtol=0, atol=1e-5)
        torch.testing.assert_close(c, w, rtol=0, atol=1e-5)
    assert torch.equal(chunked[0], batched[0])  # same rows, same matmul shapes per row: bit-identical here


def test_input_errors_are_clear():
    am = window_model(device="cpu")
    with pytest.raises(ConfigError, match=r"utterance 0: expected features \[frames > 0, 1\].*\[4, 2\]"):
        am.compute([torch.zeros(4, 2)], [np.zeros(1)])
    with pytest.raises(ConfigError, match="reads a 1-dim ivector input; none was given"):
        am.compute([feats(4)])
    with pytest.raises(ConfigError, match="one i-vector per frame \\(4 rows\\) or online_ivector_period"):
        am.compute([feats(4)], [np.zeros((3, 1))])
    with pytest.raises(ConfigError, match="cover 4 frames, but the utterance has 120"):
        am.compute([torch.zeros(120, 1)], [np.zeros((2, 1))], online_ivector_period=2)
    tdnn = AcousticModel(read_nnet_file(bytearray(build_tdnn(hidden_dim=8, num_pdfs=4))), device="cpu")
    with pytest.raises(ConfigError, match="no ivector input"):
        tdnn.compute([torch.zeros(5, 40)], [np.zeros(3)])
    with pytest.raises(ConfigError, match="frame_subsampling_factor"):
        window_model(frame_subsampling_factor=0)


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    data = bytearray(build_tdnn(hidden_dim=64, num_pdfs=32))
    utts = [torch.randn(300, 40), torch.randn(77, 40)]
    cpu = AcousticModel(read_nnet_file(data), device="cpu").compute(utts)
    gpu = AcousticModel(read_nnet_file(bytearray(data)), device="cuda").compute(utts)
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_real_model_reads_its_model_conf(real_model_path):
    am = AcousticModel.load(real_model_path, device="cpu")
    assert (am.frame_subsampling_factor, am.acoustic_scale) == (3, 1.0)
    assert (am.left_context, am.right_context) == (34, 34)
    assert (am.input_dim, am.ivector_dim, am.num_pdfs) == (40, 100, 2616)
    assert am.log_priors is None  # chain model: no priors
    assert am.ivector_right_context == 33  # lda reads Offset(input, 1)
    out = am.compute([torch.zeros(10, 40)], [np.zeros(100, np.float32)])[0]
    assert out.shape == (4, 2616) and torch.isfinite(out).all()
    assert AcousticModel.load(real_model_path, frame_subsampling_factor=1, device="cpu").frame_subsampling_factor == 1
