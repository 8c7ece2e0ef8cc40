"""The Dagster Definitions root: every asset, check, job and schedule of Converge, as the UI shows them."""

from dagster import AssetSelection, Definitions, ScheduleDefinition, define_asset_job, in_process_executor

from assets import checks, gold, ingest, silver
from assets.resources import SparkResource

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
    jobs=[converge_all],
    schedules=[nightly],
    resources={"spark": SparkResource()},
)
