"""Data-quality suites (Great Expectations 1.x) per table, run on Spark DataFrames.

Suites are plain GX expectation lists; Dagster asset checks (assets/checks.py) run them and decide what
blocks. GX's ephemeral context keeps nothing on disk: results go to Dagster's check metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
from pyspark.sql import DataFrame

from pipelines.events import EVENT_TYPES
from pipelines.normalize import E164_PATTERN, EMAIL_PATTERN


@dataclass(frozen=True)
class SuiteResult:
    success: bool
    evaluated: int
    failed: list[dict]


def suite_for(table: str, systems: list[str], min_event_time: datetime, max_component_size: int) -> list[Any]:
    """The expectations for ``table`` (``layer.name``)."""
    suites: dict[str, list[Any]] = {
        "bronze.crm_customers": [
            gxe.ExpectColumnValuesToNotBeNull(column="source_file"),
            gxe.ExpectColumnValuesToNotBeNull(column="loaded_at"),
            gxe.ExpectColumnValuesToBeInSet(column="feed", value_set=systems),
        ],
        "bronze.orders": [
            gxe.ExpectColumnValuesToNotBeNull(column="source_file"),
            gxe.ExpectColumnValuesToNotBeNull(column="loaded_at"),
        ],
        "bronze.events": [
            gxe.ExpectColumnValuesToNotBeNull(column="value"),
            gxe.ExpectColumnValuesToNotBeNull(column="source_file"),
        ],
        "silver.customers": [
            gxe.ExpectColumnValuesToNotBeNull(column="source_id"),
            gxe.ExpectColumnValuesToBeInSet(column="source_system", value_set=systems),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["source_system", "source_id"]),
            gxe.ExpectColumnValuesToMatchRegex(column="email", regex=EMAIL_PATTERN),
            gxe.ExpectColumnValuesToMatchRegex(column="phone", regex=E164_PATTERN),
        ],
        "silver.orders": [
            gxe.ExpectColumnValuesToNotBeNull(column="order_id"),
            gxe.ExpectColumnValuesToBeUnique(column="order_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="customer_source_id"),
            gxe.ExpectColumnValuesToBeBetween(column="amount", min_value=0),
        ],
        "silver.events": [
            gxe.ExpectColumnValuesToNotBeNull(column="message_id"),
            gxe.ExpectColumnValuesToBeUnique(column="message_id"),
            gxe.ExpectColumnValuesToBeInSet(column="type", value_set=EVENT_TYPES),
            gxe.ExpectColumnValuesToBeBetween(
                column="event_time", min_value=min_event_time, max_value=datetime.utcnow() + timedelta(days=1)
            ),
        ],
        "gold.profiles": [
            gxe.ExpectColumnValuesToNotBeNull(column="profile_id"),
            gxe.ExpectColumnValuesToBeUnique(column="profile_id"),
            gxe.ExpectColumnValuesToBeBetween(
                column="identifier_count", min_value=1, max_value=max_component_size
            ),
        ],
    }
    if table not in suites:
        raise KeyError(f"no quality suite for {table}")
    return suites[table]


@cache
def _source():
    return gx.get_context(mode="ephemeral").data_sources.add_spark(name="converge")


def run_suite(df: DataFrame, name: str, expectations: list) -> SuiteResult:
    """Validate ``df`` against ``expectations``; returns pass/fail and the failed expectations' details."""
    source = _source()
    asset = source.add_dataframe_asset(name=f"{name}-{len(source.assets)}")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": df})
    result = batch.validate(gx.ExpectationSuite(name=name, expectations=expectations))
    failed = [
        {
            "expectation": r.expectation_config.type,
            "kwargs": {k: str(v) for k, v in r.expectation_config.kwargs.items() if k != "batch_id"},
            "unexpected_count": r.result.get("unexpected_count"),
            "examples": [str(x) for x in (r.result.get("partial_unexpected_list") or [])[:5]],
        }
        for r in result.results
        if not r.success
    ]
    return SuiteResult(success=bool(result.success), evaluated=len(result.results), failed=failed)
