"""Tests of experiments.ope: hand-computed values, invalid inputs, unbiasedness, bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.ope import (
    DoublyRobust,
    InverseProbabilityWeighting,
    PolicyValueEstimate,
    SelfNormalizedInverseProbabilityWeighting,
    estimate_policy_value,
)

# ------------------------------------------------------------------ a tiny hand case
# 3 rows, 2 actions, 2 positions.
ACTION = np.array([0, 1, 1])
POSITION = np.array([0, 1, 0])
REWARD = np.array([1.0, 0.0, 1.0])
PSCORE = np.array([0.5, 0.25, 0.5])
ACTION_DIST = np.array(
    [
        [[0.8, 0.2], [0.2, 0.8]],  # row 0: [action][position]
        [[1.0, 0.0], [0.0, 1.0]],
        [[0.5, 0.5], [0.5, 0.5]],
    ]
)
Q_HAT = np.broadcast_to(np.array([[0.6, 0.3], [0.4, 0.2]]), (3, 2, 2)).copy()  # q[a, k]

# Importance weights w_i = pi_e(a_i, k_i) / pscore_i = 0.8/0.5, 1.0/0.25, 0.5/0.5.
W = np.array([1.6, 4.0, 1.0])
IPW = (1.6 * 1 + 4.0 * 0 + 1.0 * 1) / 3
SNIPW = (1.6 + 0.0 + 1.0) / (1.6 + 4.0 + 1.0)
# DR per row: q_hat(pi_e at k_i) + w_i (r_i - q_hat(a_i, k_i))
#   row 0: 0.8*0.6 + 0.2*0.4 = 0.56;  + 1.6 * (1 - 0.6) = 1.2
#   row 1: 0.0*0.3 + 1.0*0.2 = 0.20;  + 4.0 * (0 - 0.2) = -0.6
#   row 2: 0.5*0.6 + 0.5*0.4 = 0.50;  + 1.0 * (1 - 0.4) = 1.1
DR = (1.2 - 0.6 + 1.1) / 3
# With lambda_ = 2 only row 1's weight is clipped: 0.2 + 2 * (0 - 0.2) = -0.2.
DR_CLIPPED = (1.2 - 0.2 + 1.1) / 3


def _base_kwargs() -> dict:
    return {
        "action": ACTION.copy(),
        "position": POSITION.copy(),
        "reward": REWARD.copy(),
        "pscore": PSCORE.copy(),
        "action_dist": ACTION_DIST.copy(),
        "estimated_rewards_by_reg_model": Q_HAT.copy(),
        "n_bootstrap": 20,
    }


def test_hand_computed_values():
    res = estimate_policy_value(**_base_kwargs())
    assert list(res) == ["ipw", "snipw", "dr"]
    assert res["ipw"].value == pytest.approx(IPW)
    assert res["snipw"].value == pytest.approx(SNIPW)
    assert res["dr"].value == pytest.approx(DR)
    assert all(isinstance(v, PolicyValueEstimate) and v.estimator == k for k, v in res.items())


def test_clipping_by_name_and_by_instance():
    kw = _base_kwargs()
    by_name = estimate_policy_value(**kw, lambda_=2.0)
    assert by_name["dr"].value == pytest.approx(DR_CLIPPED)
    assert by_name["ipw"].value == pytest.approx(IPW)  # the clipped row has reward 0
    assert by_name["snipw"].value == pytest.approx(SNIPW)  # SNIPW does not clip, as OBP
    kw["estimators"] = (DoublyRobust(lambda_=2.0), InverseProbabilityWeighting(lambda_=1.0))
    by_instance = estimate_policy_value(**kw)
    assert by_instance["dr"].value == pytest.approx(DR_CLIPPED)
    assert by_instance["ipw"].value == pytest.approx((1.0 + 0.0 + 1.0) / 3)


def test_ipw_and_dr_do_not_need_each_other():
    kw = _base_kwargs()
    kw["estimated_rewards_by_reg_model"] = None
    res = estimate_policy_value(**kw, estimators=("ipw", "snipw"))
    assert set(res) == {"ipw", "snipw"}


# ------------------------------------------------------------------ invalid inputs


def _with(**changes):
    return changes


INVALID = [
    (_with(pscore=np.array([0.5, 0.0, 0.5])), ValueError, r"pscore must be in \(0, 1\]"),
    (_with(pscore=np.array([0.5, 1.5, 0.5])), ValueError, r"pscore must be in \(0, 1\]"),
    (_with(pscore=np.array([0.5, np.nan, 0.5])), ValueError, "pscore must be finite"),
    (_with(reward=np.array([1.0, np.nan, 0.0])), ValueError, "reward must be finite"),
    (_with(reward=np.array([1.0, 0.0])), ValueError, "reward must have length 3"),
    (_with(action=np.array([0, 2, 1])), ValueError, r"action must be in \[0, 2\)"),
    (_with(action=np.array([0, -1, 1])), ValueError, r"action must be in \[0, 2\)"),
    (_with(action=np.array([0.0, 1.0, 1.0])), TypeError, "action must hold integers"),
    (_with(position=np.array([0, 2, 0])), ValueError, r"position must be in \[0, 2\)"),
    (_with(position=np.array([[0, 1, 0]])), ValueError, "position must be a 1-D array"),
    (_with(action_dist=ACTION_DIST[:, :, 0]), ValueError, "action_dist must be a 3-D array"),
    (_with(action_dist=ACTION_DIST * 0.9), ValueError, "action_dist must sum to 1 over actions"),
    (_with(action_dist=ACTION_DIST * np.array([-1.0, 2.0])[None, :, None]), ValueError, r"action_dist must be probabilities in \[0, 1\]"),
    (_with(action_dist=np.where(ACTION_DIST == 1.0, np.nan, ACTION_DIST)), ValueError, "action_dist must be finite"),
    (_with(estimated_rewards_by_reg_model=Q_HAT[:, :, :1]), ValueError, "estimated_rewards_by_reg_model must have the shape"),
    (_with(estimated_rewards_by_reg_model=np.full((3, 2, 2), np.inf)), ValueError, "estimated_rewards_by_reg_model must be finite"),
    (_with(estimated_rewards_by_reg_model=None), ValueError, "estimated_rewards_by_reg_model must be given when 'dr'"),
    (_with(estimators=("ipw", "magic")), ValueError, "estimators must be among"),
    (_with(estimators=("ipw", "ipw")), ValueError, "estimators must not repeat"),
    (_with(estimators=()), ValueError, "estimators must name at least one"),
    (_with(estimators="ipw"), TypeError, "estimators must be a sequence"),
    (_with(alpha=1.5), ValueError, r"alpha must be in \(0, 1\)"),
    (_with(n_bootstrap=0), ValueError, "n_bootstrap must be >= 1"),
    (_with(n_bootstrap=10.0), TypeError, "n_bootstrap must be an int"),
    (_with(random_state=None), TypeError, "random_state must be an int"),
    (_with(lambda_=-1.0), ValueError, "lambda_ must be a non-negative"),
    (_with(lambda_=float("nan")), ValueError, "lambda_ must be a non-negative"),
]


@pytest.mark.parametrize(("changes", "error", "match"), INVALID)
def test_invalid_inputs_raise_with_the_argument_named(changes, error, match):
    kwargs = {**_base_kwargs(), **changes}
    with pytest.raises(error, match=match):
        estimate_policy_value(**kwargs)


@pytest.mark.parametrize("bad", [-0.5, float("nan"), "inf"])
def test_estimator_dataclasses_check_lambda(bad):
    with pytest.raises((TypeError, ValueError), match="lambda_"):
        InverseProbabilityWeighting(lambda_=bad)
    with pytest.raises((TypeError, ValueError), match="lambda_"):
        DoublyRobust(lambda_=bad)


# ------------------------------------------------------------------ synthetic logged bandit

N_ACTIONS, N_POSITIONS = 5, 3
ITEM_REWARD = np.array([0.1, 0.2, 0.3, 0.4, 0.5])  # P(purchase | examined)
EXAMINATION = np.array([1.0, 0.6, 0.3])  # position-based model


def _logged_bandit(n_rounds: int, rng: np.random.Generator):
    """Uniform logging: a random permutation's first 3 items; P(a at k) = 1/5 for every (a, k)."""
    shown = np.argsort(rng.random((n_rounds, N_ACTIONS)), axis=1)[:, :N_POSITIONS]
    action = shown.reshape(-1)
    position = np.tile(np.arange(N_POSITIONS), n_rounds)
    p_reward = ITEM_REWARD[action] * EXAMINATION[position]
    reward = (rng.random(action.size) < p_reward).astype(float)
    pscore = np.full(action.size, 1.0 / N_ACTIONS)
    # Evaluation policy: ranking (4, 3, 2) with prob 0.7, ranking (0, 1, 2) with prob 0.3.
    dist = np.zeros((action.size, N_ACTIONS, N_POSITIONS))
    for k, (a_main, a_alt) in enumerate(zip((4, 3, 2), (0, 1, 2), strict=True)):
        dist[:, a_main, k] += 0.7
        dist[:, a_alt, k] += 0.3
    true_q = ITEM_REWARD[:, None] * EXAMINATION[None, :]
    truth = float(np.mean(np.sum(dist[0] * true_q, axis=0)))  # mean over positions
    return action, position, reward, pscore, dist, true_q, truth


def test_estimates_cover_the_true_value_on_a_synthetic_log():
    rng = np.random.default_rng(11)
    action, position, reward, pscore, dist, true_q, truth = _logged_bandit(3000, rng)
    biased_model = np.broadcast_to(true_q + 0.05, dist.shape)  # misspecified: DR stays unbiased
    res = estimate_policy_value(
        action=action,
        position=position,
        reward=reward,
        pscore=pscore,
        action_dist=dist,
        estimated_rewards_by_reg_model=biased_model,
        n_bootstrap=300,
        random_state=1,
    )
    for name in ("ipw", "snipw", "dr"):
        assert res[name].ci_low <= truth <= res[name].ci_high, (name, res[name], truth)
        assert res[name].ci_low < res[name].value < res[name].ci_high


def test_ipw_and_dr_are_unbiased_over_replications():
    rng = np.random.default_rng(12)
    ipw, dr = [], []
    for _ in range(40):
        action, position, reward, pscore, dist, true_q, truth = _logged_bandit(300, rng)
        res = estimate_policy_value(
            action=action,
            position=position,
            reward=reward,
            pscore=pscore,
            action_dist=dist,
            estimated_rewards_by_reg_model=np.broadcast_to(true_q * 0.5, dist.shape),
            estimators=("ipw", "dr"),
            n_bootstrap=1,
        )
        ipw.append(res["ipw"].value)
        dr.append(res["dr"].value)
    for values in (np.array(ipw), np.array(dr)):
        se = values.std(ddof=1) / np.sqrt(values.size)
        assert abs(values.mean() - truth) < 3.5 * se


def test_dr_with_the_true_reward_model_is_tighter_than_ipw():
    rng = np.random.default_rng(13)
    action, position, reward, pscore, dist, true_q, _ = _logged_bandit(2000, rng)
    res = estimate_policy_value(
        action=action,
        position=position,
        reward=reward,
        pscore=pscore,
        action_dist=dist,
        estimated_rewards_by_reg_model=np.broadcast_to(true_q, dist.shape),
        estimators=("ipw", "dr"),
        n_bootstrap=200,
    )
    width = {k: v.ci_high - v.ci_low for k, v in res.items()}
    assert width["dr"] < width["ipw"]


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_is_deterministic_given_random_state():
    rng = np.random.default_rng(14)
    action, position, reward, pscore, dist, true_q, _ = _logged_bandit(500, rng)
    kw = {
        "action": action,
        "position": position,
        "reward": reward,
        "pscore": pscore,
        "action_dist": dist,
        "estimated_rewards_by_reg_model": np.broadcast_to(true_q, dist.shape),
        "n_bootstrap": 100,
    }
    a = estimate_policy_value(**kw, random_state=3)
    b = estimate_policy_value(**kw, random_state=3)
    c = estimate_policy_value(**kw, random_state=4)
    assert a == b
    assert all(a[k].value == c[k].value for k in a)  # the point estimate ignores the seed
    assert any((a[k].ci_low, a[k].ci_high) != (c[k].ci_low, c[k].ci_high) for k in a)


def test_snipw_bootstrap_renormalises_within_each_resample():
    # With a constant reward, every resample's SNIPW is exactly that constant.
    rng = np.random.default_rng(15)
    action, position, _, pscore, dist, _, _ = _logged_bandit(200, rng)
    res = estimate_policy_value(
        action=action,
        position=position,
        reward=np.full(action.size, 0.25),
        pscore=pscore,
        action_dist=dist,
        estimators=(SelfNormalizedInverseProbabilityWeighting(),),
        n_bootstrap=50,
    )
    assert res["snipw"].value == pytest.approx(0.25)
    assert res["snipw"].ci_low == pytest.approx(0.25)
    assert res["snipw"].ci_high == pytest.approx(0.25)


# ------------------------------------------------------------------ support


def test_no_support_is_undefined_not_zero():
    # The evaluation policy puts action 1 at slot 0 and action 0 at slot 1: the logs show the opposite.
    kw = _base_kwargs()
    kw["action"], kw["position"] = np.array([0, 1, 0]), np.array([0, 1, 0])
    dist = np.zeros((3, 2, 2))
    dist[:, 1, 0] = dist[:, 0, 1] = 1.0
    kw["action_dist"] = dist
    res = estimate_policy_value(**kw)
    for name in ("ipw", "snipw"):
        est = res[name]
        assert (est.rows, est.support, est.supported) == (3, 0, False)
        assert np.isnan(est.value) and np.isnan(est.ci_low) and np.isnan(est.ci_high)
    # DR keeps its reward model's value (the direct method): q(1, 0) = 0.4 at slot 0, q(0, 1) = 0.3 at slot 1.
    assert res["dr"].support == 0 and res["dr"].value == pytest.approx((0.4 + 0.3 + 0.4) / 3)


def test_partial_support_is_counted():
    res = estimate_policy_value(**_base_kwargs())
    assert all((e.rows, e.support, e.supported) == (3, 3, True) for e in res.values())
    kw = _base_kwargs()
    kw["action_dist"] = ACTION_DIST.copy()
    kw["action_dist"][1] = [[0.0, 1.0], [1.0, 0.0]]  # row 1 (action 1 at slot 1) loses its support
    res = estimate_policy_value(**kw, estimators=("ipw", "snipw"))
    assert res["ipw"].support == 2 and res["ipw"].value == pytest.approx((1.6 * 1 + 1.0 * 1) / 3)
    assert res["snipw"].value == pytest.approx((1.6 + 1.0) / (1.6 + 1.0))
