"""Event automation for users who do not keep `converge stream` running, and the stream's health in the UI.

- ``events_catch_up``: the clickstream asset with availableNow and per-batch identity updates: the same
  micro-batches a continuous stream runs, then it stops.
- ``events_every_15_minutes``: a schedule for that job (off by default: turn it on in the UI).
- ``new_event_files``: a sensor that starts the job when files landed that no batch has read yet.
- ``stream_progress``: a sensor that records the continuous stream's progress and lag as observations of
  silver/events, so the asset page shows when the stream falls behind or died.

The sensors read files only (the checkpoint's source log, the status file): no Spark in the daemon.
"""

import json

from dagster import (
    AssetObservation,
    AssetSelection,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    in_process_executor,
    sensor,
)

from assets import ingest
from pipelines.config import load_config
from pipelines.stream import file_backlog, read_status

events_catch_up = define_asset_job(
    "events_catch_up",
    selection=AssetSelection.assets(ingest.clickstream),
    executor_def=in_process_executor,
    config={"ops": {"clickstream": {"config": {"update_identity": True}}}},
    description="Read every event that landed since the last batch (availableNow), updating identity and "
    "profiles of the people it touches; for users who do not keep `converge stream` running.",
    tags={"converge/spark": "true"},
)

events_every_15_minutes = ScheduleDefinition(
    name="events_every_15_minutes",
    job=events_catch_up,
    cron_schedule="*/15 * * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,
)


@sensor(job=events_catch_up, minimum_interval_seconds=30, default_status=DefaultSensorStatus.STOPPED)
def new_event_files(context: SensorEvaluationContext):
    """Start `events_catch_up` when event files landed that no micro-batch has read yet."""
    cfg = load_config()
    if cfg.streaming.source != "files":
        return SkipReason(f"streaming.source is {cfg.streaming.source}: this sensor watches landing files")
    status = read_status(cfg)
    if status and status.get("alive"):
        return SkipReason(f"a continuous stream (pid {status['pid']}) is reading the files")
    backlog = file_backlog(cfg)
    if not backlog:
        return SkipReason("no new event files")
    # one run per backlog: the same files waiting again (a run still queued) ask for no second run
    return RunRequest(run_key=f"{len(backlog)}:{backlog[-1]}", tags={"converge/new_files": str(len(backlog))})


@sensor(minimum_interval_seconds=30, default_status=DefaultSensorStatus.STOPPED)
def stream_progress(context: SensorEvaluationContext):
    """Record the stream's state, rows/s, batch duration and backlog on silver/events."""
    cfg = load_config()
    seen = json.loads(context.cursor) if context.cursor else {}
    events = []
    for source in ("files", "kafka"):
        cfg.streaming.source = source  # type: ignore[assignment]
        status = read_status(cfg)
        if status is None or seen.get(source) == status["updated_at"] and not status.get("alive"):
            continue
        seen[source] = status["updated_at"]
        last = status["batches"][-1] if status["batches"] else {}
        metadata = {
            "stream_source": source,
            "stream_state": status["state"],
            "last_batch_id": last.get("batch_id"),
            "rows_per_second": last.get("processed_rows_per_second"),
            "batch_duration_ms": last.get("batch_duration_ms"),
            "seconds_since_last_batch": status.get("seconds_since_last_batch"),
        }
        if "backlog_files" in status:
            metadata["backlog_files"] = status["backlog_files"]
        if last.get("kafka_offsets_behind_latest") is not None:
            metadata["kafka_offsets_behind_latest"] = int(last["kafka_offsets_behind_latest"])
        events.append(
            AssetObservation(
                asset_key=ingest.EVENTS, metadata={k: v for k, v in metadata.items() if v is not None}
            )
        )
    if not events:
        return SkipReason("no stream has reported since the last evaluation")
    return SensorResult(asset_events=events, cursor=json.dumps(seen))
