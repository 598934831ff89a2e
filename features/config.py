"""Configuration of the features package, and the small checks every package's config reuses."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["ConfigValueError", "FeaturesConfig", "ValidationConfig", "check", "parse_utc"]


class ConfigValueError(ValueError):
    """A configuration value is out of its allowed range; the message starts with the field name."""


def check(condition: bool, name: str, expected: str, value: Any) -> None:
    """Raise :class:`ConfigValueError` ``"<name> must be <expected>, got <value>"`` unless ``condition``."""
    if not condition:
        raise ConfigValueError(f"{name} must be {expected}, got {value!r}")


def parse_utc(value: str, name: str) -> datetime:
    """Parse an ISO-8601 date or datetime as UTC (naive values are taken as UTC)."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (TypeError, ValueError, AttributeError):
        raise ConfigValueError(f"{name} must be an ISO-8601 date or datetime, got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@dataclass(frozen=True)
class ValidationConfig:
    """Bounds the event-log validator applies to every timestamp column.

    Parameters
    ----------
    ts_min, ts_max : str
        ISO-8601 bounds; a timestamp outside ``[ts_min, ts_max)`` is quarantined as out of range.
    """

    ts_min: str = "2000-01-01T00:00:00Z"
    ts_max: str = "2100-01-01T00:00:00Z"

    def __post_init__(self) -> None:
        lo, hi = parse_utc(self.ts_min, "ts_min"), parse_utc(self.ts_max, "ts_max")
        check(lo < hi, "ts_max", f"after ts_min ({self.ts_min})", self.ts_max)

    @property
    def ts_min_us(self) -> int:
        """Lower bound in microseconds since the epoch."""
        return int(parse_utc(self.ts_min, "ts_min").timestamp() * 1_000_000)

    @property
    def ts_max_us(self) -> int:
        """Upper bound (exclusive) in microseconds since the epoch."""
        return int(parse_utc(self.ts_max, "ts_max").timestamp() * 1_000_000)


@dataclass(frozen=True)
class FeaturesConfig:
    """The ``features`` section of the feedrank configuration."""

    validation: ValidationConfig = field(default_factory=ValidationConfig)
