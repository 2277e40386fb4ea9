"""eval=signals: the dense model scores as identical, a pruned one does not, and the numbers are eval=torch's."""

from __future__ import annotations

from pathlib import Path

import pytest

from kprune.errors import ConfigError
from kprune.evaluate import build_evaluator
from kprune.evaluate.base import registered_evaluators
from kprune.evaluate.outputs import OutputComparison
from kprune.evaluate.signals_backend import SignalsEvaluator
from kprune.model import load_model
from kprune.pruning.rules import compute_masks


@pytest.fixture(scope="module")
def one_utterance(ko_dev, tmp_path_factory) -> Path:
    """The first ko-dev recording alone, without transcripts."""
    out = tmp_path_factory.mktemp("one")
    utt, wav = (ko_dev / "wav.scp").read_text().splitlines()[0].split(maxsplit=1)
    (out / "wav.scp").write_text(f"{utt} {ko_dev / wav}\n")
    return out


@pytest.fixture(scope="module")
def evaluator(one_utterance, real_model_path, tmp_path_factory):
    return SignalsEvaluator.from_config({"data": str(one_utterance), "device": "cpu",
                                         "cache_dir": str(tmp_path_factory.mktemp("cache"))}, real_model_path)


def test_registered_and_settings_checked(real_model_path, one_utterance):
    assert registered_evaluators()["signals"] is SignalsEvaluator
    with pytest.raises(ConfigError, match="eval.beam: unknown setting for eval=signals"):
        build_evaluator({"name": "signals", "data": str(one_utterance), "beam": 3}, real_model_path)
    with pytest.raises(ConfigError, match="eval.data is required for eval=signals"):
        build_evaluator({"name": "signals", "data": ""}, real_model_path)


def test_dense_is_identical_and_pruned_is_not(evaluator, real_model_path, tmp_path):
    dense = evaluator.evaluate(real_model_path, tmp_path / "dense")
    assert dense["kl"] == 0.0 and dense["argmax_agreement"] == 100.0 and dense["snr_db"] == 200.0
    assert "cer" not in dense and dense["signal_frames"] > 100
    model = load_model(real_model_path)
    names = model.default_layers
    for name, mask in zip(names, compute_masks("pct", [model.layers[n].weight for n in names], 0.5)):
        model.layers[name].weight.masked_fill_(mask, 0.0)
    model.save(tmp_path / "final.mdl")
    pruned = evaluator.evaluate(tmp_path / "final.mdl", tmp_path / "pruned")
    assert pruned["kl"] > 1e-3 and pruned["argmax_agreement"] < 99.0 and pruned["snr_db"] < 30.0
    # The same computation as eval=torch's signals (OutputComparison on the offline inputs).
    again = OutputComparison(evaluator.comparison.feats, evaluator.comparison.ivectors, 10,
                             evaluator.comparison.dense_model, device=evaluator.device)
    assert again.signals(evaluator._load(tmp_path / "final.mdl"))["kl"] == pytest.approx(pruned["kl"], rel=1e-9)


def test_per_frame_ivectors_are_an_option_with_close_numbers(evaluator, one_utterance, real_model_path, tmp_path):
    fast = SignalsEvaluator.from_config({"data": str(one_utterance), "device": "cpu", "per_frame_ivectors": True,
                                         "cache_dir": str(tmp_path / "cache")}, real_model_path)
    assert fast.evaluate(real_model_path, tmp_path / "dense")["kl"] == 0.0
    model = load_model(real_model_path)
    names = model.default_layers
    for name, mask in zip(names, compute_masks("pct", [model.layers[n].weight for n in names], 0.4)):
        model.layers[name].weight.masked_fill_(mask, 0.0)
    model.save(tmp_path / "final.mdl")
    chunked = evaluator.evaluate(tmp_path / "final.mdl", tmp_path / "a")["kl"]
    assert fast.evaluate(tmp_path / "final.mdl", tmp_path / "b")["kl"] == pytest.approx(chunked, rel=0.5)
    with pytest.raises(ConfigError, match="eval.per_frame_ivectors: expected true or false"):
        SignalsEvaluator.from_config({"data": str(one_utterance), "per_frame_ivectors": "yes"}, real_model_path)
