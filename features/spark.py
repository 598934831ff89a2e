"""The ETL's Spark plumbing: the session, progress log lines, and atomic publishing of outputs.

Files are moved with Hadoop's ``FileSystem`` API through the JVM, so the same code publishes
to a local folder, HDFS or any filesystem the cluster's Hadoop client knows. A rename of a
folder is atomic on local and HDFS filesystems; object stores emulate it (the last step of
:func:`publish_partitions` then narrows, but does not close, the window where a reader could
see a half-replaced day).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from features.config import SparkConfig

if TYPE_CHECKING:  # pyspark is imported lazily at run time
    from pyspark.sql import SparkSession

__all__ = ["HadoopFiles", "build_spark", "progress", "publish_partitions", "spark_session", "under_spark_submit"]

logger = logging.getLogger(__name__)


def under_spark_submit() -> bool:
    """Whether this Python process was started by ``spark-submit`` (which then owns master and memory)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def build_spark(config: SparkConfig, *, app_name: str = "feedrank-etl") -> SparkSession:
    """Get or create the SparkSession the ETL runs on.

    In a plain Python process the session is ``config.master`` (``local[*]``) with
    ``config.driver_memory``; under ``spark-submit`` master and memory come from the submitter.
    Either way the session runs in UTC (dates of partitions are UTC dates), with adaptive
    query execution, Arrow for the pandas feature formulas, no web UI and no ``_SUCCESS`` files.
    """
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if not under_spark_submit():
        builder = (builder.master(config.master)
                   .config("spark.driver.memory", config.driver_memory)
                   .config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false")
                   .config("spark.pyspark.python", sys.executable))
        # Python workers must run this interpreter (pandas, pyarrow and feedrank live here);
        # pyspark reads the worker interpreter from the environment, not from the conf.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    settings: dict[str, Any] = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": config.shuffle_partitions,
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.sql.autoBroadcastJoinThreshold": f"{config.broadcast_threshold_mb}m"
        if config.broadcast_threshold_mb else "-1",
        "spark.sql.adaptive.autoBroadcastJoinThreshold": f"{config.broadcast_threshold_mb}m"
        if config.broadcast_threshold_mb else "-1",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": config.arrow_batch_rows,
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
        "spark.hadoop.parquet.summary.metadata.level": "NONE",
        "spark.sql.parquet.mergeSchema": "false",
        # Partitioned writes: write each date's file as rows arrive instead of sorting every
        # task's rows by partition first (a full sort of 10M rows otherwise).
        "spark.sql.optimizer.plannedWrite.enabled": "false",
        "spark.sql.maxConcurrentOutputFileWriters": "64",
        # Joins on (key, date) between date-partitioned tables would otherwise grow pruning
        # subqueries that re-run the other side; every read already filters its dates.
        "spark.sql.optimizer.dynamicPartitionPruning.enabled": "false",
        # date=YYYY-MM-DD folders read back as strings, the same in every reader
        "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    }
    for key, value in settings.items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    for key, value in settings.items():  # a session that already existed gets them too
        if key.startswith("spark.sql."):
            spark.conf.set(key, str(value))
    spark.sparkContext.setLogLevel("WARN")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    return spark


@contextmanager
def spark_session(config: SparkConfig, *, app_name: str = "feedrank-etl") -> Iterator[SparkSession]:
    """:func:`build_spark` for one job: the session is stopped afterwards only if this call created it.

    A session that was already running (a notebook's, a test suite's shared one) belongs to
    its creator and stays up.
    """
    from pyspark.sql import SparkSession

    existed = SparkSession.getActiveSession() is not None
    spark = build_spark(config, app_name=app_name)
    try:
        yield spark
    finally:
        if not existed:
            spark.stop()


@contextmanager
def progress(spark: SparkSession, every_seconds: float, label: str) -> Iterator[None]:
    """Run the block's Spark jobs in job group ``label`` and log their running stages (tasks done
    of total) every ``every_seconds`` (0: no log lines). Blocks may run in parallel threads."""
    context = spark.sparkContext
    context.setJobGroup(label, label)
    stop = threading.Event()
    tracker = context.statusTracker()
    start = time.perf_counter()

    def report() -> None:
        while not stop.wait(every_seconds):
            parts = []
            for jid in tracker.getJobIdsForGroup(label):
                job = tracker.getJobInfo(jid)
                if job is None or job.status != "RUNNING":
                    continue
                for sid in job.stageIds:
                    info = tracker.getStageInfo(sid)
                    if info is not None and info.numActiveTasks + info.numCompletedTasks > 0 \
                            and info.numCompletedTasks < info.numTasks:
                        parts.append(f"stage {sid} {info.numCompletedTasks}/{info.numTasks} tasks")
            logger.info("%s: %.0f s elapsed; %s", label, time.perf_counter() - start,
                        ", ".join(parts) if parts else "planning or between stages")

    thread = threading.Thread(target=report, name=f"progress-{label}", daemon=True) if every_seconds > 0 else None
    if thread is not None:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=5)
        context.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        context.setLocalProperty("spark.job.description", None)  # type: ignore[arg-type]


class HadoopFiles:
    """Folder operations on whatever filesystem a path names, through the JVM's Hadoop client."""

    def __init__(self, spark: SparkSession) -> None:
        jvm, jsc = spark.sparkContext._jvm, spark.sparkContext._jsc  # noqa: SLF001
        if jvm is None or jsc is None:
            raise RuntimeError("HadoopFiles needs a classic (JVM-backed) SparkSession, not Spark Connect")
        self._jvm: Any = jvm
        self._conf = jsc.hadoopConfiguration()

    def _path(self, path: str) -> tuple[Any, Any]:
        jpath = self._jvm.org.apache.hadoop.fs.Path(path)
        return jpath.getFileSystem(self._conf), jpath

    def exists(self, path: str) -> bool:
        fs, p = self._path(path)
        return bool(fs.exists(p))

    def delete(self, path: str) -> None:
        fs, p = self._path(path)
        if fs.exists(p):
            fs.delete(p, True)

    def mkdirs(self, path: str) -> None:
        fs, p = self._path(path)
        fs.mkdirs(p)

    def rename(self, src: str, dst: str) -> None:
        fs, s = self._path(src)
        _, d = self._path(dst)
        if not fs.rename(s, d):
            raise OSError(f"could not rename {src} to {dst}")

    def list_names(self, path: str) -> list[str]:
        """Names of the entries directly under ``path`` (empty if it does not exist), sorted."""
        fs, p = self._path(path)
        if not fs.exists(p):
            return []
        return sorted(str(s.getPath().getName()) for s in fs.listStatus(p))

    def read_text(self, path: str) -> str | None:
        """The file's text, or None if it does not exist."""
        fs, p = self._path(path)
        if not fs.exists(p):
            return None
        stream = fs.open(p)
        try:
            reader = self._jvm.java.io.BufferedReader(self._jvm.java.io.InputStreamReader(stream, "UTF-8"))
            lines = []
            line = reader.readLine()
            while line is not None:
                lines.append(line)
                line = reader.readLine()
            return "\n".join(lines)
        finally:
            stream.close()

    def write_text(self, path: str, text: str) -> None:
        """Write ``text`` to ``path`` via a temporary name and a rename (never a half-written file)."""
        fs, p = self._path(path)
        _, tmp = self._path(path + ".tmp")
        stream = fs.create(tmp, True)
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()
        if fs.exists(p):
            fs.delete(p, False)
        if not fs.rename(tmp, p):
            raise OSError(f"could not write {path}")

    def tidy(self, folder: str) -> None:
        """Remove Hadoop's checksum and marker files below ``folder`` and give part files stable names.

        Spark names part files with a per-run UUID; renaming them ``part-00000.parquet``,
        ``part-00001.parquet``, ... in their sorted order makes re-runs byte-for-byte identical.
        """
        fs, root = self._path(folder)
        if not fs.exists(root):
            return
        if self._jvm.org.apache.hadoop.fs.ChecksumFileSystem._java_lang_class.isInstance(fs):
            fs = fs.getRawFileSystem()  # the checksummed view hides .crc files from listings
        stack = [root]
        while stack:
            current = stack.pop()
            statuses = sorted(fs.listStatus(current), key=lambda s: str(s.getPath().getName()))
            parts = []
            for status in statuses:
                path = status.getPath()
                name = str(path.getName())
                if status.isDirectory():
                    stack.append(path)
                elif name.endswith(".crc") or name == "_SUCCESS" or name.startswith("._"):
                    fs.delete(path, False)
                elif name.startswith("part-"):
                    parts.append(path)
            for i, path in enumerate(parts):
                target = self._jvm.org.apache.hadoop.fs.Path(current, f"part-{i:05d}.parquet")
                if str(path.getName()) != f"part-{i:05d}.parquet":
                    fs.rename(path, target)


def publish_partitions(files: HadoopFiles, staged: str, target: str, partitions: Sequence[str]) -> None:
    """Move each staged ``date=...`` folder over its counterpart in ``target``, one rename at a time.

    A day that already exists is first renamed aside, then replaced, then the old copy is
    deleted, so a reader sees either the old day or the new one, never a mix; days not in
    ``partitions`` are left alone.
    """
    files.mkdirs(target)
    for part in partitions:
        src, dst = f"{staged}/{part}", f"{target}/{part}"
        if not files.exists(src):
            continue
        old = f"{target}/.old-{part}-{os.getpid()}-{time.time_ns()}"
        had_old = files.exists(dst)
        if had_old:
            files.rename(dst, old)
        files.rename(src, dst)
        if had_old:
            files.delete(old)
