"""Great Expectations suites as Dagster asset checks, one per table; bronze and silver checks block.

A failing blocking check stops the assets downstream of it in the same run, so bad silver data never
reaches identity resolution or profiles.
"""

from datetime import datetime

from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetKey,
    MetadataValue,
    asset_check,
)

from assets.resources import SparkResource
from pipelines import io
from pipelines.quality import run_suite, suite_for

CHECKED_TABLES = [
    "bronze.crm_customers",
    "bronze.orders",
    "bronze.events",
    "silver.customers",
    "silver.orders",
    "silver.events",
    "gold.profiles",
]


def quality_check(table: str) -> AssetChecksDefinition:
    layer, name = table.split(".")
    blocking = layer in ("bronze", "silver")

    @asset_check(
        asset=AssetKey([layer, name]),
        name="quality",
        blocking=blocking,
        description=f"Great Expectations suite for {table}"
        + (" (blocks downstream assets)" if blocking else ""),
    )
    def _check(spark: SparkResource) -> AssetCheckResult:
        cfg, session = spark.config(), spark.session()
        expectations = suite_for(
            table,
            list(cfg.sources.systems) + ["orders"] if table == "bronze.orders" else list(cfg.sources.systems),
            datetime.fromisoformat(cfg.events.min_event_time.replace("Z", "+00:00")).replace(tzinfo=None),
            cfg.identity.max_component_size,
        )
        result = run_suite(io.read(session, cfg, table), table, expectations)
        return AssetCheckResult(
            passed=result.success,
            severity=AssetCheckSeverity.ERROR if blocking else AssetCheckSeverity.WARN,
            metadata={
                "expectations": result.evaluated,
                "failed": len(result.failed),
                "failures": MetadataValue.json(result.failed),
            },
        )

    return _check


quality_checks = [quality_check(t) for t in CHECKED_TABLES]
