"""``python -m kprune.info``: the layer table."""

from __future__ import annotations

import subprocess
import sys

from kprune.info import layer_table, main
from kprune.kaldi.build import build_tdnn
from kprune.model import load_model


def test_table_rows_and_total(tmp_path):
    path = tmp_path / "final.mdl"
    path.write_bytes(build_tdnn(hidden_dim=16, num_pdfs=10))
    model = load_model(path)
    model.layers["affine1"].weight[:4] = 0.0  # 4 of 16 rows
    rows = layer_table(model)
    by_name = {r["name"]: r for r in rows}
    assert [r["name"] for r in rows][-1] == "TOTAL"
    assert by_name["affine1"]["zero"] == 25.0
    assert by_name["affine1"]["shape"] == "16x200" and by_name["affine1"]["weights"] == 3200
    assert by_name["lda"]["note"] == "fixed" and by_name["lda"]["share"] is None
    total = by_name["TOTAL"]
    assert total["weights"] == sum(r["weights"] for r in rows[:-1] if r["name"] != "lda")
    assert abs(sum(r["share"] for r in rows[:-1] if r["share"] is not None) - 100.0) < 1e-9
    assert total["zero"] == 100.0 * 4 * 200 / total["weights"]


def test_cli_on_the_real_model(real_model_path):
    out = subprocess.run([sys.executable, "-m", "kprune.info", str(real_model_path)], capture_output=True, text=True,
                         check=True).stdout
    assert "37 weight layers" in out
    lines = out.splitlines()
    assert any(line.startswith("output-xent.affine") and line.endswith("no-decode") for line in lines)
    assert any(line.startswith("lda ") and line.endswith("fixed") for line in lines)
    assert lines[-1].startswith("TOTAL") and "3,138,048" in lines[-1]


def test_cli_error_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing.mdl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.mdl: expected a Kaldi model file, found no such file" in err
