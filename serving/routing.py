"""Canary routing: which arm (champion or challenger) serves a user.

A user's arm comes from a keyed hash of their id, so the same user stays in one arm for a
given salt, across processes and restarts; raising the challenger's share only moves users
from champion to challenger, never back. ``experiments.ab.assign_arm`` uses this same
function, so an A/B analysis reproduces exactly the split serving made.
"""

from __future__ import annotations

import hashlib

__all__ = ["CHAMPION", "CHALLENGER", "hash_unit", "arm_for"]

CHAMPION = "champion"
CHALLENGER = "challenger"
MAX_SALT_BYTES = 64  # the blake2b key limit


def hash_unit(user_id: object, salt: bytes) -> float:
    """Uniform number in [0, 1) from ``blake2b(str(user_id), key=salt)``'s top 53 bits."""
    digest = hashlib.blake2b(str(user_id).encode("utf-8"), key=salt, digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / 2.0**53


def arm_for(user_id: object, salt: str, challenger_share: float) -> str:
    """The arm serving ``user_id``: challenger when its hash falls below the share."""
    return CHALLENGER if hash_unit(user_id, salt.encode("utf-8")) < challenger_share else CHAMPION
