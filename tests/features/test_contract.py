import pyarrow as pa
import pytest

from features.contract import TABLE_ORDER, TABLES, arrow_schema, spark_schema


@pytest.mark.parametrize("table", TABLE_ORDER)
def test_arrow_and_spark_schemas_agree_with_the_declaration(table):
    spec = TABLES[table]
    arrow = arrow_schema(table)
    spark = spark_schema(table)
    assert arrow.names == list(spec.column_names) == [f.name for f in spark.fields]
    for col, afield, sfield in zip(spec.columns, arrow, spark.fields, strict=True):
        assert afield.nullable == (not col.required) == sfield.nullable


def test_timestamps_are_utc_microseconds():
    assert arrow_schema("events").field("ts").type == pa.timestamp("us", tz="UTC")


def test_references_point_at_earlier_tables():
    for name in TABLE_ORDER:
        for fk in TABLES[name].foreign_keys:
            assert TABLE_ORDER.index(fk.table) < TABLE_ORDER.index(name)


def test_unknown_table_is_a_value_error():
    with pytest.raises(ValueError, match="table must be one of"):
        arrow_schema("orders")
