"""Word lattices and minimum-Bayes-risk decoding: how Vosk turns a decode into its transcript.

Vosk's recogniser (vosk-api ``src/recognizer.cc``, ``GetResult`` and
``MbrResult``) does not output the best path.  It:

1. keeps a lattice of the paths within ``--lattice-beam`` of the best one, and
   determinizes it to a word lattice in which each word sequence keeps its best
   alignment (Kaldi's ``LatticeFasterDecoder::GetLattice``, which calls
   ``DeterminizeLatticePhonePrunedWrapper``);
2. scales the graph costs by 0.9 (``fst::GraphLatticeScale(0.9)``);
3. word-aligns the lattice (``WordAlignLattice``, with
   ``graph/phones/word_boundary.int``);
4. takes the lattice's minimum-Bayes-risk word sequence: Kaldi's
   ``MinimumBayesRisk`` (``src/lat/sausages.cc``; Xu et al. 2011, "Minimum
   Bayes risk decoding and system combination based on a recursion for edit
   distance"), which starts from the best path and replaces each word with the
   most probable word of its confusion bin until nothing changes.

This module does 1, 2 and 4 on the raw state-level lattice of kaldi-decoder's
``LatticeSimpleDecoder`` (:func:`raw_lattice`): :func:`prune`, then
:func:`determinize` (epsilon removal and weighted determinization in Kaldi's
lattice semiring), :func:`scale_graph`, and :func:`mbr_words`, a line-by-line
port of ``MinimumBayesRisk``.  Step 3 is left out: word alignment changes only
where the lattice's states fall, and the MBR recursion is an approximation
whose result can depend on that, in rare near ties.

Weights are ``(graph_cost, acoustic_cost)`` pairs, compared as Kaldi's
``LatticeWeight``: the smaller total wins, then the smaller graph cost.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Weight = tuple[float, float]
ONE: Weight = (0.0, 0.0)
INF = float("inf")


def _key(w: Weight) -> tuple[float, float]:
    return (w[0] + w[1], w[0])


def _better(a: Weight, b: Weight) -> bool:
    """``a`` is strictly better (cheaper) than ``b``."""
    return _key(a) < _key(b)


def _times(a: Weight, b: Weight) -> Weight:
    return (a[0] + b[0], a[1] + b[1])


@dataclass
class WordLattice:
    """An acyclic acceptor over words (0 = epsilon) with ``(graph, acoustic)`` costs.

    ``arcs`` are ``(src, dst, word, weight)``; ``final`` maps final states to
    their final weights; the start state is ``start``.
    """

    num_states: int
    arcs: list[tuple[int, int, int, Weight]] = field(default_factory=list)
    final: dict[int, Weight] = field(default_factory=dict)
    start: int = 0

    def out_arcs(self) -> list[list[tuple[int, int, Weight]]]:
        """``[state] -> [(dst, word, weight)]``."""
        out: list[list[tuple[int, int, Weight]]] = [[] for _ in range(self.num_states)]
        for src, dst, word, w in self.arcs:
            out[src].append((dst, word, w))
        return out

    def topological_order(self) -> list[int]:
        """States reachable from the start, sources first (``ValueError`` on a cycle)."""
        out = self.out_arcs()
        reachable = {self.start}
        stack = [self.start]
        while stack:
            s = stack.pop()
            for dst, _, _ in out[s]:
                if dst not in reachable:
                    reachable.add(dst)
                    stack.append(dst)
        indegree = defaultdict(int)
        for s in reachable:
            for dst, _, _ in out[s]:
                indegree[dst] += 1
        order, ready = [], [s for s in sorted(reachable) if indegree[s] == 0]
        while ready:
            s = ready.pop()
            order.append(s)
            for dst, _, _ in out[s]:
                indegree[dst] -= 1
                if indegree[dst] == 0:
                    ready.append(dst)
        if len(order) != len(reachable):
            raise ValueError("expected an acyclic lattice, found a cycle")
        return order

    def best_path(self) -> tuple[list[int], Weight]:
        """The cheapest path's words (epsilons dropped) and weight."""
        order = self.topological_order()
        best: dict[int, tuple[Weight, int, int]] = {self.start: (ONE, -1, 0)}  # state -> (weight, prev, word)
        out = self.out_arcs()
        for s in order:
            if s not in best:
                continue
            ws = best[s][0]
            for dst, word, w in out[s]:
                cand = _times(ws, w)
                if dst not in best or _better(cand, best[dst][0]):
                    best[dst] = (cand, s, word)
        end, end_weight = -1, (INF, INF)
        for s, fw in self.final.items():
            if s in best:
                total = _times(best[s][0], fw)
                if end < 0 or _better(total, end_weight):
                    end, end_weight = s, total
        if end < 0:
            return [], (INF, INF)
        words = []
        s = end
        while s != self.start:
            _, prev, word = best[s]
            if word:
                words.append(word)
            s = prev
        return words[::-1], end_weight


def raw_lattice(lattice: Any) -> WordLattice:
    """A kaldifst ``Lattice`` (input: transition ids, output: words) as a :class:`WordLattice` over words."""
    from kaldifst.lib import _kaldifst

    n = lattice.num_states
    out = WordLattice(num_states=n, start=max(lattice.start, 0))
    for s in range(n):
        it = _kaldifst._ArcIteratorLattice(lattice, s)
        while not it.done:
            arc = it.value
            out.arcs.append((s, arc.nextstate, arc.olabel, (arc.weight.value1, arc.weight.value2)))
            it.next()
        f = lattice.final(s)
        if math.isfinite(f.value1) and math.isfinite(f.value2):
            out.final[s] = (f.value1, f.value2)
    return out


def _forward_backward(lat: WordLattice) -> tuple[list[int], dict[int, float], dict[int, float]]:
    """Topological order, best total cost from the start and to a final state, per state."""
    order = lat.topological_order()
    out = lat.out_arcs()
    alpha = {lat.start: 0.0}
    for s in order:
        if s in alpha:
            for dst, _, w in out[s]:
                c = alpha[s] + w[0] + w[1]
                if c < alpha.get(dst, INF):
                    alpha[dst] = c
    beta: dict[int, float] = {}
    for s in reversed(order):
        b = sum(lat.final[s]) if s in lat.final else INF
        for dst, _, w in out[s]:
            b = min(b, w[0] + w[1] + beta.get(dst, INF))
        beta[s] = b
    return order, alpha, beta


def prune(lat: WordLattice, beam: float) -> WordLattice:
    """Only the arcs and final states on a path within ``beam`` of the best path (``fst::Prune``)."""
    _, alpha, beta = _forward_backward(lat)
    best = beta.get(lat.start, INF)
    if not math.isfinite(best):
        return WordLattice(num_states=lat.num_states, start=lat.start)
    limit = best + beam
    arcs = [(s, d, word, w) for s, d, word, w in lat.arcs
            if s in alpha and alpha[s] + w[0] + w[1] + beta.get(d, INF) <= limit]
    final = {s: w for s, w in lat.final.items() if s in alpha and alpha[s] + w[0] + w[1] <= limit}
    return WordLattice(num_states=lat.num_states, arcs=arcs, final=final, start=lat.start)


def determinize(lat: WordLattice, delta: float = 1.0 / 1024) -> WordLattice:
    """Epsilon removal and determinization in the lattice semiring.

    Each word sequence of ``lat`` appears once in the result, with the weight
    of its best path (Kaldi's ``DeterminizeLattice`` without the alignment
    strings).  Residual weights are quantized to ``delta`` to decide whether two
    subsets are the same state, as OpenFst's determinization does.
    """
    order = lat.topological_order()
    out = lat.out_arcs()
    # For each state: the word arcs reachable through epsilon arcs, with the
    # best weight of getting to them, and the best final weight so reachable.
    # Keys are word arcs as (state, index of the arc); values (weight so far, dst, word, arc weight).
    frontier: dict[int, dict[tuple[int, int], tuple[Weight, int, int, Weight]]] = {}
    final_reach: dict[int, Weight] = {}
    for s in reversed(order):
        here: dict[tuple[int, int], tuple[Weight, int, int, Weight]] = {}
        fin = lat.final.get(s)
        for k, (dst, word, w) in enumerate(out[s]):
            if word != 0:
                here[(s, k)] = (ONE, dst, word, w)
            else:
                for key, (wt, d2, word2, w2) in frontier.get(dst, {}).items():
                    cand = _times(w, wt)
                    if key not in here or _better(cand, here[key][0]):
                        here[key] = (cand, d2, word2, w2)
                if dst in final_reach:
                    cand = _times(w, final_reach[dst])
                    if fin is None or _better(cand, fin):
                        fin = cand
        frontier[s] = here
        if fin is not None:
            final_reach[s] = fin

    def quantize(w: Weight) -> tuple[int, int]:
        return (round(w[0] / delta), round(w[1] / delta))

    result = WordLattice(num_states=0)
    subsets: dict[tuple, int] = {}
    queue: list[tuple[int, list[tuple[int, Weight]]]] = []

    def state_of(elements: list[tuple[int, Weight]]) -> int:
        key = tuple(sorted((s, quantize(r)) for s, r in elements))
        if key not in subsets:
            subsets[key] = result.num_states
            result.num_states += 1
            queue.append((subsets[key], elements))
        return subsets[key]

    state_of([(lat.start, ONE)])
    while queue:
        sid, elements = queue.pop()
        by_word: dict[int, dict[int, Weight]] = defaultdict(dict)
        fin = None
        for s, r in elements:
            for wt, dst, word, w in frontier.get(s, {}).values():
                cand = _times(_times(r, wt), w)
                targets = by_word[word]
                if dst not in targets or _better(cand, targets[dst]):
                    targets[dst] = cand
            if s in final_reach:
                cand = _times(r, final_reach[s])
                if fin is None or _better(cand, fin):
                    fin = cand
        if fin is not None:
            result.final[sid] = fin
        for word in sorted(by_word):
            targets = by_word[word]
            norm = min(targets.values(), key=_key)
            residuals = [(d, (w[0] - norm[0], w[1] - norm[1])) for d, w in sorted(targets.items())]
            result.arcs.append((sid, state_of(residuals), word, norm))
    return result


def scale_graph(lat: WordLattice, scale: float) -> WordLattice:
    """Graph costs times ``scale`` (Kaldi's ``GraphLatticeScale``)."""
    return WordLattice(lat.num_states, [(s, d, word, (w[0] * scale, w[1])) for s, d, word, w in lat.arcs],
                       {s: (w[0] * scale, w[1]) for s, w in lat.final.items()}, lat.start)


def _log_add(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b == -INF:
        return a
    return a + math.log1p(math.exp(b - a))


class MinimumBayesRisk:
    """Kaldi's ``MinimumBayesRisk`` (``src/lat/sausages.cc``) on a :class:`WordLattice`.

    ``words`` is the MBR word sequence (epsilons removed); ``bayes_risk`` the
    expected word errors of it; ``sausage`` the confusion bins
    ``[(word, posterior)]``, most likely first.
    """

    DELTA = 1.0e-05  # Kaldi's delta(): prefers a deletion to a substitution in ties

    def __init__(self, lat: WordLattice, do_mbr: bool = True):
        self.do_mbr = do_mbr
        self._prepare(lat)
        self.R = list(self._initial_words)
        self.L = 0.0
        self.gamma: list[list[tuple[int, float]]] = []
        self.confidences: list[float] = []
        self._decode()

    @property
    def words(self) -> list[int]:
        return self.R

    @property
    def bayes_risk(self) -> float:
        return self.L

    @property
    def sausage(self) -> list[list[tuple[int, float]]]:
        return self.gamma

    def _prepare(self, lat: WordLattice) -> None:
        """CreateSuperFinal + TopSort, then the 1-based arrays of ``PrepareLatticeAndInitStats``."""
        order = lat.topological_order()
        index = {s: i + 1 for i, s in enumerate(order)}  # 1-based, topological
        super_final = len(order) + 1
        arcs: list[tuple[int, int, int, float]] = []  # (start_node, end_node, word, loglike)
        for s, d, word, w in lat.arcs:
            if s in index and d in index:
                arcs.append((index[s], index[d], word, float(np.float32(-(np.float32(w[0]) + np.float32(w[1]))))))
        for s, w in lat.final.items():
            if s in index:
                arcs.append((index[s], super_final, 0, float(np.float32(-(np.float32(w[0]) + np.float32(w[1]))))))
        self.N = super_final
        self.arcs = arcs
        self.pre: list[list[int]] = [[] for _ in range(self.N + 1)]
        for i, (_, end, _, _) in enumerate(arcs):
            self.pre[end].append(i)
        self._initial_words = lat.best_path()[0]

    @staticmethod
    def _normalize_eps(vec: list[int]) -> list[int]:
        words = [w for w in vec if w != 0]
        out = [0] * (1 + 2 * len(words))
        out[1::2] = words
        return out

    def _decode(self) -> None:
        """``MbrDecode``: Figure 6 of the paper."""
        counter = 0
        while True:
            self.R = self._normalize_eps(self.R)
            self._acc_stats()
            delta_q = 0.0
            self.confidences = []
            for q in range(len(self.R)):
                if self.do_mbr:
                    this_gamma = self.gamma[q]
                    old_gamma, new_gamma = 0.0, this_gamma[0][1]
                    rq, rhat = self.R[q], this_gamma[0][0]
                    for word, g in this_gamma:
                        if word == rq:
                            old_gamma = g
                    delta_q += old_gamma - new_gamma
                    self.R[q] = rhat
                if self.R[q] != 0:
                    self.confidences.append(next((g for word, g in self.gamma[q] if word == self.R[q]), 0.0))
            if delta_q == 0 or counter > 100:
                break
            counter += 1
        self.R = [w for w in self.R if w != 0]

    def _arc_edit_distance(self, prev: list[float], w_a: int, r: list[int], arc_dash: list[float],
                           b_arc: list[int]) -> None:
        """Lines 14-18 of Figure 5 (15-17 of Figure 4): the edit distances after arc ``a`` (word ``w_a``)
        against each prefix of ``r``, from those at its start node (``prev``), into ``arc_dash``; ``b_arc``
        gets which of substitution (1), deletion (2) or insertion (3) won."""
        delta = self.DELTA
        l_w0 = 0.0 if w_a == 0 else 1.0
        arc_dash[0] = prev[0] + l_w0 + delta
        for q in range(1, len(r)):
            r_q = r[q]
            a1 = prev[q - 1] + (0.0 if w_a == r_q else 1.0)
            a2 = prev[q] + l_w0 + delta
            a3 = arc_dash[q - 1] + (0.0 if r_q == 0 else 1.0)
            if a1 <= a2:
                b_arc[q], arc_dash[q] = (1, a1) if a1 <= a3 else (3, a3)
            else:
                b_arc[q], arc_dash[q] = (2, a2) if a2 <= a3 else (3, a3)

    def _edit_distance(self, Q: int, r: list[int]) -> tuple[list[float], list[list[float]]]:
        """``EditDistance``: Figure 4 of the paper."""
        N = self.N
        alpha = [-INF] * (N + 1)
        alpha_dash = [[0.0] * (Q + 1) for _ in range(N + 1)]
        alpha[1] = 0.0
        for q in range(1, Q + 1):
            alpha_dash[1][q] = alpha_dash[1][q - 1] + (0.0 if r[q] == 0 else 1.0)
        arc_dash = [0.0] * (Q + 1)
        b_arc = [0] * (Q + 1)
        for n in range(2, N + 1):
            a_n = -INF
            for i in self.pre[n]:
                s_a, _, _, p_a = self.arcs[i]
                a_n = _log_add(a_n, alpha[s_a] + p_a)
            alpha[n] = a_n
            row = alpha_dash[n]
            for i in self.pre[n]:
                s_a, _, w_a, p_a = self.arcs[i]
                self._arc_edit_distance(alpha_dash[s_a], w_a, r, arc_dash, b_arc)
                scale = math.exp(alpha[s_a] + p_a - alpha[n])
                for q in range(Q + 1):
                    row[q] += scale * arc_dash[q]
        return alpha, alpha_dash

    def _acc_stats(self) -> None:
        """``AccStats``: Figure 5 of the paper; sets ``gamma`` and ``L``."""
        N, Q = self.N, len(self.R)
        r = [0] + self.R  # 1-based r(q)
        alpha, alpha_dash = self._edit_distance(Q, r)
        self.L = alpha_dash[N][Q]
        beta_dash = [[0.0] * (Q + 1) for _ in range(N + 1)]
        beta_dash[N][Q] = 1.0
        gamma: list[dict[int, float]] = [defaultdict(float) for _ in range(Q + 1)]
        arc_dash = [0.0] * (Q + 1)
        b_arc = [0] * (Q + 1)
        for n in range(N, 1, -1):
            for i in self.pre[n]:
                s_a, _, w_a, p_a = self.arcs[i]
                self._arc_edit_distance(alpha_dash[s_a], w_a, r, arc_dash, b_arc)
                beta_arc = [0.0] * (Q + 1)
                scale = math.exp(alpha[s_a] + p_a - alpha[n])
                for q in range(Q, 0, -1):
                    beta_arc[q] += scale * beta_dash[n][q]
                    if b_arc[q] == 1:
                        beta_dash[s_a][q - 1] += beta_arc[q]
                        if beta_arc[q] != 0:
                            gamma[q][w_a] += beta_arc[q]
                    elif b_arc[q] == 2:
                        beta_dash[s_a][q] += beta_arc[q]
                    else:
                        beta_arc[q - 1] += beta_arc[q]
                        if beta_arc[q] != 0:
                            gamma[q][0] += beta_arc[q]
                beta_arc[0] += scale * beta_dash[n][0]
                beta_dash[s_a][0] += beta_arc[0]
        beta_arc = [0.0] * (Q + 1)
        for q in range(Q, 0, -1):
            beta_arc[q] += beta_dash[1][q]
            beta_arc[q - 1] += beta_arc[q]
            if beta_arc[q] != 0:
                gamma[q][0] += beta_arc[q]
        # gamma_: posteriors as float32, most likely first, ties to the larger word id.
        self.gamma = [sorted(((w, float(np.float32(g))) for w, g in gamma[q].items()), key=lambda p: (-p[1], -p[0]))
                      for q in range(1, Q + 1)]


def mbr_words(lat: WordLattice) -> list[int]:
    """The minimum-Bayes-risk word sequence of a determinized, scaled word lattice."""
    if not lat.final:
        return []
    return MinimumBayesRisk(lat).words
