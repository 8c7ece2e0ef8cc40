"""The Dagster Definitions root: every asset, check, job and schedule of Converge, as the UI shows them."""

from pathlib import Path

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    Definitions,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    define_asset_job,
    in_process_executor,
    schedule,
)

from assets import activation, checks, gold, ingest, silver
from assets.resources import SparkResource
from jobs.automation import events_catch_up, events_every_15_minutes, new_event_files, stream_progress
from jobs.replay import replay_events
from pipelines.config import load_config

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


nightly = ScheduleDefinition(
    name="converge_nightly", job=converge_all, cron_schedule="0 2 * * *", execution_timezone="UTC"
)

defs = Definitions(
    assets=ALL_ASSETS,
    asset_checks=[*checks.quality_checks, activation.members_are_live_profiles],
    jobs=[converge_all, events_catch_up, replay_events, audiences_refresh],
    schedules=[nightly, events_every_15_minutes, audiences_schedule],
    sensors=[new_event_files, stream_progress],
    resources={"spark": SparkResource()},
)
