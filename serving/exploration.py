"""Randomized interventions on a share of requests, with exactly computed propensities.

With probability ``share`` a request's top ``top_n`` items are shuffled uniformly at random;
otherwise the ranked list is served as is. Because the policy is this known mixture, the
probability that the logging policy puts item ``i`` at slot ``p`` is exact for every
impression, randomized or not::

    P(i at p) = (1 - share) * [rank(i) == p] + share * [p < N and rank(i) < N] / N

where ``rank(i)`` is the item's slot in the unshuffled list and ``N = min(top_n, K)``. Slots
at or beyond ``N`` are never shuffled, so their items have propensity 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.config import check

__all__ = ["ExplorationConfig", "Exploration", "explore"]


@dataclass(frozen=True)
class ExplorationConfig:
    """Share of requests that get a randomized shuffle of their top ``top_n`` slots."""

    share: float = 0.02
    top_n: int = 10

    def __post_init__(self) -> None:
        check(0.0 <= self.share <= 1.0, "share", "in [0, 1]", self.share)
        check(self.top_n >= 2, "top_n", ">= 2", self.top_n)


@dataclass(frozen=True)
class Exploration:
    """The served permutation of a ranked list and the propensity of each served slot."""

    order: np.ndarray  # indices into the ranked list, feed order
    propensity: np.ndarray  # shape (K,)
    randomized: bool


def explore(n_items: int, config: ExplorationConfig, rng: np.random.Generator) -> Exploration:
    """Decide whether to shuffle a ranked list of ``n_items`` and compute its propensities."""
    n = min(config.top_n, n_items)
    randomized = bool(rng.random() < config.share) and n >= 2
    order = np.arange(n_items)
    if randomized:
        order[:n] = rng.permutation(n)
    slots = np.arange(n_items)
    same = order == slots
    in_top = slots < n
    shuffled_part = np.where(in_top, config.share / n if n else 0.0, config.share)
    propensity = (1.0 - config.share) * same + shuffled_part
    return Exploration(order=order, propensity=propensity, randomized=randomized)
