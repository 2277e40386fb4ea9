"""kprune's Hydra sweeper: ``hydra/sweeper=kprune_search`` (see :mod:`kprune.search`)."""
