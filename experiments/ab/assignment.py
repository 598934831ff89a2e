"""Arm assignment by salted hash, and the sample-ratio-mismatch (SRM) check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from experiments.ab._checks import fail, integer, open_unit, real
from serving.routing import MAX_SALT_BYTES, hash_unit

__all__ = ["SampleRatioResult", "assign_arm", "sample_ratio_mismatch"]

_MAX_KEY_BYTES = MAX_SALT_BYTES


def assign_arm(user_ids: Any, salt: str, treatment_share: float) -> np.ndarray:
    """Assign each user to treatment (True) or control (False) by a keyed hash of the user id.

    ``u = blake2b(str(user_id), key=salt, digest_size=8)`` read as a big-endian integer; its top
    53 bits give a uniform ``u01`` in ``[0, 1)`` and the user is treated when
    ``u01 < treatment_share``. The result depends only on (``salt``, ``str(user_id)``), so a user
    keeps their arm across processes, machines and Python versions; raising the share only
    moves users from control to treatment (never back), which makes ramp-ups monotone; a new
    salt gives an independent split. Ids are hashed through ``str()``, so ``7`` and ``"7"`` map
    to the same arm while ``7.0`` does not.

    Parameters
    ----------
    user_ids : array-like of shape (n,)
        User ids (ints or strings).
    salt : str
        Experiment salt, 1 to 64 UTF-8 bytes (used as the blake2b key).
    treatment_share : float
        Share of users in treatment, in ``[0, 1]``.

    Returns
    -------
    ndarray of bool, shape (n,)
        True for treatment.

    Raises
    ------
    TypeError
        If ``salt`` is not a str, ``user_ids`` is not 1-D array-like, or the share is not a number.
    ValueError
        If ``salt`` is empty or longer than 64 bytes, or the share is outside ``[0, 1]``.
    """
    if not isinstance(salt, str):
        raise TypeError(f"salt must be a str, got {type(salt).__name__}")
    key = salt.encode("utf-8")
    if not 1 <= len(key) <= _MAX_KEY_BYTES:
        raise fail("salt", f"1 to {_MAX_KEY_BYTES} UTF-8 bytes long", f"{len(key)} bytes")
    share = real(treatment_share, "treatment_share")
    if not 0.0 <= share <= 1.0:
        raise fail("treatment_share", "in [0, 1]", treatment_share)
    if user_ids is None or isinstance(user_ids, (str, bytes, dict)):
        raise TypeError(f"user_ids must be array-like, got {type(user_ids).__name__}")
    ids = np.asarray(user_ids)
    if ids.ndim != 1:
        raise fail("user_ids", "a 1-D array", f"shape {ids.shape}")
    # The same hash as serving's canary router, so analysis reproduces serving's split.
    units = np.fromiter((hash_unit(uid, key) for uid in ids.tolist()), dtype=np.float64, count=ids.size)
    return units < share


@dataclass(frozen=True)
class SampleRatioResult:
    """Outcome of a sample-ratio-mismatch check.

    Attributes
    ----------
    n_control, n_treatment : int
        Units observed in each arm.
    expected_treatment_share, observed_treatment_share : float
        Planned and realised share of units in treatment.
    chi2, p_value : float
        Pearson chi-square goodness-of-fit statistic (1 degree of freedom) and its p-value.
    alpha : float
        Threshold the p-value was compared with.
    mismatch : bool
        True when ``p_value < alpha``: the split is not what was planned, so the assignment or
        logging is broken and effect estimates should not be trusted.
    """

    n_control: int
    n_treatment: int
    expected_treatment_share: float
    observed_treatment_share: float
    chi2: float
    p_value: float
    alpha: float
    mismatch: bool


def sample_ratio_mismatch(
    n_control: int,
    n_treatment: int,
    *,
    expected_treatment_share: float = 0.5,
    alpha: float = 0.001,
) -> SampleRatioResult:
    """Chi-square goodness-of-fit test of the observed arm sizes against the planned split.

    ``chi2 = sum_arm (observed - expected)**2 / expected`` with
    ``expected = N * (1 - s, s)``; p-value from chi-square with 1 degree of freedom.
    A strict ``alpha`` (default 0.001) is usual because the check runs on every experiment.

    Parameters
    ----------
    n_control, n_treatment : int
        Units (users) per arm, ``>= 0`` with a positive total.
    expected_treatment_share : float, default=0.5
        Planned treatment share, in ``(0, 1)``.
    alpha : float, default=0.001
        Significance level of the check, in ``(0, 1)``.

    Returns
    -------
    SampleRatioResult

    Raises
    ------
    TypeError
        If a count is not an int or a share/level not a number.
    ValueError
        If a count is negative, both are zero, or a share/level is outside ``(0, 1)``.
    """
    nc = integer(n_control, "n_control", minimum=0)
    nt = integer(n_treatment, "n_treatment", minimum=0)
    if nc + nt == 0:
        raise fail("n_control + n_treatment", "> 0", 0)
    share = open_unit(expected_treatment_share, "expected_treatment_share")
    level = open_unit(alpha, "alpha")
    total = nc + nt
    result = stats.chisquare([nc, nt], f_exp=[total * (1.0 - share), total * share])
    p_value = float(result.pvalue)
    return SampleRatioResult(
        n_control=nc,
        n_treatment=nt,
        expected_treatment_share=share,
        observed_treatment_share=nt / total,
        chi2=float(result.statistic),
        p_value=p_value,
        alpha=level,
        mismatch=p_value < level,
    )
