"""Staged model directories are links around the pruned model, never copies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kprune.errors import EvaluationError
from kprune.evaluate.staging import remove_staged, stage_model_dir


def _tree_bytes(root: Path) -> int:
    """Bytes of the regular files under root, not following links."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                total += path.stat().st_size
    return total


def test_vosk_model_dir_is_staged_with_links(vosk_model_dir: Path, tmp_path: Path) -> None:
    pruned = tmp_path / "run" / "final.mdl"
    pruned.parent.mkdir()
    pruned.write_bytes(b"pruned model")
    before = {p: p.stat().st_mtime_ns for p in vosk_model_dir.rglob("*")}
    dest = tmp_path / "staged"
    stage_model_dir(vosk_model_dir, dest, {"am/final.mdl": pruned}, {"conf/mfcc.conf": "--dither=0\n"})

    assert (dest / "am").is_dir() and not (dest / "am").is_symlink()
    assert (dest / "am" / "final.mdl").is_symlink()
    assert (dest / "am" / "final.mdl").resolve() == pruned.resolve()
    for entry in ("graph", "ivector", "README"):
        assert (dest / entry).is_symlink()
        assert (dest / entry).resolve() == (vosk_model_dir / entry).resolve()
    assert (dest / "conf" / "model.conf").is_symlink()
    assert (dest / "conf" / "mfcc.conf").read_text() == "--dither=0\n"
    assert not (dest / "conf" / "mfcc.conf").is_symlink()
    # Only the generated config is a real file: nothing of the 250 MB was copied.
    assert _tree_bytes(dest) == len("--dither=0\n")
    assert {p: p.stat().st_mtime_ns for p in vosk_model_dir.rglob("*")} == before

    remove_staged(dest)
    assert not dest.exists()
    assert pruned.read_bytes() == b"pruned model"
    assert (vosk_model_dir / "graph" / "HCLr.fst").is_file()


def test_skip_leaves_top_level_entries_out(tmp_path: Path) -> None:
    source = tmp_path / "exp"
    (source / "decode_dev").mkdir(parents=True)
    (source / "tree").write_text("tree")
    (source / "final.mdl").write_text("original")
    model = tmp_path / "pruned.mdl"
    model.write_text("pruned")
    dest = tmp_path / "staged"
    stage_model_dir(source, dest, {"final.mdl": model}, skip=lambda name: name.startswith("decode"))
    assert sorted(p.name for p in dest.iterdir()) == ["final.mdl", "tree"]
    assert (dest / "final.mdl").read_text() == "pruned"
    assert (source / "final.mdl").read_text() == "original"


def test_staging_refuses_an_existing_directory_and_bad_paths(tmp_path: Path) -> None:
    source = tmp_path / "exp"
    source.mkdir()
    (tmp_path / "staged").mkdir()
    with pytest.raises(EvaluationError, match="staged: staging directory exists already"):
        stage_model_dir(source, tmp_path / "staged", {"final.mdl": source / "x"})
    with pytest.raises(EvaluationError, match=r"staged path '../final.mdl': expected a relative path"):
        stage_model_dir(source, tmp_path / "other", {"../final.mdl": source / "x"})
    with pytest.raises(EvaluationError, match="expected a model directory to stage"):
        stage_model_dir(tmp_path / "absent", tmp_path / "third", {"final.mdl": source / "x"})
