"""eval=vosk: configuration, staging, and real decodes of the Korean dev set."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from kprune.errors import ConfigError, EvaluationError
from kprune.evaluate import build_evaluator
from kprune.data.datadir import read_data_dir, resample, write_wav
from kprune.evaluate.normalize import Normalizer
from kprune.evaluate.scoring import score_corpus
from kprune.evaluate.vosk_backend import VoskEvaluator, find_vosk_model_dir

REPO = Path(__file__).resolve().parents[2]


def vosk_cfg(data: Path, cache: Path, **over) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "kprune" / "conf" / "eval" / "vosk.yaml"), resolve=True)
    cfg.update(data=str(data), cache_dir=str(cache), progress=False, **over)
    return cfg


@pytest.fixture
def ko_dev_cut(tmp_path: Path, ko_dev: Path) -> Path:
    """Two 3-second pieces of the dev set (segments over the original WAVs, nothing copied)."""
    data = read_data_dir(ko_dev)
    root = tmp_path / "cut"
    root.mkdir()
    utts = ["zeroth_104_003_0253", "zeroth_104_003_0374"]
    (root / "wav.scp").write_text("".join(f"{u} {ko_dev / data.wav_scp[u]}\n" for u in utts), encoding="utf-8")
    (root / "segments").write_text("".join(f"{u}-a {u} 0.0 3.0\n" for u in utts), encoding="utf-8")
    # References: the words spoken in the first 3 s (roughly; CER is not the point here).
    (root / "text").write_text(
        "zeroth_104_003_0253-a 현재 백화점과 영화관 등은\nzeroth_104_003_0374-a 만약 박근혜 대통령이\n", encoding="utf-8"
    )
    return root


# --------------------------------------------------------------------------- fast


def test_model_dir_is_found_above_am(real_model_path: Path, vosk_model_dir: Path, tmp_path: Path) -> None:
    assert find_vosk_model_dir(real_model_path) == vosk_model_dir
    lone = tmp_path / "final.mdl"
    lone.write_bytes(b"x")
    with pytest.raises(ConfigError, match=f"eval.model_dir: cannot find the Vosk model directory of {lone}"):
        find_vosk_model_dir(lone)


def test_config_errors(real_model_path: Path, tone_data_dir: Path, tmp_path: Path) -> None:
    good = vosk_cfg(tone_data_dir, tmp_path)
    for change, message in [
        ({"data": None}, "eval.data is required for eval=vosk"),
        ({"jobz": 2}, "eval.jobz: unknown setting for eval=vosk"),
        ({"jobs": -1}, "eval.jobs: expected a number of decoding threads >= 0"),
        ({"timeout": 0}, "eval.timeout: expected a positive number of seconds, found 0"),
        ({"dither": "no"}, "eval.dither: expected null"),
        ({"progress": "sometimes"}, "eval.progress: expected true, false or auto"),
        ({"normalize": {"digits": "arabic"}}, "eval.normalize.digits"),
    ]:
        with pytest.raises(ConfigError, match=message):
            VoskEvaluator.from_config({**good, **change}, real_model_path)


def test_missing_data_dir_is_reported_when_the_evaluator_is_built(real_model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match=f"eval.data: .*{tmp_path / 'absent'}"):
        VoskEvaluator.from_config(vosk_cfg(tmp_path / "absent", tmp_path), real_model_path)


def test_relative_data_path_is_taken_from_the_working_directory(
    real_model_path: Path, tone_data_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tone_data_dir.parent)
    with VoskEvaluator.from_config(vosk_cfg(Path(tone_data_dir.name), tmp_path), real_model_path) as ev:
        assert ev.data.path == tone_data_dir


def test_staged_feature_config_sets_dither(real_model_path: Path, vosk_model_dir: Path, tone_data_dir: Path, tmp_path: Path) -> None:
    with VoskEvaluator.from_config(vosk_cfg(tone_data_dir, tmp_path), real_model_path) as ev:
        original = (vosk_model_dir / "conf" / "mfcc.conf").read_text()
        staged = ev.staged_files["conf/mfcc.conf"]
        assert staged.startswith(original)
        assert staged.rstrip().endswith("--dither=0")
    with VoskEvaluator.from_config(vosk_cfg(tone_data_dir, tmp_path, dither=None), real_model_path) as ev:
        assert ev.staged_files == {}


def test_cache_key_follows_the_model_content(real_model_path: Path, tone_data_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "am" / "final.mdl"
    copy.parent.mkdir()
    shutil.copy(real_model_path, copy)
    cfg = vosk_cfg(tone_data_dir, tmp_path, model_dir=str(real_model_path.parents[1]))
    key_original = VoskEvaluator.from_config(cfg, real_model_path).cache_key()
    key_copy = VoskEvaluator.from_config(cfg, copy).cache_key()
    assert key_original == key_copy  # same bytes, same baseline
    with open(copy, "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x01")
    assert VoskEvaluator.from_config(cfg, copy).cache_key()["model"] != key_original["model"]
    assert VoskEvaluator.from_config({**cfg, "dither": None}, real_model_path).cache_key() != key_original


def test_build_evaluator_none_unknown_and_reuse(real_model_path: Path, tone_data_dir: Path, tmp_path: Path) -> None:
    assert build_evaluator(OmegaConf.load(REPO / "kprune" / "conf" / "eval" / "none.yaml"), real_model_path) is None
    with pytest.raises(ConfigError, match="eval.name: unknown evaluator 'whisper'; expected one of none, .*kaldi.*vosk"):
        build_evaluator({"name": "whisper"}, real_model_path)
    with pytest.raises(ConfigError, match="eval.name: expected an evaluator name, found '../x'"):
        build_evaluator({"name": "../x"}, real_model_path)
    cfg = OmegaConf.create(vosk_cfg(tone_data_dir, tmp_path))
    first = build_evaluator(cfg, real_model_path)
    assert isinstance(first, VoskEvaluator)
    assert build_evaluator(cfg, real_model_path) is first  # one per multirun, not one per point


def test_eval_config_files_hold_only_known_settings() -> None:
    from kprune.evaluate import evaluator_class

    files = sorted((REPO / "kprune" / "conf" / "eval").glob("*.yaml"))
    assert {"none.yaml", "vosk.yaml", "kaldi.yaml"} <= {f.name for f in files}
    for path in files:
        cfg = OmegaConf.load(path)
        assert cfg.name == path.stem
        if cfg.name != "none":
            assert set(cfg.keys()) - {"name"} <= evaluator_class(cfg.name).SETTINGS, path
    assert OmegaConf.load(REPO / "kprune" / "conf" / "eval" / "none.yaml") == {"name": "none"}


# --------------------------------------------------------------------------- real decodes


@pytest.mark.slow
def test_dev_set_decode_scores_and_caches_the_baseline(real_model_path: Path, ko_dev: Path, tmp_path: Path) -> None:
    cfg = vosk_cfg(ko_dev, tmp_path / "cache", jobs=2)
    ev = VoskEvaluator.from_config(cfg, real_model_path)
    base = ev.baseline()
    # The dense model: CER 11.93 [ 42 / 352 ] on this machine; decodes may move
    # by a character or two with another CPU or vosk build.
    assert 10.0 < base["cer"] < 14.0
    assert base["num_utts"] == 8
    assert ev.baseline_decodes == 1
    cache_file = Path(base["cache_file"])
    mtime = cache_file.stat().st_mtime_ns
    assert ev.baseline() is base and ev.baseline_decodes == 1

    # The unpruned model, as a sweep point would give it: a file of its own.
    point = tmp_path / "point"
    point.mkdir()
    shutil.copy(real_model_path, point / "final.mdl")
    metrics = ev.evaluate(point / "final.mdl", point)
    assert metrics["cer"] == base["cer"] and metrics["wer"] == base["wer"]  # decodes repeat exactly
    assert metrics["cer_delta_abs"] == 0.0 and metrics["wer_delta_rel"] == 0.0
    assert {k: metrics["baseline"][k] for k in ("wer", "cer")} == {"wer": base["wer"], "cer": base["cer"]}
    # Intervals: the baseline's and the point's are the same resamples of the same counts; the paired
    # change of a model from itself is exactly 0, and it never improves on itself.
    low, high = metrics["cer_ci"]
    assert low < metrics["cer"] < high and metrics["cer_ci"] == metrics["baseline"]["cer_ci"]
    assert metrics["cer_delta_ci"] == [0.0, 0.0] and metrics["cer_p_improvement"] == 0.0
    assert metrics["per_utt"]["utts"] == list(read_data_dir(ko_dev).text)
    assert sum(metrics["per_utt"]["cer"]["ref_len"]) == 352
    assert metrics["bootstrap"] == {"replications": 10000, "seed": 0, "level": 0.95, "kind": "percentile"}
    # Against the dense model's own decode: the same hypotheses, no error.
    assert metrics["cer_to_dense"] == 0.0 and metrics["wer_to_dense"] == 0.0
    assert metrics["cer_to_dense_ci"] == [0.0, 0.0]
    assert metrics["cer_report"].startswith("%CER ") and "/ 352," in metrics["cer_report"]
    assert 0 < metrics["rtf"] < 2 and metrics["load_seconds"] > 0
    json.dumps(metrics)  # fit for metrics.json

    hyp_lines = (point / "hyp.txt").read_text(encoding="utf-8").splitlines()
    assert [line.split()[0] for line in hyp_lines] == list(read_data_dir(ko_dev).text)
    assert hyp_lines[0].startswith("zeroth_104_003_0019 지난해 [3] 월")
    per_utt = (point / "per_utt").read_text(encoding="utf-8").splitlines()
    assert len(per_utt) == 4 * 8 and per_utt[3].startswith("zeroth_104_003_0019 #csid ")
    assert (point / "score.txt").read_text().splitlines()[1] == metrics["cer_report"]
    assert len((point / "per_utt.tsv").read_text().splitlines()) == 9
    assert not any(p.is_symlink() for p in point.iterdir())  # the staged model dir is gone

    # A new process (a new evaluator) reads the baseline from disk.
    again = VoskEvaluator.from_config(cfg, real_model_path)
    assert again.baseline()["cer"] == base["cer"]
    assert again.baseline_decodes == 0
    assert cache_file.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_failed_decode_raises_and_the_next_point_still_works(real_model_path: Path, ko_dev_cut: Path, tmp_path: Path) -> None:
    ev = VoskEvaluator.from_config(vosk_cfg(ko_dev_cut, tmp_path / "cache"), real_model_path)
    broken = tmp_path / "broken" / "final.mdl"
    broken.parent.mkdir()
    broken.write_bytes(real_model_path.read_bytes()[:5000])
    with pytest.raises(EvaluationError, match=r"Vosk decode of .*broken/final.mdl failed \(exit status 1\): .*; log: .*decode.log"):
        ev.evaluate(broken, broken.parent)
    good = tmp_path / "good"
    metrics = ev.evaluate(real_model_path, good)
    assert metrics["num_utts"] == 2 and (good / "hyp.txt").is_file()


@pytest.mark.slow
def test_timeout_kills_the_decode_and_is_remembered(real_model_path: Path, ko_dev_cut: Path, tmp_path: Path) -> None:
    ev = VoskEvaluator.from_config(vosk_cfg(ko_dev_cut, tmp_path / "cache", timeout=0.3), real_model_path)
    with pytest.raises(EvaluationError, match=r"baseline \(unpruned model\): Vosk decode of .* ran past eval.timeout=0.3 s \(0 of 2"):
        ev.evaluate(real_model_path, tmp_path / "p1")
    with pytest.raises(EvaluationError, match="ran past eval.timeout"):
        ev.evaluate(real_model_path, tmp_path / "p2")
    assert ev.baseline_decodes == 1  # the failed baseline is not decoded again for every point


@pytest.mark.slow
def test_in_process_decode_gives_the_same_hypotheses(real_model_path: Path, ko_dev_cut: Path, tmp_path: Path) -> None:
    isolated = VoskEvaluator.from_config(vosk_cfg(ko_dev_cut, tmp_path / "c1", jobs=2), real_model_path)
    isolated.evaluate(real_model_path, tmp_path / "a")
    # The in-process decode runs in a fresh interpreter: this test process may
    # have loaded kaldifst (eval=torch's tests), beside which libvosk hangs.
    cfg = vosk_cfg(ko_dev_cut, tmp_path / "c2", jobs=2, isolate=False)
    code = ("import json, sys; from pathlib import Path; from kprune.evaluate.vosk_backend import VoskEvaluator; "
            "cfg, model, out = json.loads(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]); "
            "VoskEvaluator.from_config(cfg, model).evaluate(model, out)")
    subprocess.run([sys.executable, "-c", code, json.dumps(cfg), str(real_model_path), str(tmp_path / "b")],
                   check=True, timeout=600)
    assert (tmp_path / "a" / "hyp.txt").read_text() == (tmp_path / "b" / "hyp.txt").read_text()
    assert "현재" in (tmp_path / "a" / "hyp.txt").read_text()


@pytest.mark.slow
def test_other_sample_rates_are_resampled(real_model_path: Path, ko_dev: Path, tmp_path: Path) -> None:
    data = read_data_dir(ko_dev)
    source = ko_dev / data.wav_scp["zeroth_104_003_0374"]
    samples = np.frombuffer(source.read_bytes()[44:], dtype="<i2").astype(np.float64)
    root = tmp_path / "rates"
    (root / "wav").mkdir(parents=True)
    scp, text = [], []
    for rate in (16000, 8000, 44100):
        pcm = np.clip(np.round(resample(samples, 16000, rate)), -32768, 32767).astype(np.int16)
        write_wav(root / "wav" / f"r{rate}.wav", pcm, rate)
        scp.append(f"r{rate} wav/r{rate}.wav")
        text.append(f"r{rate} {data.text['zeroth_104_003_0374']}")
    (root / "wav.scp").write_text("\n".join(scp) + "\n", encoding="utf-8")
    (root / "text").write_text("\n".join(text) + "\n", encoding="utf-8")

    ev = VoskEvaluator.from_config(vosk_cfg(root, tmp_path / "cache"), real_model_path)
    assert {item.rate for item in ev.audio.items} == {16000, 8000, 44100}  # Kaldi resamples inside Vosk
    ev.evaluate(real_model_path, tmp_path / "out")
    hyps = dict(line.split(" ", 1) for line in (tmp_path / "out" / "hyp.txt").read_text(encoding="utf-8").splitlines())
    norm = Normalizer()
    cer = {
        utt: score_corpus({utt: norm(data.text["zeroth_104_003_0374"])}, {utt: norm(h)}).cer.rate
        for utt, h in hyps.items()
    }
    # 44.1 kHz keeps the whole band: as good as the original rate.  8 kHz lost
    # everything above 4 kHz, yet is still recognised.
    assert cer["r44100"] <= cer["r16000"] + 5
    assert cer["r16000"] < 20 and cer["r8000"] < 60


@pytest.mark.slow
def test_unlabelled_audio_is_scored_against_the_dense_decode(real_model_path: Path, ko_dev_cut: Path,
                                                             tmp_path: Path) -> None:
    """A data directory without text: no CER, but the pruned decode against the dense one, with its interval."""
    from kprune.model import load_model
    from kprune.pruning.rules import compute_masks

    (ko_dev_cut / "text").unlink()
    ev = VoskEvaluator.from_config(vosk_cfg(ko_dev_cut, tmp_path / "cache"), real_model_path)
    assert "cer" not in ev.baseline() and ev.refs is None
    model = load_model(real_model_path)
    names = model.default_layers
    for name, mask in zip(names, compute_masks("global_pct", [model.layers[n].weight for n in names], 0.55)):
        model.layers[name].weight.masked_fill_(mask, 0.0)
    point = tmp_path / "point"
    point.mkdir()
    model.save(point / "final.mdl")
    metrics = ev.evaluate(point / "final.mdl", point)
    assert "cer" not in metrics and "cer_ci" not in metrics
    # 55 % of the weights by magnitude wrecks the decode (README: CER 79 % on ko-dev at 53 %).
    assert metrics["cer_to_dense"] > 20.0
    low, high = metrics["cer_to_dense_ci"]
    assert low <= metrics["cer_to_dense"] <= high
    assert metrics["per_utt"]["utts"] == ["zeroth_104_003_0253-a", "zeroth_104_003_0374-a"]
    assert [line.split()[0] for line in (point / "hyp.txt").read_text(encoding="utf-8").splitlines()] == \
        metrics["per_utt"]["utts"]


def test_vosk_reports_the_output_signals_when_asked(real_model_path: Path, tone_data_dir: Path,
                                                    tmp_path: Path) -> None:
    """eval.signals: KL and argmax agreement of the pruned network beside the decode (here the dense one: 0, 100)."""
    ev = VoskEvaluator.from_config(vosk_cfg(tone_data_dir, tmp_path / "cache", signals=True), real_model_path)
    point = tmp_path / "point"
    point.mkdir()
    shutil.copy(real_model_path, point / "final.mdl")
    metrics = ev.evaluate(point / "final.mdl", point)
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-9) and metrics["argmax_agreement"] == 100.0
