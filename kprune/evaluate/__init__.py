"""Decode pruned models and score them against the unpruned baseline.

The app asks for one evaluator per run (or per multirun: the same settings give
the same instance back) and calls it for every point::

    evaluator = build_evaluator(cfg.eval, model_path)   # None for eval=none
    metrics = evaluator.evaluate(run_dir / "final.mdl", run_dir)

``evaluate`` returns the evaluation keys of ``metrics.json`` ("wer", "cer",
"baseline", "wer_delta_abs", ...) and writes ``hyp.txt``, ``per_utt``,
``per_utt.tsv``, ``score.txt`` and ``decode.log`` into the run directory; a
decode that fails or runs past ``eval.timeout`` raises
:class:`~kprune.errors.EvaluationError`.

Backends
--------
A backend is an :class:`Evaluator` subclass registered under the name that
selects it (``eval=<name>``, with ``kprune/conf/eval/<name>.yaml`` holding its
settings)::

    @register_evaluator("torch")
    class TorchEvaluator(Evaluator):
        @classmethod
        def from_config(cls, cfg, model_path): ...   # cfg: plain dict of eval.*
        def cache_key(self): ...        # JSON values deciding the baseline
        def _decode_baseline(self): ... # decode the unpruned model -> JSON record
        def _baseline_metrics(self, record): ...  # record -> {"wer", "cer", ...}
        def _evaluate(self, model, out_dir): ...  # pruned model -> metrics

:class:`Evaluator` supplies ``baseline()`` (decoded once, cached on disk under
``eval.cache_dir`` by a hash of ``cache_key()``, written atomically),
``evaluate()`` (adds the baseline, the absolute and relative deltas, and,
from the backend's per-utterance counts, bootstrap intervals and the rates
against the dense model's decode: :mod:`kprune.evaluate.bootstrap`) and
``close()``.  ``eval.bootstrap`` (``+eval.bootstrap.seed=1``; any backend)
sets how the intervals are drawn.  Backends that produce hypotheses score them with
:mod:`kprune.evaluate.scoring` after :mod:`kprune.evaluate.normalize`, so every
backend counts errors the same way.

``vosk`` (:mod:`.vosk_backend`) and ``kaldi`` (:mod:`.kaldi_backend`) are
registered on import.  Any other ``eval=<name>`` imports
``kprune.evaluate.<name>_backend`` when it is first asked for, so a backend
with heavy dependencies (torch) costs nothing to those who do not use it.
A name that is none of these is looked for in other packages' plugin modules
(:mod:`kprune.plugins`: the ``kprune.plugins`` entry points).
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

from kprune.errors import ConfigError, EvaluationError
from kprune.evaluate.base import Evaluator, config_dict, register_evaluator, registered_evaluators
from kprune.evaluate.bootstrap import BootstrapConfig
from kprune.evaluate import kaldi_backend as _kaldi_backend  # noqa: F401  (registers "kaldi")
from kprune.evaluate import vosk_backend as _vosk_backend  # noqa: F401  (registers "vosk")

__all__ = [
    "EvaluationError",
    "Evaluator",
    "build_evaluator",
    "evaluator_class",
    "register_evaluator",
    "registered_evaluators",
]

log = logging.getLogger(__name__)

# The last evaluator built, and what it was built from: a Hydra multirun calls
# the task function once per point in the same process, and the data, the
# references and the baseline should be prepared once, not 60 times.
_last: tuple[str, Evaluator] | None = None


def available_evaluators() -> list[str]:
    """Names ``eval=`` accepts: "none", the registered backends and the ``*_backend`` modules here."""
    modules = {p.stem.removesuffix("_backend") for p in Path(__file__).parent.glob("*_backend.py")}
    return ["none", *sorted(set(registered_evaluators()) | modules)]


def evaluator_class(name: str) -> type[Evaluator]:
    """The backend class of ``eval=<name>``, importing ``<name>_backend`` if needed."""
    backends = registered_evaluators()
    if name not in backends:
        module = f"{__name__}.{name}_backend"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise ConfigError(f"eval={name} needs the {e.name} package, which is not installed") from e
        except ImportError as e:
            raise ConfigError(f"eval={name}: its backend cannot be imported ({e})") from e
        backends = registered_evaluators()
    if name not in backends:  # perhaps a plugin's (kprune.plugins entry points), not yet imported here
        from kprune.plugins import load_entry_points

        load_entry_points()
        backends = registered_evaluators()
    if name not in backends:
        raise ConfigError(
            f"eval.name: unknown evaluator {name!r}; expected one of {', '.join(available_evaluators())}"
        )
    return backends[name]


def build_evaluator(cfg: Any, model_path: Path) -> Evaluator | None:
    """The evaluator that ``cfg`` (the ``eval`` config node) selects, or None for ``none``.

    ``model_path`` is the original, unpruned model.  Settings errors raise
    :class:`~kprune.errors.ConfigError`, unusable data
    :class:`~kprune.errors.EvaluationError`, both before anything is decoded.
    Called again with the same settings and model, it returns the same
    evaluator.
    """
    global _last
    settings = config_dict(cfg)
    name = settings.get("name", "none")
    if name in (None, "none"):
        return None
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"eval.name: expected an evaluator name, found {name!r}")
    cls = evaluator_class(name)
    identity = json.dumps([str(Path(model_path).resolve()), settings], sort_keys=True, default=str)
    if _last is not None and _last[0] == identity:
        return _last[1]
    bootstrap = BootstrapConfig.from_config(settings.pop("bootstrap", None))  # every backend's, not its own
    evaluator = cls.from_config(settings, Path(model_path))
    evaluator.bootstrap = bootstrap
    _last = (identity, evaluator)
    return evaluator
