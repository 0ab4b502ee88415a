"""The service entry point's process settings."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services.runtime.cli import tune_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_the_collector_runs_less_often_and_skips_the_start_up_heap() -> None:
    gc.unfreeze()
    middle, old = gc.get_threshold()[1:]
    tune_collector(50_000)
    assert gc.get_threshold() == (50_000, middle, old)
    assert gc.get_freeze_count() > 1_000, "the modules and models alive at start are frozen"
    young = gc.get_count()[0]
    kept = [[] for _ in range(10_000)]  # 10,000 tracked objects: no young collection yet
    assert gc.get_count()[0] >= young + len(kept)
