"""The right to be forgotten: one request removes a person from every table and file Converge keeps.

``request_deletion`` records the request: ``governance.deletion_requests`` keeps only a SHA-256 of the
identifier; the identifier itself waits in a pending file (``governance/_pending/<id>.json``) that the
Dagster sensor picks up and ``fulfil`` removes when it is done. ``fulfil``:

1. **Suppresses** the person first (``governance.suppression``: hashes of every identifier), so events
   that arrive from now on go to quarantine (reason ``suppressed``) instead of re-creating the profile.
2. **Resolves** the person: the profile(s) the identifier belongs to, every identifier in them, retired
   profile ids merged into them, their CRM records, events and orders.
3. **Deletes** their rows from every registered table. Each delete is a MERGE whose source is the rows to
   delete and whose condition names only key columns, so no personal value is written into the Delta log
   (a DELETE's predicate would be, in the commit info, for as long as the log is kept).
4. **Rewrites** landing, archived and exported files without the person's lines or rows (keeping the
   modification time, so the file stream does not take a rewritten file for a new one), and removes
   staged stream results and Spark checkpoints that may hold them.
5. **Purges**: ``REORG ... APPLY (PURGE)`` materialises deletion vectors, ``VACUUM`` removes the files
   (and change-data files) that still hold the old rows, after ``governance.vacuum_retention_hours``.
6. **Audits**: ``governance.audit_log`` gets what was touched (tables with rows removed and Delta
   versions, files with lines removed) and the hashes ``verify`` searches for later.

It holds the lakehouse write lock (the stream waits between micro-batches) and the identity lock, and
retries write conflicts (a Dagster run writing the same table).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import io
from pipelines.config import Config
from pipelines.explain import normalize_identifier
from pipelines.identity import identifier_observations

REQUEST_SCHEMA = (
    "request_id string, identifier_hash string, id_type string, reason string, received_at timestamp, "
    "status string, completed_at timestamp"
)
SUPPRESSION_SCHEMA = "identifier_hash string, request_id string, added_at timestamp"
AUDIT_SCHEMA = (
    "request_id string, event_kind string, at timestamp, rows_removed long, files_touched int, details string"
)
PENDING = ("governance", "_pending")
# A value counts as mentioned when it is not part of a longer token (an id "C1" is not in "C10").
_EDGE = r"A-Za-z0-9_.@+\-"


def identifier_hash(identifier: str) -> str:
    return hashlib.sha256(identifier.encode()).hexdigest()


def term_hash(term: str) -> str:
    """How verify recognises a value in any text: SHA-256 of its lower-cased form."""
    return hashlib.sha256(term.lower().encode()).hexdigest()


def normalise_identifier(cfg: Config, identifier: str) -> str:
    """``type:value`` normalised like identity resolution does; an unknown type is an error."""
    id_type = identifier.split(":", 1)[0]
    if ":" in identifier and id_type not in cfg.identity.identifier_types:
        raise ValueError(
            f"unknown identifier type {id_type!r}; known: {sorted(cfg.identity.identifier_types)}"
        )
    normalised = normalize_identifier(identifier, cfg.identity.normalizers, cfg.sources.default_phone_region)
    if not normalised.split(":", 1)[1]:
        raise ValueError("the identifier has an empty value")
    return normalised


def pending_dir(cfg: Config) -> Path:
    return cfg.lakehouse.root.joinpath(*PENDING)


def pending_requests(cfg: Config) -> list[dict]:
    """Requests recorded and not yet fulfilled (read without Spark: the Dagster sensor calls this)."""
    folder = pending_dir(cfg)
    if not folder.is_dir():
        return []
    return sorted((json.loads(f.read_text()) for f in folder.glob("*.json")), key=lambda r: r["received_at"])


def request_deletion(spark: SparkSession, cfg: Config, identifier: str, reason: str = "") -> str:
    """Record a deletion request; returns its id. The identifier is kept in plain text only in the
    pending file, which fulfilment deletes."""
    identifier = normalise_identifier(cfg, identifier)
    request_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    folder = pending_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{request_id}.tmp"
    record = {
        "request_id": request_id,
        "identifier": identifier,
        "reason": reason,
        "received_at": now.isoformat(),
    }
    tmp.write_text(json.dumps(record))
    os.replace(tmp, folder / f"{request_id}.json")
    row = (request_id, identifier_hash(identifier), identifier.split(":")[0], reason, now, "pending", None)
    io.append(spark.createDataFrame([row], REQUEST_SCHEMA), cfg, "governance.deletion_requests")
    audit(spark, cfg, request_id, "received", 0, 0, {"reason": reason})
    return request_id


def audit(
    spark: SparkSession, cfg: Config, request_id: str, kind: str, rows: int, files: int, details: dict
) -> None:
    row = (request_id, kind, datetime.now(UTC), rows, files, json.dumps(details, default=str))
    io.append(spark.createDataFrame([row], AUDIT_SCHEMA), cfg, "governance.audit_log")


@dataclass
class Person:
    identifiers: list[str]  # type:value
    profile_ids: list[str]
    records: list[str]  # CRM records as system:id
    message_ids: list[str]
    order_ids: list[str]

    @property
    def values(self) -> list[str]:
        return sorted({i.split(":", 1)[1] for i in self.identifiers})

    @property
    def terms(self) -> list[str]:
        """Everything that marks a line or row of raw text as the person's."""
        return sorted(set(self.values) | set(self.profile_ids) | set(self.message_ids) | set(self.order_ids))

    @property
    def verify_terms(self) -> list[str]:
        """What must be found nowhere afterwards: the person's identifiers and profile ids."""
        return sorted(set(self.values) | set(self.profile_ids))


def _table(spark: SparkSession, cfg: Config, name: str) -> DataFrame | None:
    return io.read(spark, cfg, name) if io.exists(spark, cfg, name) else None


def resolve_person(spark: SparkSession, cfg: Config, identifier: str) -> Person:
    """Everything that identifies the person ``identifier`` belongs to, now."""
    graph = _table(spark, cfg, "gold.identity_graph")
    identifiers, profile_ids = {identifier}, set()
    if graph is not None:
        profile_ids = {
            r.profile_id
            for r in graph.filter(F.col("identifier") == identifier).select("profile_id").collect()
        }
        registry = _table(spark, cfg, "gold.profile_ids")
        if registry is not None and profile_ids:
            retired = registry.filter(F.col("retired_into").isin(sorted(profile_ids))).select("profile_id")
            profile_ids |= {r.profile_id for r in retired.collect()}
        if profile_ids:
            mine = graph.filter(F.col("profile_id").isin(sorted(profile_ids)))
            identifiers |= {r.identifier for r in mine.select("identifier").collect()}
    systems = {f"{s}_id": s for s in cfg.sources.systems}
    records = sorted(
        f"{systems[i.split(':')[0]]}:{i.split(':', 1)[1]}" for i in identifiers if i.split(":")[0] in systems
    )
    values = sorted({i.split(":", 1)[1] for i in identifiers})
    message_ids: set[str] = set()
    events = _table(spark, cfg, "silver.events")
    if events is not None:
        mentioned = F.lit(False)
        for c in ("user_id", "anonymous_id", "previous_id", "trait_email", "trait_phone"):
            mentioned = mentioned | F.col(c).isin(values)
        message_ids = {r.message_id for r in events.filter(mentioned).select("message_id").collect()}
    order_ids: set[str] = set()
    orders = _table(spark, cfg, "silver.orders")
    if orders is not None and records:
        mine = orders.filter(F.concat_ws(":", "source_system", "customer_source_id").isin(records))
        order_ids = {r.order_id for r in mine.select("order_id").collect()}
    return Person(sorted(identifiers), sorted(profile_ids), records, sorted(message_ids), sorted(order_ids))


def mentions_pattern(terms: list[str]) -> str:
    """A regular expression (Java and Python alike) matching any of ``terms`` as a whole token."""
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return f"(?i)(?<![{_EDGE}])(?:{alternatives})(?![{_EDGE}])"


def _in(col: str, values: list[str]) -> Column:
    return F.col(col).isin(values) if values else F.lit(False)


def _person_rows(
    name: str, p: Person, pattern: str
) -> tuple[Callable[[DataFrame], Column], list[str]] | None:
    """(predicate over the table's rows, key expressions over ``{t}``) for every table holding people."""

    def text(c: str) -> Callable[[DataFrame], Column]:
        return lambda df: F.coalesce(F.col(c).rlike(pattern), F.lit(False))

    ids, pids, values = p.identifiers, p.profile_ids, p.values
    bronze_csv = (
        lambda df: (
            F.coalesce(F.to_json("payload").rlike(pattern), F.lit(False))
            | F.coalesce(F.col("corrupt_record").rlike(pattern), F.lit(False))
        ),
        ["{t}.feed", "{t}.source_file", "{t}.loaded_at", "to_json({t}.payload)", "{t}.corrupt_record"],
    )
    quarantine_keys = ["{t}.feed", "{t}.source_file", "{t}.loaded_at", "{t}.raw", "{t}.reason"]
    rules: dict[str, tuple[Callable[[DataFrame], Column], list[str]]] = {
        "bronze.events": (text("value"), ["{t}.source_file", "{t}.source_position", "{t}.value"]),
        "bronze.crm_customers": bronze_csv,
        "bronze.orders": bronze_csv,
        "quarantine.events": (text("raw"), quarantine_keys),
        "quarantine.crm_customers": (text("raw"), quarantine_keys),
        "quarantine.orders": (text("raw"), quarantine_keys),
        "silver.events": (
            lambda df: _in("message_id", p.message_ids) | text("traits")(df) | text("context")(df),
            ["{t}.message_id"],
        ),
        "silver.customers": (
            lambda df: F.concat_ws(":", "source_system", "source_id").isin(p.records or [""])
            | _in("email", values) | _in("phone", values) | _in("user_id", values),
            ["{t}.source_system", "{t}.source_id"],
        ),
        "silver.orders": (lambda df: _in("order_id", p.order_ids), ["{t}.order_id"]),
        "silver.identity_edges": (lambda df: _in("src", ids) | _in("dst", ids), ["{t}.src", "{t}.dst"]),
        "gold.identity_graph": (lambda df: _in("identifier", ids) | _in("profile_id", pids), ["{t}.identifier"]),
        "gold.profiles": (lambda df: _in("profile_id", pids), ["{t}.profile_id"]),
        "gold.profile_traits": (lambda df: _in("profile_id", pids), ["{t}.profile_id"]),
        "gold.consent": (lambda df: _in("profile_id", pids), ["{t}.profile_id", "{t}.category", "{t}.message_id"]),
        "gold.audience_membership": (lambda df: _in("profile_id", pids), ["{t}.audience", "{t}.profile_id"]),
        "gold.profile_ids": (
            lambda df: _in("profile_id", pids) | _in("retired_into", pids),
            ["{t}.profile_id"],
        ),
        "gold.profile_merges": (
            lambda df: _in("from_profile_id", pids) | _in("into_profile_id", pids) | _in("edge_src", ids)
            | _in("edge_dst", ids),
            ["{t}.event", "{t}.from_profile_id", "{t}.into_profile_id", "{t}.at"],
        ),
        "quarantine.identity_edges": (lambda df: _in("src", ids) | _in("dst", ids), ["{t}.src", "{t}.dst"]),
        "quarantine.identity_components": (
            lambda df: F.arrays_overlap("most_connected_identifiers", F.array(*[F.lit(i) for i in ids])),
            ["{t}.component_id"],
        ),
        "activation.dead_letters": (text("payload"), ["{t}.destination", "{t}.idempotency_key"]),
    }  # fmt: skip
    return rules.get(name)


def _delete_person_rows(spark: SparkSession, cfg: Config, name: str, p: Person, pattern: str) -> int:
    """MERGE-delete the person's rows of one table; returns rows removed."""
    rule = _person_rows(name, p, pattern)
    if rule is None or not io.exists(spark, cfg, name):
        return 0
    predicate, keys = rule
    table = io.read(spark, cfg, name)
    columns = [f"{k.replace('{t}.', '')} AS k{i}" for i, k in enumerate(keys)]
    matches = table.filter(predicate(table)).selectExpr(*columns).distinct().localCheckpoint()
    n = matches.count()
    if n == 0:
        return 0
    condition = " AND ".join(f"{k.format(t='t')} <=> s.k{i}" for i, k in enumerate(keys))
    target = DeltaTable.forPath(spark, io.path_of(cfg, name))
    io.retry_on_conflict(
        lambda: target.alias("t").merge(matches.alias("s"), condition).whenMatchedDelete().execute(),
        attempts=cfg.governance.conflict_attempts,
    )
    return n


def _drop_from_deliveries(spark: SparkSession, cfg: Config, p: Person) -> int:
    """Delivery records stay (they are what makes a rerun send nothing twice) without the person's id."""
    if not io.exists(spark, cfg, "activation.deliveries") or not p.profile_ids:
        return 0
    gone = F.array(*[F.lit(x) for x in p.profile_ids])
    rows = io.read(spark, cfg, "activation.deliveries").filter(F.arrays_overlap("profile_ids", gone))
    keys = rows.select("destination", "idempotency_key").distinct().localCheckpoint()
    n = keys.count()
    if n:
        target = DeltaTable.forPath(spark, io.path_of(cfg, "activation.deliveries"))
        io.retry_on_conflict(
            lambda: (
                target.alias("t")
                .merge(
                    keys.alias("s"),
                    "t.destination <=> s.destination AND t.idempotency_key <=> s.idempotency_key",
                )
                .whenMatchedUpdate(set={"profile_ids": F.array_except("t.profile_ids", gone)})
                .execute()
            ),
            attempts=cfg.governance.conflict_attempts,
        )
    return n


def _rewrite_text(path: Path, pattern: re.Pattern) -> int:
    """Drop the lines that mention the person; keep the file's times. Returns lines removed."""
    raw = path.read_bytes()
    if b"\0" in raw[:4096]:
        return 0  # binary: not a landing or export format
    lines = raw.decode("utf-8", errors="surrogateescape").splitlines(keepends=True)
    kept = [line for line in lines if not pattern.search(line)]
    if len(kept) == len(lines):
        return 0
    st = path.stat()
    tmp = path.with_name(f".{path.name}.forget")
    tmp.write_bytes("".join(kept).encode("utf-8", errors="surrogateescape"))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)
    return len(lines) - len(kept)


def _rewrite_parquet(path: Path, pattern: str) -> int:
    table = pq.read_table(path)
    hit = pa.array([False] * table.num_rows)
    for name in table.column_names:
        col = table[name]
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            hit = pc.or_(
                hit,
                pc.fill_null(
                    pc.match_substring_regex(col, pattern.replace("(?i)", ""), ignore_case=True), False
                ),
            )
    removed = int(pc.sum(hit).as_py() or 0)
    if removed:
        st = path.stat()
        tmp = path.with_name(f".{path.name}.forget")
        pq.write_table(table.filter(pc.invert(hit)), tmp)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, path)
    return removed


def _is_table_dir(path: Path) -> bool:
    return (path / "_delta_log").is_dir()


def _rewrite_files(cfg: Config, p: Person, pattern: str) -> dict[str, int]:
    """Landing, archived and exported files (anything under the lakehouse that is not a Delta table, a
    lock or the stream's checkpoint): lines or rows that mention the person are removed."""
    compiled = re.compile(pattern)
    root, touched = cfg.lakehouse.root, {}
    skip = {cfg.lakehouse.checkpoints.resolve(), (root / "_locks").resolve(), pending_dir(cfg).resolve()}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [
            d for d in dirnames if (here / d).resolve() not in skip and not _is_table_dir(here / d)
        ]
        for f in filenames:
            path = here / f
            if f.startswith("."):
                continue
            removed = (
                _rewrite_parquet(path, pattern) if f.endswith(".parquet") else _rewrite_text(path, compiled)
            )
            if removed:
                touched[str(path)] = removed
    return touched


def _clear_derived_state(cfg: Config) -> list[str]:
    """Staged stream results and Spark's RDD checkpoints: derived, recomputed when missing, and they may
    hold the person's rows."""
    cleared = []
    checkpoints = cfg.lakehouse.checkpoints
    for stage in checkpoints.glob("*/identity_staging/*"):
        shutil.rmtree(stage, ignore_errors=True)
        cleared.append(str(stage))
    spark_dir = checkpoints / "spark"
    if spark_dir.is_dir():
        for sub in spark_dir.iterdir():
            shutil.rmtree(sub, ignore_errors=True) if sub.is_dir() else sub.unlink(missing_ok=True)
            cleared.append(str(sub))
    return cleared


def _run_sql(spark: SparkSession, statement: str) -> None:
    spark.sql(statement).collect()


def purge(spark: SparkSession, cfg: Config, names: list[str]) -> None:
    """Materialise deletion vectors and vacuum: the old rows' files (and change-data files) go.

    VACUUM LITE (the default, ``governance.vacuum_lite``) takes the files to delete from the log's remove
    actions, which is exactly what the deletes produced: ~2.5 s a table here against ~25 s for a full
    VACUUM, which lists every file of the table."""
    hours = cfg.governance.vacuum_retention_hours
    lite = " LITE" if cfg.governance.vacuum_lite else ""
    if hours < 168:
        spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    try:
        for name in names:
            path = io.path_of(cfg, name)
            detail = DeltaTable.forPath(spark, path).detail().first()
            if detail and detail["properties"].get("delta.enableDeletionVectors") == "true":
                reorg = f"REORG TABLE delta.`{path}` APPLY (PURGE)"
                io.retry_on_conflict(
                    partial(_run_sql, spark, reorg), attempts=cfg.governance.conflict_attempts
                )
            spark.sql(f"VACUUM delta.`{path}` RETAIN {hours} HOURS{lite}").collect()
    finally:
        spark.conf.unset("spark.databricks.delta.retentionDurationCheck.enabled")


@dataclass
class ForgetResult:
    request_id: str
    profiles: int = 0
    identifiers: int = 0
    rows_removed: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    versions: dict[str, list[int]] = field(default_factory=dict)
    cleared: list[str] = field(default_factory=list)
    seconds: float = 0.0


def suppress(spark: SparkSession, cfg: Config, request_id: str, identifiers: list[str]) -> None:
    now = datetime.now(UTC)
    rows = [(identifier_hash(i), request_id, now) for i in sorted(set(identifiers))]
    io.ensure(spark, cfg, "governance.suppression", spark.createDataFrame([], SUPPRESSION_SCHEMA).schema)
    io.merge_insert_new(
        spark.createDataFrame(rows, SUPPRESSION_SCHEMA), cfg, "governance.suppression", ["identifier_hash"]
    )


def fulfil(spark: SparkSession, cfg: Config, request: dict) -> ForgetResult:
    """Carry out one pending request (see the module docstring). Locks are the caller's."""
    t0 = time.time()
    request_id, identifier = request["request_id"], request["identifier"]
    result = ForgetResult(request_id)
    person = resolve_person(spark, cfg, identifier)
    suppress(spark, cfg, request_id, person.identifiers)
    # a second pass after the deletes catches events that raced in before suppression took effect
    for _ in range(2):
        pattern = mentions_pattern(person.terms)
        for name in io.TABLES:
            if name.startswith("governance.") or not io.exists(spark, cfg, name):
                continue
            before = io.version(spark, cfg, name)
            removed = _delete_person_rows(spark, cfg, name, person, pattern)
            if name == "activation.deliveries":
                removed = _drop_from_deliveries(spark, cfg, person)
            if removed:
                result.rows_removed[name] = result.rows_removed.get(name, 0) + removed
                result.versions[name] = [before, io.version(spark, cfg, name)]
        for path, n in _rewrite_files(cfg, person, pattern).items():
            result.files[path] = result.files.get(path, 0) + n
        again = resolve_person(spark, cfg, identifier)
        if set(again.terms) <= set(person.terms):
            break
        person = Person(
            *(
                sorted(set(a) | set(b))
                for a, b in zip(asdict(person).values(), asdict(again).values(), strict=True)
            )
        )
    result.cleared = _clear_derived_state(cfg)
    purge(spark, cfg, sorted(result.versions))
    # cached frames hold the person's rows in memory, and would stand in for reads of the purged files
    spark.catalog.clearCache()
    result.profiles, result.identifiers = len(person.profile_ids), len(person.identifiers)
    result.seconds = round(time.time() - t0, 2)
    details = {
        "tables": {
            n: {"rows_removed": r, "versions": result.versions[n]} for n, r in result.rows_removed.items()
        },
        "files": result.files,
        "cleared": result.cleared,
        "profiles": result.profiles,
        "identifiers": result.identifiers,
        "verify_hashes": sorted(term_hash(t) for t in person.verify_terms),
        "vacuum_retention_hours": cfg.governance.vacuum_retention_hours,
        "seconds": result.seconds,
    }
    audit(spark, cfg, request_id, "completed", sum(result.rows_removed.values()), len(result.files), details)
    requests = DeltaTable.forPath(spark, io.path_of(cfg, "governance.deletion_requests"))
    done = spark.createDataFrame(
        [(request_id, datetime.now(UTC))], "request_id string, completed_at timestamp"
    )
    io.retry_on_conflict(
        lambda: (
            requests.alias("t")
            .merge(done.alias("s"), "t.request_id = s.request_id")
            .whenMatchedUpdate(set={"status": F.lit("completed"), "completed_at": F.col("s.completed_at")})
            .execute()
        )
    )
    (pending_dir(cfg) / f"{request_id}.json").unlink(missing_ok=True)
    return result


def flag_suppressed(parsed: DataFrame, suppression: DataFrame, cfg: Config) -> DataFrame:
    """Events (parsed, not yet rejected) carrying an identifier of a forgotten person get the reject
    reason ``suppressed``: they go to quarantine instead of re-creating the profile."""
    accepted = parsed.filter(F.col("_reject_reason").isNull())
    obs = identifier_observations(None, accepted, {}, cfg.identity.normalizers)
    hit = (
        obs.withColumn("identifier_hash", F.sha2("identifier", 256))
        .join(suppression.select("identifier_hash"), "identifier_hash", "left_semi")
        .select(F.col("source_record").alias("_suppressed_id"))
        .distinct()
    )
    return (
        parsed.join(hit, parsed["message_id"] == hit["_suppressed_id"], "left")
        .withColumn(
            "_reject_reason",
            F.when(
                F.col("_reject_reason").isNull() & F.col("_suppressed_id").isNotNull(), F.lit("suppressed")
            ).otherwise(F.col("_reject_reason")),
        )
        .drop("_suppressed_id")
    )
