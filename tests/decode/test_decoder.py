"""Decoding over a static graph with kaldi-decoder; composing a Vosk-style lookahead graph."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kprune.errors import ConfigError, EvaluationError
from kprune.decode.decoder import DEFAULT_FST_PLUGINS, DecoderOptions, GraphDecoder, read_words, static_graph

# Transition ids 1, 2 (word "a": entry and self-loop) are pdf 0; 3, 4 (word "b") pdf 1.
TID2PDF = np.array([-1, 0, 0, 1, 1])
WORDS = "<eps> 0\na 1\nb 2\n"
# A word loop: a or b, any number of times; tid 5 is a disambiguation symbol after "b".
HCL = """0 1 1 1
1 1 2 0
1 0 0 0
0 2 3 2
2 2 4 0
2 3 5 0
3 0 0 0
0
"""
FST_TOOLS = shutil.which("fstcompile") is not None and shutil.which("fstconvert") is not None


@pytest.fixture
def hclg_dir(tmp_path: Path) -> Path:
    import kaldifst

    text = HCL.replace("2 3 5 0\n3 0 0 0\n", "2 0 0 0\n")
    fst = kaldifst.compile(text, acceptor=False)
    fst.write(str(tmp_path / "HCLG.fst"))
    (tmp_path / "words.txt").write_text(WORDS)
    return tmp_path


def loglikes(pattern: str) -> np.ndarray:
    """One row per letter: 0 favours pdf 0 (word a), 1 pdf 1 (word b)."""
    rows = [[0.0, -5.0] if c == "0" else [-5.0, 0.0] for c in pattern]
    return np.array(rows, dtype=np.float32)


def test_decode_follows_the_acoustics(hclg_dir):
    decoder = GraphDecoder(static_graph(hclg_dir), TID2PDF, DecoderOptions(beam=10.0))
    result = decoder.decode(loglikes("0011100"))
    assert result.words == ["a", "b", "a"]
    assert result.transition_ids == [1, 2, 3, 4, 4, 1, 2]
    assert result.reached_final
    assert result.cost == pytest.approx(0.0, abs=1e-4)  # every frame at its best pdf, no graph cost


def test_incremental_decoding_matches_whole(hclg_dir):
    decoder = GraphDecoder(static_graph(hclg_dir), TID2PDF)
    ll = loglikes("0001111000")
    stream = decoder.stream()
    stream.advance(ll[:4])
    assert stream.traceback() == [1, 2, 2, 3]
    stream.advance(ll[4:])
    assert stream.finish().words == decoder.decode(ll).words == ["a", "b", "a"]


def test_partial_path_ignores_final_costs(hclg_dir):
    import kaldifst

    # A final state after "a" (state 1), none after "b" (state 2); FasterDecoder::GetBestPath(false) keeps
    # to final states once one is active, Vosk's BestPathEnd(false) takes the best token.
    text = HCL.replace("2 3 5 0\n3 0 0 0\n", "").replace("1 0 0 0\n", "").replace("\n0\n", "\n1 3\n")
    kaldifst.compile(text, acceptor=False).write(str(hclg_dir / "HCLG.fst"))
    decoder = GraphDecoder(static_graph(hclg_dir), TID2PDF, DecoderOptions(beam=20.0))
    stream = decoder.stream()
    stream.advance(np.array([[-1.0, -2.0]] * 2, dtype=np.float32))  # "a a" costs 2 (+3 final), "b b" 4
    assert stream.traceback() == [1, 2]
    stream.advance(np.array([[-4.0, -1.0]] * 2, dtype=np.float32))  # "a a a a": 10, "b b b b": 6, best not final
    with decoder._finals_mode(True):  # the partial tracebacks take the final weights off the graph
        ok, lattice = stream._dec.get_best_path(False)
    assert kaldifst.get_linear_symbol_sequence(lattice)[1] == [1, 2, 2, 2]  # kaldi-decoder's: a final state
    tids, keys = stream.partial_path()
    assert tids == [3, 4, 4, 4] and len(keys) == 4 and keys[0] == ("start", 0)
    result = stream.finish()  # the final weights are back for the result
    assert result.reached_final and result.transition_ids == [1, 2, 2, 2] and result.cost == pytest.approx(13.0)


def test_mbr_result_takes_the_words_from_the_lattice(hclg_dir):
    import kaldifst

    # Without a cost per word, "a b b a a" costs what "a b a" costs: give every word entry a cost of 2.
    text = HCL.replace("2 3 5 0\n3 0 0 0\n", "2 0 0 0\n").replace("0 1 1 1\n", "0 1 1 1 2\n")
    kaldifst.compile(text.replace("0 2 3 2\n", "0 2 3 2 2\n"), acceptor=False).write(str(hclg_dir / "HCLG.fst"))
    best = GraphDecoder(static_graph(hclg_dir), TID2PDF, DecoderOptions(beam=10.0))
    mbr = GraphDecoder(static_graph(hclg_dir), TID2PDF, DecoderOptions(beam=10.0, lattice_beam=4.0, result="mbr"))
    ll = loglikes("0011100")
    assert mbr.mbr_words(ll) == [1, 2, 1]
    stream = mbr.stream()
    stream.advance(ll[:3])
    stream.advance(ll[3:])
    result = stream.finish()
    assert result.words == mbr.decode(ll).words == best.decode(ll).words == ["a", "b", "a"]
    assert result.transition_ids == best.decode(ll).transition_ids  # the alignment is the best path's


def test_outputs_too_large_for_float32_scores_are_not_decoded(hclg_dir):
    decoder = GraphDecoder(static_graph(hclg_dir), TID2PDF, DecoderOptions(beam=10.0, result="mbr"))
    ll = loglikes("0011100")
    assert decoder.resolvable(ll) and decoder.resolvable(ll[:0])
    # Scores near 1e8 are resolved to about 6 > a tenth of the beam: ties that --max-active cannot prune.
    assert not decoder.resolvable(ll + 1e8) and not decoder.resolvable(np.full_like(ll, np.nan))
    stream = decoder.stream()
    stream.advance(ll[:3])
    stream.advance(ll[3:] + 1e8)
    result = stream.finish()
    assert result.words == [] and result.note.startswith("not decoded: outputs too large")
    # A constant per frame changes no decision, and the reported cost is the true one.
    best = GraphDecoder(static_graph(hclg_dir), TID2PDF, DecoderOptions(beam=10.0))
    shifted = best.decode(ll + np.arange(7, dtype=np.float32)[:, None] * 100)
    assert shifted.words == ["a", "b", "a"] and shifted.note == ""
    assert shifted.cost == pytest.approx(-2100.0, abs=1e-2)


def test_decoder_options_are_checked():
    assert DecoderOptions.from_conf({"beam": "10.0", "lattice-beam": "2.0"}, "mbr") == DecoderOptions(
        beam=10.0, lattice_beam=2.0, result="mbr")
    with pytest.raises(ConfigError, match="decoder result: expected one of best_path, mbr, found 'nbest'"):
        DecoderOptions(result="nbest")
    with pytest.raises(ConfigError, match="--lattice-beam: expected a positive number, found 0"):
        DecoderOptions(lattice_beam=0)
    with pytest.raises(ConfigError, match="expected numbers for --beam"):
        DecoderOptions.from_conf({"lattice-beam": "wide"})


def test_expand_checks_the_pdf_count(hclg_dir):
    decoder = GraphDecoder(static_graph(hclg_dir), TID2PDF)
    np.testing.assert_array_equal(decoder.expand(loglikes("01")), [[0, 0, -5, -5], [-5, -5, 0, 0]])
    with pytest.raises(EvaluationError, match=r"expected log-likelihoods \[frames, 2 pdfs\], found \[3, 5\]"):
        decoder.expand(np.zeros((3, 5)))


def test_graph_dir_errors(tmp_path):
    with pytest.raises(ConfigError, match="expected HCLG.fst, or HCLr.fst and Gr.fst"):
        static_graph(tmp_path)
    (tmp_path / "HCLG.fst").write_bytes(b"")
    with pytest.raises(ConfigError, match="needs words.txt"):
        static_graph(tmp_path)
    (tmp_path / "words.txt").write_text("a\n")
    with pytest.raises(EvaluationError, match="line 1: expected 'word id'"):
        read_words(tmp_path / "words.txt")


@pytest.fixture
def lookahead_graph_dir(tmp_path: Path) -> Path:
    """HCLr.fst (olabel_lookahead) + Gr.fst (relabelled, with its word table), as Vosk ships them."""
    import os

    env = dict(os.environ, LD_LIBRARY_PATH=DEFAULT_FST_PLUGINS)
    d = tmp_path / "graph"
    d.mkdir()
    (tmp_path / "hcl.txt").write_text(HCL)
    (tmp_path / "words.txt").write_text(WORDS)
    (tmp_path / "g.txt").write_text("0 0 a a 0.5\n0 0 b b 1.0\n0\n")

    def sh(cmd: str) -> None:
        subprocess.run(cmd, shell=True, check=True, cwd=tmp_path, env=env, capture_output=True)

    sh("fstcompile hcl.txt | fstarcsort --sort_type=olabel > hcl.fst")
    sh(f"fstconvert --fst_type=olabel_lookahead --save_relabel_opairs=relabel.txt hcl.fst {d}/HCLr.fst")
    sh("fstcompile --isymbols=words.txt --osymbols=words.txt --keep_isymbols --keep_osymbols g.txt | "
       f"fstrelabel --relabel_ipairs=relabel.txt --relabel_opairs=relabel.txt | fstarcsort > {d}/Gr.fst")
    (d / "disambig_tid.int").write_text("5\n")
    return d


@pytest.mark.skipif(not FST_TOOLS, reason="needs OpenFst tools: apt-get install libfst-tools libfst22-plugins-base")
def test_lookahead_graph_is_composed_once_and_cached(lookahead_graph_dir, tmp_path):
    cache = tmp_path / "cache"
    graph = static_graph(lookahead_graph_dir, cache)
    assert graph.fst.parent.parent == cache / "graphs" and graph.fst.is_file()
    assert read_words(graph.words) == {0: "<eps>", 1: "a", 2: "b"}  # from Gr.fst's symbol table
    mtime = graph.fst.stat().st_mtime_ns
    assert static_graph(lookahead_graph_dir, cache) == graph and graph.fst.stat().st_mtime_ns == mtime
    decoder = GraphDecoder(graph, TID2PDF)
    result = decoder.decode(loglikes("110001"))
    assert result.words == ["b", "a", "b"]
    assert 5 not in result.transition_ids  # the disambiguation symbol became an epsilon
    # A changed graph file is another cache entry.
    (lookahead_graph_dir / "disambig_tid.int").write_text("5 \n")
    assert static_graph(lookahead_graph_dir, cache) != graph


@pytest.mark.skipif(not FST_TOOLS, reason="needs OpenFst tools: apt-get install libfst-tools libfst22-plugins-base")
def test_composition_failure_is_an_evaluation_error(lookahead_graph_dir, tmp_path):
    (lookahead_graph_dir / "Gr.fst").write_bytes(b"not an fst")
    with pytest.raises(EvaluationError, match="composing .*HCLr.fst with .*Gr.fst|fstsymbols failed"):
        static_graph(lookahead_graph_dir, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "graphs").glob("*/HCLG.fst"))
