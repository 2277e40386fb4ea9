"""``eval=kaldi``: run a Kaldi recipe's decode command for every point.

The pruned ``final.mdl`` is staged in a new experiment directory whose other
entries are links to the original experiment directory's (``tree``,
``frame_subsampling_factor``, ``cmvn_opts``, ...; earlier ``decode*``
directories are left out), and the command template runs from the recipe
directory with these placeholders filled in (shell-quoted):

``{model}``       the staged ``final.mdl`` (a link to the pruned model)
``{model_dir}``   the staged experiment directory
``{decode_dir}``  ``{model_dir}/<eval.decode_name>``: Kaldi's decode scripts
                  read the model from the decode directory's parent
``{nj}``          ``eval.nj``

The result is what Kaldi's scoring wrote into the decode directory:
``scoring_kaldi/best_wer`` (``%WER 8.35 [ 471 / 5643, 67 ins, 99 del, 305 sub ]
exp/.../wer_10_0.0``), or else the lowest of the ``wer_*`` files; the same for
``best_cer`` / ``cer_*`` where the recipe scores characters.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from kprune.errors import ConfigError, EvaluationError
from kprune.evaluate.base import (
    CACHE_FORMAT,
    Evaluator,
    absolute_path,
    check_keys,
    mandatory,
    per_utterance_counts,
    positive_number,
    register_evaluator,
    write_text_atomic,
)
from kprune.fileio import file_digest
from kprune.evaluate.bootstrap import counts_from_json, counts_to_json
from kprune.evaluate.scoring import CorpusScore, ErrorCounts, score_corpus
from kprune.evaluate.staging import remove_staged, stage_model_dir

log = logging.getLogger(__name__)

PLACEHOLDERS = ("model", "model_dir", "decode_dir", "nj")
_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")
_REPORT = re.compile(
    r"^%(?:WER|CER)\s+(\S+)\s+\[\s*(\d+)\s*/\s*(\d+)\s*,\s*(\d+)\s+ins\s*,\s*(\d+)\s+del\s*,\s*(\d+)\s+sub\s*\]\s*(.*)$"
)
_SCORED = re.compile(r"^Scored\s+(\d+)\s+sentences")
_LMWT_PENALTY = re.compile(r"^(?:wer|cer)_(\d+)(?:_([0-9.]+))?$")
#: Marks a directory as staged by kprune, so a rerun may replace it.
_STAGED_MARK = ".kprune-staged"
#: Files of data directories named in the command whose content keys the baseline.
_DATA_FILES = ("text", "wav.scp", "segments", "feats.scp", "utt2spk")


@dataclass(frozen=True)
class KaldiScore:
    """One ``%WER`` line of Kaldi's scoring, and the file it points to."""

    counts: ErrorCounts
    source: Path  # the file the line was read from
    best_file: str  # the wer_* / cer_* file it names (itself, for those)


def parse_report_line(line: str, where: str) -> tuple[ErrorCounts, str] | None:
    """Counts and trailing text of a ``%WER ... [ e / n, i ins, d del, s sub ]`` line.

    Returns None for lines of another kind; raises :class:`EvaluationError`
    when the counts do not add up.
    """
    match = _REPORT.match(line.strip())
    if not match:
        return None
    errors, total, ins, dels, subs = (int(g) for g in match.group(2, 3, 4, 5, 6))
    counts = ErrorCounts(total, ins, dels, subs)
    if counts.errors != errors:
        raise EvaluationError(f"{where}: {errors} errors but {ins} ins + {dels} del + {subs} sub in {line.strip()!r}")
    return counts, match.group(7).strip()


def _read_report(path: Path) -> tuple[ErrorCounts, str] | None:
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parsed = parse_report_line(line, str(path))
        if parsed is not None:
            return parsed
    return None


def read_best_score(decode_dir: Path, kind: str = "wer") -> KaldiScore | None:
    """The best ``kind`` ("wer" or "cer") that Kaldi's scoring left in ``decode_dir``.

    ``scoring_kaldi/best_<kind>`` when it exists, else the ``<kind>_*`` file
    with the fewest errors (the first by name on a tie); None when neither is
    there.
    """
    best = decode_dir / "scoring_kaldi" / f"best_{kind}"
    if best.is_file():
        parsed = _read_report(best)
        if parsed is None:
            raise EvaluationError(
                f"{best}: expected a line like '%WER 8.35 [ 471 / 5643, 67 ins, 99 del, 305 sub ] exp/.../wer_10_0.0'"
            )
        counts, tail = parsed
        return KaldiScore(counts, best, Path(tail).name if tail else "")
    found = []
    for path in sorted(decode_dir.glob(f"{kind}_*")):
        if not path.is_file():
            continue
        parsed = _read_report(path)
        if parsed is not None:
            found.append((parsed[0].errors, path.name, KaldiScore(parsed[0], path, path.name)))
    if not found:
        return None
    return min(found, key=lambda f: (f[0], f[1]))[2]


def _scored_sentences(decode_dir: Path, score: KaldiScore) -> int | None:
    path = decode_dir / score.best_file if score.best_file else score.source
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _SCORED.match(line.strip())
        if match:
            return int(match.group(1))
    return None


def _best_hyp_file(decode_dir: Path, score: KaldiScore) -> Path | None:
    """``scoring_kaldi/penalty_P/L.txt`` (the hypotheses) of the best ``wer_L_P``."""
    match = _LMWT_PENALTY.match(score.best_file)
    if not match:
        return None
    lmwt, penalty = match.groups()
    candidates = [decode_dir / "scoring_kaldi" / f"penalty_{penalty}" / f"{lmwt}.txt"] if penalty else []
    candidates.append(decode_dir / "scoring_kaldi" / f"{lmwt}.txt")
    return next((c for c in candidates if c.is_file()), None)


def _read_kaldi_text(path: Path) -> dict[str, list[str]]:
    """A Kaldi ``text``-style file: ``utt-id word word ...`` per line."""
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if parts:
            out[parts[0]] = parts[1:]
    return out


def _best_hypotheses_scored(decode_dir: Path, wer: KaldiScore) -> tuple[CorpusScore, dict[str, list[str]], Path] | None:
    """The best WER's hypotheses scored again per utterance, as the recipe's scoring saw them.

    Scores ``scoring_kaldi/penalty_P/LMWT.txt`` against ``scoring_kaldi/test_filt.txt``
    (both already filtered by the recipe) over the utterances present in the
    hypotheses, as Kaldi's ``compute-wer --mode=present`` does.  None when those
    files are absent.
    """
    refs_path = decode_dir / "scoring_kaldi" / "test_filt.txt"
    hyp_path = _best_hyp_file(decode_dir, wer) if wer.best_file else None
    if hyp_path is None or not refs_path.is_file():
        return None
    hyps = _read_kaldi_text(hyp_path)
    refs = {utt: words for utt, words in _read_kaldi_text(refs_path).items() if utt in hyps}
    if not refs:
        return None
    return score_corpus(refs, hyps, where=str(refs_path)), hyps, hyp_path


def _utterance_metrics(decode_dir: Path, wer: KaldiScore, cer: KaldiScore | None) -> dict[str, Any]:
    """Per-utterance counts (``per_utt``, as JSON), the hypotheses (``hyps``) and, when the
    recipe scores words only (WSJ does), the CER of the best WER's hypotheses.

    A measure's counts are kept only where they add up to the recipe's own
    totals (its ``best_wer``, ``best_cer``), so an interval is never drawn
    around another number than the one reported.
    """
    scored = _best_hypotheses_scored(decode_dir, wer)
    if scored is None:
        return {}
    score, hyps, hyp_path = scored
    counts = per_utterance_counts(score)
    reported = {"wer": wer.counts, "cer": cer.counts if cer is not None else score.cer}
    for measure, total in reported.items():
        c = counts[measure]
        if (int(c.errors.sum()), int(c.ref_len.sum())) != (total.errors, total.ref_len):
            log.warning("%s: the per-utterance %s counts (%d / %d) differ from the recipe's (%d / %d); "
                        "no interval for it", hyp_path, measure.upper(), c.errors.sum(), c.ref_len.sum(),
                        total.errors, total.ref_len)
            del counts[measure]
    out: dict[str, Any] = {"per_utt": counts_to_json(counts), "hyps": hyps}
    if cer is None:
        out.update({"cer": score.cer.rate, "cer_report": score.cer.report("CER"), "cer_source": str(hyp_path)})
    return out


def _with_counts(record: Mapping[str, Any]) -> dict[str, Any]:
    """A decode's record (JSON, as cached) with ``per_utt`` as :class:`UtteranceCounts`."""
    metrics = dict(record)
    if "per_utt" in metrics:
        metrics["per_utt"] = counts_from_json(metrics["per_utt"], "the Kaldi decode's scoring")
    return metrics


def fill_command(template: str, values: Mapping[str, Any]) -> str:
    """Replace ``{model}``-style placeholders with shell-quoted values.

    Shell expansions such as ``${dir}`` are left alone.
    """
    return _PLACEHOLDER.sub(lambda m: shlex.quote(str(values[m.group(1)])), template)


def _dir_signature(path: Path) -> list[list[Any]]:
    """Top-level files of a directory by name and size; data files by content."""
    signature = []
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("decode") or not entry.is_file():
            continue
        item: list[Any] = [entry.name, entry.stat().st_size]
        if entry.name in _DATA_FILES:
            item.append(file_digest(entry))
        signature.append(item)
    return signature


@register_evaluator("kaldi")
class KaldiEvaluator(Evaluator):
    """Runs a recipe's decode command on a staged experiment directory."""

    SETTINGS = {"command", "recipe_dir", "exp_dir", "decode_name", "nj", "timeout", "cache_dir", "keep_lattices"}

    def __init__(
        self,
        model_path: Path,
        command: str,
        *,
        recipe_dir: Path,
        exp_dir: Path | None = None,
        decode_name: str = "decode",
        nj: int = 4,
        timeout: float = 7200.0,
        cache_dir: Path | None = None,
        keep_lattices: bool = False,
    ):
        super().__init__(cache_dir)
        self.model_path = Path(model_path).resolve()
        if not self.model_path.is_file():
            raise EvaluationError(f"{self.model_path}: the original model does not exist")
        self.command = command
        try:
            shlex.split(command)
        except ValueError as e:
            raise ConfigError(f"eval.command: cannot split it into shell words ({e}): {command!r}") from None
        unknown = sorted({m.group(1) for m in _PLACEHOLDER.finditer(command)} - set(PLACEHOLDERS))
        if unknown:
            known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            raise ConfigError(f"eval.command: unknown placeholder {{{unknown[0]}}}; known: {known}")
        if "{decode_dir}" not in command:
            raise ConfigError(
                "eval.command: expected {decode_dir} in the command, where Kaldi's scoring writes wer_* files"
            )
        self.recipe_dir = Path(recipe_dir).resolve()
        if not self.recipe_dir.is_dir():
            raise ConfigError(f"eval.recipe_dir: {self.recipe_dir} is not a directory (the recipe's s5 directory)")
        self.exp_dir = Path(exp_dir).resolve() if exp_dir else self.model_path.parent
        if not self.exp_dir.is_dir():
            raise ConfigError(f"eval.exp_dir: {self.exp_dir} is not a directory")
        try:
            self.model_slot = self.model_path.relative_to(self.exp_dir).as_posix()
        except ValueError:
            self.model_slot = "final.mdl"
        if not decode_name or "/" in decode_name:
            raise ConfigError(f"eval.decode_name: expected a directory name, found {decode_name!r}")
        self.decode_name = decode_name
        self.nj = nj
        self.timeout = float(timeout)
        self.keep_lattices = keep_lattices

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], model_path: Path) -> KaldiEvaluator:
        check_keys(cfg, cls.SETTINGS, "kaldi")
        command = mandatory(
            cfg, "command", "kaldi",
            "a decode command template, e.g. "
            "'steps/nnet3/decode.sh --nj {nj} exp/tri4b/graph_tgpr data/test_dev93_hires {decode_dir}'",
        )
        keep = cfg.get("keep_lattices", False)
        if not isinstance(keep, bool):
            raise ConfigError(f"eval.keep_lattices: expected true or false, found {keep!r}")
        return cls(
            Path(model_path),
            str(command),
            recipe_dir=absolute_path(cfg.get("recipe_dir") or "."),
            exp_dir=absolute_path(cfg["exp_dir"]) if cfg.get("exp_dir") else None,
            decode_name=str(cfg.get("decode_name", "decode")),
            nj=positive_number(cfg, "nj", 4, integer=True),
            timeout=positive_number(cfg, "timeout", 7200.0),
            cache_dir=absolute_path(cfg["cache_dir"]) if cfg.get("cache_dir") else None,
            keep_lattices=keep,
        )

    # ------------------------------------------------------------ Evaluator

    def cache_key(self) -> dict[str, Any]:
        inputs = {}
        for token in shlex.split(self.command):
            if "{" in token:
                continue
            path = (self.recipe_dir / token).resolve()
            if path.is_dir() and path != self.recipe_dir:
                inputs[token] = _dir_signature(path)
        return {
            "backend": "kaldi",
            "format": CACHE_FORMAT,
            "model": file_digest(self.model_path),
            "model_slot": self.model_slot,
            "exp_dir": _dir_signature(self.exp_dir),
            "command": self.command,
            "recipe_dir": str(self.recipe_dir),
            "decode_name": self.decode_name,
            "inputs": inputs,
        }

    def _decode_baseline(self) -> dict[str, Any]:
        parent = self.cache_dir / "baseline"
        parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="kaldi-baseline-", dir=parent))
        metrics = self._run(self.model_path, work)
        shutil.rmtree(work)  # only the numbers are kept; a failure leaves the logs
        return metrics

    def _baseline_metrics(self, record: dict[str, Any]) -> dict[str, Any]:
        return _with_counts(record)

    def _evaluate(self, model: Path, out_dir: Path) -> dict[str, Any]:
        return _with_counts(self._run(model, out_dir))

    # ------------------------------------------------------------ running

    def _stage(self, model: Path, out_dir: Path) -> Path:
        staged = out_dir / self.exp_dir.name
        if staged.exists() or staged.is_symlink():
            if not (staged / _STAGED_MARK).is_file():
                raise EvaluationError(f"{staged}: exists and was not staged by kprune; refusing to replace it")
            remove_staged(staged)
        skip = lambda name: name.startswith("decode") or name in (self.decode_name, _STAGED_MARK)
        stage_model_dir(self.exp_dir, staged, {self.model_slot: model}, skip=skip)
        (staged / _STAGED_MARK).write_text(f"staged by kprune from {self.exp_dir}\n", encoding="utf-8")
        return staged

    def _run(self, model: Path, out_dir: Path) -> dict[str, Any]:
        staged = self._stage(model, out_dir)
        decode_dir = staged / self.decode_name
        command = fill_command(
            self.command,
            {"model": staged / self.model_slot, "model_dir": staged, "decode_dir": decode_dir, "nj": self.nj},
        )
        log_path = out_dir / "decode.log"
        log.info("eval=kaldi: running %s", command)
        start = time.perf_counter()
        self._run_command(command, log_path, model)
        decode_seconds = time.perf_counter() - start

        wer = read_best_score(decode_dir, "wer")
        if wer is None:
            raise EvaluationError(
                f"{decode_dir}: the decode command succeeded but left neither scoring_kaldi/best_wer "
                f"nor wer_* files; log: {log_path}"
            )
        metrics: dict[str, Any] = {
            "wer": wer.counts.rate,
            "wer_report": wer.counts.report("WER"),
            "wer_source": str(wer.source if not wer.best_file else decode_dir / wer.best_file),
            "decode_seconds": decode_seconds,
        }
        cer = read_best_score(decode_dir, "cer")
        if cer is not None:
            metrics.update({"cer": cer.counts.rate, "cer_report": cer.counts.report("CER")})
        metrics.update(_utterance_metrics(decode_dir, wer, cer))
        num_utts = _scored_sentences(decode_dir, wer)
        if num_utts is not None:
            metrics["num_utts"] = num_utts
        self._collect_outputs(decode_dir, wer, out_dir, metrics)
        if not self.keep_lattices:
            for lattice in decode_dir.glob("lat.*.gz"):
                lattice.unlink()
        return metrics

    def _run_command(self, command: str, log_path: Path, model: Path) -> None:
        shell = shutil.which("bash") or "/bin/sh"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [shell, "-c", command],
                cwd=self.recipe_dir,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # run.pl/queue.pl children are killed with it
            )
            try:
                returncode = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise EvaluationError(
                    f"Kaldi decode of {model} ran past eval.timeout={self.timeout:g} s; log: {log_path}"
                ) from None
            finally:
                # On a timeout, Ctrl-C or any other exit, take the whole decode
                # (run.pl and its jobs) down with us.
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        if returncode != 0:
            lines = [l for l in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
            last = lines[-1].strip() if lines else "no output"
            raise EvaluationError(
                f"Kaldi decode of {model} failed (exit status {returncode}): {last}; log: {log_path}"
            )

    def _collect_outputs(self, decode_dir: Path, wer: KaldiScore, out_dir: Path, metrics: dict[str, Any]) -> None:
        """Copy the best hypotheses and per-utterance details beside the metrics."""
        report = [metrics["wer_report"] + (f" {metrics['wer_source']}")]
        if "cer_report" in metrics:
            report.append(metrics["cer_report"])
        write_text_atomic(out_dir / "score.txt", "\n".join(report) + "\n")
        hyp_file = _best_hyp_file(decode_dir, wer)
        if hyp_file is not None:
            write_text_atomic(out_dir / "hyp.txt", hyp_file.read_text(encoding="utf-8", errors="replace"))
        per_utt = decode_dir / "scoring_kaldi" / "wer_details" / "per_utt"
        if per_utt.is_file():
            write_text_atomic(out_dir / "per_utt", per_utt.read_text(encoding="utf-8", errors="replace"))
