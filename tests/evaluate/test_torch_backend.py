"""eval=torch: settings, and real decodes of the dev set compared with Vosk's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kprune.errors import ConfigError, EvaluationError
from kprune.evaluate.base import registered_evaluators
from kprune.evaluate.normalize import Normalizer
from kprune.evaluate.scoring import score_corpus
from kprune.evaluate.staging import stage_model_dir
from kprune.evaluate.torch_backend import TorchEvaluator
from kprune.model import load_model
from kprune.cache import default_cache_dir


# Decoding needs the static graph, composed once from the Vosk graph by OpenFst's tools.
needs_fst_tools = pytest.mark.skipif(
    shutil.which("fstcompose") is None,
    reason="decoding needs OpenFst's tools to compose the graph: apt-get install libfst-tools libfst22-plugins-base")


def settings(ko_dev, tmp_path, **extra):
    # The composed graph (900 MB, minutes to make) is shared with every other run.
    return {"data": str(ko_dev), "cache_dir": str(tmp_path / "cache"), "graph_cache": str(default_cache_dir()),
            **extra}


def test_registered():
    assert registered_evaluators()["torch"] is TorchEvaluator


def test_settings_are_checked(ko_dev, real_model_path, tmp_path):
    with pytest.raises(ConfigError, match="eval.beam: unknown setting for eval=torch"):
        TorchEvaluator.from_config(settings(ko_dev, tmp_path, beam=3), real_model_path)
    with pytest.raises(ConfigError, match="eval.mode: expected one of vosk, offline, found 'batch'"):
        TorchEvaluator.from_config(settings(ko_dev, tmp_path, mode="batch"), real_model_path)
    with pytest.raises(ConfigError, match="eval.data is required for eval=torch"):
        TorchEvaluator.from_config({"data": ""}, real_model_path)
    with pytest.raises(ConfigError, match="eval.signals: expected true or false"):
        TorchEvaluator.from_config(settings(ko_dev, tmp_path, signals="yes"), real_model_path)
    with pytest.raises(ConfigError, match="eval.model_dir: cannot find the model directory"):
        other = tmp_path / "final.mdl"
        other.write_bytes(real_model_path.read_bytes())
        TorchEvaluator.from_config(settings(ko_dev, tmp_path), other)


def test_mfcc_dims_must_match_the_model(ko_dev, real_model_path, vosk_model_dir, tmp_path):
    model_dir = tmp_path / "model"
    (model_dir / "conf").mkdir(parents=True)
    (model_dir / "conf" / "mfcc.conf").write_text("--num-ceps=13\n")
    (model_dir / "conf" / "model.conf").write_text((vosk_model_dir / "conf" / "model.conf").read_text())
    with pytest.raises(ConfigError, match="--num-ceps=13 gives 13-dim MFCCs, but the model .* takes 40-dim"):
        TorchEvaluator.from_config(settings(ko_dev, tmp_path, model_dir=str(model_dir)), real_model_path)


_VOSK_DECODE = """
import json, sys, wave
import vosk
vosk.SetLogLevel(-1)
model_dir, data_dir = sys.argv[1], sys.argv[2]
model = vosk.Model(model_dir)
hyps = {}
for line in open(data_dir + "/wav.scp", encoding="utf-8"):
    utt, path = line.split(maxsplit=1)
    with wave.open(data_dir + "/" + path.strip()) as w:
        data, rate = w.readframes(w.getnframes()), w.getframerate()
    rec = vosk.KaldiRecognizer(model, rate)
    for start in range(0, len(data), rate):  # rate bytes = 0.5 s of 16-bit samples, as eval=vosk feeds it
        rec.AcceptWaveform(data[start:start + rate])
    hyps[utt] = json.loads(rec.FinalResult())["text"]
print(json.dumps(hyps))
"""


def vosk_hypotheses(model_dir: Path, data_dir: Path, stage: Path, model: Path | None = None) -> dict[str, str]:
    """Vosk's own decode of ``model`` (default: the model directory's), with ``--dither=0`` as eval=vosk sets it
    (the torch path does not dither), in a subprocess: libvosk hangs in a process that has loaded kaldifst."""
    mfcc = (model_dir / "conf" / "mfcc.conf").read_text()
    stage_model_dir(model_dir, stage, {"am/final.mdl": model or model_dir / "am" / "final.mdl"},
                    {"conf/mfcc.conf": mfcc + "--dither=0\n"})
    out = subprocess.run([sys.executable, "-c", _VOSK_DECODE, str(stage), str(data_dir)], capture_output=True,
                         text=True, timeout=600, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def evaluator(ko_dev, real_model_path, tmp_path_factory):
    ev = TorchEvaluator.from_config(settings(ko_dev, tmp_path_factory.mktemp("torch")), real_model_path)
    yield ev
    ev.close()


@pytest.fixture(scope="module")
def pruned_model(real_model_path, tmp_path_factory) -> Path:
    model = load_model(real_model_path)
    for layer in model.layers.values():
        if layer.prunable_by_default:
            layer.weight.masked_fill_(layer.weight.abs() < 0.02, 0.0)
    out = tmp_path_factory.mktemp("pruned") / "final.mdl"
    model.save(out)
    return out


def read_hyps(path: Path) -> dict[str, str]:
    return {line.split(" ", 1)[0]: (line.split(" ", 1) + [""])[1] for line in path.read_text().splitlines()}


def cer_and_identical(hyps: dict[str, str], ref_hyps: dict[str, str], ko_dev: Path) -> tuple[float, float, int]:
    norm = Normalizer()
    refs = {l.split(maxsplit=1)[0]: norm(l.split(maxsplit=1)[1]) for l in (ko_dev / "text").read_text().splitlines()}
    ours = score_corpus(refs, {u: norm(t) for u, t in hyps.items()}).cer.rate
    theirs = score_corpus(refs, {u: norm(t) for u, t in ref_hyps.items()}).cer.rate
    same = sum(norm(hyps[u]) == norm(ref_hyps[u]) for u in ref_hyps)
    return ours, theirs, same


@pytest.mark.slow
@needs_fst_tools
def test_dense_and_pruned_decodes_agree_with_vosk(evaluator, pruned_model, vosk_model_dir, ko_dev, tmp_path):
    base = evaluator.baseline()
    assert evaluator.baseline_decodes == 1 and 5.0 < base["cer"] < 20.0
    # The dense model, decoded as a point, against Vosk on the same files.
    dense_copy = tmp_path / "dense" / "final.mdl"
    dense_copy.parent.mkdir()
    dense_copy.write_bytes((vosk_model_dir / "am" / "final.mdl").read_bytes())
    dense = evaluator.evaluate(dense_copy, tmp_path / "dense_run")
    assert dense["cer"] == pytest.approx(base["cer"])
    assert dense["kl"] == pytest.approx(0.0, abs=1e-9) and dense["argmax_agreement"] == 100.0
    ours, theirs, same = cer_and_identical(read_hyps(tmp_path / "dense_run" / "hyp.txt"),
                                           vosk_hypotheses(vosk_model_dir, ko_dev, tmp_path / "vosk_dense"), ko_dev)
    assert abs(ours - theirs) <= 1.0, (ours, theirs)  # measured: 11.93 against 11.93
    assert same >= 6, same  # measured: 8 of 8 identical

    pruned = evaluator.evaluate(pruned_model, tmp_path / "pruned_run")
    ours, theirs, same = cer_and_identical(read_hyps(tmp_path / "pruned_run" / "hyp.txt"),
                                           vosk_hypotheses(vosk_model_dir, ko_dev, tmp_path / "vosk_pruned",
                                                           pruned_model), ko_dev)
    assert abs(ours - theirs) <= 1.0, (ours, theirs)  # measured: 11.93 against 12.22
    assert same >= 5, same  # measured: 7 of 8 (one word apart in the eighth)
    assert pruned["cer_delta_abs"] == pytest.approx(pruned["cer"] - base["cer"])
    assert 0 < pruned["kl"] < 1 and 0 < pruned["argmax_agreement"] < 100 and 0 < pruned["snr_db"] < 60
    for name in ("hyp.txt", "per_utt", "per_utt.tsv", "score.txt", "decode.log"):
        assert (tmp_path / "pruned_run" / name).is_file()


@pytest.mark.slow
@needs_fst_tools
def test_offline_mode(ko_dev, real_model_path, pruned_model, tmp_path):
    ev = TorchEvaluator.from_config(settings(ko_dev, tmp_path, mode="offline", signals=False), real_model_path)
    try:
        metrics = ev.evaluate(pruned_model, tmp_path / "run")
    finally:
        ev.close()
    assert 5.0 < metrics["cer"] < 25.0 and "kl" not in metrics
    assert metrics["decode_seconds"] > 0 and metrics["audio_seconds"] == pytest.approx(75.13, abs=0.1)
    assert "mode=offline" in (tmp_path / "run" / "decode.log").read_text()


@pytest.mark.slow
@needs_fst_tools
def test_a_model_that_cannot_run_is_an_evaluation_error(evaluator, tmp_path):
    broken = tmp_path / "final.mdl"
    broken.write_bytes(b"\x00B<TransitionModel> nonsense")
    with pytest.raises(EvaluationError, match="cannot run the model in torch"):
        evaluator.evaluate(broken, tmp_path / "run")
