"""``eval=vosk``: decode a Kaldi data directory with a Vosk model directory.

For every point the pruned ``final.mdl`` is staged in a copy of the original
Vosk model directory made of symbolic links (:mod:`kprune.evaluate.staging`),
decoded by a worker subprocess with ``eval.jobs`` threads sharing one model
(:mod:`kprune.evaluate.vosk_worker`), and scored with
:mod:`kprune.evaluate.scoring` after :mod:`kprune.evaluate.normalize`.

What does not depend on the pruned model is done once per evaluator: the data
directory is read and its audio checked (:mod:`kprune.data.datadir`), the
references are normalised, and the baseline is decoded or read from the cache.
The model itself has to be loaded for every point (Vosk cannot swap the
acoustic model of a loaded ``vosk.Model``); that costs about 2 s here.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from kprune.errors import ConfigError, EvaluationError
from kprune.data import datadir
from kprune.evaluate.base import (
    CACHE_FORMAT,
    Evaluator,
    TranscriptScoring,
    absolute_path,
    bool_setting,
    check_keys,
    positive_number,
    register_evaluator,
)
from kprune.fileio import file_digest
from kprune.evaluate.normalize import Normalizer
from kprune.evaluate.staging import remove_staged, stage_model_dir
from kprune.evaluate.vosk_worker import CHUNK_SECONDS, Stopped, WorkItem, decode_items, load_model

log = logging.getLogger(__name__)

#: Files of the model directory up to this size are content-hashed for the
#: baseline key (configs, small graph tables); larger ones by size.
_HASH_BELOW = 1 << 20
#: The worker's entry (``-m`` would warn: the package imports the module first).
_WORKER_MAIN = "import sys; from kprune.evaluate.vosk_worker import main; sys.exit(main())"


def find_vosk_model_dir(model_path: Path) -> Path:
    """The Vosk model directory that holds ``model_path``.

    ``<dir>/am/final.mdl`` with ``<dir>/conf/model.conf`` (or ``mfcc.conf``)
    and ``<dir>/graph/`` (the current layout), or ``<dir>/final.mdl`` with
    ``<dir>/mfcc.conf`` and ``HCLG.fst`` or ``HCLr.fst`` (the old one).
    """
    parent = model_path.parent
    top = parent.parent
    if parent.name == "am" and (top / "graph").is_dir() and (
        (top / "conf" / "model.conf").is_file() or (top / "conf" / "mfcc.conf").is_file()
    ):
        return top
    if (parent / "mfcc.conf").is_file() and ((parent / "HCLG.fst").is_file() or (parent / "HCLr.fst").is_file()):
        return parent
    raise ConfigError(
        f"eval.model_dir: cannot find the Vosk model directory of {model_path}; expected it at "
        f"<dir>/am/final.mdl beside <dir>/conf/model.conf and <dir>/graph/; set eval.model_dir=DIR"
    )


def _tree_signature(root: Path, skip: Path) -> list[list[Any]]:
    """Relative path, size and (for small files) content hash of every file under ``root``."""
    signature = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path == skip:
                continue
            size = path.stat().st_size
            entry: list[Any] = [str(path.relative_to(root)), size]
            if size < _HASH_BELOW:
                entry.append(file_digest(path))
            signature.append(entry)
    return signature


@register_evaluator("vosk")
class VoskEvaluator(TranscriptScoring, Evaluator):
    """Decodes with Vosk and scores WER and CER against a Kaldi data directory."""

    SETTINGS = {
        "data", "model_dir", "jobs", "timeout", "cache_dir", "normalize",
        "isolate", "progress", "chunk_seconds", "dither", "allow_pipes", "signals",
    }

    def __init__(
        self,
        model_path: Path,
        data_dir: Path,
        *,
        model_dir: Path | None = None,
        jobs: int = 0,
        timeout: float = 3600.0,
        cache_dir: Path | None = None,
        normalizer: Normalizer | None = None,
        isolate: bool = True,
        progress: bool | None = None,
        chunk_seconds: float = CHUNK_SECONDS,
        dither: float | None = 0.0,
        allow_pipes: bool = True,
        signals: bool = False,
    ):
        super().__init__(cache_dir)
        self.model_path = Path(model_path).resolve()
        if not self.model_path.is_file():
            raise EvaluationError(f"{self.model_path}: the original model does not exist")
        self.model_dir = Path(model_dir).resolve() if model_dir else find_vosk_model_dir(self.model_path)
        if not self.model_dir.is_dir():
            raise ConfigError(f"eval.model_dir: {self.model_dir} is not a directory")
        self.model_slot = self._model_slot()
        self.jobs = jobs or _usable_cpus()
        self.timeout = float(timeout)
        self.normalizer = normalizer or Normalizer()
        self.isolate = isolate
        self.progress = progress
        self.chunk_seconds = chunk_seconds
        self.dither = dither
        conf = self.model_dir / "conf" / "mfcc.conf"
        self.feature_conf = conf if conf.is_file() else self.model_dir / "mfcc.conf"
        self.features = datadir.read_feature_conf(self.feature_conf)
        self.staged_files = self._staged_files()

        self.data = datadir.read_data_dir(Path(data_dir), transcripts=(Path(data_dir) / "text").is_file())
        self.work_dir = Path(tempfile.mkdtemp(prefix="kprune-vosk-"))
        self._cleanup = weakref.finalize(self, remove_staged, self.work_dir)
        self.audio = datadir.prepare_audio(self.data, self.features, self.work_dir / "audio", allow_pipes)
        self._read_references()
        self.signals = signals
        self._signals: Any = None
        self._stage_count = 0
        log.info(
            "eval=vosk: %d utterances (%.1f s) from %s, model directory %s, %d jobs",
            len(self.audio.items), self.audio.seconds, self.data.path, self.model_dir, self.jobs,
        )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], model_path: Path) -> VoskEvaluator:
        check_keys(cfg, cls.SETTINGS, "vosk")
        if not cfg.get("data"):
            raise ConfigError("eval.data is required for eval=vosk: a Kaldi data directory with wav.scp and text")
        jobs = cfg.get("jobs", 0)
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0:
            raise ConfigError(
                f"eval.jobs: expected a number of decoding threads >= 0 (0: one per core), found {jobs!r}"
            )
        progress = cfg.get("progress", "auto")
        if progress not in (True, False, "auto", None):
            raise ConfigError(f"eval.progress: expected true, false or auto, found {progress!r}")
        isolate = cfg.get("isolate", True)
        if not isinstance(isolate, bool):
            raise ConfigError(f"eval.isolate: expected true or false, found {isolate!r}")
        return cls(
            Path(model_path),
            absolute_path(cfg["data"]),
            model_dir=absolute_path(cfg["model_dir"]) if cfg.get("model_dir") else None,
            jobs=jobs,
            timeout=positive_number(cfg, "timeout", 3600.0),
            cache_dir=absolute_path(cfg["cache_dir"]) if cfg.get("cache_dir") else None,
            normalizer=Normalizer.from_config(cfg.get("normalize")),
            isolate=isolate,
            progress=None if progress in ("auto", None) else progress,
            chunk_seconds=positive_number(cfg, "chunk_seconds", CHUNK_SECONDS),
            dither=_dither(cfg.get("dither", 0.0)),
            allow_pipes=bool_setting(cfg, "allow_pipes", True),
            signals=bool_setting(cfg, "signals", False),
        )

    def _staged_files(self) -> dict[str, str]:
        """Feature config with ``--dither`` set, when ``dither`` is not None.

        Kaldi dithers every frame with noise from a random state seeded by a
        process-wide counter, so with several threads the noise an utterance
        gets depends on scheduling and the same model decodes differently
        twice.  ``--dither=0`` makes every decode repeat exactly, and a sweep
        point at threshold 0 gives exactly the baseline.
        """
        if self.dither is None:
            return {}
        text = self.feature_conf.read_text(encoding="utf-8") if self.feature_conf.is_file() else ""
        if text and not text.endswith("\n"):
            text += "\n"
        # The last occurrence of an option wins in Kaldi's config files.
        text += f"# set by kprune (eval.dither)\n--dither={self.dither:g}\n"
        return {self.feature_conf.relative_to(self.model_dir).as_posix(): text}

    def _model_slot(self) -> str:
        try:
            return self.model_path.relative_to(self.model_dir).as_posix()
        except ValueError:
            return "am/final.mdl" if (self.model_dir / "am").is_dir() else "final.mdl"

    # ------------------------------------------------------------ Evaluator

    def cache_key(self) -> dict[str, Any]:
        # The cache holds raw hypotheses, scored again on every read, so the
        # normalisation settings are not part of the key.
        try:
            vosk_version = metadata.version("vosk")
        except metadata.PackageNotFoundError:
            vosk_version = None
        return {
            "backend": "vosk",
            "format": CACHE_FORMAT,
            "model": file_digest(self.model_path),
            "model_dir": _tree_signature(self.model_dir, self.model_dir / self.model_slot),
            "audio": self.audio.digest,
            "text": file_digest(self.data.path / "text") if self.refs is not None else None,
            "chunk_seconds": self.chunk_seconds,
            "dither": self.dither,
            "vosk": vosk_version,
        }

    def _decode_baseline(self) -> dict[str, Any]:
        log_path = self.work_dir / "baseline-decode.log"
        hyps, timing = self._decode(self.model_path, log_path, "baseline")
        return {"hyps": hyps, **timing}

    def _baseline_metrics(self, record: dict[str, Any]) -> dict[str, Any]:
        metrics = self._transcript_metrics(record["hyps"])
        metrics.update({k: record[k] for k in ("load_seconds", "decode_seconds", "audio_seconds") if k in record})
        if record.get("audio_seconds"):
            metrics["rtf"] = record["decode_seconds"] / record["audio_seconds"]
        return metrics

    def _evaluate(self, model: Path, out_dir: Path) -> dict[str, Any]:
        hyps, timing = self._decode(model, out_dir / "decode.log", model.parent.name or str(model))
        metrics = self._transcript_metrics(hyps, out_dir)
        metrics.update(timing)
        metrics["rtf"] = timing["decode_seconds"] / timing["audio_seconds"]
        if self.signals:  # the frame-level companion: the pruned network's outputs against the dense one's
            metrics.update(self._output_signals(model, out_dir))
        return metrics

    def _output_signals(self, model: Path, out_dir: Path) -> dict[str, Any]:
        """``kl``, ``argmax_agreement``, ``snr_db`` of ``eval=signals`` on the same audio (built once)."""
        if self._signals is None:
            from kprune.evaluate.signals_backend import SignalsEvaluator

            self._signals = SignalsEvaluator(self.model_path, self.data.path, model_dir=self.model_dir,
                                             cache_dir=self.cache_dir)
        return self._signals._evaluate(model, out_dir)

    def close(self) -> None:
        self._cleanup()

    # ------------------------------------------------------------ decoding

    def _decode(self, model: Path, log_path: Path, label: str) -> tuple[dict[str, str], dict[str, float]]:
        """Stage ``model`` in a linked model directory and decode every utterance."""
        self._stage_count += 1
        stage = self.work_dir / f"model-{self._stage_count}"
        stage_model_dir(self.model_dir, stage, {self.model_slot: model}, self.staged_files)
        try:
            run = self._run_subprocess if self.isolate or _kaldifst_loaded() else self._run_in_process
            return run(stage, model, log_path, label)
        finally:
            remove_staged(stage)

    def _items(self) -> list[WorkItem]:
        return [WorkItem(i.utt_id, str(i.path), i.offset, i.nbytes, i.rate) for i in self.audio.items]

    def _progress_bar(self, label: str):
        from tqdm import tqdm

        disable = None if self.progress is None else not self.progress
        return tqdm(total=len(self.audio.items), unit="utt", desc=f"decode {label}", leave=False, disable=disable)

    def _finish(self, hyps: dict[str, str], load_seconds: float, decode_seconds: float, model: Path):
        missing = [utt for utt in self.data.text if utt not in hyps]
        if missing:
            raise EvaluationError(
                f"Vosk decode of {model} returned no result for {len(missing)} utterances, e.g. {missing[0]}"
            )
        timing = {
            "load_seconds": load_seconds,
            "decode_seconds": decode_seconds,
            "audio_seconds": self.audio.seconds,
        }
        return hyps, timing

    def _timeout_error(self, model: Path, done: int, log_path: Path | None) -> EvaluationError:
        where = f"; log: {log_path}" if log_path else ""
        return EvaluationError(
            f"Vosk decode of {model} ran past eval.timeout={self.timeout:g} s "
            f"({done} of {len(self.audio.items)} utterances decoded){where}"
        )

    def _run_in_process(self, stage: Path, model: Path, log_path: Path, label: str):
        stop = threading.Event()
        timer = threading.Timer(self.timeout, stop.set)
        timer.daemon = True
        timer.start()
        hyps: dict[str, str] = {}
        try:
            start = time.perf_counter()
            try:
                vosk_model = load_model(str(stage))
            except RuntimeError as e:
                raise EvaluationError(f"{model}: {e}") from e
            load_seconds = time.perf_counter() - start
            with self._progress_bar(label) as bar:

                def on_result(utt: str, text: str, seconds: float) -> None:
                    hyps[utt] = text
                    bar.update(1)

                try:
                    decode_items(vosk_model, self._items(), self.jobs, on_result, stop, self.chunk_seconds)
                except Stopped:
                    raise self._timeout_error(model, len(hyps), None) from None
                except RuntimeError as e:
                    raise EvaluationError(f"{model}: {e}") from e
            if stop.is_set():
                raise self._timeout_error(model, len(hyps), None)
            decode_seconds = time.perf_counter() - start - load_seconds
        finally:
            timer.cancel()
        return self._finish(hyps, load_seconds, decode_seconds, model)

    def _run_subprocess(self, stage: Path, model: Path, log_path: Path, label: str):
        request = self.work_dir / f"request-{self._stage_count}.json"
        request.write_text(
            json.dumps({
                "model_dir": str(stage),
                "jobs": self.jobs,
                "chunk_seconds": self.chunk_seconds,
                "items": [asdict(item) for item in self._items()],
            }),
            encoding="utf-8",
        )
        env = dict(os.environ)
        # The worker imports kprune from wherever this process did, installed or not.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        hyps: dict[str, str] = {}
        load_seconds = 0.0
        cpu_seconds = None
        start = time.perf_counter()
        deadline = start + self.timeout
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_MAIN, str(request)],
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=env,
                start_new_session=True,  # its own process group, killed as one on timeout
            )
            lines: queue.Queue[bytes | None] = queue.Queue()
            reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
            reader.start()
            try:
                with self._progress_bar(label) as bar:
                    while True:
                        try:
                            line = lines.get(timeout=max(0.0, deadline - time.perf_counter()))
                        except queue.Empty:
                            raise self._timeout_error(model, len(hyps), log_path) from None
                        if line is None:
                            break
                        message = _parse_message(line)
                        if message is None:
                            continue
                        if "loaded" in message:
                            load_seconds = message["loaded"]
                        elif "cpu" in message:
                            cpu_seconds = message["cpu"]
                        else:
                            hyps[message["utt"]] = message["text"]
                            bar.update(1)
                returncode = proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                raise self._timeout_error(model, len(hyps), log_path) from None
            finally:
                _stop_process(proc)
                reader.join(timeout=5)
        if returncode != 0:
            raise EvaluationError(
                f"Vosk decode of {model} failed ({_describe_exit(returncode)}): {_last_line(log_path)}; log: {log_path}"
            )
        decode_seconds = time.perf_counter() - start - load_seconds
        hyps, timing = self._finish(hyps, load_seconds, decode_seconds, model)
        if cpu_seconds is not None:
            timing["cpu_seconds"] = cpu_seconds
        return hyps, timing


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _kaldifst_loaded() -> bool:
    """libvosk hangs when loaded into a process that already loaded kaldifst
    (eval=torch's decoder), so such a process always decodes in a child."""
    if "kaldifst" in sys.modules:
        log.warning("eval.isolate=false ignored: kaldifst is loaded in this process, and libvosk hangs beside it")
        return True
    return False


def _dither(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"eval.dither: expected null (the model's own) or a number >= 0, found {value!r}")
    return float(value)


def _pump(stream, lines: queue.Queue) -> None:
    """Move the worker's stdout lines into a queue (None at the end)."""
    try:
        for line in stream:
            lines.put(line)
    finally:
        lines.put(None)


def _parse_message(line: bytes) -> dict[str, Any] | None:
    """A worker line as a dict; anything else (a stray print of a library) is skipped."""
    try:
        message = json.loads(line)
    except ValueError:
        message = None
    if not isinstance(message, dict) or not message.keys() & {"loaded", "utt", "cpu"}:
        log.debug("ignoring worker output %r", line[:200])
        return None
    return message


def _stop_process(proc: subprocess.Popen) -> None:
    """Kill the worker's process group if it still runs, and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    if proc.stdout:
        proc.stdout.close()


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _last_line(path: Path) -> str:
    """What went wrong, in one line, from the worker's log.

    The worker's own message (the last line it wrote) and, when Kaldi logged
    one, its last ERROR line, which usually says why.
    """
    try:
        lines = [l.strip() for l in path.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
    except OSError:
        return "no log"
    if not lines:
        return "no output"
    ours = [l.removeprefix("kprune-vosk-worker: ") for l in lines if l.startswith("kprune-vosk-worker: ")]
    kaldi = [l for l in lines if l.startswith("ERROR")]
    if ours and kaldi:
        return f"{ours[-1]}; Kaldi said: {kaldi[-1]}"
    return (ours or kaldi or lines)[-1]
