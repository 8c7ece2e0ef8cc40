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
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
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
# A value counts as mentioned when it is a whole token: a maximal run of these characters (an id "C1" is
# not in "C10"; "ann@example.com" is in '{"email":"ann@example.com"}'). proof.py tokenises the same way.
_EDGE = r"A-Za-z0-9_.@+\-"
TOKEN = re.compile(f"[{_EDGE}]+")
_NOT_TOKEN = r"[^a-z0-9_.@+\-]+"  # splits lower-cased text into tokens


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
    return request_deletions(spark, cfg, [identifier], reason)[0]


def request_deletions(
    spark: SparkSession, cfg: Config, identifiers: list[str], reason: str = ""
) -> list[str]:
    """Record one request per identifier (one write to the request table and one to the audit log for
    all of them); returns the request ids in the same order."""
    normalised = [normalise_identifier(cfg, i) for i in identifiers]
    now = datetime.now(UTC)
    folder = pending_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    ids, rows = [], []
    for identifier in normalised:
        request_id = str(uuid.uuid4())
        record = {
            "request_id": request_id,
            "identifier": identifier,
            "reason": reason,
            "received_at": now.isoformat(),
        }
        tmp = folder / f".{request_id}.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, folder / f"{request_id}.json")
        ids.append(request_id)
        rows.append(
            (request_id, identifier_hash(identifier), identifier.split(":")[0], reason, now, "pending", None)
        )
    io.append(spark.createDataFrame(rows, REQUEST_SCHEMA), cfg, "governance.deletion_requests")
    audit(spark, cfg, [(i, "received", 0, 0, {"reason": reason}) for i in ids])
    return ids


def audit(spark: SparkSession, cfg: Config, entries: list[tuple[str, str, int, int, dict]]) -> None:
    """Append (request_id, event_kind, rows, files, details) entries to the audit log in one commit."""
    now = datetime.now(UTC)
    rows = [
        (rid, kind, now, n, files, json.dumps(details, default=str))
        for rid, kind, n, files, details in entries
    ]
    io.append(spark.createDataFrame(rows, AUDIT_SCHEMA), cfg, "governance.audit_log")


@dataclass
class Person:
    identifiers: list[str]  # type:value
    profile_ids: list[str]
    records: list[str]  # CRM records as system:id
    message_ids: list[str]
    order_ids: list[str]

    @classmethod
    def union(cls, people: Iterable[Person]) -> Person:
        people = list(people)
        return cls(*(sorted({x for p in people for x in getattr(p, f.name)}) for f in fields(cls)))

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


_EVENT_ID_COLUMNS = ("user_id", "anonymous_id", "previous_id", "trait_email", "trait_phone")


def resolve_people(spark: SparkSession, cfg: Config, identifiers: dict[str, str]) -> dict[str, Person]:
    """Everything that identifies each request's person now (request id -> identifier in, request id ->
    Person out): the profile(s) the identifier belongs to, every identifier in them, retired profile ids
    merged into them, their CRM records, events and orders. One query per table for the whole batch."""
    graph = _table(spark, cfg, "gold.identity_graph")
    wanted = sorted(set(identifiers.values()))
    pids_of: dict[str, set[str]] = defaultdict(set)  # identifier -> profile ids
    members: dict[str, set[str]] = defaultdict(set)  # profile id -> identifiers
    if graph is not None:
        for r in graph.filter(F.col("identifier").isin(wanted)).select("identifier", "profile_id").collect():
            pids_of[r.identifier].add(r.profile_id)
        current = sorted({p for ps in pids_of.values() for p in ps})
        registry = _table(spark, cfg, "gold.profile_ids")
        if registry is not None and current:
            retired = registry.filter(F.col("retired_into").isin(current)).select(
                "profile_id", "retired_into"
            )
            into: dict[str, set[str]] = defaultdict(set)
            for r in retired.collect():
                into[r.retired_into].add(r.profile_id)
            for ps in pids_of.values():
                ps |= {old for p in list(ps) for old in into[p]}
        if current:
            for r in (
                graph.filter(F.col("profile_id").isin(current)).select("profile_id", "identifier").collect()
            ):
                members[r.profile_id].add(r.identifier)
    systems = {f"{s}_id": s for s in cfg.sources.systems}
    people = {}
    for request_id, identifier in identifiers.items():
        pids = pids_of.get(identifier, set())
        ids = {identifier} | {i for p in pids for i in members[p]}
        records = {
            f"{systems[i.split(':')[0]]}:{i.split(':', 1)[1]}" for i in ids if i.split(":")[0] in systems
        }
        people[request_id] = Person(sorted(ids), sorted(pids), sorted(records), [], [])
    everyone = Person.union(people.values())
    events = _table(spark, cfg, "silver.events")
    if events is not None and everyone.values:
        mentioned = F.lit(False)
        for c in _EVENT_ID_COLUMNS:
            mentioned = mentioned | F.col(c).isin(everyone.values)
        by_value: dict[str, set[str]] = defaultdict(set)
        for r in events.filter(mentioned).select("message_id", *_EVENT_ID_COLUMNS).collect():
            for c in _EVENT_ID_COLUMNS:
                if r[c] is not None:
                    by_value[r[c]].add(r.message_id)
        for p in people.values():
            p.message_ids = sorted({m for v in p.values for m in by_value.get(v, ())})
    orders = _table(spark, cfg, "silver.orders")
    if orders is not None and everyone.records:
        record = F.concat_ws(":", "source_system", "customer_source_id")
        by_record: dict[str, set[str]] = defaultdict(set)
        for r in (
            orders.filter(record.isin(everyone.records)).select(record.alias("record"), "order_id").collect()
        ):
            by_record[r.record].add(r.order_id)
        for p in people.values():
            p.order_ids = sorted({o for rec in p.records for o in by_record.get(rec, ())})
    return people


def resolve_person(spark: SparkSession, cfg: Config, identifier: str) -> Person:
    """Everything that identifies the person ``identifier`` belongs to, now."""
    return resolve_people(spark, cfg, {"": identifier})[""]


def mentions_pattern(terms: list[str]) -> str:
    """A regular expression (Java and Python alike) matching any of ``terms`` as a whole token."""
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return f"(?i)(?<![{_EDGE}])(?:{alternatives})(?![{_EDGE}])"


@dataclass(frozen=True)
class Mentions:
    """Does a text mention any of a set of terms as a whole token (case-insensitive)? The same test for
    Spark columns, Python lines and Arrow columns (landing and export files).

    Terms made only of token characters (emails, phones, ids: nearly all) are looked up per token in a hash
    set, which costs the same for the terms of one person or of a batch of 1,000 (an alternation regex of
    10,000 terms is tried term by term at every character). The rare term with other characters (a custom
    id with a space or a colon) is matched by a regex."""

    tokens: frozenset[str]
    pattern: str | None

    @classmethod
    def of(cls, terms: Iterable[str]) -> Mentions:
        lower = {t.lower() for t in terms if t}
        plain = {t for t in lower if TOKEN.fullmatch(t)}
        odd = sorted(lower - plain)
        return cls(frozenset(plain), mentions_pattern(odd) if odd else None)

    def column(self, c: Column) -> Column:
        hit = F.lit(False)
        if self.tokens:
            wanted = sorted(self.tokens)
            hit = F.exists(F.split(F.lower(c), _NOT_TOKEN), lambda t: t.isin(wanted))
        if self.pattern:
            hit = hit | c.rlike(self.pattern)
        return F.coalesce(hit, F.lit(False))

    def line(self, text: str) -> bool:
        if any(t.lower() in self.tokens for t in TOKEN.findall(text)):
            return True
        return bool(self.pattern and re.search(self.pattern, text))

    def arrow(self, col: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Boolean per row of a string column (nulls: False)."""
        n = len(col)
        hit = pa.array([False] * n)
        if self.tokens:
            lists = pc.split_pattern_regex(pc.utf8_lower(col), _NOT_TOKEN)
            found = pc.is_in(pc.list_flatten(lists), value_set=pa.array(sorted(self.tokens)))
            rows = pc.filter(pc.list_parent_indices(lists), found)
            hit = pc.is_in(pa.array(range(n), pa.int64()), value_set=pc.cast(rows, pa.int64()))
        if self.pattern:
            # Arrow's RE2 has no lookaround: a non-token character or the text's edge on each side
            around = self.pattern.replace("(?i)", "").replace("(?<![", "(?:^|[^").replace("(?![", "(?:$|[^")
            regex = pc.match_substring_regex(col, around, ignore_case=True)
            hit = pc.or_(hit, pc.fill_null(regex, False))
        return hit


def _in(col: str, values: list[str]) -> Column:
    return F.col(col).isin(values) if values else F.lit(False)


def _person_rows(name: str, p: Person, m: Mentions) -> tuple[Callable[[DataFrame], Column], list[str]] | None:
    """(predicate over the table's rows, key expressions over ``{t}``) for every table holding people."""

    def text(c: str) -> Callable[[DataFrame], Column]:
        return lambda df: m.column(F.col(c))

    ids, pids, values = p.identifiers, p.profile_ids, p.values
    bronze_csv = (
        lambda df: m.column(F.to_json("payload")) | m.column(F.col("corrupt_record")),
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
            lambda df: F.exists("most_connected_identifiers", lambda i: i.isin(ids)),
            ["{t}.component_id"],
        ),
        "activation.dead_letters": (text("payload"), ["{t}.destination", "{t}.idempotency_key"]),
    }  # fmt: skip
    return rules.get(name)


def _delete_person_rows(
    spark: SparkSession, cfg: Config, name: str, p: Person, m: Mentions
) -> tuple[int, list[int]]:
    """MERGE-delete the rows of one table that belong to ``p``; returns (rows removed, [version before,
    version after]) (no version is read when nothing matches)."""
    rule = _person_rows(name, p, m)
    if rule is None or not io.exists(spark, cfg, name):
        return 0, []
    predicate, keys = rule
    table = io.read(spark, cfg, name)
    columns = [f"{k.replace('{t}.', '')} AS k{i}" for i, k in enumerate(keys)]
    matches = table.filter(predicate(table)).selectExpr(*columns).distinct().localCheckpoint()
    n = matches.count()
    if n == 0:
        return 0, []
    before = io.version(spark, cfg, name)
    condition = " AND ".join(f"{k.format(t='t')} <=> s.k{i}" for i, k in enumerate(keys))
    target = DeltaTable.forPath(spark, io.path_of(cfg, name))
    io.retry_on_conflict(
        lambda: target.alias("t").merge(matches.alias("s"), condition).whenMatchedDelete().execute(),
        attempts=cfg.governance.conflict_attempts,
    )
    return n, [before, io.version(spark, cfg, name)]


def _drop_from_deliveries(spark: SparkSession, cfg: Config, p: Person) -> tuple[int, list[int]]:
    """Delivery records stay (they are what makes a rerun send nothing twice) without the person's id."""
    if not io.exists(spark, cfg, "activation.deliveries") or not p.profile_ids:
        return 0, []
    pids = p.profile_ids
    rows = io.read(spark, cfg, "activation.deliveries").filter(
        F.exists("profile_ids", lambda x: x.isin(pids))
    )
    keys = rows.select("destination", "idempotency_key").distinct().localCheckpoint()
    n = keys.count()
    if n == 0:
        return 0, []
    before = io.version(spark, cfg, "activation.deliveries")
    target = DeltaTable.forPath(spark, io.path_of(cfg, "activation.deliveries"))
    gone = F.array(*[F.lit(x) for x in pids])
    io.retry_on_conflict(
        lambda: (
            target.alias("t")
            .merge(
                keys.alias("s"), "t.destination <=> s.destination AND t.idempotency_key <=> s.idempotency_key"
            )
            .whenMatchedUpdate(set={"profile_ids": F.array_except("t.profile_ids", gone)})
            .execute()
        ),
        attempts=cfg.governance.conflict_attempts,
    )
    return n, [before, io.version(spark, cfg, "activation.deliveries")]


def _rewrite_text(path: Path, m: Mentions) -> int:
    """Drop the lines that mention the person; keep the file's times. Returns lines removed."""
    raw = path.read_bytes()
    if b"\0" in raw[:4096]:
        return 0  # binary: not a landing or export format
    lines = raw.decode("utf-8", errors="surrogateescape").splitlines(keepends=True)
    kept = [line for line in lines if not m.line(line)]
    if len(kept) == len(lines):
        return 0
    st = path.stat()
    tmp = path.with_name(f".{path.name}.forget")
    tmp.write_bytes("".join(kept).encode("utf-8", errors="surrogateescape"))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)
    return len(lines) - len(kept)


def _rewrite_parquet(path: Path, m: Mentions) -> int:
    table = pq.read_table(path)
    hit = pa.array([False] * table.num_rows)
    for name in table.column_names:
        col = table[name]
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            hit = pc.or_(hit, m.arrow(col))
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


def _rewrite_files(cfg: Config, m: Mentions) -> dict[str, int]:
    """Landing, archived and exported files (anything under the lakehouse that is not a Delta table, a
    lock or the stream's checkpoint): lines or rows that mention the person are removed."""
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
            removed = _rewrite_parquet(path, m) if f.endswith(".parquet") else _rewrite_text(path, m)
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
    """One fulfilment: a batch of requests carried out together (tables, files and purge are shared)."""

    request_ids: list[str]
    profiles: int = 0
    identifiers: int = 0
    rows_removed: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    versions: dict[str, list[int]] = field(default_factory=dict)
    cleared: list[str] = field(default_factory=list)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds: resolve, delete, files, purge, record

    def timed(self, phase: str, since: float) -> float:
        now = time.time()
        self.phases[phase] = round(self.phases.get(phase, 0.0) + now - since, 2)
        return now


def suppress(spark: SparkSession, cfg: Config, identifiers: dict[str, list[str]]) -> None:
    """Add the identifiers of each request (request id -> identifiers) to the suppression list."""
    now = datetime.now(UTC)
    rows = {
        identifier_hash(i): (identifier_hash(i), rid, now) for rid, ids in identifiers.items() for i in ids
    }
    io.ensure(spark, cfg, "governance.suppression", spark.createDataFrame([], SUPPRESSION_SCHEMA).schema)
    io.merge_insert_new(
        spark.createDataFrame(sorted(rows.values()), SUPPRESSION_SCHEMA),
        cfg,
        "governance.suppression",
        ["identifier_hash"],
    )


def fulfil(spark: SparkSession, cfg: Config, requests: list[dict]) -> ForgetResult:
    """Carry out pending requests together (see the module docstring): every table is read, MERGEd,
    purged and every file rewritten once for the whole batch. Locks are the caller's."""
    t0 = time.time()
    wanted = {r["request_id"]: r["identifier"] for r in requests}
    result = ForgetResult(sorted(wanted))
    people = resolve_people(spark, cfg, wanted)
    suppress(spark, cfg, {rid: p.identifiers for rid, p in people.items()})
    t = result.timed("resolve", t0)
    # a second pass after the deletes catches events that raced in before suppression took effect
    for _ in range(2):
        everyone = Person.union(people.values())
        mentions = Mentions.of(everyone.terms)
        for name in io.TABLES:
            if name.startswith("governance.") or not io.exists(spark, cfg, name):
                continue
            if name == "activation.deliveries":
                removed, versions = _drop_from_deliveries(spark, cfg, everyone)
            else:
                removed, versions = _delete_person_rows(spark, cfg, name, everyone, mentions)
            if removed:
                result.rows_removed[name] = result.rows_removed.get(name, 0) + removed
                result.versions[name] = [result.versions.get(name, versions)[0], versions[1]]
        t = result.timed("delete", t)
        for path, n in _rewrite_files(cfg, mentions).items():
            result.files[path] = result.files.get(path, 0) + n
        t = result.timed("files", t)
        again = resolve_people(spark, cfg, wanted)
        t = result.timed("resolve", t)
        if all(set(again[r].terms) <= set(people[r].terms) for r in wanted):
            break
        people = {r: Person.union([people[r], again[r]]) for r in wanted}
    result.cleared = _clear_derived_state(cfg)
    purge(spark, cfg, sorted(result.versions))
    # cached frames hold the person's rows in memory, and would stand in for reads of the purged files
    spark.catalog.clearCache()
    t = result.timed("purge", t)
    everyone = Person.union(people.values())
    result.profiles, result.identifiers = len(everyone.profile_ids), len(everyone.identifiers)
    result.seconds = round(time.time() - t0, 2)
    batch = {
        "requests": len(wanted),
        "tables": {
            n: {"rows_removed": r, "versions": result.versions[n]} for n, r in result.rows_removed.items()
        },
        "files": result.files,
        "cleared": result.cleared,
        "vacuum_retention_hours": cfg.governance.vacuum_retention_hours,
        "seconds": result.seconds,
        "phases": result.phases,
    }
    audit(
        spark,
        cfg,
        [
            (
                rid,
                "completed",
                sum(result.rows_removed.values()),
                len(result.files),
                {
                    **batch,
                    "profiles": len(p.profile_ids),
                    "identifiers": len(p.identifiers),
                    "verify_hashes": sorted(term_hash(t) for t in p.verify_terms),
                },
            )
            for rid, p in sorted(people.items())
        ],
    )
    requests_table = DeltaTable.forPath(spark, io.path_of(cfg, "governance.deletion_requests"))
    done = spark.createDataFrame(
        [(rid, datetime.now(UTC)) for rid in sorted(wanted)], "request_id string, completed_at timestamp"
    )
    io.retry_on_conflict(
        lambda: (
            requests_table.alias("t")
            .merge(done.alias("s"), "t.request_id = s.request_id")
            .whenMatchedUpdate(set={"status": F.lit("completed"), "completed_at": F.col("s.completed_at")})
            .execute()
        )
    )
    for rid in wanted:
        (pending_dir(cfg) / f"{rid}.json").unlink(missing_ok=True)
    result.timed("record", t)
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
