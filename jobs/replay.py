"""Kappa replays as a Dagster backfill: one daily partition = the clickstream lines that arrived that day.

Launch a backfill of `replay_events` over a range of days in the UI (or `converge replay --start --end`):
each partition rebuilds silver.events and quarantine.events for its day from bronze through the same
micro-batch code as the live stream (pipelines/replay.py). Identity and profiles follow from silver in the
next `converge_all` run.
"""

from datetime import date

from dagster import (
    AssetObservation,
    DailyPartitionsDefinition,
    OpExecutionContext,
    in_process_executor,
    job,
    op,
)

from assets.ingest import EVENTS
from assets.resources import SparkResource
from pipelines import replay

REPLAY_DAYS = DailyPartitionsDefinition(start_date="2020-01-01", timezone="UTC", end_offset=1)


@op
def replay_day(context: OpExecutionContext, spark: SparkResource) -> None:
    """Rebuild silver.events and its quarantine for the partition's day from bronze.events."""
    day = date.fromisoformat(context.partition_key)
    batches = replay.replay_events(spark.session(), spark.config(), day)
    totals = {
        k: sum(getattr(b, k) for b in batches) for k in ("rows", "inserted", "quarantined", "duplicates")
    }
    context.log.info(f"replayed {day}: {len(batches)} micro-batch(es), {totals}")
    context.log_event(
        AssetObservation(
            asset_key=EVENTS,
            metadata={
                "replayed_day": day.isoformat(),
                "replay_batches": len(batches),
                **{f"replay_{k}": v for k, v in totals.items()},
            },
        )
    )


@job(
    partitions_def=REPLAY_DAYS,
    executor_def=in_process_executor,
    tags={"converge/spark": "true"},
    description="Kappa replay: rebuild silver.events for one arrival day from bronze (backfill a range of days).",
)
def replay_events():
    replay_day()
