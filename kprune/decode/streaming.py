"""Online decoding as Vosk does it, replayed with the torch network.

Vosk (``KaldiRecognizer``, vosk-api ``src/recognizer.cc``) decodes audio as it
arrives, and that changes what the network sees: the i-vector of each chunk
of the looped computation is the online i-vector of the most recent frame when
the chunk is computed, and frames the decoder currently takes for silence count
``silence_weight`` (0.001) in the i-vector statistics.  This module replays
that schedule for whole utterances, so that the torch path decodes what Vosk
would:

* audio arrives in pieces of ``piece_samples`` (what the caller hands to
  ``AcceptWaveform``), which Vosk splits into 0.2 s steps; after each step it
  updates the silence weights from the decoder's current best path
  (``Recognizer::UpdateSilenceWeights``: ``OnlineSilenceWeighting`` given the
  pipeline's ``NumFramesReady()``, which is the i-vector's, 3 frames behind the
  MFCCs until the input ends) and decodes every frame that is ready;
* the network runs in chunks of ``frames_per_chunk`` frames (the looped
  decodable's, rounded up to a multiple of the frame subsampling factor; Vosk
  0.3.45's default is 24, upstream Kaldi's 20); a chunk is computed once
  ``(c + 1) * frames_per_chunk + right_context`` feature frames are ready, with
  the i-vector of frame ``ready - 1`` capped by the frames the i-vector's
  splicing waits for (``DecodableNnetLoopedOnlineBase::AdvanceChunk``); at the
  end of the input the rest is computed with the final i-vector;
* in the looped computation (``DecodableNnetSimpleLoopedInfo::Init``) the
  network's ``ReplaceIndex(ivector, t, 0)`` becomes ``Round(ivector,
  frames_per_chunk)``, and each chunk supplies the i-vectors of the rounded
  times among its own input frames (``CreateLoopedComputationRequest``): a
  layer reading the i-vector at time t sees the i-vector of the chunk whose
  input frames contain ``t - t mod frames_per_chunk``.  Here the network reads
  a per-frame i-vector that follows the same rule (:meth:`VoskReplay.ivector_chunk`).

What differs from Vosk: the decoder is ``FasterDecoder`` over a static graph,
where Vosk searches the lookahead composition of ``HCLr.fst`` and ``Gr.fst``
with its lattice decoder; complete paths cost the same, but the best partial
path (what silence weighting reads) can differ, and with it the i-vectors.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from kprune.errors import ConfigError
from kprune.features.ivector import IvectorStream, OnlineIvectorExtractor
from kprune.kaldi.transition import TransitionModel
from kprune.nnet.compute import AcousticModel, Segment
from kprune.decode.decoder import DecodeResult, DecodeStream, GraphDecoder

log = logging.getLogger(__name__)


def transition_id_to_phone(tm: TransitionModel) -> np.ndarray:
    """``table[tid]`` is the phone of transition id ``tid`` (entry 0 unused)."""
    out = [0]
    for phone, hmm_state, _, _ in tm.tuples.tolist():
        out.extend([phone] * len(tm.entries[tm.phone2idx[phone]][hmm_state].transitions))
    return np.array(out, dtype=np.int64)


def parse_phone_list(text: str) -> set[int]:
    """``1:2:3`` or ``1,2,3`` (Kaldi's silence-phone lists)."""
    try:
        return {int(p) for p in text.replace(",", ":").split(":") if p.strip()}
    except ValueError:
        raise ConfigError(f"expected a list of phone ids like 1:2:3, found {text!r}") from None


@dataclass
class StreamingOptions:
    """How audio reaches the recogniser and what Vosk's configuration sets."""

    piece_samples: int = 8000  # what one AcceptWaveform call gets (0.5 s at 16 kHz)
    step_samples: int = 3200  # Vosk splits each call in 0.2 s steps
    frames_per_chunk: int = 24  # --frames-per-chunk of the looped decodable (Vosk 0.3.45's default)
    silence_weight: float = 1e-3
    silence_phones: frozenset[int] = frozenset()
    ivector_splice_right: int | None = None  # frames the i-vector's splicing waits for (None: splice.conf's)
    frame_length_samples: int = 400
    frame_shift_samples: int = 160


class SilenceWeighting:
    """Kaldi's ``OnlineSilenceWeighting`` (frame subsampling ``fss``, no max state duration)."""

    def __init__(self, tid2phone: np.ndarray, silence_phones: set[int] | frozenset[int], weight: float, fss: int):
        self.tid2phone = tid2phone
        self.silence = np.zeros(int(tid2phone.max()) + 1, dtype=bool)
        self.num_silence_phones = len(set(silence_phones))
        for p in silence_phones:
            if 0 <= p < len(self.silence):
                self.silence[p] = True
        self.weight = weight
        self.fss = fss
        self.tids: list[int] = []  # per decoder frame; -1 = no traceback yet
        self.current: list[float] = []
        self._keys: list[tuple | None] = []  # per decoder frame: the token its arc left from, when last written

    @property
    def active(self) -> bool:
        # OnlineSilenceWeighting::Active(): a nonempty list, whether or not its phones occur.
        return self.weight != 1.0 and self.num_silence_phones > 0

    def set_traceback(self, tids: Sequence[int], keys: Sequence[tuple] | None = None) -> None:
        """The decoder's current best path (a transition id per decoder frame).

        With ``keys`` (:meth:`DecodeStream.partial_path`), as Kaldi's
        ``ComputeCurrentTraceback`` does: it walks back from the last frame and
        stops at the first frame whose arc leaves the token that the traceback
        which last wrote that frame stored for it.  That frame keeps its old
        transition id, even where the new path takes another arc from the same
        token.
        """
        if len(self.tids) < len(tids):
            grow = len(tids) - len(self.tids)
            self.tids.extend([-1] * grow)
            self.current.extend([0.0] * grow)
        if keys is None:
            self.tids[:len(tids)] = list(tids)
            return
        if len(self._keys) < len(tids):
            self._keys.extend([None] * (len(tids) - len(self._keys)))
        for frame in range(len(tids) - 1, -1, -1):
            if _same_token(self._keys[frame], keys[frame]):
                break
            self._keys[frame] = keys[frame]
            self.tids[frame] = int(tids[frame])

    def delta_weights(self, num_frames_ready: int) -> list[tuple[int, float]]:
        """``GetDeltaWeights``: weight changes for input frames, as (frame, delta)."""
        fss = self.fss
        ready = (num_frames_ready + fss - 1) // fss
        prev = len(self.tids)
        if len(self.tids) < ready:
            self.tids.extend([-1] * (ready - len(self.tids)))
            self.current.extend([0.0] * (ready - len(self.current)))
        begin = max(0, prev - 100)
        n_out = len(self.tids) - begin
        if n_out <= 0:
            return []
        weights = [1.0] * n_out
        if self.tids[begin] == -1:
            w = self.weight if begin == 0 else self.current[begin - 1]
            weights = [w] * n_out
        else:
            for i in range(n_out):
                tid = self.tids[begin + i]
                if tid == -1:
                    weights[i] = weights[i - 1]
                elif self.silence[self.tid2phone[tid]]:
                    weights[i] = self.weight
        deltas = []
        for i in range(n_out):
            frame = begin + i
            diff = weights[i] - self.current[frame]
            self.current[frame] = weights[i]
            if diff != 0.0 or i + 1 == n_out:
                deltas.extend((frame * fss + j, diff) for j in range(fss))
        return deltas


def _same_token(old: tuple | None, new: tuple) -> bool:
    """Whether two keys of :meth:`DecodeStream.partial_path` name the same token (costs up to rounding)."""
    if old is None or old[0] != new[0]:
        return False
    if old[0] == "start":
        return old[1] == new[1]
    return abs(old[1] - new[1]) < 1e-3


@dataclass
class _Utterance:
    index: int
    feats: torch.Tensor
    ivectors: IvectorStream
    weighting: SilenceWeighting
    stream: DecodeStream
    steps: list[tuple[int, bool]]
    total_rows: int
    chunk_ivectors: list[np.ndarray] = field(default_factory=list)
    rows_done: int = 0


class VoskReplay:
    """Decodes utterances as Vosk's recogniser would, with the torch network (see the module doc)."""

    def __init__(self, model: AcousticModel, extractor: OnlineIvectorExtractor, decoder: GraphDecoder,
                 options: StreamingOptions | None = None):
        if model.ivector_dim == 0:
            raise ConfigError("the Vosk replay needs a model with an ivector input")
        if extractor.ivector_dim != model.ivector_dim:
            raise ConfigError(f"{extractor.source}: the extractor gives {extractor.ivector_dim}-dim i-vectors, but the "
                              f"model reads {model.ivector_dim}")
        self.model, self.extractor, self.decoder = model, extractor, decoder
        self.options = options or StreamingOptions()
        fss = model.frame_subsampling_factor
        self.fpc = fss * math.ceil(self.options.frames_per_chunk / fss)
        self.rows_per_chunk = self.fpc // fss
        # Kaldi's looped decodable (DecodableNnetSimpleLoopedInfo::Init) rewrites the network's
        # ReplaceIndex(ivector, t, 0) as Round(ivector, frames_per_chunk): a reader at time t reads
        # the i-vector of time T = t - t mod fpc, and CreateLoopedComputationRequest supplies the
        # i-vector of time T with the first chunk whose input frames contain T (chunk 0's run from
        # -left_context to fpc + right_context, chunk c's from c * fpc + right_context on).
        self.input_right_context = model.right_context
        self.ivector_splice_right = (extractor.config.right_context if self.options.ivector_splice_right is None
                                     else self.options.ivector_splice_right)
        self.tid2phone = transition_id_to_phone(model.file.transition_model)

    def ivector_chunk(self, times: np.ndarray) -> np.ndarray:
        """The chunk whose i-vector a reader at each of ``times`` sees in Kaldi's looped computation."""
        rounded = np.floor_divide(times, self.fpc) * self.fpc
        return np.maximum(0, np.floor_divide(rounded - self.input_right_context, self.fpc))

    def _steps(self, num_samples: int, num_frames: int) -> list[tuple[int, bool]]:
        o = self.options
        steps = []
        for piece in range(0, num_samples, o.piece_samples):
            end = min(piece + o.piece_samples, num_samples)
            for s in range(piece, end, o.step_samples):
                n = min(s + o.step_samples, end)
                ready = 0 if n < o.frame_length_samples else 1 + (n - o.frame_length_samples) // o.frame_shift_samples
                steps.append((min(ready, num_frames), False))
        steps.append((num_frames, True))
        return steps

    def decode(self, feats: Sequence[np.ndarray | torch.Tensor], num_samples: Sequence[int]) -> list[DecodeResult]:
        """Decode each utterance (MFCCs and its number of audio samples) as Vosk would."""
        results = []
        for i, (f, n) in enumerate(zip(feats, num_samples)):
            f = torch.as_tensor(np.asarray(f, dtype=np.float32)) if not isinstance(f, torch.Tensor) else f.float()
            u = _Utterance(
                i, f, IvectorStream(self.extractor, f.numpy()),
                SilenceWeighting(self.tid2phone, self.options.silence_phones, self.options.silence_weight,
                                 self.model.frame_subsampling_factor),
                self.decoder.stream(), self._steps(int(n), len(f)), self.model.num_output_frames(len(f)))
            cache: dict = {}  # the looped computation: each layer's frames are computed once
            for ready, finished in u.steps:
                seg = self._step(u, ready, finished)
                if seg is not None:
                    rows = self.model.compute_cached(seg, cache)
                    u.stream.advance(rows.numpy())
                    u.rows_done += len(rows)
            results.append(u.stream.finish())
        return results

    def _step(self, u: _Utterance, ready: int, finished: bool) -> Segment | None:
        """One Vosk step: silence weights, then the chunks that became computable (as a segment)."""
        # What the i-vector can read: the splicing before its LDA waits for its right context
        # until the input ends (OnlineSpliceFrames::NumFramesReady).
        ivec_ready = ready if finished else max(0, ready - self.ivector_splice_right)
        # Recognizer::UpdateSilenceWeights gives GetDeltaWeights the pipeline's NumFramesReady(), which is
        # the input features appended to the i-vector (OnlineAppendFeature): the i-vector's frames.
        if self.options.silence_phones and u.weighting.active and ivec_ready > 0:
            u.weighting.set_traceback(*u.stream.partial_path())
            u.ivectors.update_weights(u.weighting.delta_weights(ivec_ready))
        if finished:
            rows_ready = u.total_rows
        else:
            chunks = max(0, ready - self.model.right_context) // self.fpc
            rows_ready = min(chunks * self.rows_per_chunk, u.total_rows)
        if rows_ready <= u.rows_done:
            return None
        first = len(u.chunk_ivectors)
        last = math.ceil(rows_ready / self.rows_per_chunk)
        for _ in range(first, last):
            if ivec_ready > 0:
                u.chunk_ivectors.append(u.ivectors.get(min(ready - 1, ivec_ready - 1)))
            else:
                u.chunk_ivectors.append(np.zeros(self.model.ivector_dim, dtype=np.float32))
        # A per-frame i-vector for every time the new rows read (see __init__).
        start_time = -self.model.left_context
        end_time = (rows_ready - 1) * self.model.frame_subsampling_factor + self.model.right_context
        times = np.arange(start_time, end_time + 1)
        chunk = np.clip(self.ivector_chunk(times), 0, len(u.chunk_ivectors) - 1)
        table = np.stack(u.chunk_ivectors)[chunk]
        return Segment(u.feats, u.rows_done, rows_ready - u.rows_done, table, ivector_start=start_time, utt=u.index)
