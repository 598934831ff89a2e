"""features.spark.spark_session: a job stops only the Spark session it created."""

from __future__ import annotations

from features.config import SparkConfig
from features.spark import spark_session


def test_a_job_leaves_a_shared_session_running(spark) -> None:
    with spark_session(SparkConfig(master="local[2]", shuffle_partitions=2, progress_seconds=0)) as job:
        assert job is spark
        assert job.range(5).count() == 5
    assert spark.sparkContext._jsc is not None  # noqa: SLF001  (stop() sets it to None)
    assert spark.range(3).count() == 3
