"""Pruning: rules that choose what to remove, masks and their statistics.

* :mod:`kprune.pruning.rules`: the registry of pruning rules, pure functions
  from weight tensors and a threshold to bool prune masks;
* :mod:`kprune.pruning.masks`: applying masks, and the sparsity statistics of a pruning.
"""
