"""The marketplace simulator: writes event logs in the contract and answers for the truth.

Ids are derived, never counted across chunks, so every file's content depends only on
the seed and the configuration:

- ``request_id = (day << 32) | index_within_day``
- ``impression_id = request_id * 256 + position`` (slot 255 is reserved for organic events)
- ``event_id = (request_id * 256 + slot) * 4 + type_code`` (click 0, add_to_cart 1, purchase 2)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from experiments.config import SimulatorConfig
from experiments.simulator import behaviour as bh
from experiments.simulator.policy import (
    LOGGING_POLICY_NAME,
    RANDOM_POLICY_NAME,
    PopularityLoggingPolicy,
)
from experiments.simulator.world import COUNTRIES, DAY_US, DEVICES, World, build_world
from features.contract import EVENT_TYPES, arrow_schema

__all__ = ["ExpectedOutcome", "MarketplaceSimulator", "Outcome", "Requests", "SimulationReport"]

logger = logging.getLogger(__name__)

MAX_SLOTS = 256
ORGANIC_SLOT = 255
HOUR_US = 3_600 * 1_000_000
SECOND_US = 1_000_000
# Share of the day's requests in each hour (UTC): a lunch and an evening peak.
_DIURNAL = np.array([1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 3.5, 3.8, 4, 5, 4.5, 4, 3.8, 4, 4.5, 5.5, 6.5, 7,
                     6.5, 4.5, 2.5])
_DIURNAL = _DIURNAL / _DIURNAL.sum()
_CONFIG_FILE = "simulator.json"


@dataclass(frozen=True)
class Requests:
    """A batch of feed requests (the context a ranking policy sees).

    Attributes
    ----------
    request_id, user_id, ts_us : ndarray of int64, shape (R,)
    device : ndarray of int8, shape (R,)
        Index into ``experiments.simulator.world.DEVICES``.
    """

    request_id: np.ndarray
    user_id: np.ndarray
    ts_us: np.ndarray
    device: np.ndarray

    def __len__(self) -> int:
        return len(self.request_id)

    @property
    def hour(self) -> np.ndarray:
        return (self.ts_us // HOUR_US) % 24

    def take(self, index: np.ndarray | slice) -> Requests:
        return Requests(self.request_id[index], self.user_id[index], self.ts_us[index], self.device[index])


@dataclass(frozen=True)
class Outcome:
    """What the simulated buyers did with served feeds, as contract tables."""

    impressions: pa.Table
    events: pa.Table


@dataclass(frozen=True)
class ExpectedOutcome:
    """Exact expectations for served feeds, each of shape (R, K); zero on empty slots (-1)."""

    click: np.ndarray
    purchase: np.ndarray
    gmv: np.ndarray

    def gmv_per_request(self) -> np.ndarray:
        return self.gmv.sum(axis=1)


@dataclass(frozen=True)
class SimulationReport:
    """Row counts and speed of one :meth:`MarketplaceSimulator.run`."""

    out_dir: str
    rows: dict[str, int]
    censored_events: int
    seconds: float

    @property
    def impressions_per_second(self) -> float:
        return self.rows["impressions"] / max(self.seconds, 1e-9)


def _ts(values: np.ndarray) -> pa.Array:
    return pa.array(values.astype(np.int64), pa.timestamp("us", tz="UTC"))


def _strings(codes: np.ndarray, names: tuple[str, ...]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(names)).cast(pa.string())


class MarketplaceSimulator:
    """A ground-truth marketplace: simulated buyers, sellers, items and a logging policy.

    Parameters
    ----------
    config : SimulatorConfig
    params : BehaviourParams, optional
        Coefficients of the buyer model.

    Examples
    --------
    >>> sim = MarketplaceSimulator(SimulatorConfig(users=200, items=500, sellers=20, days=2))
    >>> reqs = sim.requests_for_day(0)
    >>> feeds = sim.logging_policy.serve(len(reqs), sim.available_items(0), np.random.default_rng(0))
    >>> outcome = sim.respond(reqs, feeds.served, rng=np.random.default_rng(1), policy="mine")
    """

    def __init__(self, config: SimulatorConfig, params: bh.BehaviourParams = bh.DEFAULT_PARAMS) -> None:
        self.config = config
        self.params = params
        self.world: World = build_world(config)
        self.logging_policy = PopularityLoggingPolicy(
            self.world, feed_length=config.feed_length, noise=config.policy_noise,
            randomized_share=config.randomized_share, shuffle_top_n=config.shuffle_top_n)

    @classmethod
    def from_logs(cls, log_dir: str | os.PathLike[str]) -> MarketplaceSimulator:
        """Rebuild the simulator that wrote ``log_dir`` (its truth comes back from the seed)."""
        path = Path(log_dir) / "_simulator" / _CONFIG_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: {log_dir} was not written by the simulator")
        return cls(SimulatorConfig(**json.loads(path.read_text())["config"]))

    # ----------------------------------------------------------------- the truth
    def examination(self, positions: np.ndarray) -> np.ndarray:
        """True probability of examining each 0-based position."""
        return bh.examination(positions, self.config.examination_eta)

    def click_probability(self, user_ids: np.ndarray, item_ids: np.ndarray, *, devices: np.ndarray,
                          hours: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """True P(click): given examination, or at ``positions`` when they are given."""
        p = bh.attractiveness(self.world, user_ids, item_ids, devices, hours, self.params)
        return p if positions is None else p * self.examination(positions)

    def purchase_probability(self, user_ids: np.ndarray, item_ids: np.ndarray, *, devices: np.ndarray,
                             hours: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """True P(purchase): given examination, or at ``positions`` when they are given."""
        p = bh.purchase_given_examined(self.world, user_ids, item_ids, devices, hours, self.params)
        return p if positions is None else p * self.examination(positions)

    def expected_outcome(self, requests: Requests, served: np.ndarray) -> ExpectedOutcome:
        """Exact expected clicks, purchases and GMV of each slot of ``served`` (R, K; -1 = empty)."""
        served = np.asarray(served, dtype=np.int64)
        _check_served(requests, served, self.world.n_items)
        r, p = np.nonzero(served >= 0)
        items = served[r, p]
        u, dev, hr = requests.user_id[r], requests.device[r], requests.hour[r]
        click = np.zeros(served.shape)
        purchase = np.zeros(served.shape)
        click[r, p] = self.click_probability(u, items, devices=dev, hours=hr, positions=p)
        purchase[r, p] = self.purchase_probability(u, items, devices=dev, hours=hr, positions=p)
        gmv = purchase * np.where(served >= 0, self.world.item_price[np.maximum(served, 0)], 0.0)
        return ExpectedOutcome(click=click, purchase=purchase, gmv=gmv * bh.expected_quantity(self.params))

    # ----------------------------------------------------------------- traffic
    def available_items(self, day: int) -> np.ndarray:
        """Items listed before ``day`` starts and in stock (bool, shape (I,))."""
        day_start = self.config.start_us + day * DAY_US
        return (self.world.item_created_us < day_start) & self.world.item_in_stock

    def requests_for_day(self, day: int, *, beyond_period: bool = False) -> Requests:
        """The feed requests of day ``day`` (0-based), sorted by time; deterministic in the seed.

        ``beyond_period=True`` allows days after the simulated period (the same world, later
        traffic): what a model trained on the period's logs faces next.
        """
        if not 0 <= day < (2**31 if beyond_period else self.config.days):
            raise ValueError(f"day must be in [0, {self.config.days}), got {day}")
        w, cfg = self.world, self.config
        rng = np.random.default_rng([cfg.seed, day, 0])
        counts = rng.poisson(w.user_activity * cfg.requests_per_user_day)
        users = np.repeat(np.arange(w.n_users, dtype=np.int64), counts)
        hours = rng.choice(24, size=len(users), p=_DIURNAL)
        ts = cfg.start_us + day * DAY_US + hours * HOUR_US + rng.integers(0, HOUR_US, len(users))
        other = rng.integers(0, len(DEVICES), len(users))
        device = np.where(rng.random(len(users)) < 0.85, w.user_device[users], other).astype(np.int8)
        keep = ts > w.user_signup_us[users]
        users, ts, device = users[keep], ts[keep], device[keep]
        order = np.lexsort((users, ts))
        rid = (np.int64(day) << 32) | np.arange(len(order), dtype=np.int64)
        return Requests(request_id=rid, user_id=users[order], ts_us=ts[order], device=device[order])

    def respond(self, requests: Requests, served: np.ndarray, *, rng: np.random.Generator,
                policy: str | np.ndarray, randomized: np.ndarray | None = None,
                propensity: np.ndarray | None = None) -> Outcome:
        """Let the simulated buyers react to served feeds.

        Parameters
        ----------
        requests : Requests
        served : ndarray of int64, shape (R, K)
            Item ids by position; -1 marks an empty slot. K is at most 255.
        rng : numpy.random.Generator
        policy : str or ndarray of str, shape (R,)
            Logged in ``impressions.policy``.
        randomized : ndarray of bool, shape (R,), optional
        propensity : ndarray of float, shape (R, K), optional
            NaN where unknown.

        Returns
        -------
        Outcome
            Impressions of every filled slot and the click, add-to-cart and purchase
            events they caused (purchases may come days later; nothing is cut off).
        """
        served = np.asarray(served, dtype=np.int64)
        _check_served(requests, served, self.world.n_items)
        n_req = len(requests)
        r, p = np.nonzero(served >= 0)
        items = served[r, p]
        users, dev, hours, ts = requests.user_id[r], requests.device[r], requests.hour[r], requests.ts_us[r]
        imp_id = requests.request_id[r] * MAX_SLOTS + p

        rand = np.zeros(n_req, dtype=bool) if randomized is None else np.asarray(randomized, dtype=bool)
        prop = np.full(served.shape, np.nan) if propensity is None else np.asarray(propensity, dtype=np.float64)
        names = np.asarray([policy] * n_req if isinstance(policy, str) else policy, dtype=object)
        uniq, codes = np.unique(names, return_inverse=True)
        prop_flat = prop[r, p]
        impressions = pa.Table.from_arrays([
            pa.array(imp_id), pa.array(requests.request_id[r]), _ts(ts), pa.array(users), pa.array(items),
            pa.array(p.astype(np.int32)), _strings(codes[r], tuple(uniq)), pa.array(rand[r]),
            pa.array(prop_flat, mask=np.isnan(prop_flat)), _strings(dev, DEVICES),
        ], schema=arrow_schema("impressions"))

        click_p = self.click_probability(users, items, devices=dev, hours=hours, positions=p)
        clicked = rng.random(len(items)) < click_p
        events = self._funnel(rng, imp_id[clicked], users[clicked], items[clicked],
                              ts[clicked] + SECOND_US + rng.exponential(15 * SECOND_US, clicked.sum()).astype(np.int64)
                              * (1 + p[clicked] // 10), from_feed=True)
        return Outcome(impressions=impressions, events=events)

    def _funnel(self, rng: np.random.Generator, slot_id: np.ndarray, users: np.ndarray, items: np.ndarray,
                click_ts: np.ndarray, *, from_feed: bool) -> pa.Table:
        """Clicks at ``click_ts`` and the carts and purchases that follow them, as an events table."""
        w, n = self.world, len(items)
        cart = rng.random(n) < bh.cart_given_click(w, users, items, self.params)
        buy = cart & (rng.random(n) < bh.buy_given_cart(w, users, items, self.params))
        cart_ts = click_ts + SECOND_US + rng.exponential(60 * SECOND_US, n).astype(np.int64)
        in_session = rng.random(n) < 0.55
        later = np.minimum(rng.exponential(1.5 * DAY_US, n), 7 * DAY_US - 2 * HOUR_US)
        buy_ts = cart_ts + SECOND_US + np.where(in_session, rng.exponential(300 * SECOND_US, n), later).astype(np.int64)
        qty = 1 + rng.poisson(self.params.extra_quantity_rate, n)

        kinds = [(np.ones(n, bool), click_ts, 0), (cart, cart_ts, 1), (buy, buy_ts, 2)]
        ev_slot = np.concatenate([slot_id[m] for m, _, _ in kinds])
        ev_type = np.concatenate([np.full(m.sum(), code, np.int8) for m, _, code in kinds])
        ev_ts = np.concatenate([t[m] for m, t, _ in kinds])
        ev_user = np.concatenate([users[m] for m, _, _ in kinds])
        ev_item = np.concatenate([items[m] for m, _, _ in kinds])
        ev_qty = np.concatenate([np.where(code == 2, qty[m], 1) for m, _, code in kinds])
        price = w.item_price[ev_item]
        order = np.lexsort((ev_type, ev_slot, ev_ts))
        ev_slot, ev_type, ev_ts, ev_user, ev_item, ev_qty, price = (
            a[order] for a in (ev_slot, ev_type, ev_ts, ev_user, ev_item, ev_qty, price))
        return pa.Table.from_arrays([
            pa.array(ev_slot * 4 + ev_type), _ts(ev_ts), pa.array(ev_user), pa.array(ev_item),
            _strings(ev_type, EVENT_TYPES),
            pa.array(ev_slot, mask=np.full(len(ev_slot), not from_feed)),
            pa.array(ev_qty.astype(np.int64)),
            pa.array(price, mask=ev_type != 2),
        ], schema=arrow_schema("events"))

    def organic_events(self, requests: Requests, available: np.ndarray, rng: np.random.Generator) -> pa.Table:
        """Search traffic beside the feed: with probability ``organic_rate`` per request the buyer
        clicks an item of a category drawn from their taste, then may cart and buy it."""
        w = self.world
        hit = rng.random(len(requests)) < min(self.config.organic_rate, 1.0)
        reqs = requests.take(np.flatnonzero(hit))
        cum = np.cumsum(w.user_taste[reqs.user_id], axis=1)
        cats = np.minimum((cum < rng.random((len(reqs), 1)) * cum[:, -1:]).sum(axis=1), cum.shape[1] - 1)
        avail = np.flatnonzero(available)
        by_cat = avail[np.argsort(w.item_category[avail], kind="stable")]
        counts = np.bincount(w.item_category[avail], minlength=cum.shape[1])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        u = rng.random(len(reqs))
        has = counts[cats] > 0
        items = np.where(has, by_cat[np.minimum(starts[cats] + (u * counts[cats]).astype(np.int64), len(by_cat) - 1)],
                         avail[(u * len(avail)).astype(np.int64)])
        slot = reqs.request_id * MAX_SLOTS + ORGANIC_SLOT
        ts = reqs.ts_us + rng.integers(0, 20 * 60 * SECOND_US, len(reqs))
        return self._funnel(rng, slot, reqs.user_id, items, ts, from_feed=False)

    # ----------------------------------------------------------------- logs
    def dimension_tables(self) -> dict[str, pa.Table]:
        """The users, sellers and items tables (snapshots at the end of the period)."""
        w = self.world
        n_u, n_s, n_i = w.n_users, w.n_sellers, w.n_items
        rating = w.seller_rating
        return {
            "users": pa.Table.from_arrays([
                pa.array(np.arange(n_u, dtype=np.int64)), _ts(w.user_signup_us),
                _strings(w.user_country, COUNTRIES), _strings(w.user_device, DEVICES)],
                schema=arrow_schema("users")),
            "sellers": pa.Table.from_arrays([
                pa.array(np.arange(n_s, dtype=np.int64)), _ts(w.seller_created_us),
                pa.array(rating, mask=np.isnan(rating))], schema=arrow_schema("sellers")),
            "items": pa.Table.from_arrays([
                pa.array(np.arange(n_i, dtype=np.int64)), pa.array(w.item_seller), pa.array(w.item_category),
                pa.array(w.item_price), pa.array(w.item_list_price), pa.array(w.item_margin),
                _ts(w.item_created_us), pa.array(w.item_in_stock), pa.array(w.item_stock_qty)],
                schema=arrow_schema("items")),
        }

    def run(self, out_dir: str | os.PathLike[str], *, progress: bool = True) -> SimulationReport:
        """Simulate the whole period and write the five contract tables as Parquet under ``out_dir``.

        Data is written chunk by chunk into ``<out_dir>.partial`` and moved into place at the
        end, so a crash never leaves a half-written log behind a finished-looking folder.
        Events later than the end of the period are not written (they had not happened yet
        when the log was cut); their number is reported as ``censored_events``.
        """
        cfg = self.config
        out = Path(out_dir)
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        for name in ("users", "sellers", "items", "impressions", "events", "_simulator"):
            (tmp / name).mkdir(parents=True)
        start = time.perf_counter()
        rows = {}
        for name, table in self.dimension_tables().items():
            pq.write_table(table, tmp / name / "part-00000.parquet")
            rows[name] = table.num_rows
        rows["impressions"] = rows["events"] = 0
        censored = 0
        for day in range(cfg.days):
            requests = self.requests_for_day(day)
            available = self.available_items(day)
            for c, lo in enumerate(range(0, len(requests), cfg.chunk_requests)):
                rng = np.random.default_rng([cfg.seed, day, c + 1])
                reqs = requests.take(slice(lo, lo + cfg.chunk_requests))
                feeds = self.logging_policy.serve(len(reqs), available, rng)
                policy = np.where(feeds.randomized, RANDOM_POLICY_NAME, LOGGING_POLICY_NAME)
                outcome = self.respond(reqs, feeds.served, rng=rng, policy=policy, randomized=feeds.randomized,
                                       propensity=feeds.propensity)
                events = pa.concat_tables([outcome.events, self.organic_events(reqs, available, rng)])
                in_period = pa.compute.less(events["ts"], pa.scalar(cfg.end_us, pa.timestamp("us", tz="UTC")))
                censored += events.num_rows - pa.compute.sum(in_period).as_py()
                events = events.filter(in_period)
                part = f"part-{day:03d}-{c:04d}.parquet"
                pq.write_table(outcome.impressions, tmp / "impressions" / part)
                pq.write_table(events, tmp / "events" / part)
                rows["impressions"] += outcome.impressions.num_rows
                rows["events"] += events.num_rows
            if progress:
                elapsed = time.perf_counter() - start
                logger.info("day %d/%d: %s impressions, %s events so far (%.0f impressions/s)", day + 1, cfg.days,
                            f"{rows['impressions']:,}", f"{rows['events']:,}", rows["impressions"] / elapsed)
        meta = {"config": asdict(self.config), "rows": rows, "censored_events": censored}
        (tmp / "_simulator" / _CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return SimulationReport(out_dir=str(out), rows=rows, censored_events=censored,
                                seconds=time.perf_counter() - start)


def _check_served(requests: Requests, served: np.ndarray, n_items: int) -> None:
    if served.ndim != 2 or served.shape[0] != len(requests):
        raise ValueError(f"served must have shape (n_requests={len(requests)}, K), got {served.shape}")
    if served.shape[1] > ORGANIC_SLOT:
        raise ValueError(f"served must have at most {ORGANIC_SLOT} positions, got {served.shape[1]}")
    if (served >= n_items).any() or (served < -1).any():
        raise ValueError(f"served must hold item ids in [0, {n_items}) or -1 for an empty slot")
