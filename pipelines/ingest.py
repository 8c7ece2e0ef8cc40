"""Ingestion entry points: CSV feeds into bronze, and the clickstream through Structured Streaming.

``process_event_batch`` is one micro-batch of the clickstream (pipelines/stream.py runs the query): it
appends the raw lines to bronze, MERGEs unseen messageIds into silver and appends rejects to quarantine.
Every write of a micro-batch carries (app id, batch id) as Delta's transaction id, so a batch replayed
after a crash commits nothing twice; a new checkpoint gets a new app id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import io
from pipelines.config import Config
from pipelines.events import flag_conflicts, parse_events, quarantined_events, silver_events
from pipelines.forget import flag_suppressed
from pipelines.records import csv_to_bronze


@dataclass
class BatchStats:
    batch_id: int
    rows: int
    accepted: int
    quarantined: int
    inserted: int
    duplicates: int

    def as_dict(self) -> dict:
        return asdict(self)


def load_csv_feed(spark: SparkSession, cfg: Config, folder: Path, feed: str, table: str) -> list[str]:
    """Append the CSV files of ``folder`` that ``table`` does not hold yet; returns the files loaded.

    Files are grouped by header line, since one read takes one schema.
    """
    done = io.loaded_files(spark, cfg, table)
    files = [f for f in io.landing_files(folder, "*.csv") if f not in done]
    by_header: dict[tuple[str, ...], list[str]] = {}
    for f in files:
        by_header.setdefault(tuple(io.csv_header(f)), []).append(f)
    loaded_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    for group in by_header.values():
        io.append(csv_to_bronze(io.read_csv_raw(spark, group), feed, loaded_at), cfg, table)
    return files


def parse_configured(raw: DataFrame, cfg: Config, known: DataFrame | None = None) -> DataFrame:
    """``parse_events`` with the limits from conf (events.*), then messageId conflicts flagged (against
    ``known`` silver events, when given), then events of forgotten people flagged ``suppressed``
    (governance.suppression): a load and its reconciliation decide alike."""
    e = cfg.events
    parsed = flag_conflicts(
        parse_events(
            raw, e.max_event_bytes, e.min_event_time, e.max_future_seconds, cfg.sources.default_phone_region
        ),
        known,
    )
    spark = raw.sparkSession
    if io.exists(spark, cfg, "governance.suppression"):
        parsed = flag_suppressed(parsed, io.read(spark, cfg, "governance.suppression"), cfg)
    return parsed


def process_event_batch(
    batch: DataFrame,
    batch_id: int,
    cfg: Config,
    app_id: str,
    return_events: bool = False,
    to_bronze: bool = True,
):
    """One micro-batch: raw lines -> bronze.events, new valid events -> silver.events, rejects -> quarantine.

    A messageId silver already holds with other content is a conflict (quarantined), with the same
    content a duplicate. Returns the stats; with ``return_events`` also the batch's accepted events,
    one per messageId, checkpointed (computed once, whatever is written afterwards). ``to_bronze``
    False: the lines come from bronze (a replay) and are not appended again.
    """
    spark = batch.sparkSession
    raw = batch.persist()
    try:
        if to_bronze:
            io.append(
                raw.withColumn("batch_id", F.lit(batch_id).cast("long")),
                cfg,
                "bronze.events",
                app_id,
                batch_id,
            )
        known = (
            io.read(spark, cfg, "silver.events").select("message_id", "_fingerprint")
            if io.exists(spark, cfg, "silver.events")
            else None
        )
        # Checkpointed, not cached: the parse reads silver (``known``), and the MERGE below writes silver,
        # after which Spark drops every cached plan over that table. A cached batch would be parsed again
        # for the quarantine append and again for the caller (a second full parse of every line).
        parsed = parse_configured(raw, cfg, known).localCheckpoint()
        stats = parsed.agg(
            F.count(F.lit(1)).alias("rows"),
            F.count(F.when(F.col("_reject_reason").isNull(), 1)).alias("accepted"),
        ).collect()[0]
        rows, accepted = int(stats["rows"]), int(stats["accepted"])
        events, rejects = silver_events(parsed).localCheckpoint(), quarantined_events(parsed)
        io.ensure(spark, cfg, "silver.events", events.schema)
        io.ensure(spark, cfg, "quarantine.events", rejects.schema)
        inserted = io.merge_insert_new(events, cfg, "silver.events", ["message_id"], app_id, batch_id)
        if rows > accepted:
            io.append(rejects, cfg, "quarantine.events", app_id, batch_id)
    finally:
        raw.unpersist()
    result = BatchStats(batch_id, rows, accepted, rows - accepted, inserted, accepted - inserted)
    if return_events:
        return result, events
    return result
