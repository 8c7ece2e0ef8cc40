"""Destination syncs: audience enter/exit events, with consented, policy-allowed fields, sent once.

A sync of one destination:

1. **Pin** the run: the change-feed range of gold.audience_membership it covers (after the last synced
   version, up to the current one) and the versions of gold.profiles, gold.profile_traits and gold.consent
   it reads. The pin goes to ``activation.sync_state`` before anything is sent; a run that finds a pin
   left by a failed run resumes it instead of starting a new one.
2. **Events**: per (audience, profile) the net change in that range (entered or exited; an enter and exit
   within one range cancel out), for the destination's audiences, of people who granted every consent
   category it requires, with its fields as conf/policies.yaml allows (``policies.destination_fields``).
   Everything is read at the pinned versions, so a resumed run rebuilds exactly the same batches.
3. **Batches** of ``batch_size`` events in a fixed order, each with an idempotency key derived from the
   destination, the range and its index. Batches recorded in ``activation.deliveries`` are skipped; each
   sent batch is recorded right after it is acknowledged (delivered, or dead-lettered on a 4xx with the
   response in ``activation.dead_letters``).
4. When every batch is recorded, the range counts as synced and the pin is cleared.

A crash between a delivery and its record resends that one batch with the same key and content: the
receiver deduplicates on the Idempotency-Key header (webhook), the message-id header (Kafka), or finds
the file already there (file).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipelines import io
from pipelines.config import Config, DestinationConfig
from pipelines.consent import CONSENT_SCHEMA, consented_profiles
from pipelines.policies import destination_fields
from pipelines.senders import sender_for

STATE_SCHEMA = (
    "destination string, synced_version long, synced_updated_at timestamp, pending_from long, pending_to long, "
    "pins string, updated_at timestamp"
)
DELIVERY_SCHEMA = (
    "destination string, idempotency_key string, run_from long, run_to long, batch_index int, events int, "
    "status string, http_status int, attempts int, response string, profile_ids array<string>, "
    "delivered_at timestamp"
)
DEAD_LETTER_SCHEMA = (
    "destination string, idempotency_key string, http_status int, response string, payload string, "
    "at timestamp"
)
PINNED = ("gold.profiles", "gold.profile_traits", "gold.consent")


@dataclass
class SyncStats:
    destination: str
    run_from: int = -1
    run_to: int = -1
    resumed: bool = False
    events: int = 0
    batches: int = 0
    batches_sent: int = 0  # this run (the others were delivered by an earlier, failed run)
    dead_lettered: int = 0
    without_consent: int = 0  # changes not sent: the person did not grant the required categories
    seconds: float = 0.0
    state: dict = field(default_factory=dict)


def _ensure_tables(spark: SparkSession, cfg: Config) -> None:
    for name, schema in (
        ("activation.sync_state", STATE_SCHEMA),
        ("activation.deliveries", DELIVERY_SCHEMA),
        ("activation.dead_letters", DEAD_LETTER_SCHEMA),
    ):
        io.ensure(spark, cfg, name, spark.createDataFrame([], schema).schema)


def _state(spark: SparkSession, cfg: Config, destination: str) -> dict | None:
    rows = io.read(spark, cfg, "activation.sync_state").filter(F.col("destination") == destination).collect()
    return rows[0].asDict() if rows else None


def _write_state(spark: SparkSession, cfg: Config, row: dict) -> None:
    df = spark.createDataFrame([row | {"updated_at": datetime.now(UTC)}], STATE_SCHEMA)
    io.merge_upsert(df, cfg, "activation.sync_state", ["destination"])


def audience_changes(
    spark: SparkSession, cfg: Config, start: int, end: int, audiences: list[str]
) -> DataFrame:
    """Net enter/exit per (audience, profile_id) between membership versions ``start`` and ``end``:
    ``audience, profile_id, is_member, at, commit_version``."""
    feed = io.changes(spark, cfg, "gold.audience_membership", start, end).filter(
        F.col("_change_type").isin("insert", "update_postimage")
    )
    if audiences:
        feed = feed.filter(F.col("audience").isin(audiences))
    w = Window.partitionBy("audience", "profile_id").orderBy(F.desc("_commit_version"))
    latest = (
        feed.withColumn("_rn", F.row_number().over(w))
        .filter("_rn = 1")
        .select(
            "audience",
            "profile_id",
            "is_member",
            F.col("updated_at").alias("at"),
            F.col("_commit_version").alias("commit_version"),
        )
    )
    if start == 0:
        return latest.filter("is_member")  # nobody was a member before the table's first version
    before = io.read_version(spark, cfg, "gold.audience_membership", start - 1).select(
        "audience", "profile_id", F.col("is_member").alias("_was")
    )
    return (
        latest.join(before, ["audience", "profile_id"], "left")
        .filter(F.coalesce(F.col("_was"), F.lit(False)) != F.col("is_member"))
        .drop("_was")
    )


def changes_since(
    spark: SparkSession, cfg: Config, since: str | None, end: int, audiences: list[str]
) -> DataFrame:
    """The same shape as ``audience_changes`` from the membership rows updated after ``since``: for a range
    whose history a deletion's VACUUM removed (time travel and the change feed need the old files)."""
    rows = io.read_version(spark, cfg, "gold.audience_membership", end)
    if audiences:
        rows = rows.filter(F.col("audience").isin(audiences))
    if since is None:
        rows = rows.filter("is_member")
    else:
        rows = rows.filter(F.col("updated_at") > F.lit(since).cast("timestamp"))
    return rows.select(
        "audience",
        "profile_id",
        "is_member",
        F.col("updated_at").alias("at"),
        F.lit(end).alias("commit_version"),
    )


def _vacuumed(exc: Exception) -> bool:
    text = str(exc)
    return any(
        m in text
        for m in (
            "FILE_NOT_EXIST",
            "DELTA_FILE_NOT_FOUND",
            "DELTA_CHANGE_DATA_FILE_NOT_FOUND",
            "does not exist",
        )
    )


def _pinned(spark: SparkSession, cfg: Config, name: str, pins: dict) -> DataFrame | None:
    """``name`` at its pinned version; the current one if that version was vacuumed away (a deletion ran
    since: the deleted person must not come back from the past); None if the table does not exist."""
    if not io.exists(spark, cfg, name):
        return None
    try:
        df = io.read_version(spark, cfg, name, pins.get(name, -1))
        df.limit(1).collect()
        return df
    except Exception:
        return io.read(spark, cfg, name)


def build_events(
    spark: SparkSession, cfg: Config, name: str, dest: DestinationConfig, start: int, end: int, pins: dict
) -> tuple[DataFrame, int]:
    """The run's events in send order (one JSON document per row, with batch_index and profile_id), and
    the number of changes left out for want of consent."""
    try:  # the change feed, read now: a range whose files a deletion vacuumed fails here
        changes = audience_changes(spark, cfg, start, end, dest.audiences).localCheckpoint()
    except Exception as exc:
        if not _vacuumed(exc):
            raise
        changes = changes_since(
            spark, cfg, pins.get("synced_updated_at"), end, dest.audiences
        ).localCheckpoint()
    profiles, traits = (
        _pinned(spark, cfg, "gold.profiles", pins),
        _pinned(spark, cfg, "gold.profile_traits", pins),
    )
    assert profiles is not None
    people = profiles
    if traits is not None:
        people = profiles.drop(*[c for c in traits.columns if c != "profile_id"]).join(
            traits.drop("computed_at"), "profile_id", "left"
        )
    fields = destination_fields(people, dest.fields, cfg.policies, name)
    total = changes.count()
    if dest.consent:
        consent = _pinned(spark, cfg, "gold.consent", pins)
        history = consent if consent is not None else spark.createDataFrame([], CONSENT_SCHEMA)
        changes = changes.join(consented_profiles(history, dest.consent), "profile_id", "left_semi")
    kept = changes.join(fields, "profile_id", "left")
    trait_cols = [c for c in fields.columns if c != "profile_id"]
    message_id = F.sha2(
        F.concat_ws(":", F.lit(name), "audience", "profile_id", F.col("commit_version").cast("string")), 256
    )
    order = Window.orderBy("audience", "profile_id")
    events = kept.select(
        "profile_id",
        (F.floor((F.row_number().over(order) - 1) / dest.batch_size)).cast("int").alias("batch_index"),
        F.to_json(
            F.struct(
                message_id.alias("message_id"),
                F.when(F.col("is_member"), "audience_entered").otherwise("audience_exited").alias("type"),
                "audience",
                "profile_id",
                F.date_format("at", "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'").alias("at"),
                F.struct(*[F.col(f"`{c}`") for c in trait_cols]).alias("traits"),
            ),
            {"ignoreNullFields": "false"},
        ).alias("json"),
    )
    n_kept = kept.count()
    return events, total - n_kept


def batch_key(destination: str, start: int, end: int, index: int) -> str:
    return hashlib.sha256(f"{destination}:{start}:{end}:{index}".encode()).hexdigest()[:32]


def sync_destination(spark: SparkSession, cfg: Config, name: str, sleep=time.sleep) -> SyncStats:
    """Send one destination everything that changed since its last sync (see the module docstring).
    Raises ``DeliveryFailed`` when a batch cannot be delivered now; the next run resumes there."""
    t0 = time.time()
    dest = cfg.destinations.definitions[name]
    stats = SyncStats(name)
    if not io.exists(spark, cfg, "gold.audience_membership"):
        return stats
    _ensure_tables(spark, cfg)
    state = _state(spark, cfg, name) or {"destination": name, "synced_version": -1}
    if state.get("pending_to") is not None:
        stats.resumed = True
        start, end, pins = state["pending_from"], state["pending_to"], json.loads(state["pins"])
    else:
        start, end = state["synced_version"] + 1, io.version(spark, cfg, "gold.audience_membership")
        if start > end:
            return stats
        pins = dict[str, object](io.versions(spark, cfg, PINNED))
        top = io.read_version(spark, cfg, "gold.audience_membership", end).agg(F.max("updated_at")).first()
        latest = top[0] if top else None
        pins |= {
            "synced_updated_at": str(state["synced_updated_at"]) if state.get("synced_updated_at") else None,
            "max_updated_at": str(latest) if latest else None,
        }
        state |= {"pending_from": start, "pending_to": end, "pins": json.dumps(pins)}
        _write_state(spark, cfg, state)
    stats.run_from, stats.run_to = start, end
    events, stats.without_consent = build_events(spark, cfg, name, dest, start, end, pins)
    batches: dict[int, list[tuple[str, dict]]] = {}
    for row in events.orderBy("batch_index", "json").toLocalIterator():
        batches.setdefault(row["batch_index"], []).append((row["profile_id"], json.loads(row["json"])))
    done = {
        r["idempotency_key"]
        for r in io.read(spark, cfg, "activation.deliveries")
        .filter((F.col("destination") == name) & (F.col("run_from") == start) & (F.col("run_to") == end))
        .select("idempotency_key")
        .collect()
    }
    sender = sender_for(name, dest, cfg.lakehouse.root, cfg.streaming.kafka.bootstrap_servers, sleep)
    stats.events, stats.batches = sum(len(b) for b in batches.values()), len(batches)
    for index in sorted(batches):
        key = batch_key(name, start, end, index)
        if key in done:
            continue
        rows = batches[index]
        outcome = sender.send(key, [e for _, e in rows])
        now = datetime.now(UTC)
        if outcome.status == "dead_lettered":
            stats.dead_lettered += 1
            payload = json.dumps([e for _, e in rows])
            io.append(
                spark.createDataFrame(
                    [(name, key, outcome.http_status, outcome.response, payload, now)], DEAD_LETTER_SCHEMA
                ),
                cfg,
                "activation.dead_letters",
            )
        record = (
            name, key, start, end, index, len(rows), outcome.status, outcome.http_status, outcome.attempts,
            outcome.response, sorted({p for p, _ in rows}), now,
        )  # fmt: skip
        io.append(spark.createDataFrame([record], DELIVERY_SCHEMA), cfg, "activation.deliveries")
        stats.batches_sent += 1
    done_at = pins.get("max_updated_at")
    state |= {
        "synced_version": end,
        "synced_updated_at": datetime.fromisoformat(done_at) if done_at else state.get("synced_updated_at"),
        "pending_from": None,
        "pending_to": None,
        "pins": None,
    }
    _write_state(spark, cfg, state)
    stats.state, stats.seconds = state, round(time.time() - t0, 2)
    return stats
