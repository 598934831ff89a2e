"""The logging policy of the simulated marketplace: popularity with noise, plus exploration."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from experiments.simulator.world import World

__all__ = ["LoggedFeeds", "PopularityLoggingPolicy", "LOGGING_POLICY_NAME", "RANDOM_POLICY_NAME"]

LOGGING_POLICY_NAME = "popularity-noise-v1"
RANDOM_POLICY_NAME = "random"


@dataclass(frozen=True)
class LoggedFeeds:
    """Feeds served to a batch of requests.

    Attributes
    ----------
    served : ndarray of int64, shape (R, L)
        Item ids by 0-based position.
    randomized : ndarray of bool, shape (R,)
        Requests that got a randomized intervention.
    propensity : ndarray of float64, shape (R, L)
        Probability that the item was logged at that position; NaN where it is not known exactly
        (the noisy popularity ranking has no closed form).
    """

    served: np.ndarray
    randomized: np.ndarray
    propensity: np.ndarray


class PopularityLoggingPolicy:
    """Rank by log-popularity plus Gaussian noise; shuffle the top N of a share of requests.

    Candidates are drawn in proportion to popularity (``4 * feed_length`` draws with
    replacement, duplicates dropped) and ranked by ``log_popularity + noise * N(0, 1)``; this
    is a Monte-Carlo version of "noisy popularity over the whole catalog" whose cost does not
    grow with the catalog. On randomized requests the top ``shuffle_top_n`` items are put in
    a uniformly random order, so each of them sits at each of those slots with probability
    exactly ``1 / shuffle_top_n``.
    """

    def __init__(self, world: World, *, feed_length: int, noise: float, randomized_share: float,
                 shuffle_top_n: int) -> None:
        self.world = world
        self.feed_length = feed_length
        self.noise = noise
        self.randomized_share = randomized_share
        self.shuffle_top_n = shuffle_top_n

    def serve(self, n_requests: int, available: np.ndarray, rng: np.random.Generator) -> LoggedFeeds:
        """Serve ``n_requests`` feeds from the items where ``available`` (bool, shape (I,)) is true."""
        avail_ids = np.flatnonzero(available)
        length = min(self.feed_length, len(avail_ids))
        log_pop = self.world.item_log_popularity
        weights = np.exp(log_pop[avail_ids] - log_pop[avail_ids].max())
        cdf = np.cumsum(weights)
        cdf /= cdf[-1]
        n_draws = 4 * length
        draws = np.minimum(np.searchsorted(cdf, rng.random((n_requests, n_draws))), len(avail_ids) - 1)
        cand = avail_ids[draws]
        score = log_pop[cand] + self.noise * rng.standard_normal((n_requests, n_draws))
        # Drop repeated draws of an item: keep one copy per row.
        order = np.argsort(cand, axis=1, kind="stable")
        sorted_cand = np.take_along_axis(cand, order, axis=1)
        dup_sorted = np.zeros_like(sorted_cand, dtype=bool)
        dup_sorted[:, 1:] = sorted_cand[:, 1:] == sorted_cand[:, :-1]
        dup = np.zeros_like(dup_sorted)
        np.put_along_axis(dup, order, dup_sorted, axis=1)
        score[dup] = -np.inf
        top = np.argsort(-score, axis=1, kind="stable")[:, :length]
        served = np.take_along_axis(cand, top, axis=1)
        short = np.flatnonzero(np.isinf(np.take_along_axis(score, top, axis=1)).any(axis=1))
        for r in short:  # rare: fewer unique draws than slots; top up uniformly
            have = served[r][~np.isinf(score[r, top[r]])]
            rest = rng.permutation(np.setdiff1d(avail_ids, have))[: length - len(have)]
            served[r] = np.concatenate([have, rest])

        randomized = rng.random(n_requests) < self.randomized_share
        propensity = np.full(served.shape, np.nan)
        n_shuffle = min(self.shuffle_top_n, length)
        rows = np.flatnonzero(randomized)
        if len(rows):
            perm = np.argsort(rng.random((len(rows), n_shuffle)), axis=1)
            served[rows, :n_shuffle] = np.take_along_axis(served[rows, :n_shuffle], perm, axis=1)
            propensity[rows, :n_shuffle] = 1.0 / n_shuffle
        return LoggedFeeds(served=served, randomized=randomized, propensity=propensity)
