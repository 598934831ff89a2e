"""The window state against the batch definition: any batching, order, repeats, crashes and restarts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.stream.state import WindowStore
from features.stream.windows import (
    CART,
    CLICK,
    DAY_US,
    HOUR_US,
    INTRADAY_COLUMNS,
    ITEM_ROLLING,
    OBS_COLUMNS,
    PURCHASE,
    USER_ROLLING,
    VIEW,
    RollingCount,
    intraday_rows,
    observations,
    rolling_counts,
)

T0 = 1_767_571_200_000_000  # 2026-01-05T00:00:00Z


def _obs(rows: list[tuple[int, int, int, int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(OBS_COLUMNS)).astype(np.int64)


def _random_obs(rng: np.random.Generator, n: int, *, hours: int, users: int, items: int) -> pd.DataFrame:
    src = rng.integers(0, 2, n)
    kind = np.where(src == 0, VIEW, rng.choice([CLICK, CART, PURCHASE], n))
    return pd.DataFrame({"src": src, "id": np.arange(n), "kind": kind,
                         "ts_us": T0 + np.sort(rng.integers(0, hours * HOUR_US, n)),
                         "user_id": rng.integers(0, users, n), "item_id": rng.integers(0, items, n)}).astype(np.int64)


class _Online:
    """What the online store holds: the last row pushed per entity and view."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[int, dict]] = {"user_rolling": {}, "item_rolling": {}, "user_intraday": {}}

    def write(self, update) -> None:
        for part, table in self.rows.items():
            frame = getattr(update, part)
            for row in frame.to_dict("records"):
                table[int(row[frame.columns[0]])] = row

    def rolling(self, entity: str) -> pd.DataFrame:
        frame = pd.DataFrame(list(self.rows[f"{entity}_rolling"].values()))
        return frame.set_index(f"{entity}_id").drop(columns="event_timestamp").sort_index()

    def intraday(self) -> pd.DataFrame:
        frame = pd.DataFrame(list(self.rows["user_intraday"].values())).set_index("user_id").sort_index()
        frame.insert(0, "event_timestamp_us", frame.pop("event_timestamp").astype("datetime64[us, UTC]")
                     .astype("int64"))
        return frame


def _assert_matches_batch(online: _Online, truth: pd.DataFrame) -> None:
    as_of = int(truth["ts_us"].max())
    for entity in ("user", "item"):
        expected = rolling_counts(truth, entity, as_of)
        got = online.rolling(entity)
        # entities whose rows all left the windows were pushed as zeros
        expected = expected.reindex(got.index.union(expected.index), fill_value=0)
        got = got.reindex(expected.index, fill_value=0)[expected.columns]
        pd.testing.assert_frame_equal(got.astype(np.int64), expected, check_names=False)
    expected = intraday_rows(truth)
    got = online.intraday()[expected.columns]
    pd.testing.assert_frame_equal(got.astype("Int64"), expected.astype("Int64"), check_names=False)


def test_rolling_counts_known_answer() -> None:
    obs = _obs([
        (0, 1, VIEW, T0 + 10 * HOUR_US, 7, 3),
        (0, 2, VIEW, T0 + 10 * HOUR_US + 1, 7, 3),
        (0, 2, VIEW, T0 + 10 * HOUR_US + 1, 7, 3),  # a repeat counts once
        (1, 1, CLICK, T0 + 11 * HOUR_US, 7, 3),
        (1, 2, CART, T0 + 11 * HOUR_US + 5, 7, 4),
        (0, 3, VIEW, T0 + 9 * HOUR_US, 8, 4),  # exactly 2 h before as_of: outside 1 h, inside 24 h
    ])
    users = rolling_counts(obs, "user", T0 + 11 * HOUR_US + 5)
    assert users.loc[7, "f_user_views_1h"] == 0 and users.loc[7, "f_user_views_24h"] == 2
    assert users.loc[7, "f_user_clicks_1h"] == 1 and users.loc[7, "f_user_carts_1h"] == 1
    assert users.loc[8, "f_user_views_24h"] == 1 and users.loc[8, "f_user_views_1h"] == 0
    # the window is (T - w, T]: a row exactly w old has left it
    assert rolling_counts(obs, "user", T0 + 11 * HOUR_US + 1).loc[7, "f_user_views_1h"] == 0
    assert rolling_counts(obs, "user", T0 + 11 * HOUR_US).loc[7, "f_user_views_1h"] == 1
    assert rolling_counts(obs, "user", T0 + 11 * HOUR_US - 1).loc[7, "f_user_views_1h"] == 2


def test_intraday_known_answer() -> None:
    obs = _obs([
        (0, 1, VIEW, T0 + 23 * HOUR_US, 1, 1),
        (1, 1, CLICK, T0 + 23 * HOUR_US + 5, 1, 1),
        (0, 2, VIEW, T0 + DAY_US + HOUR_US, 1, 2),  # next day: yesterday's counts no longer apply
        (0, 3, VIEW, T0 + 2 * HOUR_US, 2, 2),
    ])
    rows = intraday_rows(obs)
    assert list(rows.columns[1:]) == list(INTRADAY_COLUMNS)
    one = rows.loc[1]
    assert one["rt_day"] == (T0 + DAY_US) // DAY_US and one["rt_views"] == 1 and one["rt_clicks"] == 0
    assert one["rt_last_view_us"] == T0 + DAY_US + HOUR_US and one["rt_last_event_us"] == T0 + 23 * HOUR_US + 5
    assert one["event_timestamp_us"] == T0 + DAY_US + HOUR_US + 1
    assert pd.isna(rows.loc[2, "rt_last_event_us"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_any_batching_order_and_repeats_give_the_batch_values(tmp_path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = _random_obs(rng, 3000, hours=60, users=40, items=60)
    # repeats, and out-of-order arrival within half an hour
    stream = pd.concat([truth, truth.sample(400, random_state=seed)], ignore_index=True)
    jitter = rng.integers(-HOUR_US // 2, HOUR_US // 2, len(stream))
    stream = stream.iloc[np.argsort(stream["ts_us"].to_numpy() + jitter, kind="stable")]
    online = _Online()
    with WindowStore(tmp_path / "state.sqlite") as store:
        i = 0
        while i < len(stream):
            k = int(rng.integers(1, 300))
            with store.apply(stream.iloc[i:i + k]) as update:
                online.write(update)
            i += k
        assert store.watermark_us == truth["ts_us"].max()
        # rows older than 24 h + lateness behind the watermark are pruned
        assert store.n_rows() < len(truth)
    _assert_matches_batch(online, truth)


def test_sparse_entities_are_pushed_as_zero_when_their_rows_leave_the_windows(tmp_path) -> None:
    obs = _obs([(0, 1, VIEW, T0, 5, 9), (0, 2, VIEW, T0 + 2 * HOUR_US, 6, 8), (0, 3, VIEW, T0 + 30 * HOUR_US, 6, 8)])
    online = _Online()
    with WindowStore(tmp_path / "s.sqlite") as store:
        for i in range(3):
            with store.apply(obs.iloc[i:i + 1]) as update:
                online.write(update)
    users = online.rolling("user")
    assert users.loc[5].sum() == 0  # user 5's only view left the 24 h window when the watermark passed it
    assert users.loc[6, "f_user_views_1h"] == 1 and users.loc[6, "f_user_views_24h"] == 1
    _assert_matches_batch(online, obs)


def test_a_failed_push_rolls_the_batch_back_and_a_retry_counts_once(tmp_path) -> None:
    rng = np.random.default_rng(5)
    truth = _random_obs(rng, 600, hours=5, users=10, items=10)
    online = _Online()
    with WindowStore(tmp_path / "s.sqlite") as store:
        with store.apply(truth.iloc[:300]) as update:
            online.write(update)
        with pytest.raises(ConnectionError), store.apply(truth.iloc[300:]):
            raise ConnectionError("online store down")
        assert store.watermark_us == truth["ts_us"].iloc[299]
        with store.apply(truth.iloc[250:]) as update:  # redelivered from an earlier offset
            assert update.new == 300 and update.duplicates == 50
            online.write(update)
    _assert_matches_batch(online, truth)


def test_state_survives_a_restart(tmp_path) -> None:
    rng = np.random.default_rng(9)
    truth = _random_obs(rng, 1000, hours=30, users=15, items=20)
    online = _Online()
    for part in (truth.iloc[:400], truth.iloc[300:700], truth.iloc[650:]):
        with WindowStore(tmp_path / "s.sqlite") as store, store.apply(part) as update:
            online.write(update)
    _assert_matches_batch(online, truth)


def test_a_lagging_partition_is_not_late_but_an_old_row_is(tmp_path) -> None:
    fast = _obs([(0, i, VIEW, T0 + i * 3 * HOUR_US, 1, 1) for i in range(20)])  # 57 h of data
    slow = _obs([(0, 100 + i, VIEW, T0 + i * HOUR_US, 2, 2) for i in range(3)])
    with WindowStore(tmp_path / "s.sqlite", allowed_lateness_s=0) as store:
        with store.apply(fast, sources={"t/0": int(fast["ts_us"].max()), "t/1": None}, now=100.0) as update:
            assert update.late == 0
        # partition 1 was announced and had no data yet: its rows, 57 h behind, still count
        with store.apply(slow, sources={"t/1": int(slow["ts_us"].max())}, now=101.0) as update:
            assert update.late == 0 and update.new == 3
        # once partition 1 is idle the watermark moves on and an equally old row is late
        old = _obs([(0, 200, VIEW, T0, 3, 3)])
        with store.apply(old, sources={"t/0": int(fast["ts_us"].max())}, now=1000.0) as update:
            assert update.late == 1 and update.new == 0


def test_observations_from_contract_rows() -> None:
    ts = pd.to_datetime([T0, T0 + 1], unit="us", utc=True)
    imp = pd.DataFrame({"impression_id": [5, 6], "ts": ts, "user_id": [1, 2], "item_id": [3, 4]})
    ev = pd.DataFrame({"event_id": [9], "ts": ts[:1], "user_id": [1], "item_id": [3], "type": ["add_to_cart"]})
    obs = observations(imp, ev)
    assert obs.to_dict("list") == {"src": [0, 0, 1], "id": [5, 6, 9], "kind": [VIEW, VIEW, CART],
                                   "ts_us": [T0, T0 + 1, T0], "user_id": [1, 2, 1], "item_id": [3, 4, 3]}
    assert len(observations(None, None)) == 0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"entity": "seller", "kind": VIEW, "window_s": 3600}, "entity"),
    ({"entity": "user", "kind": 9, "window_s": 3600}, "kind"),
    ({"entity": "user", "kind": VIEW, "window_s": 90}, "window_s"),
])
def test_rolling_count_rejects_bad_declarations(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RollingCount(**kwargs)


def test_feature_names_are_unique_and_prefixed() -> None:
    names = [f.name for f in USER_ROLLING + ITEM_ROLLING]
    assert len(set(names)) == len(names)
    assert all(n.startswith("f_user_") for n in names[:len(USER_ROLLING)])
    assert "f_user_carts_24h" in names and "f_item_purchases_1h" in names

