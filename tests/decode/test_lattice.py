"""Word lattices and MBR decoding (kprune.decode.lattice) on hand-made lattices with known answers."""

from __future__ import annotations

import math

import pytest

from kprune.decode.lattice import (
    MinimumBayesRisk,
    WordLattice,
    determinize,
    mbr_words,
    prune,
    raw_lattice,
    scale_graph,
)


def _paths(lat: WordLattice) -> dict[tuple[int, ...], tuple[float, float]]:
    """Every word sequence of an acyclic lattice with its best weight (by brute force)."""
    out = lat.out_arcs()
    found: dict[tuple[int, ...], tuple[float, float]] = {}

    def walk(s, words, g, a):
        if s in lat.final:
            fg, fa = lat.final[s]
            key, w = tuple(words), (g + fg, a + fa)
            if key not in found or (sum(w), w[0]) < (sum(found[key]), found[key][0]):
                found[key] = w
        for dst, word, (wg, wa) in out[s]:
            walk(dst, words + ([word] if word else []), g + wg, a + wa)

    walk(lat.start, [], 0.0, 0.0)
    return found


def _rounded(paths):
    return {k: (round(g, 6), round(a, 6)) for k, (g, a) in paths.items()}


def _raw_like():
    """A state-level lattice as a decoder leaves it: epsilon (no-word) arcs, two
    alignments of "1 2" (total costs 6.0 and 4.5), one of "1 3" (5.5), and "4"
    at 20.0, far outside a beam of 8."""
    arcs = [
        (0, 1, 0, (0.5, 1.0)), (1, 2, 1, (0.0, 1.0)), (2, 3, 0, (0.0, 1.0)), (3, 6, 2, (0.5, 1.0)),  # 1 2: 5.0
        (0, 4, 0, (0.5, 0.5)), (4, 5, 1, (0.0, 1.0)), (5, 6, 2, (0.5, 1.0)),  # 1 2: 3.5 to state 6 (best)
        (5, 7, 3, (1.0, 2.0)),  # 1 3
        (0, 8, 4, (10.0, 10.0)),  # 4
    ]
    return WordLattice(num_states=9, arcs=arcs, final={6: (0.0, 1.0), 7: (0.0, 0.5), 8: (0.0, 0.0)})


def test_determinize_keeps_each_word_sequence_once_with_its_best_weight():
    raw = _raw_like()
    det = determinize(raw)
    assert _rounded(_paths(det)) == _rounded(_paths(raw)) == {(1, 2): (1.0, 3.5), (1, 3): (1.5, 4.0),
                                                              (4,): (10.0, 10.0)}
    # Deterministic: no state has two arcs with the same word, and no epsilon arcs.
    seen = set()
    for src, _, word, _ in det.arcs:
        assert word != 0
        assert (src, word) not in seen
        seen.add((src, word))
    # start -1-> s -2-> f, s -3-> f', start -4-> f''
    assert det.num_states == 5 and len(det.arcs) == 4


def test_prune_drops_what_is_beyond_the_beam():
    raw = _raw_like()
    pruned = prune(raw, 8.0)
    assert set(_paths(pruned)) == {(1, 2), (1, 3)}
    assert (0, 8, 4, (10.0, 10.0)) not in pruned.arcs
    assert set(_paths(prune(raw, 0.5))) == {(1, 2)}
    assert _paths(prune(raw, 100.0)) == _paths(raw)


def test_scale_graph_scales_only_graph_costs():
    lat = scale_graph(_raw_like(), 0.9)
    assert lat.arcs[0] == (0, 1, 0, (pytest.approx(0.45), 1.0))
    assert lat.final[6] == (0.0, 1.0)


def test_best_path():
    assert _raw_like().best_path() == ([1, 2], pytest.approx((1.0, 3.5)))
    assert WordLattice(num_states=1).best_path()[0] == []


def _sentence_lattice(paths: dict[tuple[int, ...], float]) -> WordLattice:
    """A lattice with one chain per word sequence, each with posterior p (cost -log p)."""
    lat = WordLattice(num_states=1)
    for words, p in paths.items():
        prev = 0
        for i, word in enumerate(words):
            lat.arcs.append((prev, lat.num_states, word, (-math.log(p) if i == 0 else 0.0, 0.0)))
            prev = lat.num_states
            lat.num_states += 1
        lat.final[prev] = (0.0, 0.0)
    return lat


def test_mbr_differs_from_the_map_path_where_word_posteriors_say_so():
    # MAP is "1 2" (0.35), but word by word "3" (0.65) beats "1" and "2" (0.67)
    # beats "4": expected errors 0.68 for "3 2" against 0.98 for "1 2".
    lat = determinize(_sentence_lattice({(1, 2): 0.35, (3, 4): 0.33, (3, 2): 0.32}))
    assert lat.best_path()[0] == [1, 2]
    mbr = MinimumBayesRisk(lat)
    assert mbr.words == [3, 2]
    assert mbr.bayes_risk == pytest.approx(0.68, abs=1e-3)
    assert mbr.confidences == pytest.approx([0.65, 0.67], abs=1e-4)
    assert mbr_words(lat) == [3, 2]
    # Each confusion bin's posteriors sum to one.
    for bin_ in mbr.sausage:
        assert sum(p for _, p in bin_) == pytest.approx(1.0, abs=1e-4)


def test_mbr_keeps_a_clear_winner_and_handles_deletions():
    lat = determinize(_sentence_lattice({(5, 6, 7): 0.9, (5, 7): 0.1}))
    mbr = MinimumBayesRisk(lat)
    assert mbr.words == [5, 6, 7]
    assert mbr.bayes_risk == pytest.approx(0.1, abs=1e-3)
    # When the shorter sequence is likelier, the word in the middle goes.
    assert mbr_words(determinize(_sentence_lattice({(5, 6, 7): 0.3, (5, 7): 0.7}))) == [5, 7]


def test_mbr_of_empty_lattices():
    assert mbr_words(WordLattice(num_states=1)) == []  # no final state
    assert mbr_words(WordLattice(num_states=1, final={0: (0.0, 0.0)})) == []  # only the empty sequence


def test_cycles_are_refused():
    lat = WordLattice(num_states=2, arcs=[(0, 1, 1, (0.0, 0.0)), (1, 0, 0, (0.0, 0.0))], final={1: (0.0, 0.0)})
    with pytest.raises(ValueError, match="acyclic"):
        lat.topological_order()


def test_raw_lattice_reads_a_kaldifst_lattice():
    kaldifst = pytest.importorskip("kaldifst")
    fst = kaldifst.Lattice()
    s0, s1, s2 = fst.add_state(), fst.add_state(), fst.add_state()
    fst.start = s0
    fst.add_arc(s0, kaldifst.LatticeArc(3, 0, kaldifst.LatticeWeight(0.5, 1.25), s1))
    fst.add_arc(s1, kaldifst.LatticeArc(4, 7, kaldifst.LatticeWeight(0.0, 2.0), s2))
    fst.set_final(s2, kaldifst.LatticeWeight(0.25, 0.0))
    lat = raw_lattice(fst)
    assert lat.num_states == 3 and lat.start == 0
    assert lat.arcs == [(0, 1, 0, (0.5, 1.25)), (1, 2, 7, (0.0, 2.0))]
    assert lat.final == {2: (0.25, 0.0)}
    assert lat.best_path() == ([7], (0.75, 3.25))
