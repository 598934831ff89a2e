"""The event-log contract: the five tables every log source must deliver.

Each table is declared once, as data (:class:`TableSpec`); the Arrow schema, the Spark
schema and the validator's rules are all derived from that declaration, so they
cannot drift apart.

Conventions
-----------
- Ids are int64. Timestamps are UTC with microsecond precision.
- ``impressions.position`` is 0-based (0 = top slot), as in the Open Bandit Pipeline.
- ``impressions.propensity`` is the logging probability of this item at this position,
  known exactly for randomized traffic and null where the logging policy cannot say.
- ``events.price_paid`` is the unit price paid; GMV of an event is ``price_paid * quantity``.
- ``events.impression_id`` is null for events that did not come from the feed (search,
  direct links); such events still count as user history.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

__all__ = [
    "EVENT_TYPES",
    "TABLES",
    "TABLE_ORDER",
    "Column",
    "ForeignKey",
    "TableSpec",
    "arrow_schema",
    "spark_schema",
]

EVENT_TYPES: tuple[str, ...] = ("click", "add_to_cart", "purchase")

_ARROW_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "int32": pa.int32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


@dataclass(frozen=True)
class Column:
    """One column of a contract table and the value rules the validator enforces on it.

    Parameters
    ----------
    name : str
    dtype : {"int64", "int32", "float64", "string", "bool", "timestamp"}
    required : bool
        Null values are quarantined as a missing required field.
    min_value, max_value : float or None
        Inclusive bounds unless ``min_exclusive`` (then ``value > min_value``).
    allowed : tuple of str or None
        The only values a string column may take.
    """

    name: str
    dtype: str
    required: bool = True
    min_value: float | None = None
    min_exclusive: bool = False
    max_value: float | None = None
    allowed: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.dtype not in _ARROW_TYPES:
            raise ValueError(f"Column {self.name}: dtype must be one of {sorted(_ARROW_TYPES)}, got {self.dtype!r}")


@dataclass(frozen=True)
class ForeignKey:
    """``column`` must name an existing row of ``table`` (by that table's primary key)."""

    column: str
    table: str


@dataclass(frozen=True)
class TableSpec:
    """A contract table: its columns, primary key and references to other tables."""

    name: str
    columns: tuple[Column, ...]
    primary_key: str
    foreign_keys: tuple[ForeignKey, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name} has no column {name!r}")


TABLES: dict[str, TableSpec] = {
    "sellers": TableSpec(
        name="sellers",
        primary_key="seller_id",
        columns=(
            Column("seller_id", "int64", min_value=0),
            Column("created_ts", "timestamp"),
            # Null until the seller has enough reviews: new sellers usually have none.
            Column("rating", "float64", required=False, min_value=1.0, max_value=5.0),
        ),
    ),
    "users": TableSpec(
        name="users",
        primary_key="user_id",
        columns=(
            Column("user_id", "int64", min_value=0),
            Column("signup_ts", "timestamp"),
            Column("country", "string"),
            Column("device", "string"),
        ),
    ),
    "items": TableSpec(
        name="items",
        primary_key="item_id",
        foreign_keys=(ForeignKey("seller_id", "sellers"),),
        columns=(
            Column("item_id", "int64", min_value=0),
            Column("seller_id", "int64", min_value=0),
            Column("category_id", "int64", min_value=0),
            Column("price", "float64", min_value=0.0, min_exclusive=True),
            Column("list_price", "float64", required=False, min_value=0.0, min_exclusive=True),
            # Null where the marketplace does not share margins; the scorer then ranks by GMV.
            Column("margin_rate", "float64", required=False, min_value=0.0, max_value=1.0),
            Column("created_ts", "timestamp"),
            Column("in_stock", "bool"),
            Column("stock_qty", "int64", required=False, min_value=0),
        ),
    ),
    "impressions": TableSpec(
        name="impressions",
        primary_key="impression_id",
        foreign_keys=(ForeignKey("user_id", "users"), ForeignKey("item_id", "items")),
        columns=(
            Column("impression_id", "int64", min_value=0),
            Column("request_id", "int64", min_value=0),
            Column("ts", "timestamp"),
            Column("user_id", "int64", min_value=0),
            Column("item_id", "int64", min_value=0),
            # Null where the source logs no slot (e.g. page views adapted from a real log).
            Column("position", "int32", required=False, min_value=0),
            Column("policy", "string"),
            Column("randomized", "bool"),
            Column("propensity", "float64", required=False, min_value=0.0, min_exclusive=True, max_value=1.0),
            Column("device", "string", required=False),
        ),
    ),
    "events": TableSpec(
        name="events",
        primary_key="event_id",
        foreign_keys=(
            ForeignKey("user_id", "users"),
            ForeignKey("item_id", "items"),
            ForeignKey("impression_id", "impressions"),
        ),
        columns=(
            Column("event_id", "int64", min_value=0),
            Column("ts", "timestamp"),
            Column("user_id", "int64", min_value=0),
            Column("item_id", "int64", min_value=0),
            Column("type", "string", allowed=EVENT_TYPES),
            Column("impression_id", "int64", required=False, min_value=0),
            Column("quantity", "int64", min_value=1),
            Column("price_paid", "float64", required=False, min_value=0.0, min_exclusive=True),
        ),
    ),
}

# Validation order: a table comes after every table it references.
TABLE_ORDER: tuple[str, ...] = ("sellers", "users", "items", "impressions", "events")


def _spec(table: str) -> TableSpec:
    try:
        return TABLES[table]
    except KeyError:
        raise ValueError(f"table must be one of {list(TABLES)}, got {table!r}") from None


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema of a contract table (required columns are non-nullable)."""
    spec = _spec(table)
    return pa.schema([pa.field(c.name, _ARROW_TYPES[c.dtype], nullable=not c.required) for c in spec.columns])


def spark_schema(table: str):  # -> pyspark.sql.types.StructType (pyspark is imported lazily)
    """The Spark schema of a contract table, equivalent to :func:`arrow_schema`."""
    from pyspark.sql import types as T

    spark_types = {
        "int64": T.LongType(),
        "int32": T.IntegerType(),
        "float64": T.DoubleType(),
        "string": T.StringType(),
        "bool": T.BooleanType(),
        "timestamp": T.TimestampType(),
    }
    spec = _spec(table)
    return T.StructType([T.StructField(c.name, spark_types[c.dtype], not c.required) for c in spec.columns])
