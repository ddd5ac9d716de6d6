"""The collector skips the objects a run starts with, and only for the run."""

import gc

from mechmod._gc import frozen_heap


def test_frozen_heap_freezes_for_the_run_and_collects_what_the_run_drops():
    assert gc.get_freeze_count() == 0
    before = [object() for _ in range(10)]  # noqa: F841  (alive on entry)
    with frozen_heap():
        assert gc.get_freeze_count() > 0
        cycle = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # garbage made during the run is still collected
    assert gc.get_freeze_count() == 0


def test_frozen_heap_leaves_a_callers_own_freeze_and_a_disabled_collector_alone():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with frozen_heap():
            pass
        assert gc.get_freeze_count() == frozen  # not unfrozen on exit
    finally:
        gc.unfreeze()
    gc.disable()
    try:
        with frozen_heap():
            assert gc.get_freeze_count() == 0
    finally:
        gc.enable()
