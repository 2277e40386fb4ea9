"""Kaldi reads what we write: Vosk (Kaldi's decoder) loads our re-saved and converted models
and decodes the dev set exactly as it does with the original file."""

from __future__ import annotations

import pytest

from kprune.evaluate.vosk_backend import VoskEvaluator
from kprune.kaldi import load_nnet_file, save_nnet_file


@pytest.mark.slow
def test_vosk_decodes_our_binary_and_text_files_like_the_original(real_model_path, real_model_bytes, ko_dev,
                                                                    tmp_path):
    model = load_nnet_file(real_model_path)
    binary = tmp_path / "binary" / "final.mdl"
    text = tmp_path / "text" / "final.mdl"
    save_nnet_file(model, binary)
    save_nnet_file(model, text, binary=False)
    assert binary.read_bytes() == real_model_bytes
    assert text.read_bytes()[:2] != b"\x00B"

    evaluator = VoskEvaluator(real_model_path, ko_dev, jobs=2, cache_dir=tmp_path / "cache", progress=False)
    try:
        original = evaluator.evaluate(real_model_path, tmp_path / "decode-original")
        resaved = evaluator.evaluate(binary, tmp_path / "decode-binary")
        converted = evaluator.evaluate(text, tmp_path / "decode-text")
    finally:
        evaluator.close()
    hyps = (tmp_path / "decode-original" / "hyp.txt").read_text(encoding="utf-8")
    assert len(hyps.splitlines()) == 8 and any(line.split(maxsplit=1)[1:] for line in hyps.splitlines())
    assert (tmp_path / "decode-binary" / "hyp.txt").read_text(encoding="utf-8") == hyps
    assert (tmp_path / "decode-text" / "hyp.txt").read_text(encoding="utf-8") == hyps
    assert resaved["cer"] == converted["cer"] == original["cer"]
