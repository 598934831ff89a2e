"""Configuration of the experiments package (the simulator's section lives here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from features.config import check, parse_utc

__all__ = ["ExperimentsConfig", "SimulatorConfig"]


@dataclass(frozen=True)
class SimulatorConfig:
    """The ground-truth marketplace: its size, period, logging policy and buyer behaviour.

    Parameters
    ----------
    users, items, sellers, categories : int
        Sizes of the simulated marketplace.
    days : int
        Length of the simulated period, starting at ``start_date`` (UTC midnight).
    feed_length : int
        Items the logging policy shows per feed request.
    requests_per_user_day : float
        Mean feed requests per user and day (each user's activity varies around it).
    randomized_share : float
        Share of requests whose top ``shuffle_top_n`` items are shuffled uniformly at random;
        their impressions carry the exact propensity ``1 / shuffle_top_n``.
    shuffle_top_n : int
        How many top slots a randomized intervention shuffles (at most ``feed_length``).
    examination_eta : float
        Position bias: the probability of examining 0-based position p is ``(p + 1) ** -eta``.
    policy_noise : float
        Standard deviation of the Gaussian noise the logging policy adds to log-popularity.
    new_seller_share : float
        Share of sellers who join during the period.
    new_user_share : float
        Share of users who sign up during the period.
    out_of_stock_share : float
        Share of items out of stock.
    taste_concentration : float
        Dirichlet concentration of users' category tastes (smaller = more focused buyers).
    organic_rate : float
        Mean organic (search, non-feed) clicks per request; their events have no impression.
    chunk_requests : int
        Requests simulated per chunk; bounds memory, not results' content.
    seed : int
    """

    users: int = 2000
    items: int = 5000
    sellers: int = 300
    categories: int = 30
    days: int = 7
    start_date: str = "2026-01-05"
    feed_length: int = 20
    requests_per_user_day: float = 1.5
    randomized_share: float = 0.02
    shuffle_top_n: int = 20
    examination_eta: float = 1.0
    policy_noise: float = 1.0
    new_seller_share: float = 0.15
    new_user_share: float = 0.1
    out_of_stock_share: float = 0.03
    taste_concentration: float = 0.3
    organic_rate: float = 0.3
    chunk_requests: int = 20000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("users", "sellers", "categories", "days", "feed_length", "chunk_requests"):
            check(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))
        check(self.items >= 2 * self.feed_length, "items", f">= 2 * feed_length ({2 * self.feed_length})", self.items)
        check(self.sellers <= self.items, "sellers", f"<= items ({self.items})", self.sellers)
        check(1 <= self.shuffle_top_n <= self.feed_length, "shuffle_top_n", f"in [1, feed_length={self.feed_length}]",
              self.shuffle_top_n)
        check(self.requests_per_user_day > 0, "requests_per_user_day", "> 0", self.requests_per_user_day)
        for name in ("randomized_share", "new_seller_share", "new_user_share", "out_of_stock_share"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, name, "in [0, 1]", value)
        check(self.examination_eta >= 0, "examination_eta", ">= 0", self.examination_eta)
        check(self.policy_noise >= 0, "policy_noise", ">= 0", self.policy_noise)
        check(self.taste_concentration > 0, "taste_concentration", "> 0", self.taste_concentration)
        check(self.organic_rate >= 0, "organic_rate", ">= 0", self.organic_rate)
        check(self.seed >= 0, "seed", ">= 0", self.seed)
        parse_utc(self.start_date, "start_date")

    @property
    def start_us(self) -> int:
        """Start of the period in microseconds since the epoch."""
        return int(parse_utc(self.start_date, "start_date").timestamp() * 1_000_000)

    @property
    def end_us(self) -> int:
        """End of the period (exclusive) in microseconds since the epoch."""
        return self.start_us + self.days * _DAY_US


_DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class ExperimentsConfig:
    """The ``experiments`` section of the feedrank configuration."""

    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
