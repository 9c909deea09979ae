"""The collector is kept off what a process loaded before its work (unified_assets/process_gc.py):
objects frozen are in no generation a collection walks (`gc.get_objects` lists those)."""

from __future__ import annotations

import gc

import pytest

from unified_assets import lifecycle, process_gc


def _walked_by_collections(thing: object) -> bool:
    return any(o is thing for o in gc.get_objects())


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a process that has not frozen yet (an earlier test may have)."""
    monkeypatch.setattr(process_gc, "_frozen_once", False)


def test_freeze_once_freezes_what_is_loaded_and_only_the_first_time(fresh_process) -> None:
    loaded = [object()]
    assert _walked_by_collections(loaded)
    assert process_gc.freeze_once() is True
    assert not _walked_by_collections(loaded)
    later = [object()]  # made after the freeze: collected as usual, frozen by no later call
    assert process_gc.freeze_once() is False
    assert _walked_by_collections(later)


def test_the_lifecycle_starts_its_work_with_what_was_loaded_frozen(
        fresh_process, settings, instance, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = {"a library's table": [1, 2, 3]}
    seen: list[bool] = []

    class Stop(Exception):
        pass

    def first_step(defs, instance):
        seen.append(_walked_by_collections(loaded))
        raise Stop

    monkeypatch.setattr(lifecycle, "ingest_landed", first_step)
    with pytest.raises(Stop):
        lifecycle.run_lifecycle(settings, instance)
    assert seen == [False]
