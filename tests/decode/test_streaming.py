"""The pieces of the Vosk replay: silence weights, the audio schedule, phones of transition ids."""

from __future__ import annotations

import numpy as np
import pytest

from kprune.errors import ConfigError
from kprune.kaldi.model_file import load_nnet_file
from kprune.decode.streaming import SilenceWeighting, StreamingOptions, VoskReplay, parse_phone_list, transition_id_to_phone

# Transition ids 1..4: phones 1, 1, 5, 5 (phone 1 is silence).
TID2PHONE = np.array([0, 1, 1, 5, 5])


def test_no_traceback_yet_gives_the_silence_weight():
    sw = SilenceWeighting(TID2PHONE, {1}, 0.001, fss=3)
    deltas = sw.delta_weights(num_frames_ready=7)  # 3 decoder frames cover input frames 0..8
    assert [f for f, _ in deltas] == list(range(9))
    assert all(w == pytest.approx(0.001) for _, w in deltas)


def test_traceback_sets_weights_and_later_changes_are_deltas():
    sw = SilenceWeighting(TID2PHONE, {1}, 0.001, fss=1)
    sw.set_traceback([1, 3, 3])  # silence, speech, speech
    first = dict(sw.delta_weights(num_frames_ready=5))  # frames 3, 4 have no traceback: copy frame 2
    assert first == pytest.approx({0: 0.001, 1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0})
    sw.set_traceback([1, 1, 3, 3, 3])  # frame 1 is now silence
    second = sw.delta_weights(num_frames_ready=5)
    assert second == [(1, pytest.approx(0.001 - 1.0)), (4, 0.0)]  # the last frame is always reported


def test_traceback_stops_at_the_token_stored_last_time():
    # Kaldi's ComputeCurrentTraceback walks back from the last frame and stops at the first frame whose arc
    # leaves the token stored there by the traceback that last wrote it: that frame keeps its transition id.
    sw = SilenceWeighting(TID2PHONE, {1}, 0.001, fss=1)
    start, a, b = ("start", 0), (11, 0.5), (12, 1.5)
    sw.set_traceback([1, 1, 3], [start, a, b])
    assert sw.tids == [1, 1, 3]
    sw.set_traceback([1, 3, 4, 4], [start, a, (13, 2.0), (14, 3.0)])  # frame 1 leaves the same token as before
    assert sw.tids == [1, 1, 4, 4]
    sw.set_traceback([1, 3, 4, 4], [start, (21, 0.7), (23, 2.0), (24, 3.0)])  # other tokens back to frame 1
    assert sw.tids == [1, 3, 4, 4]
    sw.set_traceback([3, 3, 4, 4], [("start", 1), (31, 0.2), (32, 2.0), (14, 3.0)])  # all tokens new
    assert sw.tids == [3, 3, 4, 4]
    sw.set_traceback([1, 3, 4, 4], [("start", 1), (31, 0.2), (32, 2.0), (14, 3.0 + 1e-5)])  # same last token
    assert sw.tids == [3, 3, 4, 4]


def test_inactive_without_silence_phones():
    assert not SilenceWeighting(TID2PHONE, set(), 0.001, 1).active
    assert not SilenceWeighting(TID2PHONE, {1}, 1.0, 1).active
    assert parse_phone_list("1:2:3") == parse_phone_list("1,2,3") == {1, 2, 3}
    with pytest.raises(ConfigError, match="phone ids like 1:2:3, found 'a:b'"):
        parse_phone_list("a:b")


def test_steps_follow_vosk_feeding():
    replay = VoskReplay.__new__(VoskReplay)
    replay.options = StreamingOptions(piece_samples=8000, step_samples=3200)
    steps = replay._steps(num_samples=17000, num_frames=104)
    # Pieces of 8000 samples split in 3200 + 3200 + 1600; frames = 1 + (n - 400) // 160.
    readies = [r for r, _ in steps]
    assert readies == [18, 38, 48, 68, 88, 98, 104, 104]
    assert [f for _, f in steps] == [False] * 7 + [True]  # FinalResult: input finished


def test_phones_of_the_real_transition_model(real_model_path):
    tm = load_nnet_file(real_model_path).transition_model
    table = transition_id_to_phone(tm)
    assert len(table) == len(tm.transition_id_to_pdf()) == 11887
    assert table[1] == table[2] == 1 and table.max() == 194


def test_silence_weighting_is_active_for_any_nonempty_phone_list():
    # OnlineSilenceWeighting::Active() looks at the list, not at whether its phones occur in the model.
    sw = SilenceWeighting(TID2PHONE, {9999}, 0.001, fss=3)
    assert sw.active
    deltas = sw.delta_weights(num_frames_ready=3)  # no traceback yet: the silence weight
    assert all(w == pytest.approx(0.001) for _, w in deltas)


def kaldi_ivector_chunk(fpc: int, left: int, right: int, num_chunks: int) -> dict[int, int]:
    """CreateLoopedComputationRequest: which chunk supplies the i-vector of each rounded time."""
    owner: dict[int, int] = {}
    for c in range(num_chunks):
        begin, end = (-left, fpc + right) if c == 0 else (c * fpc + right, (c + 1) * fpc + right)
        for t in range(begin, end):
            owner.setdefault(t - t % fpc, c)
    return owner


@pytest.mark.parametrize("fpc,right", [(24, 34), (21, 34), (9, 4)])
def test_ivector_chunk_follows_the_looped_computation(fpc, right):
    replay = VoskReplay.__new__(VoskReplay)
    replay.fpc, replay.input_right_context = fpc, right
    owner = kaldi_ivector_chunk(fpc, 34, right, num_chunks=40)
    times = np.arange(-34, 30 * fpc)
    # A reader at time t reads Round(ivector, fpc): the i-vector of t - t mod fpc, from the chunk that supplied it.
    assert replay.ivector_chunk(times).tolist() == [owner[t - t % fpc] for t in times]


def test_silence_weights_are_given_for_the_ivector_frames():
    from types import SimpleNamespace

    seen = []
    replay = VoskReplay.__new__(VoskReplay)
    replay.options = StreamingOptions(silence_phones=frozenset({1}))
    replay.ivector_splice_right, replay.fpc, replay.rows_per_chunk = 3, 24, 8
    replay.model = SimpleNamespace(right_context=34)
    u = SimpleNamespace(weighting=SimpleNamespace(active=True, set_traceback=lambda tids, keys: None,
                                                  delta_weights=lambda n: seen.append(n) or []),
                        stream=SimpleNamespace(partial_path=lambda: ([], [])),
                        ivectors=SimpleNamespace(update_weights=lambda d: None), total_rows=0, rows_done=0)
    replay._step(u, 38, False)
    replay._step(u, 3, False)  # nothing the i-vector can read yet: no weights
    replay._step(u, 100, True)
    # Recognizer::UpdateSilenceWeights passes the pipeline's NumFramesReady(): the MFCCs appended to the
    # i-vector, which waits for the splicing's right context until the input ends.
    assert seen == [35, 100]
