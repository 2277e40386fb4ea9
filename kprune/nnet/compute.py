"""Whole utterances through an nnet3 acoustic model, as Kaldi's simple decodable does.

:class:`AcousticModel` turns feature matrices (and i-vectors) into the
matrices a decoder reads (``src/nnet3/nnet-am-decodable-simple.cc``,
``shared/docs/kaldi-nnet3-format.md`` section 7):

* the edges are padded by repeating the first and the last frame, so every
  frame has the model's left and right context;
* outputs are computed at ``t = 0, f, 2f, ...`` for a frame subsampling factor
  ``f`` (chain models: 3, from Vosk's ``conf/model.conf`` or given); an
  utterance of T frames gives ``ceil(T / f)`` rows;
* the log priors are subtracted when the model has priors, and the result is
  multiplied by the acoustic scale.

Utterances are split into jobs (a whole utterance, or a piece of at most
``max_chunk_frames`` output frames of a long one; for online i-vectors a piece
of ``frames_per_chunk`` frames, each with its own i-vector, as Kaldi does).
Jobs of similar length are batched: each job is padded at the end to the
longest of its batch by repeating its utterance's last frame, which changes
none of its own outputs.  A piece of a long utterance reads the frames around
it from the utterance itself, so chunking gives the outputs of the whole.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from kprune.device import resolve_device
from kprune.errors import ConfigError, KaldiFormatError
from kprune.kaldi.model_file import NnetFile, load_nnet_file
from kprune.features.conf import read_kaldi_conf
from kprune.nnet.graph import NnetGraph

log = logging.getLogger(__name__)

#: Kaldi's default --frames-per-chunk for the simple decodable (with online i-vectors).
DEFAULT_FRAMES_PER_CHUNK = 50
#: Input frames per batch when not given: on a CPU, activations of a few thousand
#: frames stay in cache (8 x 1000 frames ran 15% slower than 1 x 1000 on 2 cores);
#: a GPU wants large batches.
DEFAULT_BATCH_FRAMES = {"cpu": 4000, "cuda": 40000}


def _conf_number(conf: dict[str, str], key: str, kind: type, where: str):
    try:
        return kind(conf[key])
    except ValueError:
        raise ConfigError(f"{where}: --{key}={conf[key]!r} is not a{'n integer' if kind is int else ' number'}") from None


@dataclass
class Segment:
    """Output rows ``[start, start + count)`` of one utterance, with the i-vector they read.

    ``ivector`` is None (no i-vector input), ``[D]`` (one i-vector for the
    whole segment) or ``[N, D]``: a value for every time, row i for time
    ``ivector_start + i`` (times outside are clamped), read at each frame.
    """

    feats: torch.Tensor
    start: int = 0
    count: int | None = None
    ivector: np.ndarray | None = None
    ivector_start: int = 0
    utt: int = 0

    @property
    def per_frame(self) -> bool:
        return self.ivector is not None and self.ivector.ndim == 2


class AcousticModel:
    """An nnet3 acoustic model that gives decoder log-likelihoods in torch.

    ``frame_subsampling_factor`` and ``acoustic_scale`` are Kaldi's options of
    the same names (chain models: 3 and 1.0).  ``device`` is ``auto``, ``cpu``,
    ``cuda`` or ``cuda:N``.  ``use_priors=False`` skips the prior subtraction
    (the raw network output).
    """

    def __init__(self, nnet_file: NnetFile, *, frame_subsampling_factor: int = 1, acoustic_scale: float = 1.0,
                 device: str | torch.device | None = "auto", output: str = "output", use_priors: bool = True):
        if isinstance(frame_subsampling_factor, bool) or not isinstance(frame_subsampling_factor, int) \
                or frame_subsampling_factor < 1:
            raise ConfigError(f"frame_subsampling_factor: expected an integer >= 1, found {frame_subsampling_factor!r}")
        self.file = nnet_file
        self.device = resolve_device(device)
        self.frame_subsampling_factor = frame_subsampling_factor
        self.acoustic_scale = float(acoustic_scale)
        self.output = output
        self.graph = NnetGraph(nnet_file.nnet, (output,), device=self.device)
        self._frame_graph: NnetGraph | None = None
        if "input" not in self.graph.input_dims:
            raise KaldiFormatError(nnet_file.path, "nnet3 config",
                                   f"expected an input-node named 'input' feeding {output}, found inputs "
                                   f"{sorted(self.graph.input_dims)}")
        self.input_dim = self.graph.input_dims["input"]
        others = [n for n in self.graph.input_dims if n != "input"]
        if len(others) > 1 or (others and others[0] != "ivector"):
            raise KaldiFormatError(nnet_file.path, "nnet3 config",
                                   "expected inputs 'input' and optionally 'ivector', "
                                   f"found {sorted(self.graph.input_dims)}")
        self.ivector_dim = self.graph.input_dims.get("ivector", 0)
        self.num_pdfs = self.graph.output_dims[output]
        self.left_context, self.right_context = self.graph.left_context, self.graph.right_context
        self.log_priors: torch.Tensor | None = None
        priors = nnet_file.priors.value if nnet_file.priors is not None else None
        if use_priors and priors is not None and len(priors):
            if len(priors) != self.num_pdfs:
                raise KaldiFormatError(nnet_file.path, "<Priors>",
                                       f"expected priors of dim {self.num_pdfs} (the output dim), found {len(priors)}")
            with np.errstate(divide="ignore"):
                self.log_priors = torch.from_numpy(np.log(np.asarray(priors, dtype=np.float32))).to(self.device)

    @classmethod
    def load(cls, path: str | os.PathLike, *, model_conf: str | os.PathLike | None = None,
             frame_subsampling_factor: int | None = None, acoustic_scale: float | None = None,
             device: str | torch.device | None = "auto", output: str = "output") -> AcousticModel:
        """Read ``path`` (``final.mdl`` or ``.raw``) and the options of a Vosk ``conf/model.conf``.

        ``model_conf`` defaults to ``<dir>/conf/model.conf`` for ``<dir>/am/final.mdl``
        when it exists; explicit arguments win over the file.
        """
        path = Path(path)
        fsf, scale = decoding_options(path, model_conf)
        fsf = frame_subsampling_factor if frame_subsampling_factor is not None else fsf
        scale = acoustic_scale if acoustic_scale is not None else scale
        return cls(load_nnet_file(path), frame_subsampling_factor=fsf, acoustic_scale=scale, device=device,
                   output=output)

    # ------------------------------------------------------------------ public API

    def num_output_frames(self, num_frames: int) -> int:
        """Rows of the output for an utterance of ``num_frames`` input frames."""
        return -(-num_frames // self.frame_subsampling_factor)

    def compute(self, feats: Sequence, ivectors: Sequence | None = None, *,
                online_ivector_period: int | None = None, frames_per_chunk: int = DEFAULT_FRAMES_PER_CHUNK,
                max_chunk_frames: int = 3000, batch_frames: int | None = None) -> list[torch.Tensor]:
        """Decoder log-likelihoods ``[ceil(T/f), num_pdfs]`` (CPU float32), one per utterance.

        ``feats[i]`` is ``[T_i, input_dim]`` (numpy or torch).  ``ivectors[i]``
        (for models with an ``ivector`` input) is one of:

        * ``[ivector_dim]``: one i-vector for the whole utterance;
        * ``[N, ivector_dim]`` with ``online_ivector_period=P``: online
          i-vectors, row k for frame k*P (``ivector_online.scp``); as Kaldi's
          decoders do, the utterance is computed in pieces of
          ``frames_per_chunk`` frames, each with the i-vector of its middle frame;
        * ``[T_i, ivector_dim]`` without a period: an i-vector for every frame,
          read at each frame (the i-vector input then varies with t).

        ``max_chunk_frames`` bounds the output frames of one job (long
        utterances are split, with identical results); ``batch_frames`` bounds
        the input frames of one batch (default: :data:`DEFAULT_BATCH_FRAMES`).
        """
        batch_frames = batch_frames or DEFAULT_BATCH_FRAMES[self.device.type]
        if ivectors is not None and len(ivectors) != len(feats):
            raise ConfigError(f"expected one i-vector entry per utterance ({len(feats)}), found {len(ivectors)}")
        for name, value in (("max_chunk_frames", max_chunk_frames), ("batch_frames", batch_frames),
                            ("frames_per_chunk", frames_per_chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: expected a positive integer, found {value!r}")
        mats = [self._check_feats(i, f) for i, f in enumerate(feats)]
        ivecs = [self._check_ivector(i, mats[i], ivectors[i] if ivectors is not None else None, online_ivector_period)
                 for i in range(len(mats))]
        jobs = self._jobs(mats, ivecs, online_ivector_period, frames_per_chunk, max_chunk_frames)
        rows = self.compute_segments(jobs, batch_frames=batch_frames)
        outputs = []
        for u in range(len(mats)):
            parts = [r for j, r in zip(jobs, rows) if j.utt == u]
            outputs.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=0))
        return outputs

    def compute_segments(self, segments: Sequence[Segment], *, batch_frames: int | None = None) -> list[torch.Tensor]:
        """Decoder log-likelihoods of each segment (CPU float32 ``[count, num_pdfs]``), batched.

        Segments with per-frame i-vectors and the others go to separate batches.
        """
        batch_frames = batch_frames or DEFAULT_BATCH_FRAMES[self.device.type]
        for seg in segments:
            total = self.num_output_frames(len(seg.feats))
            if seg.count is None:
                seg.count = total - seg.start
            if seg.start < 0 or seg.count < 1 or seg.start + seg.count > total:
                raise ConfigError(f"segment rows [{seg.start}, {seg.start + seg.count}) outside the {total} output "
                                  "rows of its utterance")
        results: dict[int, torch.Tensor] = {}
        for per_frame in (False, True):
            chosen = [i for i, s in enumerate(segments) if s.per_frame == per_frame]
            for batch in self._batches(chosen, segments, batch_frames):
                out = self._run_batch([segments[i] for i in batch], per_frame)
                results.update(zip(batch, out))
        return [results[i] for i in range(len(segments))]

    def compute_observed(self, segments: Sequence[Segment], observe: Callable[[str, torch.Tensor], None],
                         components: set[str] | frozenset[str] | None = None) -> list[torch.Tensor]:
        """Like :meth:`compute_segments`, in a single batch, showing every component's input to ``observe``.

        ``observe(component_name, x)`` gets ``x`` as ``[frames, input_dim]``:
        the frames that the segments own (a segment owns its own output
        frames' span of input time, ``[start*f, (start+count)*f)`` within its
        utterance, so pieces of one utterance never count a frame twice), in
        the column layout of the component's weight (time offsets spliced).
        It runs before the component is applied, so it may change the
        component (:meth:`NnetGraph.reload_component` on :attr:`graph` or
        :meth:`graph_for`): the rest of the batch is then computed with the
        change, which is how a layer is calibrated on the outputs of
        already-pruned layers.  All segments are one batch, so each layer sees
        all of them before any later layer runs.  ``components`` limits the
        calls to those components (default: every one).
        """
        segments = list(segments)
        if not segments:
            return []
        kinds = {s.per_frame for s in segments}
        if len(kinds) != 1:
            raise ConfigError("compute_observed: expected segments that all have per-frame i-vectors or none do")
        for seg in segments:
            total = self.num_output_frames(len(seg.feats))
            if seg.count is None:
                seg.count = total - seg.start
        f = self.frame_subsampling_factor
        # Relative to each segment's start: the owned input times.
        ends = np.array([min(s.count * f, len(s.feats) - s.start * f) for s in segments], dtype=np.int64)

        def wrapped(node, x: torch.Tensor, times: np.ndarray) -> None:
            if components is not None and node.op.name not in components:
                return
            owned = (times[None, :] >= 0) & (times[None, :] < ends[:, None])
            mask = torch.from_numpy(owned).to(x.device)
            observe(node.op.name, x[mask])

        return self._run_batch(segments, kinds.pop(), observe=wrapped)

    def graph_for(self, per_frame: bool) -> NnetGraph:
        """The graph that runs segments with (``per_frame``) or without per-frame i-vectors."""
        return self._per_frame_graph() if per_frame else self.graph

    # ------------------------------------------------------------------ internals

    def _check_feats(self, i: int, f) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(f, dtype=np.float32) if not isinstance(f, torch.Tensor) else f)
        t = t.float()
        if t.dim() != 2 or t.shape[1] != self.input_dim or t.shape[0] == 0:
            raise ConfigError(f"utterance {i}: expected features [frames > 0, {self.input_dim}] for the model's input, "
                              f"found shape {list(t.shape)}")
        return t

    def _check_ivector(self, i: int, feats: torch.Tensor, iv, period: int | None) -> np.ndarray | None:
        if self.ivector_dim == 0:
            if iv is not None:
                raise ConfigError(f"utterance {i}: the model has no ivector input, but an i-vector was given")
            return None
        if iv is None:
            raise ConfigError(f"utterance {i}: the model reads a {self.ivector_dim}-dim ivector input; none was given")
        arr = iv.detach().cpu().numpy() if isinstance(iv, torch.Tensor) else np.asarray(iv)
        arr = arr.astype(np.float32, copy=False)
        if arr.ndim not in (1, 2) or arr.shape[-1] != self.ivector_dim or (arr.ndim == 2 and len(arr) == 0):
            raise ConfigError(f"utterance {i}: expected an i-vector of dim {self.ivector_dim} ([D], [N, D] or "
                              f"[frames, D]), found shape {list(arr.shape)}")
        if arr.ndim == 2 and period is None and len(arr) != len(feats):
            raise ConfigError(f"utterance {i}: expected one i-vector per frame ({len(feats)} rows) or "
                              f"online_ivector_period for {len(arr)} rows")
        if arr.ndim == 2 and period is not None:
            if isinstance(period, bool) or not isinstance(period, int) or period < 1:
                raise ConfigError(f"online_ivector_period: expected a positive integer, found {period!r}")
            # Kaldi refuses more than half a second of missing i-vectors.
            margin = (len(feats) - 1) // period - (len(arr) - 1)
            if margin * period > 50:
                raise ConfigError(f"utterance {i}: {len(arr)} online i-vectors every {period} frames cover "
                                  f"{len(arr) * period} frames, but the utterance has {len(feats)} "
                                  "(mismatched ivector period?)")
        return arr

    def _jobs(self, mats, ivecs, period, frames_per_chunk, max_chunk_frames) -> list[Segment]:
        f = self.frame_subsampling_factor
        jobs = []
        for u, feats in enumerate(mats):
            total = self.num_output_frames(len(feats))
            iv = ivecs[u]
            if iv is not None and iv.ndim == 2 and period is not None:
                # Kaldi: frames_per_chunk rounded up to a multiple of f.
                chunk = -(-frames_per_chunk // f)
                for start in range(0, total, chunk):
                    count = min(chunk, total - start)
                    first, last = start * f, (start + count - 1) * f
                    row = min((first + (last - first) // 2) // period, len(iv) - 1)
                    jobs.append(Segment(feats, start, count, iv[row], utt=u))
            else:
                for start in range(0, total, max_chunk_frames):
                    jobs.append(Segment(feats, start, min(max_chunk_frames, total - start), iv, utt=u))
        return jobs

    def _batches(self, chosen: list[int], segments: Sequence[Segment], batch_frames: int) -> list[list[int]]:
        f = self.frame_subsampling_factor
        context = self.left_context + self.right_context + 1
        ordered = sorted(chosen, key=lambda i: -segments[i].count)
        batches: list[list[int]] = []
        for i in ordered:
            if batches:
                batch = batches[-1]
                width = segments[batch[0]].count * f + context  # the longest segment sets the width
                if width * (len(batch) + 1) <= batch_frames:
                    batch.append(i)
                    continue
            batches.append([i])
        return batches

    def compute_cached(self, segment: Segment, cache: dict) -> torch.Tensor:
        """One segment in its utterance's own time, reusing what ``cache`` kept from the utterance's earlier segments.

        For a stream of segments of one utterance (online decoding): the frames
        of every layer that overlap the previous segment's are not computed
        again (Kaldi's looped computation).  The i-vectors those frames read
        must not change between calls.
        """
        total = self.num_output_frames(len(segment.feats))
        if segment.count is None:
            segment.count = total - segment.start
        return self._run_batch([segment], segment.per_frame, cache=cache)[0]

    def _run_batch(self, batch: list[Segment], per_frame: bool, cache: dict | None = None,
                   observe=None) -> list[torch.Tensor]:
        f = self.frame_subsampling_factor
        count = max(s.count for s in batch)
        in_times = np.arange(-self.left_context, (count - 1) * f + self.right_context + 1, dtype=np.int64)
        # With a cache, times are the utterance's own (one segment); else relative to each segment's start.
        shift = batch[0].start * f if cache is not None else 0
        x = torch.empty(len(batch), len(in_times), self.input_dim)
        iv_rows = []
        for b, seg in enumerate(batch):
            times = seg.start * f + in_times
            x[b] = seg.feats[torch.from_numpy(np.clip(times, 0, len(seg.feats) - 1))]
            if per_frame:
                rows = np.clip(times - seg.ivector_start, 0, len(seg.ivector) - 1)
                iv_rows.append(torch.from_numpy(np.ascontiguousarray(seg.ivector[rows], dtype=np.float32)))
            elif seg.ivector is not None:
                iv_rows.append(torch.from_numpy(np.asarray(seg.ivector, dtype=np.float32)).reshape(1, -1))
        if self.ivector_dim and len(iv_rows) != len(batch):
            raise ConfigError(f"the model reads a {self.ivector_dim}-dim ivector input; a segment has none")
        inputs = {"input": (x, in_times + shift)}
        graph = self.graph
        if per_frame:
            graph = self._per_frame_graph()
            inputs["ivector"] = (torch.stack(iv_rows), in_times + shift)
        elif iv_rows:
            inputs["ivector"] = (torch.stack(iv_rows), np.array([0], dtype=np.int64))
        out_times = np.arange(count, dtype=np.int64) * f + shift
        y = graph.compute(inputs, {self.output: out_times}, cache=cache, observe=observe)[self.output]
        if self.log_priors is not None:
            y = y - self.log_priors
        if self.acoustic_scale != 1.0:
            y = y * self.acoustic_scale
        y = y.float().cpu()
        return [y[b, :seg.count] for b, seg in enumerate(batch)]

    @property
    def ivector_right_context(self) -> int:
        """How far after an output frame the network reads a per-frame i-vector (the i-vector reader's lag)."""
        return self._per_frame_graph().input_context("ivector")[1] if self.ivector_dim else 0

    def _per_frame_graph(self) -> NnetGraph:
        if self._frame_graph is None:
            self._frame_graph = NnetGraph(self.file.nnet, (self.output,), per_frame_inputs=True, device=self.device)
        return self._frame_graph


def decoding_options(model_path: Path, model_conf: str | os.PathLike | None = None) -> tuple[int, float]:
    """``--frame-subsampling-factor`` and ``--acoustic-scale`` from a Vosk ``conf/model.conf`` (1 and 1.0 without one).

    ``model_conf`` defaults to ``<dir>/conf/model.conf`` for ``<dir>/am/final.mdl`` when it exists.
    """
    conf_path = Path(model_conf) if model_conf is not None else _default_model_conf(Path(model_path))
    conf = read_kaldi_conf(conf_path) if conf_path is not None else {}
    where = str(conf_path)
    fsf = _conf_number(conf, "frame-subsampling-factor", int, where) if "frame-subsampling-factor" in conf else 1
    scale = _conf_number(conf, "acoustic-scale", float, where) if "acoustic-scale" in conf else 1.0
    return fsf, scale


def _default_model_conf(model_path: Path) -> Path | None:
    candidates = [model_path.parent.parent / "conf" / "model.conf", model_path.parent / "conf" / "model.conf"]
    if model_path.parent.name != "am":
        candidates = candidates[1:]
    return next((c for c in candidates if c.is_file()), None)


__all__ = ["AcousticModel", "Segment", "decoding_options", "DEFAULT_FRAMES_PER_CHUNK"]
