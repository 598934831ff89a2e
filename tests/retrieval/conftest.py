"""Retrieval fixtures: a model trained on the shared small marketplace, and a hand-made tiny log.

Training uses one torch thread: on these shared 2-core machines two intra-op threads slowed
training down twentyfold whenever other jobs held the cores (see the closing note of issue 5).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval import EventLog, read_event_log
from retrieval.inputs import DAY_US
from tests.retrieval.helpers import make_tiny_log, small_config


@pytest.fixture(scope="session")
def small_log(small_logs: Path) -> EventLog:
    return read_event_log(small_logs)


@pytest.fixture(scope="session")
def small_split(small_log: EventLog) -> int:
    """Train before the last day of the small marketplace (3 days); its last day is the test window."""
    lo, _ = small_log.time_range_us
    return (lo // DAY_US) * DAY_US + 2 * DAY_US


@pytest.fixture(scope="session")
def small_fit(small_log: EventLog, small_split: int):
    from retrieval import train_two_tower

    return train_two_tower(small_log, small_config(), train_end_us=small_split)


@pytest.fixture(scope="session")
def small_retriever(small_fit, small_log: EventLog):
    from retrieval import TwoTowerRetriever

    return TwoTowerRetriever.from_fitted(small_fit, small_log)


@pytest.fixture()
def tiny_log() -> EventLog:
    return make_tiny_log()

