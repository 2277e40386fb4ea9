"""``python -m kprune``: see :mod:`kprune.app`."""

from kprune.app import main

if __name__ == "__main__":
    main()
