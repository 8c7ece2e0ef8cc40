"""Delta reads and writes, the table registry and catalog registration: the only Delta I/O in pipelines/.

Every table Converge keeps is named here once (``layer.table``); paths come from conf.
Writes are idempotent where a retry can happen: appends take Delta's ``txnAppId``/``txnVersion``
writer options, MERGEs set the equivalent session confs right before and clear them right after.
"""

from __future__ import annotations

import csv
import random
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from delta.tables import DeltaTable
from py4j.protocol import Py4JError
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from pipelines.config import Config
from pipelines.policies import stats_properties, view_sql

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
    "gold.profile_traits": "computed traits per profile (conf/traits.yaml)",
    "gold.audience_membership": "who is in which audience, entered_at / exited_at (change feed = enter/exit events)",
    "gold.consent": "every consent answer per person and category, with its event time",
    "activation.sync_state": "per destination: the membership version synced, and the pinned run in progress",
    "activation.deliveries": "every batch delivered (or dead-lettered) to a destination, by idempotency key",
    "activation.dead_letters": "batches a destination refused (4xx), with its response and the payload",
    "governance.deletion_requests": "right-to-be-forgotten requests (identifier hashed) and their status",
    "governance.suppression": "hashes of forgotten identifiers: their late events go to quarantine",
    "governance.audit_log": "append-only: each deletion, what it touched, rows removed, Delta versions",
    "quarantine.crm_customers": "customer rows that could not be loaded, with reason",
    "quarantine.orders": "order rows that could not be loaded, with reason",
    "quarantine.events": "events that could not be loaded, with reason",
    "quarantine.identity_components": "components larger than the size bound, not published",
    "quarantine.identity_edges": "edges cut because they would break a per-type limit, with the reason",
}
LAYERS = sorted({name.split(".")[0] for name in TABLES})

DELETION_VECTORS = {"delta.enableDeletionVectors": "true"}

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


def _has_commit_on_disk(path: str) -> bool:
    """Whether the table at ``path`` has a committed version in its ``_delta_log`` (a commit file or a
    checkpoint), read from the folder rather than from a session's cached snapshot."""
    log = Path(path) / "_delta_log"
    return log.is_dir() and any(
        re.fullmatch(r"\d{20}\.(json|checkpoint.*\.parquet)", f.name) for f in log.iterdir()
    )


def exists(spark: SparkSession, cfg: Config, name: str) -> bool:
    path = path_of(cfg, name)
    if DeltaTable.isDeltaTable(spark, path):
        return True
    # isDeltaTable answers from the session's cached view of the log, and never refreshes it: a session
    # that looked while another process was creating the table (log folder there, no commit yet) kept
    # answering False after the commit landed (a test polling for a stream's first profile timed out on
    # it). With a commit on disk, reading the table refreshes that view.
    if _has_commit_on_disk(path):
        _ = spark.read.format("delta").load(path).schema  # the read refreshes the cached snapshot
        return DeltaTable.isDeltaTable(spark, path)
    return False


def read(spark: SparkSession, cfg: Config, name: str) -> DataFrame:
    """Read a table by name; a clear error when it has not been built yet."""
    if not exists(spark, cfg, name):
        raise FileNotFoundError(
            f"table {name} does not exist yet at {path_of(cfg, name)}; materialize it first"
        )
    return spark.read.format("delta").load(path_of(cfg, name))


def read_version(spark: SparkSession, cfg: Config, name: str, version: int) -> DataFrame:
    """A table as it was at ``version`` (Delta time travel)."""
    return spark.read.format("delta").option("versionAsOf", version).load(path_of(cfg, name))


def read_as_of(spark: SparkSession, cfg: Config, name: str, timestamp: str) -> DataFrame:
    """A table as it was at ``timestamp`` (UTC): its last version committed at or before then (Delta's own
    timestampAsOf refuses a time after the latest commit, which is the usual case for a quiet table).
    FileNotFoundError when the table did not exist yet."""
    at = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    at_ms = (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() * 1000
    for commit in commits(spark, cfg, name):  # newest first
        if commit["timestamp_ms"] <= at_ms:
            return read_version(spark, cfg, name, commit["version"])
    raise FileNotFoundError(f"table {name} did not exist yet at {timestamp}")


def changes(spark: SparkSession, cfg: Config, name: str, start: int, end: int) -> DataFrame:
    """The table's change data feed from version ``start`` to ``end`` (inclusive): rows with
    ``_change_type`` (insert, update_preimage, update_postimage, delete) and ``_commit_version``."""
    return (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", start)
        .option("endingVersion", end)
        .load(path_of(cfg, name))
    )


def commits(spark: SparkSession, cfg: Config, name: str, limit: int | None = None) -> list[dict]:
    """The table's commits, newest first: version, timestamp (epoch ms) and userMetadata (who wrote it)."""
    table = DeltaTable.forPath(spark, path_of(cfg, name))
    history = table.history(limit) if limit else table.history()
    return [
        {
            "version": int(r.version),
            "timestamp_ms": int(r.timestamp.timestamp() * 1000),
            "user_metadata": r.userMetadata,
        }
        for r in history.select("version", "timestamp", "userMetadata").collect()
    ]


def version(spark: SparkSession, cfg: Config, name: str) -> int:
    """The table's latest committed version, -1 when it has none.

    Read from Delta's log (``DeltaLog.update``: a listing of ``_delta_log``, so commits of other processes
    count) instead of the commit history, which runs a Spark job per call (~0.14 s warm here, against
    ~0.01 s): a stream batch and a traits refresh look up a dozen versions. Delta's Python API has no
    call for the version alone; if the JVM method is ever missing, the history answers."""
    snapshot = _latest_snapshot(spark, path_of(cfg, name))
    if snapshot is not None:
        return int(snapshot.version())
    last = commits(spark, cfg, name, limit=1)
    return last[0]["version"] if last else -1


def size_in_bytes(spark: SparkSession, cfg: Config, name: str) -> int:
    """The bytes of the table's current data files, from Delta's log as ``version`` reads it (DESCRIBE
    DETAIL if the JVM call is missing); 0 for a table that does not exist."""
    if not exists(spark, cfg, name):
        return 0
    path = path_of(cfg, name)
    snapshot = _latest_snapshot(spark, path)
    if snapshot is not None:
        return int(snapshot.sizeInBytes())
    detail = DeltaTable.forPath(spark, path).detail().first()
    return int(detail["sizeInBytes"]) if detail else 0


def _latest_snapshot(spark: SparkSession, path: str) -> Any:
    """Delta's snapshot (a py4j object) of the table at ``path`` after a listing of its log
    (``DeltaLog.update``), or None when the JVM method is missing (Delta's Python API has no call for it)."""
    jvm = getattr(spark, "_jvm", None)
    if jvm is None:
        return None
    try:
        log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path)
        empty = jvm.scala.Option.empty()
        return log.update(False, empty, empty)
    except Py4JError:
        return None


def versions(spark: SparkSession, cfg: Config, names: Sequence[str]) -> dict[str, int]:
    """Each table's latest version, -1 for a table that does not exist yet."""
    return {t: version(spark, cfg, t) if exists(spark, cfg, t) else -1 for t in names}


def _clear_uncommitted_creation(cfg: Config, name: str) -> None:
    """Remove the ``_delta_log`` of a table whose creation never committed (the writer was killed before
    version 0 landed: only temporary files). Delta would take the folder for a table and fail every later
    create or write with DELTA_TABLE_NOT_FOUND; with no commit there is no table to lose."""
    path = path_of(cfg, name)
    if not _has_commit_on_disk(path):
        shutil.rmtree(Path(path) / "_delta_log", ignore_errors=True)


def ensure(
    spark: SparkSession, cfg: Config, name: str, schema: StructType, properties: dict[str, str] | None = None
) -> None:
    """Create the table empty with ``schema`` if it does not exist (a MERGE needs a target). Every table
    is created here, with per-file statistics only on columns conf/policies.yaml calls non-personal, and
    deletion vectors on the tables ``lakehouse.deletion_vectors`` lists (a table's protocol is set when it
    is created: existing tables are left as they are)."""
    if exists(spark, cfg, name):
        _register(spark, cfg, name)
        return
    _clear_uncommitted_creation(cfg, name)
    builder = DeltaTable.createIfNotExists(spark).location(path_of(cfg, name)).addColumns(schema)
    dv = DELETION_VECTORS if name in cfg.lakehouse.deletion_vectors else {}
    for key, value in (stats_properties(schema, cfg.policies) | dv | (properties or {})).items():
        builder = builder.property(key, value)
    retry_on_conflict(builder.execute)
    _register(spark, cfg, name)


def overwrite(
    df: DataFrame, cfg: Config, name: str, txn_app_id: str | None = None, txn_version: int | None = None
) -> None:
    """Replace a derived table's content (its history stays for time travel); with ``txn_app_id`` and
    ``txn_version`` a retried write of the same version is skipped."""
    ensure(df.sparkSession, cfg, name, df.schema)
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if txn_app_id is not None and txn_version is not None:
        writer = writer.option("txnAppId", txn_app_id).option("txnVersion", txn_version)
    retry_on_conflict(lambda: writer.save(path_of(cfg, name)))
    _register(df.sparkSession, cfg, name)


def overwrite_if_changed(
    df: DataFrame, cfg: Config, name: str, txn_app_id: str | None = None, txn_version: int | None = None
) -> bool:
    """``overwrite`` unless the table already holds exactly ``df``'s rows (same columns, same rows counted
    with their repeats); returns whether it wrote. For small derived tables that are recomputed whole but
    rarely change (a stream batch's cut edges and oversized components): an unchanged one costs one
    comparison job (each row +1 in ``df``, -1 in the table; equal when every row nets to zero) instead of
    a commit and a new copy of every file."""
    spark = df.sparkSession
    if exists(spark, cfg, name):
        current = read(spark, cfg, name)
        shape = [(f.name, f.dataType) for f in df.schema.fields]
        if [(f.name, f.dataType) for f in current.schema.fields] == shape:
            columns = [F.col(f"`{c}`") for c in df.columns]
            net = (
                df.select(*columns, F.lit(1).alias("_converge_n"))
                .unionByName(current.select(*columns, F.lit(-1).alias("_converge_n")))
                .groupBy(*columns)
                .agg(F.sum("_converge_n").alias("_converge_n"))
            )
            if net.filter(F.col("_converge_n") != 0).isEmpty():
                return False
    overwrite(df, cfg, name, txn_app_id, txn_version)
    return True


def append(
    df: DataFrame, cfg: Config, name: str, txn_app_id: str | None = None, txn_version: int | None = None
) -> None:
    """Blind append; with ``txn_app_id``/``txn_version`` a retried write of the same version is skipped."""
    ensure(df.sparkSession, cfg, name, df.schema)
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

    ``df`` must already be unique on ``keys``.
    """
    return _merge(df, cfg, name, keys, txn_app_id, txn_version, lambda m: m.whenNotMatchedInsertAll())


def merge_upsert(
    df: DataFrame,
    cfg: Config,
    name: str,
    keys: Sequence[str],
    update_set: dict[str, str] | None = None,
    txn_app_id: str | None = None,
    txn_version: int | None = None,
    delete_flag: str | None = None,
) -> int:
    """Upsert ``df`` (unique on ``keys``) into a table: matched rows are updated (with ``update_set``
    expressions over ``t``/``s``, or every column), new rows inserted. With ``delete_flag``, a source row
    whose flag column is true deletes its match instead (and is never inserted); the flag is not a column
    of the table. Returns the number of rows inserted, updated or deleted (0 for a skipped txn version).
    """
    matched, keep = _matched_clauses(df, keys, update_set, delete_flag)
    ins = {c: f"s.`{c}`" for c in df.columns if c != delete_flag}

    def clauses(m):
        return matched(m).whenNotMatchedInsert(condition=keep, values=ins)

    return _merge(df, cfg, name, keys, txn_app_id, txn_version, clauses, counted=("num_affected_rows",))


def _matched_clauses(
    df: DataFrame, keys: Sequence[str], update_set: dict[str, str] | None, delete_flag: str | None
) -> tuple[Callable, str | None]:
    """The WHEN MATCHED clauses of an upsert of ``df`` (``merge_upsert``'s and ``upsert_few``'s): a source
    row whose ``delete_flag`` is true deletes its match, the others update it with ``update_set`` (default:
    every column but the keys). Returns the function adding them to a merge builder, and the condition that
    keeps a source row (``None`` without a flag)."""
    upd = update_set or {c: f"s.`{c}`" for c in df.columns if c not in keys and c != delete_flag}
    keep = f"NOT s.`{delete_flag}`" if delete_flag else None

    def matched(m):
        if delete_flag:
            m = m.whenMatchedDelete(condition=f"s.`{delete_flag}`")
        return m.whenMatchedUpdate(condition=keep, set=upd)

    return matched, keep


def upsert_few(
    df: DataFrame,
    cfg: Config,
    name: str,
    keys: Sequence[str],
    update_set: dict[str, str] | None = None,
    txn_app_id: str | None = None,
    txn_version: int | None = None,
    delete_flag: str | None = None,
) -> int:
    """``merge_upsert`` for a few rows (``df``, unique on ``keys``, which are never null) into a large table:
    one scan with ``df``'s keys broadcast finds the rows the table holds; those are updated (or, with
    ``delete_flag`` true, deleted) by a MERGE with only matched clauses, the others appended (a row to delete
    that the table does not hold is nothing to do).

    One MERGE with both clauses rewrites with a right outer join of the table and ``df``, which keeps every
    row of ``df`` and so cannot broadcast it: the whole table is shuffled (and an insert-only MERGE's anti
    join keeps the source too). A MERGE with only matched clauses is an inner join, which broadcasts ``df``.
    With a txn app id the first commit carries ``txn_app_id`` and the second ``{txn_app_id}/insert``, so a replay
    after a crash does only what had not landed: when the first commit landed, the rows it appended (or
    updated) are held now, the rows it deleted are not and ask nothing, and the update is skipped as already
    committed; an append landed last has nothing left to append. The update commits before the append (the
    other order would update the rows just appended a second time on a replay). The append does not look
    again for the keys: the caller holds the table's writer lock (the stream's identity lock for the identity
    tables). Returns the rows updated, deleted and inserted."""
    spark = df.sparkSession
    held = (
        read(spark, cfg, name)
        .select(*keys)
        .join(F.broadcast(df.select(*keys)), list(keys), "left_semi")
        .localCheckpoint()
    )
    seen = df.join(F.broadcast(held), list(keys), "left_semi").localCheckpoint()
    new = df.join(F.broadcast(held), list(keys), "left_anti")
    if delete_flag:
        new = new.filter(~F.col(f"`{delete_flag}`")).drop(delete_flag)
    new = new.localCheckpoint()
    inserted = new.count()
    if seen.isEmpty():
        if inserted:
            append(new, cfg, name, txn_app_id, txn_version)
        return inserted
    changed = _merge(
        F.broadcast(seen),
        cfg,
        name,
        keys,
        txn_app_id,
        txn_version,
        _matched_clauses(df, keys, update_set, delete_flag)[0],
        counted=("num_updated_rows", "num_deleted_rows"),
    )
    if inserted:
        append(new, cfg, name, None if txn_app_id is None else f"{txn_app_id}/insert", txn_version)
    return changed + inserted


def upserts_and_deletes(rows: DataFrame, deleted_keys: DataFrame, key: str | Sequence[str]) -> DataFrame:
    """``rows`` to upsert and the keys (``key``: a column or several) to delete, as one MERGE source with a
    ``_delete`` flag."""
    keys = [key] if isinstance(key, str) else list(key)
    deletes = deleted_keys.select(
        *[
            F.col(c) if c in keys else F.lit(None).cast(rows.schema[c].dataType).alias(c)
            for c in rows.columns
        ],
        F.lit(True).alias("_delete"),
    )
    return rows.withColumn("_delete", F.lit(False)).unionByName(deletes)


@contextmanager
def user_metadata(spark: SparkSession, text: str) -> Iterator[None]:
    """Delta commits inside the block carry ``text`` as their userMetadata (who wrote them, what state)."""
    spark.conf.set("spark.databricks.delta.commitInfo.userMetadata", text)
    try:
        yield
    finally:
        spark.conf.unset("spark.databricks.delta.commitInfo.userMetadata")


def merge_with(
    df: DataFrame,
    cfg: Config,
    name: str,
    keys: Sequence[str],
    clauses: Callable,
    txn_app_id: str | None = None,
    txn_version: int | None = None,
    session: SparkSession | None = None,
) -> int:
    """A MERGE on ``keys`` with the caller's clauses (``clauses(builder) -> builder``, target ``t``, source
    ``s``), retried on conflicts and idempotent like the others. Returns rows inserted, updated or deleted.

    ``session``: the session the MERGE runs in, whose Delta confs (txn ids, userMetadata) it takes; by
    default ``df``'s. A MERGE beside another write of the same process needs a session of its own, as
    those confs are session-wide."""
    return _merge(
        df, cfg, name, keys, txn_app_id, txn_version, clauses, counted=("num_affected_rows",), session=session
    )


def _merge(
    df: DataFrame,
    cfg: Config,
    name: str,
    keys: Sequence[str],
    txn_app_id: str | None,
    txn_version: int | None,
    clauses: Callable,
    counted: tuple[str, ...] = ("num_inserted_rows",),
    session: SparkSession | None = None,
) -> int:
    """One Delta MERGE on ``keys``, retried on conflicts. The idempotency session confs (txnAppId and
    txnVersion) are set only for this MERGE and always cleared, so they never leak into another write.
    The MERGE runs in ``session`` (default: ``df``'s): Delta takes the target's session for the command
    and its confs, and the source may come from another session of the same SparkContext."""
    spark = session or df.sparkSession
    target = DeltaTable.forPath(spark, path_of(cfg, name))
    condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)

    def run() -> int:
        if txn_app_id is not None and txn_version is not None:
            spark.conf.set("spark.databricks.delta.write.txnAppId", txn_app_id)
            spark.conf.set("spark.databricks.delta.write.txnVersion", str(txn_version))
        try:
            metrics = clauses(target.alias("t").merge(df.alias("s"), condition)).execute().first()
            return sum(int(metrics[c]) for c in counted) if metrics else 0
        finally:
            spark.conf.unset("spark.databricks.delta.write.txnAppId")
            spark.conf.unset("spark.databricks.delta.write.txnVersion")

    return retry_on_conflict(run)


def write_staged(df: DataFrame, path: Path) -> None:
    """Write an intermediate result as Parquet outside the table registry (a stream's staged update)."""
    df.write.mode("overwrite").parquet(str(path))


def read_staged(spark: SparkSession, path: Path) -> DataFrame:
    return spark.read.parquet(str(path))


def delete_where(spark: SparkSession, cfg: Config, name: str, condition: str) -> None:
    """Delete the rows matching a SQL condition (retried on conflicts)."""
    if exists(spark, cfg, name):
        table = DeltaTable.forPath(spark, path_of(cfg, name))
        retry_on_conflict(lambda: table.delete(condition))


def read_stream(spark: SparkSession, cfg: Config, name: str) -> DataFrame:
    """A table as a streaming source: its current snapshot, then every later commit, in order."""
    return spark.readStream.format("delta").load(path_of(cfg, name))


def source_path(col: F.Column) -> F.Column:
    """A plain filesystem path from Spark's file URI (``file:/a%20b/x.csv`` -> ``/a b/x.csv``)."""
    return F.url_decode(F.regexp_replace(col, r"^file:(//)?", ""))


def local_path(uri: str) -> str:
    """The Python twin of ``source_path``: ``file:///a%20b/x.csv`` -> ``/a b/x.csv``."""
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(uri).path) if uri.startswith("file:") else uri


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
    return _lines(spark.read.option("wholetext", "true").text(files))


def _lines(df: DataFrame) -> DataFrame:
    """One row per non-blank line of whole-file rows: ``value``, ``source_file``, ``source_position`` (the
    1-based line number) and ``loaded_at`` (the file's modification time).

    Spark's line reader does not know line numbers, so each file is read whole and split here: a quarantine
    row can then name its file and line. A file is one task and one string, so landed files should stay
    well below 1 GB (the generator and collector roll files at 50,000 lines). Blank lines are not records
    and are skipped; a CR before the newline is dropped.
    """
    lines = df.select(
        F.posexplode(F.split(F.col("value"), "\r?\n")).alias("pos", "value"),
        source_path(F.col("_metadata.file_path")).alias("source_file"),
        F.col("_metadata.file_modification_time").alias("loaded_at"),
    )
    return lines.filter(F.trim(F.col("value")) != "").select(
        "value", "source_file", (F.col("pos") + 1).cast("long").alias("source_position"), "loaded_at"
    )


def read_text_stream(
    spark: SparkSession, folder: Path, pattern: str, max_files_per_trigger: int
) -> DataFrame:
    """Stream new files of ``folder`` line by line: ``value``, ``source_file``, ``source_position``,
    ``loaded_at`` (file time).

    The file's modification time is the load time: a retried micro-batch then rebuilds identical rows.
    Writers must write elsewhere (or under a dot/underscore name) and rename the finished file in: a file
    is read once, as it is when the micro-batch lists it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    return _lines(
        spark.readStream.format("text")
        .option("wholetext", "true")
        .option("pathGlobFilter", pattern)
        .option("maxFilesPerTrigger", max_files_per_trigger)
        .load(str(folder))
    )


def read_kafka_stream(
    spark: SparkSession,
    bootstrap_servers: str,
    topic: str,
    starting_offsets: str,
    max_offsets_per_trigger: int,
    options: dict[str, str] | None = None,
) -> DataFrame:
    """Stream a Kafka topic with the same columns as the file source: ``value`` (the message as UTF-8;
    invalid bytes become U+FFFD), ``source_file`` = ``kafka://topic/partition``, ``source_position`` = the
    offset, ``loaded_at`` = the broker's timestamp (so a replayed micro-batch rebuilds identical rows)."""
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap_servers)
        .option("subscribe", topic)
        .option("startingOffsets", starting_offsets)
        .option("maxOffsetsPerTrigger", max_offsets_per_trigger)
    )
    for key, value in (options or {}).items():
        reader = reader.option(key, value)
    return reader.load().select(
        F.col("value").cast("string").alias("value"),
        F.concat(F.lit("kafka://"), F.col("topic"), F.lit("/"), F.col("partition").cast("string")).alias(
            "source_file"
        ),
        F.col("offset").alias("source_position"),
        F.col("timestamp").alias("loaded_at"),
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


_REGISTERED: set[tuple[int, str, str]] = set()


def _register(spark: SparkSession, cfg: Config, name: str) -> None:
    """Point the catalog name at the table's path (external table: dropping the name keeps the data).

    Checked once per session, name and path: a micro-batch writes a dozen tables, and each check is a
    catalog lookup plus DESCRIBE DETAIL (about half a second on 2 cores).
    """
    layer, _ = name.split(".")
    path = path_of(cfg, name)
    key = (id(spark), name, path)
    if key in _REGISTERED:
        return
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {layer}")
    if spark.catalog.tableExists(name):
        location = spark.sql(f"DESCRIBE DETAIL {name}").select("location").first()
        if location and location[0].rstrip("/").endswith(path.rstrip("/")):
            _REGISTERED.add(key)
            return
        spark.sql(f"DROP TABLE {name}")
    spark.sql(f"CREATE TABLE IF NOT EXISTS {name} USING DELTA LOCATION '{path}'")
    _REGISTERED.add(key)


def register_tables(spark: SparkSession, cfg: Config) -> list[str]:
    """Register every table that exists on disk; returns the registered names."""
    registered = []
    for name in TABLES:
        if exists(spark, cfg, name):
            _register(spark, cfg, name)
            registered.append(name)
    if "gold.profiles" in registered and "profiles_masked" in cfg.policies.views:
        # analysts' view: personal columns hashed, masked or left out as conf/policies.yaml says
        sql = view_sql(spark.table("gold.profiles").schema, cfg.policies, "profiles_masked", "gold.profiles")
        spark.sql(f"CREATE OR REPLACE VIEW gold.profiles_masked AS {sql}")
        registered.append("gold.profiles_masked")
    return registered
