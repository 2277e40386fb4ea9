"""Atomic writes: complete files only, usual permissions, the input model protected."""

from __future__ import annotations

import os
import stat

import pytest

from kprune.errors import KpruneError
from kprune.fileio import write_atomically, write_json_atomically


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomically(tmp_path / "a" / "final.mdl", [b"\x00B", memoryview(b"<Nnet3> ")])
    finally:
        os.umask(old)
    path = tmp_path / "a" / "final.mdl"
    assert path.read_bytes() == b"\x00B<Nnet3> "
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["final.mdl"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomically(path, {"status": "ok"})

    def pieces():
        yield b'{"status": '
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_atomically(path, pieces())
    assert path.read_text() == '{\n  "status": "ok"\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_the_protected_file_is_never_written(tmp_path):
    model = tmp_path / "final.mdl"
    model.write_bytes(b"original")
    with pytest.raises(KpruneError, match="refusing to write over the input model"):
        write_atomically(model, b"pruned", protect=model)
    assert model.read_bytes() == b"original"
