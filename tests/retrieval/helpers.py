"""Helpers shared by the retrieval tests: a fast configuration and a hand-made tiny event log."""

from __future__ import annotations

import numpy as np
import pandas as pd

from retrieval import EventLog, RetrievalConfig, TrainingConfig, TwoTowerConfig
from retrieval.inputs import DAY_US

T0 = 1_767_571_200_000_000  # 2026-01-05T00:00:00Z in microseconds
HOUR = 3_600_000_000


def small_config(**training) -> RetrievalConfig:
    """A fast configuration for tests: small hash tables, few epochs, one thread."""
    params = {"num_threads": 1, "max_epochs": 4, "patience": 2, "batch_size": 256, **training}
    return RetrievalConfig(model=TwoTowerConfig(user_buckets=4096, item_buckets=8192, seller_buckets=1024,
                                                category_buckets=256, min_item_examples=2),
                           training=TrainingConfig(**params))



def make_tiny_log() -> EventLog:
    """Three users, two sellers (one new), 12 items (item 111 out of stock), a few requests.

    User 1 clicks item 100 at T0+1h and buys it at T0+2h, clicks 101 at T0+3h (from request 7,
    which also showed 102 and 103), and searches (no impression) for item 104 at T0+5h.
    """
    users = pd.DataFrame({"user_id": [1, 2, 3], "signup_ts": pd.to_datetime([T0 - 100 * DAY_US] * 3, unit="us", utc=True),
                          "country": ["DE", "FR", "DE"], "device": ["mobile", "desktop", "mobile"]})
    sellers = pd.DataFrame({"seller_id": [10, 11],
                            "created_ts": pd.to_datetime([T0 - 400 * DAY_US, T0 - DAY_US], unit="us", utc=True),
                            "rating": [4.5, None]})
    item_ids = np.arange(100, 112)
    items = pd.DataFrame({"item_id": item_ids, "seller_id": np.where(item_ids < 108, 10, 11),
                          "category_id": item_ids % 3, "price": np.linspace(5.0, 60.0, len(item_ids)),
                          "created_ts": pd.to_datetime([T0 - 30 * DAY_US] * len(item_ids), unit="us", utc=True),
                          "in_stock": item_ids != 111})
    imp = pd.DataFrame({
        "impression_id": [70, 71, 72, 80, 81, 90],
        "request_id": [7, 7, 7, 8, 8, 9],
        "ts": pd.to_datetime([T0 + 3 * HOUR - 60_000_000] * 3 + [T0 + 4 * HOUR] * 2 + [T0 + HOUR - 1_000_000],
                             unit="us", utc=True),
        "user_id": [1, 1, 1, 2, 2, 1],
        "item_id": [101, 102, 103, 105, 106, 100],
        "position": [0, 1, 2, 0, 1, 0], "policy": ["p"] * 6, "randomized": [False] * 6,
        "propensity": [None] * 6, "device": ["mobile", "mobile", "mobile", "desktop", "desktop", "tablet"]})
    events = pd.DataFrame({
        "event_id": [1, 2, 3, 4, 5],
        "ts": pd.to_datetime([T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR, T0 + 5 * HOUR, T0 + 4 * HOUR + 10],
                             unit="us", utc=True),
        "user_id": [1, 1, 1, 1, 2],
        "item_id": [100, 100, 101, 104, 105],
        "type": ["click", "purchase", "click", "click", "click"],
        "impression_id": pd.array([90, 90, 70, None, 80], dtype="Int64"),
        "quantity": [1] * 5, "price_paid": [None, 5.0, None, None, None]})
    return EventLog.from_tables({"users": users, "sellers": sellers, "items": items, "impressions": imp,
                                 "events": events})
