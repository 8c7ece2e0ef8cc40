"""Ingestion entry points: CSV feeds into bronze, and the clickstream through Structured Streaming.

The clickstream path is the one production streaming extends: a file (or, later, Kafka) source, and a
``foreachBatch`` that appends the raw lines to bronze, MERGEs unseen messageIds into silver and appends
rejects to quarantine. Every write of a micro-batch carries (app id, batch id) as Delta's transaction
id, so a batch replayed after a crash commits nothing twice; a new checkpoint gets a new app id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import io
from pipelines.config import Config
from pipelines.events import parse_events, quarantined_events, silver_events
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


def parse_configured(raw: DataFrame, cfg: Config) -> DataFrame:
    """``parse_events`` with the limits from conf (events.*)."""
    e = cfg.events
    return parse_events(
        raw, e.max_event_bytes, e.min_event_time, e.max_future_seconds, cfg.sources.default_phone_region
    )


def process_event_batch(batch: DataFrame, batch_id: int, cfg: Config, app_id: str) -> BatchStats:
    """One micro-batch: raw lines -> bronze.events, new valid events -> silver.events, rejects -> quarantine."""
    spark = batch.sparkSession
    raw = batch.persist()
    try:
        io.append(
            raw.withColumn("batch_id", F.lit(batch_id).cast("long")), cfg, "bronze.events", app_id, batch_id
        )
        parsed = parse_configured(raw, cfg).persist()
        stats = parsed.agg(
            F.count(F.lit(1)).alias("rows"),
            F.count(F.when(F.col("_reject_reason").isNull(), 1)).alias("accepted"),
        ).collect()[0]
        rows, accepted = int(stats["rows"]), int(stats["accepted"])
        events, rejects = silver_events(parsed), quarantined_events(parsed)
        io.ensure(spark, cfg, "silver.events", events.schema)
        io.ensure(spark, cfg, "quarantine.events", rejects.schema)
        inserted = io.merge_insert_new(events, cfg, "silver.events", ["message_id"], app_id, batch_id)
        if rows > accepted:
            io.append(rejects, cfg, "quarantine.events", app_id, batch_id)
        parsed.unpersist()
    finally:
        raw.unpersist()
    return BatchStats(batch_id, rows, accepted, rows - accepted, inserted, accepted - inserted)


def run_event_stream(
    spark: SparkSession, cfg: Config, available_now: bool = True, timeout_s: int | None = None
) -> list[BatchStats]:
    """Run the landing-folder clickstream query; with ``available_now`` it stops when the backlog is done.

    Returns the stats of each micro-batch this call processed.
    """
    checkpoint = cfg.lakehouse.checkpoints / "events_stream"
    app_id = io.checkpoint_app_id(checkpoint, "converge-events")
    processed: list[BatchStats] = []

    def handle(batch: DataFrame, batch_id: int) -> None:
        processed.append(process_event_batch(batch, batch_id, cfg, app_id))

    source = io.read_text_stream(
        spark, cfg.lakehouse.landing / "events", "*.jsonl", cfg.streaming.max_files_per_trigger
    )
    writer = (
        source.writeStream.queryName("converge_events")
        .option("checkpointLocation", str(checkpoint))
        .foreachBatch(handle)
    )
    writer = (
        writer.trigger(availableNow=True)
        if available_now
        else writer.trigger(processingTime=cfg.streaming.trigger)
    )
    query = writer.start()
    query.awaitTermination(timeout_s)
    if query.exception() is not None:
        raise RuntimeError(f"event stream failed: {query.exception()}")
    return processed
