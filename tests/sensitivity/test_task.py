"""``python -m kprune.sensitivity``: the Hydra task end to end, in a subprocess as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import kaldiio
import numpy as np

from kprune.kaldi.build import build_tdnn
from kprune.sensitivity.report import read_csv

REPO = Path(__file__).resolve().parents[2]


def test_the_task_writes_the_table_the_heat_map_and_tensorboard(tmp_path):
    model = tmp_path / "final.mdl"
    model.write_bytes(build_tdnn(hidden_dim=16, num_pdfs=8, feat_dim=8, splices=((-1, 0, 1), (-1, 0, 1))))
    rng = np.random.default_rng(0)
    (tmp_path / "calib").mkdir()
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/calib/feats.ark,{tmp_path}/calib/feats.scp") as w:
        w("u1", rng.normal(size=(70, 8)).astype(np.float32))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "kprune.sensitivity", f"model={model}",
                           f"calib.feats={tmp_path}/calib/feats.scp", "levels=[0.3,0.6]", "max_seconds=null",
                           f"hydra.run.dir={run}"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = read_csv(run / "sensitivity.csv")
    assert set(table) == {"affine1", "affine2", "final-affine"}
    assert all(set(d) == {0.3, 0.6} and d[0.6]["kl"] >= d[0.3]["kl"] > 0 for d in table.values())
    assert (run / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert list(run.glob("events.out.tfevents.*"))
    bad = subprocess.run([sys.executable, "-m", "kprune.sensitivity", f"model={model}", "method=abs",
                          f"calib.feats={tmp_path}/calib/feats.scp", f"hydra.run.dir={tmp_path / 'bad'}"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "needs a fraction rule" in bad.stderr
