"""eval=kaldi with a decode script that writes Kaldi's scoring files (recipe_decode.py)."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kprune.errors import ConfigError, EvaluationError
from kprune.evaluate.kaldi_backend import KaldiEvaluator, fill_command, parse_report_line, read_best_score
from kprune.evaluate.scoring import ErrorCounts

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "recipe_decode.py"
UTTERANCES = {
    "spk1-001": "the cat sat on the mat",
    "spk1-002": "a dog barked twice",
    "spk2-001": "rain fell all night long",
    "spk2-002": "we went home",
}  # 18 words


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    """A recipe directory: data/test, a graph, and exp/chain/tdnn1a with final.mdl and friends."""
    root = tmp_path / "s5"
    (root / "data" / "test").mkdir(parents=True)
    (root / "data" / "test" / "text").write_text("".join(f"{u} {t}\n" for u, t in UTTERANCES.items()))
    (root / "exp" / "tri4b" / "graph").mkdir(parents=True)
    (root / "exp" / "tri4b" / "graph" / "HCLG.fst").write_bytes(b"fst")
    exp = root / "exp" / "chain" / "tdnn1a"
    (exp / "decode_dev_old").mkdir(parents=True)
    (exp / "final.mdl").write_text("damage 1\n")
    (exp / "tree").write_bytes(b"tree")
    (exp / "frame_subsampling_factor").write_text("3\n")
    return root


def kaldi_cfg(recipe: Path, tmp_path: Path, extra: str = "", **over) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "kprune" / "conf" / "eval" / "kaldi.yaml"), resolve=True)
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(SCRIPT))} --nj {{nj}} {extra} exp/tri4b/graph data/test {{decode_dir}}"
    cfg.update(command=command, recipe_dir=str(recipe), cache_dir=str(tmp_path / "cache"), nj=2, **over)
    return cfg


def pruned_model(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "run" / "final.mdl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def test_point_is_decoded_from_a_linked_experiment_dir(recipe: Path, tmp_path: Path) -> None:
    original = recipe / "exp" / "chain" / "tdnn1a" / "final.mdl"
    ev = KaldiEvaluator.from_config(kaldi_cfg(recipe, tmp_path), original)
    model = pruned_model(tmp_path, "damage 3\n")
    out = model.parent
    metrics = ev.evaluate(model, out)

    # damage 1: 4 of 18 words wrong; damage 3: 3 per utterance, 12 of 18.
    assert ev.baseline()["wer_report"] == "%WER 22.22 [ 4 / 18, 0 ins, 0 del, 4 sub ]"
    assert metrics["wer_report"] == "%WER 66.67 [ 12 / 18, 0 ins, 0 del, 12 sub ]"
    assert metrics["wer"] == pytest.approx(100 * 12 / 18)
    assert metrics["baseline"]["wer"] == pytest.approx(100 * 4 / 18)
    assert metrics["wer_delta_abs"] == pytest.approx(100 * 8 / 18)
    assert metrics["wer_delta_rel"] == pytest.approx(200.0)
    assert metrics["num_utts"] == 4
    # The recipe scored no characters: CER comes from its best hypotheses and test_filt.txt.
    assert metrics["cer_source"].endswith("scoring_kaldi/penalty_0.0/10.txt")
    assert metrics["cer_report"].startswith("%CER ") and 0 < metrics["cer"] < metrics["wer"]
    assert 0 < metrics["baseline"]["cer"] < metrics["cer"]
    assert metrics["wer_source"].endswith("decode/wer_10_0.0")

    staged = out / "tdnn1a"
    assert (staged / "final.mdl").is_symlink() and (staged / "final.mdl").resolve() == model.resolve()
    assert (staged / "tree").is_symlink() and (staged / "tree").resolve() == (recipe / "exp" / "chain" / "tdnn1a" / "tree")
    assert not (staged / "decode_dev_old").exists()
    assert original.read_text() == "damage 1\n"
    decode = staged / "decode"
    assert not list(decode.glob("lat.*.gz"))  # keep_lattices: false
    assert (decode / "log" / "decode.2.log").is_file()  # {nj} reached the script
    assert (out / "hyp.txt").read_text() == (decode / "scoring_kaldi" / "penalty_0.0" / "10.txt").read_text()
    assert (out / "hyp.txt").read_text().startswith("spk1-001 X X X on the mat\n")
    assert (out / "per_utt").read_text().splitlines()[3] == "spk1-001 #csid 3 3 0 0"
    assert (out / "score.txt").read_text().startswith(metrics["wer_report"])
    assert "recipe_decode.py: decoded 4 utterances" in (out / "decode.log").read_text()

    # The same point again (a rerun) replaces its own staged directory.
    assert ev.evaluate(model, out)["wer"] == metrics["wer"]


def test_without_best_wer_the_lowest_wer_file_wins_and_cer_is_read(recipe: Path, tmp_path: Path) -> None:
    original = recipe / "exp" / "chain" / "tdnn1a" / "final.mdl"
    ev = KaldiEvaluator.from_config(kaldi_cfg(recipe, tmp_path, "--no-best-wer --cer", keep_lattices=True), original)
    metrics = ev.evaluate(pruned_model(tmp_path, "damage 2\n"), tmp_path / "run")
    assert metrics["wer_report"] == "%WER 44.44 [ 8 / 18, 0 ins, 0 del, 8 sub ]"
    assert metrics["wer_source"].endswith("decode/wer_10_0.0")
    # Characters of the first two words of each utterance, of 62 in all.
    assert metrics["cer_report"] == "%CER 38.71 [ 24 / 62, 0 ins, 0 del, 24 sub ]"
    assert metrics["baseline"]["cer"] == pytest.approx(100 * 10 / 62)
    assert len(list((tmp_path / "run" / "tdnn1a" / "decode").glob("lat.*.gz"))) == 2


def test_failed_decode_is_an_evaluation_error(recipe: Path, tmp_path: Path) -> None:
    ev = KaldiEvaluator.from_config(kaldi_cfg(recipe, tmp_path), recipe / "exp" / "chain" / "tdnn1a" / "final.mdl")
    model = pruned_model(tmp_path, "fail\n")
    with pytest.raises(
        EvaluationError,
        match=r"Kaldi decode of .*run/final.mdl failed \(exit status 1\): ERROR \(nnet3-latgen-faster.*Failure reading token; log: .*run/decode.log",
    ):
        ev.evaluate(model, model.parent)
    # The next point goes on.
    assert ev.evaluate(pruned_model(tmp_path / "next", "damage 0\n"), tmp_path / "next" / "run")["wer"] == 0.0


def test_timeout_kills_the_command(recipe: Path, tmp_path: Path) -> None:
    ev = KaldiEvaluator.from_config(kaldi_cfg(recipe, tmp_path, timeout=1.0), recipe / "exp" / "chain" / "tdnn1a" / "final.mdl")
    ev.baseline()
    model = pruned_model(tmp_path, "sleep 60\n")
    start = time.monotonic()
    with pytest.raises(EvaluationError, match=r"Kaldi decode of .*final.mdl ran past eval.timeout=1 s; log: "):
        ev.evaluate(model, model.parent)
    assert time.monotonic() - start < 30
    pid = int((model.parent / "tdnn1a" / "decode.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_baseline_is_cached_on_disk(recipe: Path, tmp_path: Path) -> None:
    original = recipe / "exp" / "chain" / "tdnn1a" / "final.mdl"
    first = KaldiEvaluator.from_config(kaldi_cfg(recipe, tmp_path), original)
    wer = first.baseline()["wer"]
    assert first.baseline_decodes == 1
    second = KaldiEvaluator.from_config(kaldi_cfg(recipe, tmp_path), original)
    assert second.baseline()["wer"] == wer
    assert second.baseline_decodes == 0
    # Other reference transcripts are another baseline.
    (recipe / "data" / "test" / "text").write_text("spk1-001 the cat\n")
    third = KaldiEvaluator.from_config(kaldi_cfg(recipe, tmp_path), original)
    assert third.baseline()["wer"] == 50.0 and third.baseline_decodes == 1


def test_config_errors(recipe: Path, tmp_path: Path) -> None:
    original = recipe / "exp" / "chain" / "tdnn1a" / "final.mdl"
    cfg = kaldi_cfg(recipe, tmp_path)
    for change, message in [
        ({"command": "???"}, "eval.command is required for eval=kaldi"),
        ({"command": "decode.sh {graph} {decode_dir}"}, r"eval.command: unknown placeholder \{graph\}"),
        ({"command": "decode.sh exp/x data/y"}, r"eval.command: expected \{decode_dir\}"),
        ({"recipe_dir": str(tmp_path / "absent")}, "eval.recipe_dir: .*absent is not a directory"),
        ({"nj": 0}, "eval.nj: expected a positive integer, found 0"),
        ({"decode_name": "a/b"}, "eval.decode_name: expected a directory name"),
        ({"graph": "x"}, "eval.graph: unknown setting for eval=kaldi"),
    ]:
        with pytest.raises(ConfigError, match=message):
            KaldiEvaluator.from_config({**cfg, **change}, original)


def test_a_directory_not_staged_by_kprune_is_not_replaced(recipe: Path, tmp_path: Path) -> None:
    ev = KaldiEvaluator.from_config(kaldi_cfg(recipe, tmp_path), recipe / "exp" / "chain" / "tdnn1a" / "final.mdl")
    model = pruned_model(tmp_path, "damage 2\n")
    (model.parent / "tdnn1a").mkdir()
    with pytest.raises(EvaluationError, match="tdnn1a: exists and was not staged by kprune"):
        ev.evaluate(model, model.parent)


def test_fill_command_quotes_values_and_leaves_shell_variables() -> None:
    filled = fill_command(
        'steps/nnet3/decode.sh --nj {nj} --iter ${iter:-final} graph "data" {decode_dir}',
        {"nj": 4, "decode_dir": Path("/runs/point 1/exp/decode")},
    )
    assert filled == "steps/nnet3/decode.sh --nj 4 --iter ${iter:-final} graph \"data\" '/runs/point 1/exp/decode'"


def test_parse_report_line() -> None:
    line = "%WER 8.35 [ 471 / 5643, 67 ins, 99 del, 305 sub ] exp/tri4b/decode_tgpr_dev93/wer_10_0.0"
    assert parse_report_line(line, "best_wer") == (ErrorCounts(5643, 67, 99, 305), "exp/tri4b/decode_tgpr_dev93/wer_10_0.0")
    assert parse_report_line("%SER 50.00 [ 4 / 8 ]", "wer_10") is None
    with pytest.raises(EvaluationError, match=r"best_wer: 470 errors but 67 ins \+ 99 del \+ 305 sub"):
        parse_report_line("%WER 8.33 [ 470 / 5643, 67 ins, 99 del, 305 sub ]", "best_wer")


def test_read_best_score_of_an_unscored_dir(tmp_path: Path) -> None:
    assert read_best_score(tmp_path) is None
    (tmp_path / "scoring_kaldi").mkdir()
    (tmp_path / "scoring_kaldi" / "best_wer").write_text("nothing useful\n")
    with pytest.raises(EvaluationError, match="best_wer: expected a line like '%WER"):
        read_best_score(tmp_path)


def test_per_utterance_counts_give_intervals_and_the_rate_against_the_dense_decode(recipe: Path,
                                                                                   tmp_path: Path) -> None:
    original = recipe / "exp" / "chain" / "tdnn1a" / "final.mdl"
    ev = KaldiEvaluator.from_config(kaldi_cfg(recipe, tmp_path), original)
    model = pruned_model(tmp_path, "damage 3\n")
    metrics = ev.evaluate(model, model.parent)
    per_utt = metrics["per_utt"]
    # damage 3: 3 wrong words in each of the 4 utterances (12 / 18), the baseline 1 (4 / 18)
    assert per_utt["utts"] == ["spk1-001", "spk1-002", "spk2-001", "spk2-002"]
    assert per_utt["wer"]["errors"] == [3, 3, 3, 3] and sum(per_utt["wer"]["ref_len"]) == 18
    assert metrics["baseline"]["per_utt"]["wer"]["errors"] == [1, 1, 1, 1]
    low, high = metrics["wer_ci"]
    assert low < metrics["wer"] < high
    low, high = metrics["wer_delta_ci"]  # 2 more wrong words on every utterance: worse on every resample
    assert 0 < low < metrics["wer_delta_abs"] < high
    assert metrics["wer_p_improvement"] == 0.0
    # against the dense decode: the 2 further damaged words of each utterance
    assert metrics["wer_to_dense"] == pytest.approx(100 * 8 / 18)
    assert "hyps" not in metrics
