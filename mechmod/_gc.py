"""Python's cyclic garbage collector, kept off the objects a study starts with.

A process that has imported torch, transformers, pandas and plotly and
loaded a model holds a few million container objects; a full collection
walks them all (~0.2 s on a 2-core machine) and finds nothing, since they
live as long as the process. On the behavioural benchmark (216 cases,
~2.2 s) one such collection lands in the run or not depending on what was
allocated before it. :func:`frozen_heap` (the studies' entry points wear
it as a decorator) moves every object alive when a run starts into the
collector's permanent generation (``gc.freeze``) for the run, so its
collections walk only what the run allocates, and moves them back after.
It does nothing where the collector is disabled or the caller has frozen
objects itself."""

from __future__ import annotations

import gc
from contextlib import contextmanager


@contextmanager
def frozen_heap():
    """While inside, the collector skips the objects alive on entry."""
    mine = gc.isenabled() and gc.get_freeze_count() == 0
    if mine:
        gc.freeze()
    try:
        yield
    finally:
        if mine:
            gc.unfreeze()
