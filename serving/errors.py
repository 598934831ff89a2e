"""Domain errors of the serving path; serving/interceptors.py maps each to one gRPC status code."""

from __future__ import annotations

__all__ = ["ServingError", "InvalidArgument", "DeadlineExceeded", "Unauthenticated", "ModelUnavailable",
           "ReloadFailed"]


class ServingError(Exception):
    """Base of the errors a RankFeed or admin call may end with."""


class InvalidArgument(ServingError, ValueError):
    """A request field is invalid; the message is ``"<field>: <reason>"``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class DeadlineExceeded(ServingError):
    """The caller's deadline passed before the feed was ready."""


class Unauthenticated(ServingError):
    """An admin call without the configured bearer token."""


class ModelUnavailable(ServingError):
    """No model could be loaded for an arm (and no previous version to fall back to)."""


class ReloadFailed(ServingError):
    """A reload could not load every version it was asked for; what did load serves (the message says what not)."""
