"""The evaluator interface, the backend registry and the baseline cache (safe for parallel points)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence, TypeVar

from kprune.cache import default_cache_dir
from kprune.errors import ConfigError, EvaluationError
from kprune.evaluate.bootstrap import (BootstrapConfig, UtteranceCounts, counts_to_json, difference_interval,
                                       probability_of_improvement, rate_interval)
from kprune.evaluate.scoring import CorpusScore, format_per_utt, format_per_utt_tsv, score_corpus
from kprune.fileio import write_atomically, write_json_atomically
from kprune.locks import locked_cache_entry

log = logging.getLogger(__name__)

#: Bumped whenever what a cached baseline holds, or how it is keyed, changes.
CACHE_FORMAT = 1

_REGISTRY: dict[str, type[Evaluator]] = {}
E = TypeVar("E", bound="type[Evaluator]")


def register_evaluator(name: str) -> Callable[[E], E]:
    """Class decorator: make a backend available as ``eval=<name>``."""

    def decorate(cls: E) -> E:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"evaluator {name!r} is registered twice ({_REGISTRY[name].__name__}, {cls.__name__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def registered_evaluators() -> dict[str, type[Evaluator]]:
    """Name -> class of every registered backend."""
    return dict(_REGISTRY)


class Evaluator(ABC):
    """Decodes a model and scores it against the references of one data set.

    A backend implements :meth:`from_config`, :meth:`cache_key`,
    :meth:`_decode_baseline`, :meth:`_baseline_metrics` and :meth:`_evaluate`;
    this class adds the baseline cache and the deltas.  One instance serves
    every point of a sweep: whatever does not depend on the pruned model (the
    data, the references, the baseline) is prepared once.
    """

    name: ClassVar[str] = ""

    def __init__(self, cache_dir: Path | None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        #: How intervals are drawn (``eval.bootstrap``, set by :func:`kprune.evaluate.build_evaluator`).
        self.bootstrap = BootstrapConfig()
        self._baseline: dict[str, Any] | None = None
        self._baseline_counts: dict[str, UtteranceCounts] = {}
        self._baseline_hyps: dict[str, list[str]] | None = None
        self._baseline_error: EvaluationError | None = None
        #: How many times this instance decoded the unpruned model (0 on a cache hit).
        self.baseline_decodes = 0

    # ------------------------------------------------------------ to implement

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: Mapping[str, Any], model_path: Path) -> Evaluator:
        """Build from the ``eval`` config (a plain mapping) and the original model."""

    @abstractmethod
    def cache_key(self) -> dict[str, Any]:
        """JSON values that decide the baseline: a change in any means a new decode."""

    @abstractmethod
    def _decode_baseline(self) -> dict[str, Any]:
        """Decode the unpruned model; the JSON-able record that gets cached."""

    @abstractmethod
    def _baseline_metrics(self, record: dict[str, Any]) -> dict[str, Any]:
        """Metrics (at least "wer"; "cer" where known) from a cached record.

        Like :meth:`_evaluate`'s, they may hold ``per_utt`` and ``hyps`` (see there).
        """

    @abstractmethod
    def _evaluate(self, model: Path, out_dir: Path) -> dict[str, Any]:
        """Decode and score ``model``, write the outputs into ``out_dir``.

        Besides the rates, a backend returns what it knows per utterance:
        ``per_utt`` (measure name -> :class:`UtteranceCounts`, e.g. ``cer``
        and ``wer``), from which the intervals are drawn, and ``hyps``
        (utterance -> normalised words), from which the rates against the
        dense model's own decode are scored.  Both are taken out of the metrics
        by :meth:`evaluate`; ``per_utt`` is written back as plain counts.
        """

    # ------------------------------------------------------------ public API

    def baseline(self) -> dict[str, Any]:
        """Metrics of the unpruned model, decoded once and cached on disk.

        A failed baseline decode is remembered, so a sweep does not retry it
        for every point: each later call raises the same error.
        """
        if self._baseline is not None:
            return self._baseline
        if self._baseline_error is not None:
            raise self._baseline_error
        key = self.cache_key()
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        path = self.cache_dir / "baseline" / f"{self.name}-{digest[:24]}.json"
        record = _read_cache(path, key)
        if record is None:
            # Points running in parallel (hydra/launcher=joblib, submitit) decode it once:
            # the first takes the lock and decodes, the others wait and read its result.
            with locked_cache_entry(path):
                record = _read_cache(path, key, quiet=True)
                if record is None:
                    record = self._decode_baseline_into(path, key)
        else:
            log.info("baseline read from %s", path)
        baseline = self._baseline_metrics(record)
        self._baseline_counts = baseline.pop("per_utt", None) or {}
        self._baseline_hyps = baseline.pop("hyps", None)
        for measure, counts in self._baseline_counts.items():
            baseline[f"{measure}_ci"] = list(rate_interval(counts, self.bootstrap))
        if self._baseline_counts:
            baseline["per_utt"] = counts_to_json(self._baseline_counts)
        baseline["cache_file"] = str(path)
        self._baseline = baseline
        return self._baseline

    def _decode_baseline_into(self, path: Path, key: dict[str, Any]) -> dict[str, Any]:
        log.info("decoding the unpruned model for the baseline (cached in %s)", path)
        self.baseline_decodes += 1
        try:
            record = self._decode_baseline()
        except EvaluationError as e:
            self._baseline_error = EvaluationError(f"baseline (unpruned model): {e}")
            raise self._baseline_error from e
        write_json_atomic(path, {"key": key, "record": record})
        return record

    def evaluate(self, pruned_model: Path, out_dir: Path) -> dict[str, Any]:
        """Decode ``pruned_model``, write hypotheses and scores into ``out_dir``.

        Returns the metrics of ``metrics.json``: "wer" and "cer" (%), the
        reports, "baseline" {"wer", "cer"}, the absolute (percentage points) and
        relative (%) deltas, and timings.  Where the backend counted errors per
        utterance, also each rate's bootstrap interval (``cer_ci``), the paired
        interval of its change from the baseline (``cer_delta_ci``), the
        probability that the pruned model is better (``cer_p_improvement``),
        the rates against the dense model's own decode (``cer_to_dense``,
        ``wer_to_dense``, with intervals) and the counts themselves
        (``per_utt``).  Raises :class:`EvaluationError` when the decode fails or
        runs past the timeout.
        """
        pruned_model = Path(pruned_model).resolve()
        if not pruned_model.is_file():
            raise EvaluationError(f"{pruned_model}: the model to evaluate does not exist")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        base = self.baseline()
        start = time.perf_counter()
        metrics = self._evaluate(pruned_model, out_dir)
        metrics["eval_seconds"] = time.perf_counter() - start
        counts: dict[str, UtteranceCounts] = metrics.pop("per_utt", None) or {}
        hyps = metrics.pop("hyps", None)
        metrics["baseline"] = {k: base[k] for k in ("wer", "cer", "wer_ci", "cer_ci", "per_utt") if k in base}
        for rate in ("wer", "cer"):
            if rate in metrics and rate in base:
                metrics[f"{rate}_delta_abs"] = metrics[rate] - base[rate]
                metrics[f"{rate}_delta_rel"] = percent_change(metrics[rate], base[rate])
        if hyps is not None and self._baseline_hyps is not None:
            order = next(iter(counts.values())).utts if counts else tuple(hyps)
            counts.update(self._score_against_dense(hyps, metrics, order))
        self._add_intervals(metrics, counts)
        return metrics

    def _score_against_dense(self, hyps: Mapping[str, Sequence[str]], metrics: dict[str, Any],
                             order: Sequence[str]) -> dict[str, UtteranceCounts]:
        """``wer_to_dense``/``cer_to_dense``: the pruned hypotheses scored with the dense model's as references.

        Needs no transcript, so it measures on any audio how far pruning moved
        the decode.  A dense decode without a single word gives nothing.  The
        utterances are scored in ``order`` (then any others), so that their
        counts pair with the other measures'.
        """
        dense = self._baseline_hyps
        ranked = [u for u in order if u in dense] + [u for u in dense if u not in set(order)]
        try:
            score = score_corpus({u: dense[u] for u in ranked}, hyps, where="the dense model's hypotheses")
        except EvaluationError as e:
            log.warning("no rate against the dense decode: %s", e)
            return {}
        metrics["wer_to_dense"], metrics["cer_to_dense"] = score.wer.rate, score.cer.rate
        metrics["cer_to_dense_report"] = score.cer.report("CER")
        return per_utterance_counts(score, suffix="_to_dense")

    def _add_intervals(self, metrics: dict[str, Any], counts: Mapping[str, UtteranceCounts]) -> None:
        if not counts:
            return
        for measure, c in counts.items():
            metrics[f"{measure}_ci"] = list(rate_interval(c, self.bootstrap))
            dense = self._baseline_counts.get(measure)
            if dense is not None and dense.utts == c.utts:
                metrics[f"{measure}_delta_ci"] = list(difference_interval(c, dense, self.bootstrap))
                metrics[f"{measure}_p_improvement"] = probability_of_improvement(dense, c, self.bootstrap)
        metrics["bootstrap"] = self.bootstrap.describe()
        metrics["per_utt"] = counts_to_json(counts)

    def close(self) -> None:
        """Release what the evaluator holds (staging files); it cannot be used after."""

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TranscriptScoring:
    """Scoring for backends that produce hypotheses (vosk, torch), written once.

    The backend provides ``self.refs`` (normalised references by utterance;
    None for unlabelled audio, a data directory without ``text``),
    ``self.normalizer`` and ``self.data`` (the :class:`~kprune.data.datadir.DataDir`).
    """

    def _read_references(self) -> None:
        """``self.refs`` from ``self.data``'s transcripts (None when the data directory has no ``text``)."""
        if not (self.data.path / "text").is_file():
            self.refs = None
            log.warning("%s has no text: only the rates against the dense model's decode are measured", self.data.path)
            return
        self.refs = {utt: self.normalizer(text) for utt, text in self.data.text.items()}
        if not any(self.refs.values()):
            raise EvaluationError(f"{self.data.path / 'text'}: every transcript is empty after normalisation")

    def _transcript_metrics(self, hyps: Mapping[str, str], out_dir: Path | None = None) -> dict[str, Any]:
        """The scores of raw hypotheses (none without transcripts), their normalised words (``hyps``),
        and, with ``out_dir``, the files of :meth:`_write_outputs`."""
        metrics: dict[str, Any] = {"hyps": self._normalised(hyps), "num_utts": len(self.data.text)}
        if self.refs is None:
            if out_dir is not None:
                write_text_atomic(out_dir / "hyp.txt", "".join(f"{utt} {hyps.get(utt, '')}".rstrip() + "\n"
                                                               for utt in self.data.text))
            return metrics
        score = self._score(hyps)
        if out_dir is not None:
            self._write_outputs(out_dir, hyps, score)
        metrics.update(self._metrics(score))
        return metrics

    def _score(self, hyps: Mapping[str, str]) -> CorpusScore:
        normalised = {utt: self.normalizer(text) for utt, text in hyps.items()}
        return score_corpus(self.refs, normalised, where=str(self.data.path / "text"))

    @staticmethod
    def _metrics(score: CorpusScore) -> dict[str, Any]:
        return {
            "wer": score.wer.rate,
            "cer": score.cer.rate,
            "wer_report": score.wer.report("WER"),
            "cer_report": score.cer.report("CER"),
            "num_utts": score.num_utts,
            "per_utt": per_utterance_counts(score),
        }

    def _normalised(self, hyps: Mapping[str, str]) -> dict[str, list[str]]:
        """The hypotheses as scored (normalised words), for the rates against the dense decode."""
        return {utt: list(self.normalizer(text)) for utt, text in hyps.items()}

    def _write_outputs(self, out_dir: Path, hyps: Mapping[str, str], score: CorpusScore) -> None:
        """``hyp.txt`` (Kaldi style), ``per_utt``, ``per_utt.tsv`` and ``score.txt``."""
        hyp_lines = [f"{utt} {hyps.get(utt, '')}".rstrip() for utt in self.data.text]
        write_text_atomic(out_dir / "hyp.txt", "\n".join(hyp_lines) + "\n")
        write_text_atomic(out_dir / "per_utt", format_per_utt(score.utterances))
        write_text_atomic(out_dir / "per_utt.tsv", format_per_utt_tsv(score.utterances))
        write_text_atomic(out_dir / "score.txt", "\n".join(score.report_lines()) + "\n")


def per_utterance_counts(score: CorpusScore, suffix: str = "") -> dict[str, UtteranceCounts]:
    """``wer`` and ``cer`` (plus ``suffix``) errors and reference tokens of every scored utterance."""
    utts = [u.utt_id for u in score.utterances]
    out = {}
    for measure in ("wer", "cer"):
        alignments = [u.words if measure == "wer" else u.chars for u in score.utterances]
        out[measure + suffix] = UtteranceCounts.of(utts, [a.counts.errors for a in alignments],
                                                   [a.counts.ref_len for a in alignments])
    return out


def percent_change(value: float, base: float) -> float | None:
    """``100 * (value - base) / base``: the change in % of ``base``; 0 when both are 0, None when only base is."""
    if base == 0:
        return 0.0 if value == 0 else None
    return 100.0 * (value - base) / base


def _read_cache(path: Path, key: dict[str, Any], quiet: bool = False) -> dict[str, Any] | None:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        if not quiet:
            log.warning("ignoring unreadable baseline cache %s: %s", path, e)
        return None
    if not isinstance(content, dict) or content.get("key") != key:
        # A hash collision of the file name or a hand-edited file: decode again.
        if not quiet:
            log.warning("ignoring baseline cache %s: it was made for other settings", path)
        return None
    return content.get("record")


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file (UTF-8) atomically."""
    write_atomically(path, text)


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON (UTF-8, indented) atomically."""
    write_json_atomically(path, value)


# ------------------------------------------------------------ config helpers


def config_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict from a DictConfig (resolved) or a mapping."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - hydra-core is a dependency
        DictConfig = ()  # type: ignore[assignment]
    if DictConfig and isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise ConfigError(f"eval: expected a mapping of settings, found {type(cfg).__name__}")


def check_keys(cfg: Mapping[str, Any], known: set[str], backend: str) -> None:
    """Refuse settings a backend does not know (typos would be silently ignored)."""
    unknown = sorted(set(cfg) - known - {"name"})
    if unknown:
        raise ConfigError(
            f"eval.{unknown[0]}: unknown setting for eval={backend}; known: {', '.join(sorted(known))}"
        )


def absolute_path(value: str | os.PathLike) -> Path:
    """A config path made absolute: against Hydra's original cwd under Hydra, else cwd."""
    from hydra.utils import to_absolute_path

    return Path(to_absolute_path(os.path.expanduser(os.fspath(value))))


def positive_number(cfg: Mapping[str, Any], key: str, default: float, integer: bool = False) -> Any:
    """A setting that must be a number > 0 (an int when ``integer``)."""
    from kprune import validate

    if integer:
        return validate.integer(cfg, key, default, f"eval.{key}")
    value = cfg.get(key, default)  # inf is allowed (no limit), None is not: not validate.number's reading
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"eval.{key}: expected a positive number of seconds, found {value!r}")
    return value


def bool_setting(cfg: Mapping[str, Any], key: str, default: bool) -> bool:
    """A setting that must be true or false."""
    from kprune import validate

    return validate.boolean(cfg, key, default, f"eval.{key}")


def mandatory(cfg: Mapping[str, Any], key: str, backend: str, hint: str) -> Any:
    """A setting that has no default (``???`` in the YAML)."""
    value = cfg.get(key)
    if value is None or value == "???" or value == "":
        raise ConfigError(f"eval.{key} is required for eval={backend}: {hint}")
    return value
