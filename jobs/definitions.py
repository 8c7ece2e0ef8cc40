"""The Dagster Definitions root: every asset, check, job and schedule of Converge, as the UI shows them."""

from dagster import AssetSelection, Definitions, ScheduleDefinition, define_asset_job, in_process_executor

from assets import checks, gold, ingest, silver
from assets.resources import SparkResource
from jobs.automation import events_catch_up, events_every_15_minutes, new_event_files, stream_progress
from jobs.replay import replay_events

ALL_ASSETS = [
    ingest.crm_customers,
    ingest.orders,
    ingest.clickstream,
    silver.customers,
    silver.orders_silver,
    gold.identity_edges,
    gold.identity_graph_assets,
    gold.profiles,
]

# One SparkSession per run: every step runs in the run's process (a JVM per step costs 3-5 s and ~1 GB).
converge_all = define_asset_job(
    "converge_all",
    selection=AssetSelection.all(),
    executor_def=in_process_executor,
    description="Load what landed, rebuild silver, resolve identities and build golden profiles.",
    tags={"converge/spark": "true"},
)

nightly = ScheduleDefinition(
    name="converge_nightly", job=converge_all, cron_schedule="0 2 * * *", execution_timezone="UTC"
)

defs = Definitions(
    assets=ALL_ASSETS,
    asset_checks=checks.quality_checks,
    jobs=[converge_all, events_catch_up, replay_events],
    schedules=[nightly, events_every_15_minutes],
    sensors=[new_event_files, stream_progress],
    resources={"spark": SparkResource()},
)
