from __future__ import annotations

import numpy as np
import pytest

from experiments.ab import assign_arm
from serving.exploration import ExplorationConfig, explore
from serving.routing import CHALLENGER, CHAMPION, arm_for


def test_propensities_match_empirical_frequencies():
    cfg = ExplorationConfig(share=0.3, top_n=4)
    rng = np.random.default_rng(0)
    k, draws = 6, 40_000
    counts = np.zeros((k, k))  # counts[item rank, slot]
    logged = np.zeros((k, k))
    n_rand = 0
    for _ in range(draws):
        e = explore(k, cfg, rng)
        n_rand += e.randomized
        for slot, item in enumerate(e.order):
            counts[item, slot] += 1
            logged[item, slot] = e.propensity[slot]
    freq = counts / draws
    seen = counts > 0
    assert np.allclose(freq[seen], logged[seen], atol=0.01)
    assert np.allclose(freq.sum(axis=0), 1.0)
    assert abs(n_rand / draws - 0.3) < 0.01
    assert np.allclose(logged[4:, 4:].diagonal(), 1.0)  # unshuffled tail


def test_no_exploration_is_deterministic():
    e = explore(5, ExplorationConfig(share=0.0, top_n=3), np.random.default_rng(1))
    assert not e.randomized and e.order.tolist() == [0, 1, 2, 3, 4] and np.allclose(e.propensity, 1.0)


def test_short_lists():
    e = explore(1, ExplorationConfig(share=1.0, top_n=10), np.random.default_rng(1))
    assert e.order.tolist() == [0] and not e.randomized


def test_exploration_config():
    with pytest.raises(ValueError, match="share must be in"):
        ExplorationConfig(share=2.0)
    with pytest.raises(ValueError, match="top_n must be >= 2"):
        ExplorationConfig(top_n=1)


def test_routing_is_sticky_monotone_and_matches_the_ab_library():
    users = np.arange(5000)
    at_10 = np.array([arm_for(u, "rollout-1", 0.10) == CHALLENGER for u in users])
    at_50 = np.array([arm_for(u, "rollout-1", 0.50) == CHALLENGER for u in users])
    assert abs(at_10.mean() - 0.10) < 0.015 and abs(at_50.mean() - 0.5) < 0.025
    assert not (at_10 & ~at_50).any()  # raising the share never moves a user back
    assert np.array_equal(at_10, assign_arm(users, "rollout-1", 0.10))
    assert arm_for(42, "rollout-1", 0.0) == CHAMPION and arm_for(42, "rollout-1", 1.0) == CHALLENGER
    other = np.array([arm_for(u, "rollout-2", 0.5) == CHALLENGER for u in users])
    assert 0.4 < (other == at_50).mean() < 0.6  # a new salt is an independent split
