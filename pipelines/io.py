"""Delta reads and writes, the table registry and catalog registration: the only Delta I/O in pipelines/.

Every table Converge keeps is named here once (``layer.table``); paths come from conf.
Writes are idempotent where a retry can happen: appends take Delta's ``txnAppId``/``txnVersion``
writer options, MERGEs set the equivalent session confs right before and clear them right after.
"""

from __future__ import annotations

import csv
import random
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from pipelines.config import Config

T = TypeVar("T")

TABLES: dict[str, str] = {
    "bronze.crm_customers": "raw CRM/shop customer rows, one per CSV line, payload kept as a string map",
    "bronze.orders": "raw order rows, payload kept as a string map",
    "bronze.events": "raw clickstream lines exactly as they landed",
    "silver.customers": "normalised customer records, one per (source_system, source_id)",
    "silver.orders": "typed orders, one per order_id",
    "silver.events": "typed Segment events, one per messageId, corrected event time",
    "silver.identity_edges": "identifier <-> identifier edges with rule and source record",
    "gold.identity_graph": "identifier -> profile_id",
    "gold.profiles": "one golden profile per person",
    "gold.profile_ids": "every profile id ever issued: created, retired, retired into",
    "gold.profile_merges": "merges and splits of profiles, when, and the edge that caused them",
    "quarantine.crm_customers": "customer rows that could not be loaded, with reason",
    "quarantine.orders": "order rows that could not be loaded, with reason",
    "quarantine.events": "events that could not be loaded, with reason",
    "quarantine.identity_components": "components larger than the size bound, not published",
    "quarantine.identity_edges": "edges cut because they would break a per-type limit, with the reason",
}
LAYERS = sorted({name.split(".")[0] for name in TABLES})

_CONFLICTS = (
    "ConcurrentAppendException",
    "ConcurrentDeleteReadException",
    "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException",
    "MetadataChangedException",
    "ProtocolChangedException",
)


def path_of(cfg: Config, name: str) -> str:
    """Filesystem path of the registered table ``layer.table``."""
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}; known tables: {', '.join(TABLES)}")
    layer, table = name.split(".")
    return cfg.table_path(layer, table)


def exists(spark: SparkSession, cfg: Config, name: str) -> bool:
    return DeltaTable.isDeltaTable(spark, path_of(cfg, name))


def read(spark: SparkSession, cfg: Config, name: str) -> DataFrame:
    """Read a table by name; a clear error when it has not been built yet."""
    if not exists(spark, cfg, name):
        raise FileNotFoundError(
            f"table {name} does not exist yet at {path_of(cfg, name)}; materialize it first"
        )
    return spark.read.format("delta").load(path_of(cfg, name))


def version(spark: SparkSession, cfg: Config, name: str) -> int:
    history = DeltaTable.forPath(spark, path_of(cfg, name)).history(1).select("version").first()
    return int(history[0]) if history else -1


def ensure(
    spark: SparkSession, cfg: Config, name: str, schema: StructType, properties: dict[str, str] | None = None
) -> None:
    """Create the table empty with ``schema`` if it does not exist (a MERGE needs a target)."""
    builder = DeltaTable.createIfNotExists(spark).location(path_of(cfg, name)).addColumns(schema)
    for key, value in (properties or {}).items():
        builder = builder.property(key, value)
    retry_on_conflict(builder.execute)
    _register(spark, cfg, name)


def overwrite(df: DataFrame, cfg: Config, name: str) -> None:
    """Replace a derived table's content (its history stays for time travel)."""
    spark = df.sparkSession
    (df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path_of(cfg, name)))
    _register(spark, cfg, name)


def append(
    df: DataFrame, cfg: Config, name: str, txn_app_id: str | None = None, txn_version: int | None = None
) -> None:
    """Blind append; with ``txn_app_id``/``txn_version`` a retried write of the same version is skipped."""
    writer = df.write.format("delta").mode("append")
    if txn_app_id is not None and txn_version is not None:
        writer = writer.option("txnAppId", txn_app_id).option("txnVersion", txn_version)
    retry_on_conflict(lambda: writer.save(path_of(cfg, name)))
    _register(df.sparkSession, cfg, name)


def merge_insert_new(
    df: DataFrame,
    cfg: Config,
    name: str,
    keys: Sequence[str],
    txn_app_id: str | None = None,
    txn_version: int | None = None,
) -> int:
    """Insert the rows of ``df`` whose ``keys`` the table does not hold yet (durable dedup over all history).
    Returns the number of rows inserted (0 when Delta skipped an already-committed txn version).

    ``df`` must already be unique on ``keys``. The Delta idempotency session confs are set only for
    this MERGE and always cleared, so they never leak into another write of this session.
    """
    spark = df.sparkSession
    target = DeltaTable.forPath(spark, path_of(cfg, name))
    condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)

    def run() -> int:
        if txn_app_id is not None and txn_version is not None:
            spark.conf.set("spark.databricks.delta.write.txnAppId", txn_app_id)
            spark.conf.set("spark.databricks.delta.write.txnVersion", str(txn_version))
        try:
            metrics = (
                target.alias("t").merge(df.alias("s"), condition).whenNotMatchedInsertAll().execute().first()
            )
            return int(metrics["num_inserted_rows"]) if metrics else 0
        finally:
            spark.conf.unset("spark.databricks.delta.write.txnAppId")
            spark.conf.unset("spark.databricks.delta.write.txnVersion")

    return retry_on_conflict(run)


def source_path(col: F.Column) -> F.Column:
    """A plain filesystem path from Spark's file URI (``file:/a%20b/x.csv`` -> ``/a b/x.csv``)."""
    return F.url_decode(F.regexp_replace(col, r"^file:(//)?", ""))


def landing_files(folder: Path, pattern: str) -> list[str]:
    """Complete files in a landing folder (writers rename in; dot/underscore names are in-flight)."""
    return sorted(str(p) for p in folder.glob(pattern) if p.is_file() and not p.name.startswith((".", "_")))


def loaded_files(spark: SparkSession, cfg: Config, name: str) -> set[str]:
    """Source files a bronze table already holds, so a rerun loads only new files."""
    if not exists(spark, cfg, name):
        return set()
    return {r[0] for r in read(spark, cfg, name).select("source_file").distinct().collect()}


def csv_header(path: str) -> list[str]:
    """The header line of a CSV file (an empty list for an empty file)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh), [])


def checkpoint_app_id(checkpoint: Path, prefix: str) -> str:
    """The Delta transaction app id bound to a streaming checkpoint: created once, atomically, with it.

    A fresh checkpoint restarts batch ids at 0, so it needs a fresh app id, or Delta would skip its writes.
    """
    checkpoint.mkdir(parents=True, exist_ok=True)
    marker = checkpoint / "converge_txn_app_id"
    if not marker.exists():
        tmp = checkpoint / f".converge_txn_app_id.{uuid.uuid4().hex}"
        tmp.write_text(f"{prefix}-{uuid.uuid4()}")
        tmp.replace(marker)
    return marker.read_text().strip()


def read_csv_raw(spark: SparkSession, files: list[str]) -> DataFrame:
    """CSV files sharing a header, every column a string, malformed lines kept in ``_corrupt_record``.

    No type inference: bronze keeps values exactly as sent, and typing happens in silver with try_cast.
    """
    header = csv_header(files[0])
    if not header:
        raise ValueError(f"{files[0]}: empty CSV file, expected a header line")
    schema = StructType(
        [StructField(c, StringType()) for c in header] + [StructField("_corrupt_record", StringType())]
    )
    return (
        spark.read.schema(schema)
        .option("header", "true")
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", "_corrupt_record")
        .csv(files)
        .withColumn("_source_file", source_path(F.col("_metadata.file_path")))
    )


def read_text_files(spark: SparkSession, files: list[str]) -> DataFrame:
    """The batch twin of ``read_text_stream``: the lines of ``files`` with the same columns."""
    return _lines(spark.read.text(files))


def _lines(df: DataFrame) -> DataFrame:
    """``value``, ``source_file`` and ``loaded_at`` (the file's modification time) of a text read."""
    return df.select(
        F.col("value"),
        source_path(F.col("_metadata.file_path")).alias("source_file"),
        F.col("_metadata.file_modification_time").alias("loaded_at"),
    )


def read_text_stream(
    spark: SparkSession, folder: Path, pattern: str, max_files_per_trigger: int
) -> DataFrame:
    """Stream new files of ``folder`` line by line: ``value``, ``source_file``, ``loaded_at`` (file time).

    The file's modification time is the load time: a retried micro-batch then rebuilds identical rows.
    """
    folder.mkdir(parents=True, exist_ok=True)
    return _lines(
        spark.readStream.format("text")
        .option("pathGlobFilter", pattern)
        .option("maxFilesPerTrigger", max_files_per_trigger)
        .load(str(folder))
    )


def retry_on_conflict(fn: Callable[[], T], attempts: int = 6, base_delay: float = 0.5) -> T:
    """Run ``fn``, retrying Delta optimistic-concurrency conflicts with jittered exponential backoff."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # Delta raises these as py4j/Spark errors whose class name is in the text
            text = f"{type(exc).__name__}: {exc}"
            if attempt == attempts - 1 or not any(c in text for c in _CONFLICTS):
                raise
            time.sleep(base_delay * (2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def _register(spark: SparkSession, cfg: Config, name: str) -> None:
    """Point the catalog name at the table's path (external table: dropping the name keeps the data)."""
    layer, _ = name.split(".")
    path = path_of(cfg, name)
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {layer}")
    if spark.catalog.tableExists(name):
        location = spark.sql(f"DESCRIBE DETAIL {name}").select("location").first()
        if location and location[0].rstrip("/").endswith(path.rstrip("/")):
            return
        spark.sql(f"DROP TABLE {name}")
    spark.sql(f"CREATE TABLE IF NOT EXISTS {name} USING DELTA LOCATION '{path}'")


def register_tables(spark: SparkSession, cfg: Config) -> list[str]:
    """Register every table that exists on disk; returns the registered names."""
    registered = []
    for name in TABLES:
        if exists(spark, cfg, name):
            _register(spark, cfg, name)
            registered.append(name)
    return registered
