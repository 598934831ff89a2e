"""The base layer: the event-log contract and its validator (ETL, Feast and streaming build on it)."""

from features.config import FeaturesConfig, ValidationConfig
from features.contract import EVENT_TYPES, TABLE_ORDER, TABLES, arrow_schema, spark_schema
from features.validation import ValidationResult, validate_logs, validate_table

__all__ = [
    "EVENT_TYPES",
    "FeaturesConfig",
    "TABLES",
    "TABLE_ORDER",
    "ValidationConfig",
    "ValidationResult",
    "arrow_schema",
    "spark_schema",
    "validate_logs",
    "validate_table",
]
