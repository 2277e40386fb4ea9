"""kprune's Hydra configs (a package so that ``pkg://kprune.conf`` finds them in any install)."""
