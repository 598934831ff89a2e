"""Synthetic frames in the ETL's ``training/`` schema, drawn from a position-based click model.

For unit tests of the ranking package before (and besides) the simulator's ETL output:
relevance depends on a few ``f_*`` features, the logging policy orders by a noisy
popularity feature, a share of requests is shuffled uniformly, and examination is
``(p + 1) ** -eta``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DAY = pd.Timedelta(days=1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def make_training_frame(*, n_requests: int = 2000, feed_length: int = 20, eta: float = 1.0,
                        randomized_share: float = 0.2, negative_keep: float = 1.0, days: int = 10,
                        seed: int = 0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A training frame and the truth behind it.

    Returns
    -------
    frame : DataFrame in the ``training/`` schema (features ``f_*``)
    truth : dict with ``attractiveness`` and ``purchase_given_examined`` per row of ``frame``
    """
    rng = np.random.default_rng(seed)
    n = n_requests * feed_length
    req = np.repeat(np.arange(n_requests, dtype=np.int64), feed_length)
    quality = rng.normal(size=n)
    affinity = rng.normal(size=n)
    ctx = np.repeat(rng.integers(0, 24, n_requests), feed_length).astype(float)
    price = np.exp(rng.normal(3.0, 0.6, n))
    popularity = 0.7 * quality + 0.8 * rng.normal(size=n)
    attractiveness = _sigmoid(-2.0 + 1.0 * quality + 1.2 * affinity + 0.3 * np.sin(ctx / 24 * 2 * np.pi))
    buy_given_click = _sigmoid(-1.0 - 0.8 * (np.log(price) - 3.0) + 0.5 * quality)

    # Logging policy: by noisy popularity; randomized requests shuffle the whole feed.
    logging_score = popularity + 0.5 * rng.normal(size=n)
    order = np.lexsort((-logging_score, req))
    position = np.empty(n, dtype=np.int64)
    position[order] = np.tile(np.arange(feed_length), n_requests)
    randomized_req = rng.random(n_requests) < randomized_share
    randomized = randomized_req[req]
    for r in np.flatnonzero(randomized_req):
        sl = slice(r * feed_length, (r + 1) * feed_length)
        position[sl] = rng.permutation(feed_length)
    examination = (position + 1.0) ** -eta

    clicked = rng.random(n) < examination * attractiveness
    carted = clicked & (rng.random(n) < 0.5)
    purchased = carted & (rng.random(n) < buy_given_click / 0.5 * 0.5)
    label = np.select([purchased, carted, clicked], [3, 2, 1], 0).astype(np.int32)

    start = pd.Timestamp("2026-01-05", tz="UTC")
    req_ts = start + pd.to_timedelta(np.sort(rng.uniform(0, days, n_requests)), unit="D")
    ts = req_ts[req]
    end = start + days * DAY
    frame = pd.DataFrame({
        "impression_id": req * 256 + position,
        "request_id": req,
        "ts": ts,
        "user_id": rng.integers(0, 500, n_requests)[req],
        "item_id": rng.integers(0, 5000, n),
        "seller_id": rng.integers(0, 100, n),
        "category_id": rng.integers(0, 10, n),
        "position": pd.array(position, dtype="Int32"),
        "randomized": randomized,
        "propensity": np.where(randomized, 1.0 / feed_length, np.nan),
        "policy": np.where(randomized, "random", "popularity"),
        "device": "mobile",
        "label": label,
        "clicked": clicked,
        "carted": carted,
        "purchased_24h": purchased,
        "purchased_7d": purchased,
        "gmv_7d": np.where(purchased, price, 0.0),
        "label_complete": (ts + 7 * DAY) <= end,
        "sample_weight": np.ones(n),
        "price": price,
        "margin_rate": rng.uniform(0.05, 0.3, n),
        "f_item_quality": quality + 0.3 * rng.normal(size=n),
        "f_item_popularity": popularity,
        "f_ui_affinity": affinity + 0.3 * rng.normal(size=n),
        "f_ctx_hour": ctx,
        "f_item_log_price": np.log(price),
        "f_user_noise": rng.normal(size=n),
    })
    truth = {"attractiveness": attractiveness, "purchase_given_examined": attractiveness * 0.5 * buy_given_click}
    if negative_keep < 1.0:
        keep = (label > 0) | (rng.random(n) < negative_keep)
        frame.loc[label == 0, "sample_weight"] = 1.0 / negative_keep
        frame = frame[keep].reset_index(drop=True)
        truth = {k: v[keep] for k, v in truth.items()}
    return frame, truth
