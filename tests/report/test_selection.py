"""Paired comparisons and cross-validated recipe choice, on runs with hand-made per-utterance counts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kprune.errors import ResultsError
from kprune.evaluate.bootstrap import BootstrapConfig, UtteranceCounts, difference_interval
from kprune.report.selection import (choices_by_target, compare, cross_validated_choice, format_choices,
                                     utterance_folds)
from kprune.report.summary import RunResult

UTTS = ("u1", "u2", "u3", "u4")
DENSE = UtteranceCounts.of(UTTS, [1, 1, 1, 1], [10, 10, 10, 10])


def run(name: str, errors, threshold=0.5, method=None) -> RunResult:
    counts = UtteranceCounts.of(UTTS, errors, [10, 10, 10, 10])
    return RunResult(Path(name), "g", method or name, threshold, "all", "ok",
                     measures={"cer": counts.rate}, rates=("cer",), per_utt={"cer": counts},
                     baseline_per_utt={"cer": DENSE})


def test_the_choice_made_without_an_utterance_is_scored_on_it():
    a, b, c = run("A", [0, 0, 5, 5]), run("B", [5, 5, 0, 0]), run("C", [2, 2, 2, 2])
    choice = cross_validated_choice([a, b, c])
    # All utterances: C is best (8 / 40).  Leaving u1 out, B is best on u2..u4 (5 / 30) and makes 5 errors
    # on u1; the same for u2; A for u3 and u4.  Held out: 20 / 40, far above the in-sample 20 %.
    assert choice.in_sample_best == 2
    assert choice.folds == (("u1",), ("u2",), ("u3",), ("u4",))
    assert choice.chosen == (1, 1, 0, 0)
    assert choice.held_out.errors.tolist() == [5, 5, 5, 5] and choice.rate == 50.0
    config = BootstrapConfig(replications=500)
    assert choice.delta_interval(config) == difference_interval(choice.held_out, DENSE, config)


def test_a_recipe_better_everywhere_is_chosen_in_every_fold_and_ties_go_to_the_first():
    a, b = run("A", [3, 3, 3, 3]), run("B", [1, 2, 1, 2])
    choice = cross_validated_choice([a, b], folds=2)
    assert choice.folds == (("u1", "u3"), ("u2", "u4"))
    assert choice.chosen == (1, 1) and choice.held_out.errors.tolist() == [1, 2, 1, 2]
    same = cross_validated_choice([run("X", [1, 1, 1, 1]), run("Y", [1, 1, 1, 1])])
    assert same.chosen == (0, 0, 0, 0)


def test_folds_and_bad_inputs():
    assert utterance_folds(["a", "b", "c", "d", "e"], 2) == [("a", "c", "e"), ("b", "d")]
    with pytest.raises(ResultsError, match="needs 2 ... 4 folds, found 5"):
        utterance_folds(list(UTTS), 5)
    bare = RunResult(Path("old-run"), "g", "abs", 0.1, "all", "ok")
    with pytest.raises(ResultsError, match="old-run: metrics.json holds no per-utterance cer counts"):
        cross_validated_choice([bare, run("A", [1, 1, 1, 1])])


def test_compare_is_compute_wer_bootci_with_two_systems():
    a, b = run("A", [3, 3, 3, 3]), run("B", [1, 2, 1, 2])
    result = compare(a, b, config=BootstrapConfig(replications=500))
    assert (result.rate_a, result.rate_b, result.difference) == (30.0, 15.0, -15.0)
    assert result.p_b_improves == 1.0  # fewer errors on every utterance
    assert result.lines()[-1] == "Probability of Set2 improving Set1: 100.00"


def test_the_table_groups_recipes_by_target_and_2_of_4_apart():
    runs = [run("A", [0, 0, 5, 5], method="sparsegpt"), run("B", [5, 5, 0, 0], method="wanda"),
            run("C", [2, 2, 2, 2], 0.6, method="sparsegpt"), run("D", [2, 3, 2, 2], 0.6, method="wanda"),
            run("E", [2, 2, 2, 2], 0.5, method="sparsegpt 2:4"), run("F", [4, 2, 2, 2], 0.5, method="wanda 2:4")]
    choices = choices_by_target(runs)
    assert [t for t, _ in choices] == ["0.5", "0.6", "2:4"]
    table = format_choices(choices, BootstrapConfig(replications=200)).splitlines()
    assert table[2].startswith("| 0.5 | 2 | sparsegpt | 25.00 [")
    assert "| sparsegpt (2), wanda (2) | 50.00 [" in table[2]
    assert table[4].startswith("| 2:4 | 2 | sparsegpt 2:4 | 20.00")
    assert table[-1].startswith("4 folds over 4 utterances") and table[-1].endswith("The dense model: 10.00 %.")


def test_the_tool_reads_sweeps_and_compares_two_runs(tmp_path):
    import json

    tool = Path(__file__).resolve().parents[2] / "tools" / "choose_recipe"
    for name, errors in (("a", [0, 0, 5, 5]), ("b", [1, 1, 1, 1])):
        (tmp_path / name).mkdir()
        per_utt = {"utts": list(UTTS), "cer": {"errors": errors, "ref_len": [10] * 4}}
        metrics = {"status": "ok", "method": name, "threshold": 0.5, "cer": sum(errors) / 0.4,
                   "cer_report": "%CER", "per_utt": per_utt,
                   "baseline": {"cer": 10.0, "per_utt": {"utts": list(UTTS), "cer": {"errors": [1] * 4,
                                                                                        "ref_len": [10] * 4}}}}
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    table = subprocess.run([sys.executable, str(tool), str(tmp_path), "--replications", "200"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert table[2].startswith("| 0.5 | 2 | b | 10.00 [10.00, 10.00] | b (4) | 10.00 [10.00, 10.00] | +0.00")
    compared = subprocess.run([sys.executable, str(tool), "--compare", str(tmp_path / "a"), str(tmp_path / "b")],
                              capture_output=True, text=True, check=True).stdout.splitlines()
    assert compared[2].startswith("Set2 - Set1: -15.00 points, paired interval [ -")
    assert compared[3].startswith("Probability of Set2 improving Set1: ")
    empty = subprocess.run([sys.executable, str(tool), str(tmp_path / "nothing")], capture_output=True, text=True)
    assert empty.returncode == 2 and "choose_recipe: error:" in empty.stderr
