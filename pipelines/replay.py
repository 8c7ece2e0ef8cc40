"""Kappa replays: rebuild silver.events (and its quarantine) for a range of arrival days from bronze.

Bronze is the log. A replay of days [start, end) deletes what silver and quarantine hold from lines that
arrived then (``_loaded_at`` / ``loaded_at``) and streams bronze's lines of those days back through the
same micro-batch code the live stream runs (Delta as the streaming source, availableNow, a checkpoint of
its own), without appending them to bronze again. Lines that arrived on other days are untouched, so a
duplicate of a replayed event that arrived earlier still wins, as it did live. A replay interrupted half
way is simply run again: the delete and the fresh checkpoint make it idempotent.

Identity and profiles are functions of silver: the full rebuild (`converge_all`) derives them again.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import date, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import io
from pipelines.config import Config
from pipelines.ingest import BatchStats, process_event_batch

LINE_COLUMNS = ["value", "source_file", "source_position", "loaded_at"]


def replay_events(spark: SparkSession, cfg: Config, start: date, end: date | None = None) -> list[BatchStats]:
    """Rebuild silver.events and quarantine.events for lines that arrived on days [start, end) (UTC;
    ``end`` defaults to the day after ``start``). Returns the replay's micro-batch stats."""
    end = end or start + timedelta(days=1)
    if end <= start:
        raise ValueError(f"empty replay range: {start} .. {end}")
    if not io.exists(spark, cfg, "bronze.events"):
        raise FileNotFoundError("bronze.events does not exist: there is nothing to replay")
    lo, hi = f"TIMESTAMP '{start.isoformat()} 00:00:00'", f"TIMESTAMP '{end.isoformat()} 00:00:00'"
    io.delete_where(spark, cfg, "silver.events", f"_loaded_at >= {lo} AND _loaded_at < {hi}")
    io.delete_where(spark, cfg, "quarantine.events", f"loaded_at >= {lo} AND loaded_at < {hi}")

    run = f"replay-{start.isoformat()}-{end.isoformat()}-{uuid.uuid4().hex[:8]}"
    checkpoint = cfg.lakehouse.checkpoints / "replays" / run
    stats: list[BatchStats] = []

    def handle(batch: DataFrame, batch_id: int) -> None:
        stats.append(process_event_batch(batch, batch_id, cfg, run, to_bronze=False))

    lines = (
        io.read_stream(spark, cfg, "bronze.events")
        .filter((F.col("loaded_at") >= F.expr(lo)) & (F.col("loaded_at") < F.expr(hi)))
        .select(*LINE_COLUMNS)
    )
    query = (
        lines.writeStream.queryName(f"converge_{run}".replace("-", "_"))
        .option("checkpointLocation", str(checkpoint))
        .foreachBatch(handle)
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    if query.exception() is not None:
        raise RuntimeError(f"replay {run} failed: {query.exception()}")
    shutil.rmtree(checkpoint, ignore_errors=True)  # one-shot: a rerun starts afresh
    return stats
