"""The Dagster Definitions root: every asset, check, job and schedule of Converge, as the UI shows them."""

import json
from pathlib import Path

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    in_process_executor,
    job,
    schedule,
    sensor,
)

from assets import activation, checks, gold, governance, ingest, silver
from assets.resources import SparkResource
from jobs.automation import events_catch_up, events_every_15_minutes, new_event_files, stream_progress
from jobs.replay import replay_events
from pipelines.config import load_config
from pipelines.forget import pending_requests
from pipelines.io import TABLES

# What the assets materialize: every registered table, except those written by the `forget` job
# (governance.*) and by the destination syncs (activation.*), which are one asset of their own.
ASSET_TABLES = {t for t in TABLES if t.split(".")[0] not in ("governance", "activation")} | {
    "activation.destination_syncs"
}

ALL_ASSETS = [
    ingest.crm_customers,
    ingest.orders,
    ingest.clickstream,
    silver.customers,
    silver.orders_silver,
    gold.identity_edges,
    gold.identity_graph_assets,
    gold.profiles,
    activation.traits_and_audiences,
    governance.consent,
    governance.destination_syncs,
]

# One SparkSession per run: every step runs in the run's process (a JVM per step costs 3-5 s and ~1 GB).
converge_all = define_asset_job(
    "converge_all",
    selection=AssetSelection.all(),
    executor_def=in_process_executor,
    description="Load what landed, rebuild silver, resolve identities and build golden profiles.",
    tags={"converge/spark": "true"},
)

audiences_refresh = define_asset_job(
    "audiences_refresh",
    selection=AssetSelection.assets(activation.traits_and_audiences),
    executor_def=in_process_executor,
    description="Recompute traits and re-evaluate audiences for everyone now: time-based audiences "
    "(conf/audiences.yaml) let people go when time passes, not only when events arrive.",
    tags={"converge/spark": "true"},
)


@schedule(
    name="audiences_refresh_schedule",
    job=audiences_refresh,
    cron_schedule=load_config().audiences.refresh_cron,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
)
def audiences_schedule(context: ScheduleEvaluationContext):
    """Re-evaluate every audience on the configured cron, once profiles exist (read from disk, no Spark)."""
    cfg = load_config()
    if not (Path(cfg.table_path("gold", "profiles")) / "_delta_log").is_dir():
        return SkipReason("no gold.profiles yet: run converge_all (or the stream) first")
    return RunRequest(run_key=None, tags={"converge/refresh": "scheduled"})


destinations_sync = define_asset_job(
    "destinations_sync",
    selection=AssetSelection.assets(governance.consent, governance.destination_syncs),
    executor_def=in_process_executor,
    description="Refresh consent and send every destination its audience enter/exit events (resumes a "
    "failed sync where it stopped).",
    tags={"converge/spark": "true"},
)


@job(executor_def=in_process_executor, tags={"converge/spark": "true"})
def forget():
    """Fulfil right-to-be-forgotten requests: every table and file, purged, audited; the requests of one
    run share one pass over every table (the deletion_requests sensor batches what is pending)."""
    governance.fulfil_deletion_requests()


@sensor(job=forget, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def deletion_requests(context: SensorEvaluationContext):
    """Requests of `converge forget` not yet handed to a run (pending files, read without Spark), in
    `forget` runs of up to governance.batch_size requests. The cursor keeps the ids handed out that are
    still pending; a request is handed out once (a failed run is re-executed from the UI)."""
    cfg = load_config()
    pending = [r["request_id"] for r in pending_requests(cfg)]
    handed_out = set(json.loads(context.cursor)) if context.cursor else set()
    new = [r for r in pending if r not in handed_out]
    size = cfg.governance.batch_size
    batches = [new[i : i + size] for i in range(0, len(new), size)]
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=ids[0] if len(ids) == 1 else f"{ids[0]}+{len(ids) - 1}",
                run_config={"ops": {"fulfil_deletion_requests": {"config": {"request_ids": ids}}}},
                tags={"converge/deletion_requests": str(len(ids))},
            )
            for ids in batches
        ],
        skip_reason=None if new else SkipReason("no new deletion requests"),
        cursor=json.dumps(sorted(handed_out.intersection(pending) | set(new))),
    )


nightly = ScheduleDefinition(
    name="converge_nightly", job=converge_all, cron_schedule="0 2 * * *", execution_timezone="UTC"
)

defs = Definitions(
    assets=ALL_ASSETS,
    asset_checks=[*checks.quality_checks, activation.members_are_live_profiles],
    jobs=[converge_all, events_catch_up, replay_events, audiences_refresh, destinations_sync, forget],
    schedules=[nightly, events_every_15_minutes, audiences_schedule],
    sensors=[new_event_files, stream_progress, deletion_requests],
    resources={"spark": SparkResource()},
)
