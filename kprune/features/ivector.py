"""Online i-vectors, computed as Kaldi's online i-vector extraction does.

A Vosk or Kaldi online model ships an ``ivector/`` directory with
``final.dubm`` (the diagonal UBM), ``final.ie`` (the i-vector extractor),
``final.mat`` (an LDA, often with an offset column), ``global_cmvn.stats``,
``online_cmvn.conf`` and ``splice.conf``.  Kaldi's ``OnlineIvectorFeature``
(``src/online2/online-ivector-feature.cc``) computes, from the base MFCCs:

* UBM posteriors on ``LDA(splice(online-CMVN(mfcc)))``: the Gaussians within
  ``log(min_post)`` of the best, at most ``num_gselect`` of them, the worst
  dropped while below ``min_post`` times their sum, renormalised
  (``VectorToPosteriorEntry``, :func:`posterior_entries`) and scaled by
  ``posterior_scale`` times the frame's weight (``min_post`` is divided by the
  weight: ``GetMinPost``);
* i-vector statistics on ``LDA(splice(mfcc))`` (no CMVN):
  ``linear += sum_g post * Sigma_inv_M[g]^T x`` and
  ``quadratic += sum_g post * U[g]``, starting from the prior
  (``linear[0] = prior_offset``, ``quadratic = I``) and, with ``max_count``,
  scaling the prior up once the count passes it
  (``src/ivector/ivector-extractor.cc``, ``OnlineIvectorEstimationStats``);
* the i-vector at frame t: statistics of frames ``0..t``, solved by
  ``num_cg_iters`` steps of conjugate gradient from the previous i-vector, with
  ``prior_offset`` subtracted from dimension 0.

The online CMVN (``OnlineCmvn``, no speaker state) normalises the mean over the
last ``cmn_window`` frames, topped up with up to ``global_frames`` frames of
``global_cmvn.stats``.  Vosk's Kaldi (alphacep/kaldi, what libvosk is built
from) adds ``--cmn-min-energy`` (default 50): ``OnlineCmvn::GetFrame`` updates
the statistics only for frames whose c0 is above it, and any other frame is
normalised with what the previous call left (see
:meth:`OnlineIvectorExtractor.posterior_features`); ``cmn_min_energy=None`` is
upstream Kaldi.  Silence weighting (frames the decoder currently takes for
silence count 0.001) comes from :mod:`kprune.decode.streaming` through
:meth:`IvectorStream.update_weights`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from kprune.errors import ConfigError, KaldiFormatError
from kprune.features.conf import read_kaldi_conf
from kprune.kaldi.io import BinaryReader, Reader, make_reader

_LOG_2PI = float(np.log(2 * np.pi))


# --------------------------------------------------------------------------- Kaldi objects


def _reader(path: Path) -> Reader:
    try:
        buf = bytearray(path.read_bytes())
    except FileNotFoundError:
        raise KaldiFormatError(path, "", "expected a Kaldi object file, found no such file") from None
    except OSError as e:
        raise KaldiFormatError(path, "", f"expected a readable Kaldi object file, found: {e.strerror}") from None
    if not buf:
        raise KaldiFormatError(path, "byte 0", "expected a Kaldi object, found an empty file")
    return make_reader(buf, path)


def _read_packed(r: Reader) -> np.ndarray:
    """A Kaldi SpMatrix/TpMatrix (``FP``/``DP``: lower triangle, row by row) as a full symmetric matrix."""
    start = r.pos
    if not isinstance(r, BinaryReader):
        raise r.error("expected a binary packed matrix (text SpMatrix is not supported)", start)
    kind = r.read_token()
    if kind not in ("FP", "DP"):
        raise r.error(f"expected a packed matrix (FP or DP), found token {kind!r}", start)
    n = r.read_int32()
    count = n * (n + 1) // 2
    width = 4 if kind == "FP" else 8
    if n < 0 or r.pos + width * count > r.end:
        raise r.error(f"expected a {n}x{n} packed matrix that fits in the file", start)
    data = np.frombuffer(r.buf, dtype="<f4" if width == 4 else "<f8", count=count, offset=r.pos).astype(np.float64)
    r.pos += width * count
    full = np.zeros((n, n))
    full[np.tril_indices(n)] = data
    return full + np.tril(full, -1).T


@dataclass
class DiagGmm:
    """A diagonal-covariance GMM (``final.dubm``)."""

    gconsts: np.ndarray  # [G]
    weights: np.ndarray  # [G]
    means_invvars: np.ndarray  # [G, D]
    inv_vars: np.ndarray  # [G, D]

    @property
    def dim(self) -> int:
        return self.inv_vars.shape[1]

    def log_likelihoods(self, x: np.ndarray) -> np.ndarray:
        """``[T, G]``: ``gconst + mean_invvar . x - 0.5 * invvar . x^2`` (``DiagGmm::LogLikelihoods``)."""
        return self.gconsts + x @ self.means_invvars.T - 0.5 * (x * x) @ self.inv_vars.T


def read_diag_gmm(path: str | os.PathLike) -> DiagGmm:
    """``<DiagGMM> <GCONSTS> FV <WEIGHTS> FV <MEANS_INVVARS> FM <INV_VARS> FM </DiagGMM>``."""
    path = Path(path)
    r = _reader(path)
    r.expect_token("<DiagGMM>")
    values: dict[str, np.ndarray] = {}
    while True:
        pos = r.pos
        tok = r.read_token()
        if tok == "</DiagGMM>":
            break
        if tok in ("<GCONSTS>", "<WEIGHTS>"):
            values[tok] = np.asarray(r.read_vector()[0], dtype=np.float64)
        elif tok in ("<MEANS_INVVARS>", "<INV_VARS>"):
            values[tok] = np.asarray(r.read_matrix()[0], dtype=np.float64)
        else:
            raise r.error("expected a DiagGMM field (<GCONSTS>, <WEIGHTS>, <MEANS_INVVARS>, <INV_VARS>), "
                          f"found {tok!r}", pos)
    missing = [t for t in ("<WEIGHTS>", "<MEANS_INVVARS>", "<INV_VARS>") if t not in values]
    if missing:
        raise KaldiFormatError(path, "", f"expected {missing[0]} in the DiagGMM, found none")
    weights, mi, iv = values["<WEIGHTS>"], values["<MEANS_INVVARS>"], values["<INV_VARS>"]
    if mi.shape != iv.shape or mi.shape[0] != len(weights):
        raise KaldiFormatError(path, "", f"expected means and variances [{len(weights)}, dim], "
                                         f"found {mi.shape} and {iv.shape}")
    gconsts = values.get("<GCONSTS>")
    if gconsts is None or len(gconsts) != len(weights):
        # DiagGmm::ComputeGconsts.
        with np.errstate(divide="ignore"):
            gconsts = (np.log(weights) - 0.5 * _LOG_2PI * mi.shape[1]
                       + (0.5 * np.log(iv) - 0.5 * mi * mi / iv).sum(axis=1))
    return DiagGmm(gconsts, weights, mi, iv)


@dataclass
class IvectorExtractor:
    """The i-vector extractor (``final.ie``) with the derived terms Kaldi computes on read."""

    M: np.ndarray  # [G, D, S]
    sigma_inv: np.ndarray  # [G, D, D]
    prior_offset: float
    sigma_inv_m: np.ndarray = field(init=False)  # [G, D, S]
    U: np.ndarray = field(init=False)  # [G, S, S] = M^T Sigma_inv M

    def __post_init__(self) -> None:
        self.sigma_inv_m = np.einsum("gde,ges->gds", self.sigma_inv, self.M)
        self.U = np.einsum("gds,gdt->gst", self.M, self.sigma_inv_m)

    @property
    def num_gauss(self) -> int:
        return self.M.shape[0]

    @property
    def feat_dim(self) -> int:
        return self.M.shape[1]

    @property
    def ivector_dim(self) -> int:
        return self.M.shape[2]


def read_ivector_extractor(path: str | os.PathLike) -> IvectorExtractor:
    """``<IvectorExtractor> <w> <w_vec> <M> n M... <SigmaInv> S... <IvectorOffset> x </IvectorExtractor>``."""
    path = Path(path)
    r = _reader(path)
    r.expect_token("<IvectorExtractor>")
    r.expect_token("<w>")
    w, _ = r.read_matrix()
    r.expect_token("<w_vec>")
    r.read_vector()
    if w.size:
        raise KaldiFormatError(path, "", "expected an extractor without i-vector-dependent weights (<w> empty), as "
                                         f"online extraction requires; found <w> of shape {w.shape}")
    r.expect_token("<M>")
    pos = r.pos
    n = r.read_int32()
    if not 0 < n < 1 << 20:
        raise r.error(f"expected a positive number of Gaussians, found {n}", pos)
    M = np.stack([np.asarray(r.read_matrix()[0], dtype=np.float64) for _ in range(n)])
    r.expect_token("<SigmaInv>")
    sigma_inv = np.stack([_read_packed(r) for _ in range(n)])
    r.expect_token("<IvectorOffset>")
    offset = r.read_float64()
    r.expect_token("</IvectorExtractor>")
    if sigma_inv.shape[1] != M.shape[1]:
        raise KaldiFormatError(path, "", f"expected SigmaInv of dim {M.shape[1]} (the rows of M), "
                                         f"found {sigma_inv.shape[1]}")
    return IvectorExtractor(M, sigma_inv, float(offset))


# --------------------------------------------------------------------------- configuration


@dataclass
class IvectorConfig:
    """Kaldi's ``OnlineIvectorExtractionConfig`` and ``OnlineCmvnOptions`` (their defaults).

    Vosk sets ``max_count`` to 100; Kaldi's default is 0 (no limit).
    """

    ivector_period: int = 10
    num_gselect: int = 5
    min_post: float = 0.025
    posterior_scale: float = 0.1
    max_count: float = 0.0
    num_cg_iters: int = 15
    use_most_recent_ivector: bool = True
    cmn_window: int = 600
    speaker_frames: int = 600
    global_frames: int = 200
    # Vosk's Kaldi (alphacep/kaldi) adds --cmn-min-energy (default 50) to OnlineCmvnOptions: a frame whose
    # c0 is not above it keeps the statistics of the previous OnlineCmvn::GetFrame call.  None: upstream Kaldi.
    cmn_min_energy: float | None = 50.0
    normalize_mean: bool = True
    normalize_variance: bool = False
    left_context: int = 4
    right_context: int = 4

    def check(self, where: str) -> None:
        if self.ivector_period <= 0 or self.num_gselect <= 0 or not 0 <= self.min_post < 0.5 \
                or not 0 < self.posterior_scale <= 1 or self.max_count < 0 or self.num_cg_iters < 1:
            raise ConfigError(f"{where}: i-vector options out of range: {self}")
        if self.normalize_variance or not self.normalize_mean:
            raise ConfigError(f"{where}: expected online CMVN of the mean only (Kaldi's default), found "
                              f"normalize_mean={self.normalize_mean} normalize_variance={self.normalize_variance}")


_CONF_KEYS = {
    "ivector-period": "ivector_period", "num-gselect": "num_gselect", "min-post": "min_post",
    "posterior-scale": "posterior_scale", "max-count": "max_count", "num-cg-iters": "num_cg_iters",
    "use-most-recent-ivector": "use_most_recent_ivector",
    "cmn-window": "cmn_window", "speaker-frames": "speaker_frames", "global-frames": "global_frames",
    "cmn-min-energy": "cmn_min_energy",
    "norm-means": "normalize_mean", "norm-vars": "normalize_variance",
    "left-context": "left_context", "right-context": "right_context",
}
# Options of ivector_extractor.conf that name the files (read from the directory anyway).
_FILE_KEYS = {"splice-config", "cmvn-config", "lda-matrix", "global-cmvn-stats", "diag-ubm", "ivector-extractor",
              "online-cmvn-iextractor", "greedy-ivector-extractor", "max-remembered-frames",
              "modulus", "ring-buffer-size", "skip-dims"}


def _apply_conf(cfg: IvectorConfig, path: Path) -> None:
    types = {f.name: f.type for f in fields(IvectorConfig)}
    for key, value in read_kaldi_conf(path).items():
        if key in _FILE_KEYS:
            if (key in ("online-cmvn-iextractor", "greedy-ivector-extractor") and value.lower() == "true") \
                    or (key == "skip-dims" and value):
                raise ConfigError(f"{path}: --{key}={value} is not supported")
            continue
        name = _CONF_KEYS.get(key)
        if name is None:
            raise ConfigError(f"{path}: unknown option --{key} for online i-vector extraction")
        kind = types[name]
        try:
            if name == "cmn_min_energy":
                parsed = float(value)
            elif kind in (bool, "bool"):
                parsed = value.lower() in ("true", "1")
            elif kind in (int, "int"):
                parsed = int(value)
            else:
                parsed = float(value)
        except ValueError:
            raise ConfigError(f"{path}: --{key}={value!r} is not a valid value") from None
        setattr(cfg, name, parsed)


# --------------------------------------------------------------------------- extraction


class OnlineIvectorExtractor:
    """Kaldi's online i-vector extraction from a model's ``ivector/`` directory."""

    def __init__(self, ubm: DiagGmm, extractor: IvectorExtractor, lda: np.ndarray, global_cmvn: np.ndarray,
                 config: IvectorConfig | None = None, source: str = "<memory>"):
        self.config = config or IvectorConfig()
        self.config.check(source)
        self.ubm, self.extractor = ubm, extractor
        self.source = source
        self.global_cmvn = np.asarray(global_cmvn, dtype=np.float64)
        lda = np.asarray(lda, dtype=np.float64)
        feat_dim = self.global_cmvn.shape[1] - 1
        splice = self.config.left_context + 1 + self.config.right_context
        if self.global_cmvn.shape[0] != 2 or self.global_cmvn[0, -1] <= 0:
            raise KaldiFormatError(source, "global_cmvn.stats", f"expected 2 rows of CMVN stats with a positive count, "
                                                                f"found shape {self.global_cmvn.shape}")
        if lda.shape[1] not in (feat_dim * splice, feat_dim * splice + 1):
            raise KaldiFormatError(source, "final.mat", f"expected {feat_dim * splice} (+1) columns for {splice} spliced "
                                                        f"{feat_dim}-dim frames, found {lda.shape[1]}")
        if lda.shape[0] != ubm.dim or ubm.dim != extractor.feat_dim:
            raise KaldiFormatError(source, "final.mat", f"expected LDA output dim = UBM dim = extractor dim, found "
                                                        f"{lda.shape[0]}, {ubm.dim}, {extractor.feat_dim}")
        if ubm.means_invvars.shape[0] != extractor.num_gauss:
            raise KaldiFormatError(source, "final.ie", f"expected {ubm.means_invvars.shape[0]} Gaussians (as the UBM), "
                                                       f"found {extractor.num_gauss}")
        self.feat_dim = feat_dim
        self.lda_linear = lda[:, :feat_dim * splice]
        self.lda_offset = lda[:, feat_dim * splice] if lda.shape[1] > feat_dim * splice else np.zeros(lda.shape[0])

    @property
    def ivector_dim(self) -> int:
        return self.extractor.ivector_dim

    @classmethod
    def load(cls, ivector_dir: str | os.PathLike, *, max_count: float | None = None,
             ivector_period: int | None = None) -> OnlineIvectorExtractor:
        """Read a Kaldi/Vosk ``ivector/`` directory (and its ``ivector_extractor.conf`` if present)."""
        d = Path(ivector_dir)
        if not d.is_dir():
            raise ConfigError(f"{d}: expected an i-vector directory with final.ie, final.dubm, final.mat, "
                              "global_cmvn.stats, online_cmvn.conf and splice.conf")
        cfg = IvectorConfig()
        for name in ("ivector_extractor.conf", "online_cmvn.conf", "splice.conf"):
            if (d / name).is_file():
                _apply_conf(cfg, d / name)
        if max_count is not None:
            cfg.max_count = float(max_count)
        if ivector_period is not None:
            cfg.ivector_period = int(ivector_period)
        cmvn_reader = _reader(d / "global_cmvn.stats")
        global_cmvn = np.asarray(cmvn_reader.read_matrix()[0], dtype=np.float64)
        lda = np.asarray(_reader(d / "final.mat").read_matrix()[0], dtype=np.float64)
        return cls(read_diag_gmm(d / "final.dubm"), read_ivector_extractor(d / "final.ie"), lda, global_cmvn, cfg, str(d))

    # -- feature transforms ----------------------------------------------------

    def online_cmvn(self, feats: np.ndarray) -> np.ndarray:
        """Mean normalisation over the last ``cmn_window`` frames, topped up with global stats."""
        x = np.asarray(feats, dtype=np.float64)
        T, D = x.shape
        window = self.config.cmn_window
        csum = np.cumsum(x, axis=0)
        sums = csum.copy()
        if T > window:
            sums[window:] -= csum[:-window]
        counts = np.minimum(np.arange(1, T + 1), window).astype(np.float64)
        top_up = np.minimum(window - counts, self.config.global_frames)
        g_count = self.global_cmvn[0, D]
        scale = np.where(top_up > 0, top_up / g_count, 0.0)
        sums = sums + scale[:, None] * self.global_cmvn[0, :D]
        counts = counts + scale * g_count
        return (x - sums / counts[:, None]).astype(np.float32)

    def posterior_features(self, feats: np.ndarray) -> np.ndarray:
        """``LDA(splice(OnlineCmvn(feats)))``, the features the UBM posteriors are computed on.

        Without ``cmn_min_energy`` this is ``lda_features(online_cmvn(feats))``.
        With it (Vosk's Kaldi), ``OnlineCmvn::GetFrame`` computes the window
        statistics only for a frame whose c0 is above ``cmn_min_energy``; any
        other frame reuses the statistics the previous call left, and smooths
        them with the global statistics once more (``SmoothOnlineCmvnStats``
        works in place).  What a frame gets therefore depends on the order of
        the calls, which is the splicing's: output frames in increasing order
        (``OnlineIvectorFeature`` asks ``lda_normalized_`` for each frame once,
        in order), each reading frames ``t - left .. t + right`` clamped to the
        utterance.
        """
        threshold = self.config.cmn_min_energy
        if threshold is None:
            return self.lda_features(self.online_cmvn(feats))
        x = np.asarray(feats, dtype=np.float64)
        T, D = x.shape
        cfg = self.config
        window, top = float(cfg.cmn_window), float(cfg.global_frames)
        g_sum, g_count = self.global_cmvn[0, :D], float(self.global_cmvn[0, D])
        # Raw window statistics of every frame (OnlineCmvn::ComputeStatsForFrame).
        csum = np.cumsum(x, axis=0)
        sums = csum.copy()
        if T > cfg.cmn_window:
            sums[cfg.cmn_window:] -= csum[:-cfg.cmn_window]
        counts = np.minimum(np.arange(1, T + 1), cfg.cmn_window).astype(np.float64)
        # The calls, in order: frame t of the splice reads t - left .. t + right.
        offsets = np.arange(-cfg.left_context, cfg.right_context + 1)
        calls = np.clip(np.arange(T)[:, None] + offsets[None, :], 0, T - 1).reshape(-1)
        fresh = x[calls, 0] > threshold
        # Each call smooths the statistics once; a call without fresh statistics smooths those of the
        # last fresh call again (or the initial zeros), once per call since.
        idx = np.arange(len(calls))
        last = np.maximum.accumulate(np.where(fresh, idx, -1))
        times = (idx - last + 1).astype(np.float64)  # smoothings applied to the base statistics
        has_base = last >= 0
        base_frame = calls[np.maximum(last, 0)]
        base_sum = np.where(has_base[:, None], sums[base_frame], 0.0)
        base_count = np.where(has_base, counts[base_frame], 0.0)
        # SmoothOnlineCmvnStats adds min(window - count, global_frames) frames of global stats while count < window.
        new_count = np.where(base_count < window, np.minimum(base_count + top * times, window), base_count)
        stats_sum = base_sum + ((new_count - base_count) / g_count)[:, None] * g_sum
        # ApplyCmvn: the offset -mean in float, added to the float features.
        offset = (-stats_sum / new_count[:, None]).astype(np.float32)
        normalized = (x[calls].astype(np.float32) + offset).astype(np.float64)
        spliced = normalized.reshape(T, len(offsets) * D)
        return spliced @ self.lda_linear.T + self.lda_offset

    def lda_features(self, feats: np.ndarray) -> np.ndarray:
        """``LDA(splice(feats))``; edge frames repeat, as ``OnlineSpliceFrames`` pads."""
        x = np.asarray(feats, dtype=np.float64)
        T = len(x)
        offsets = np.arange(-self.config.left_context, self.config.right_context + 1)
        idx = np.clip(np.arange(T)[:, None] + offsets[None, :], 0, T - 1)
        spliced = x[idx].reshape(T, -1)
        return spliced @ self.lda_linear.T + self.lda_offset

    # -- i-vectors ------------------------------------------------------------------

    def ivectors_at(self, mfcc: np.ndarray, frames: Sequence[int], weights: np.ndarray | None = None) -> np.ndarray:
        """The i-vector Kaldi gives at each of ``frames`` (nondecreasing): statistics of frames ``0..t``.

        Returns ``[len(frames), ivector_dim]`` float32, dimension 0 already
        offset by the prior (as the network reads it).  ``weights`` (one per
        frame) scale each frame's statistics, as silence weighting does.
        """
        mfcc = np.asarray(mfcc, dtype=np.float32)
        if mfcc.ndim != 2 or mfcc.shape[1] != self.feat_dim:
            raise ConfigError(f"{self.source}: expected {self.feat_dim}-dim features for i-vector extraction, "
                              f"found shape {list(mfcc.shape)}")
        T = len(mfcc)
        frames = np.asarray(frames, dtype=np.int64)
        if len(frames) and (frames.min() < 0 or frames.max() >= T or np.any(np.diff(frames) < 0)):
            raise ConfigError(f"expected nondecreasing i-vector frames in [0, {T}), found {frames[:5]}...")
        stream = IvectorStream(self, mfcc)
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (T,):
                raise ConfigError(f"expected one weight per frame ({T}), found shape {list(weights.shape)}")
            stream.update_weights(list(zip(range(T), weights.tolist())))
        out = np.empty((len(frames), self.ivector_dim), dtype=np.float32)
        for i, t in enumerate(frames.tolist()):
            out[i] = stream.get(t)
        return out

    def online_ivectors(self, mfcc: np.ndarray, period: int | None = None) -> np.ndarray:
        """One i-vector every ``period`` frames (rows for frames 0, P, 2P, ...), as ``ivector-extract-online2``."""
        period = period or self.config.ivector_period
        return self.ivectors_at(mfcc, np.arange(0, len(mfcc), period))


def posterior_entries(top_loglikes: np.ndarray, min_post: np.ndarray) -> np.ndarray:
    """Kaldi's ``VectorToPosteriorEntry`` (``src/hmm/posterior.cc``) for frames whose best Gaussians are known.

    ``top_loglikes`` is ``[N, k]``: each frame's ``num_gselect`` best UBM
    log-likelihoods, best first, minus the frame's best; ``min_post`` is ``[N]``.
    Kaldi keeps the Gaussians within ``log(min_post)`` of the best, takes the
    ``num_gselect`` best of them, then drops from the worst end those below
    ``min_post`` times the sum of what it took (at least one stays), and
    normalises what is left to sum to 1.  Returns ``[N, k]`` posteriors (0 where dropped).
    """
    rel = np.exp(top_loglikes)
    min_post = np.asarray(min_post, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore"):  # min_post 0: no pruning
        kept = np.where(top_loglikes > np.log(min_post), rel, 0.0)
    cutoff = min_post * kept.sum(axis=1, keepdims=True)
    kept = np.where(kept >= cutoff, kept, 0.0)
    kept[:, 0] = rel[:, 0]
    return kept / kept.sum(axis=1, keepdims=True)


def linear_cgd(A: np.ndarray, b: np.ndarray, x0: np.ndarray, max_iters: int,
               recompute_residual_factor: float = 0.01) -> np.ndarray:
    """Conjugate gradient for ``A x = b`` from ``x0``, as Kaldi's ``LinearCgd``.

    ``alpha = -p.r / p.A p`` (Kaldi's robust form); the residual is recomputed
    from scratch whenever its norm moves by more than the factor squared.
    """
    x = np.array(x0, dtype=np.float64)
    M = len(b)
    p = b - A @ x
    r = -p
    r_cur = float(r @ r)
    r_recompute = r_cur
    factor = recompute_residual_factor ** 2
    tiny = np.finfo(np.float64).tiny
    for k in range(M + 5):
        if k == max_iters:
            break
        Ap = A @ p
        denom = float(p @ Ap)
        if denom == 0.0:
            break
        alpha = -float(p @ r) / denom
        x += alpha * p
        r += alpha * Ap
        r_next = float(r @ r)
        if r_next < factor * r_recompute or r_next > r_recompute / factor:
            r = A @ x - b
            r_next = float(r @ r)
            r_recompute = r_next
        if r_next <= tiny:
            break
        beta = r_next / r_cur
        p = beta * p - r
        r_cur = r_next
    return x


class IvectorStream:
    """One utterance's online i-vector, frame weights updated as decoding goes (Kaldi's ``OnlineIvectorFeature``).

    Holds the features of the whole utterance, but reads frame t only when
    asked for an i-vector at t or later, so it gives what the online
    extractor gives when the audio arrives piece by piece.
    :meth:`update_weights` is ``UpdateFrameWeights`` (silence weighting); once
    it has been called, statistics follow the weights
    (``UpdateStatsUntilFrameWeighted``), else every frame counts 1.
    """

    def __init__(self, extractor: OnlineIvectorExtractor, mfcc: np.ndarray):
        self.extractor = extractor
        mfcc = np.asarray(mfcc, dtype=np.float32)
        self.num_frames = len(mfcc)
        self._raw = extractor.lda_features(mfcc).astype(np.float32).astype(np.float64)
        normalized = extractor.posterior_features(mfcc).astype(np.float32)
        loglikes = extractor.ubm.log_likelihoods(normalized).astype(np.float32).astype(np.float64)
        loglikes -= loglikes.max(axis=1, keepdims=True)
        # VectorToPosteriorEntry keeps at most num_gselect Gaussians, the best first, as
        # exp(loglike - max): whatever min_post a frame's weight gives, its posteriors come from these.
        k = min(extractor.config.num_gselect, loglikes.shape[1])
        top = np.argpartition(-loglikes, k - 1, axis=1)[:, :k]
        top_l = np.take_along_axis(loglikes, top, axis=1)
        order = np.argsort(-top_l, axis=1, kind="stable")
        self._top = np.take_along_axis(top, order, axis=1)
        self._top_l = np.take_along_axis(top_l, order, axis=1)
        ex = extractor.extractor
        S = ex.ivector_dim
        self._linear = np.zeros(S)
        self._linear[0] = ex.prior_offset
        self._quadratic = np.eye(S)
        self._count = 0.0
        self._ivector = np.zeros(S)
        self._ivector[0] = ex.prior_offset
        self._frames_in_stats = 0
        self._pending: list[tuple[int, float]] = []
        self._weighted = False

    def update_weights(self, deltas: Sequence[tuple[int, float]]) -> None:
        """Add weight changes ``(frame, delta)``; they count when the statistics reach the frame."""
        self._pending.extend((int(f), float(w)) for f, w in deltas)
        self._weighted = True

    def get(self, frame: int) -> np.ndarray:
        """The i-vector the network reads at ``frame`` (``GetFrame``: the most recent estimate)."""
        if not 0 <= frame < self.num_frames:
            raise ConfigError(f"i-vector frame {frame} outside the utterance's {self.num_frames} frames")
        if frame >= self._frames_in_stats:
            if self._weighted:
                self._pending.sort(key=lambda p: p[0])
                cut = 0
                while cut < len(self._pending) and self._pending[cut][0] <= frame:
                    cut += 1
                batch, self._pending = self._pending[:cut], self._pending[cut:]
            else:
                batch = [(t, 1.0) for t in range(self._frames_in_stats, frame + 1)]
            self._accumulate(batch)
            self._frames_in_stats = frame + 1
            self._solve()
        out = self._ivector.astype(np.float32)
        out[0] -= self.extractor.extractor.prior_offset
        return out

    def _accumulate(self, frame_weights: list[tuple[int, float]]) -> None:
        merged: dict[int, float] = {}
        for f, w in frame_weights:
            merged[f] = merged.get(f, 0.0) + w
        items = [(f, w) for f, w in sorted(merged.items()) if w != 0.0]
        if not items:
            return
        cfg, ex = self.extractor.config, self.extractor.extractor
        frames = np.array([f for f, _ in items])
        w = np.array([w for _, w in items])
        post = posterior_entries(self._top_l[frames], np.minimum(cfg.min_post / np.abs(w), 0.99))
        post *= (cfg.posterior_scale * w)[:, None]
        G, S = ex.num_gauss, ex.ivector_dim
        dense = np.zeros((len(frames), G))
        np.put_along_axis(dense, self._top[frames], post, axis=1)
        gamma = dense.sum(axis=0)
        # Every Gaussian with a posterior counts, even if its weights sum to 0 (+w and -w frames).
        used = np.flatnonzero((dense != 0.0).any(axis=0))
        first_order = dense[:, used].T @ self._raw[frames]  # [used, D]
        self._linear += np.einsum("gd,gds->s", first_order, ex.sigma_inv_m[used])
        self._quadratic += np.tensordot(gamma[used], ex.U[used], axes=1)
        total = float(post.sum())
        if cfg.max_count > 0:
            old, new = self._count, self._count + total
            change = (max(new, cfg.max_count) - max(old, cfg.max_count)) / cfg.max_count
            if change:
                self._linear[0] += ex.prior_offset * change
                self._quadratic[np.diag_indices(S)] += change
        self._count += total

    def _solve(self) -> None:
        ex = self.extractor.extractor
        if self._count > 0:
            if self._ivector[0] == 0.0:
                self._ivector[0] = ex.prior_offset
            self._ivector = linear_cgd(self._quadratic, self._linear, self._ivector, self.extractor.config.num_cg_iters)
        else:
            self._ivector = np.zeros(ex.ivector_dim)
            self._ivector[0] = ex.prior_offset
