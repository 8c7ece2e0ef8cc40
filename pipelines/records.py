"""Row operations every feed shares: CSV rows to bronze, rejected rows to quarantine, one row per key."""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

QUARANTINE_COLUMNS = ["feed", "source_file", "loaded_at", "raw", "reason"]
BRONZE_CSV_SCHEMA = (
    "feed string, source_file string, loaded_at timestamp, payload map<string,string>, corrupt_record string"
)


def csv_to_bronze(raw: DataFrame, feed: str, loaded_at: str) -> DataFrame:
    """Wrap raw CSV columns (all strings, plus ``_corrupt_record`` and ``_source_file``) as bronze rows.

    ``payload`` maps the file's own header to the values, so feeds with different headers share one schema
    and nothing of the line is lost; ``corrupt_record`` keeps a line that did not parse.
    """
    data_cols = [c for c in raw.columns if c not in ("_corrupt_record", "_source_file")]
    payload = F.map_from_arrays(
        F.array(*[F.lit(c) for c in data_cols]), F.array(*[F.col(f"`{c}`") for c in data_cols])
    )
    return raw.select(
        F.lit(feed).alias("feed"),
        F.col("_source_file").alias("source_file"),
        F.to_timestamp(F.lit(loaded_at)).alias("loaded_at"),
        payload.alias("payload"),
        F.col("_corrupt_record").alias("corrupt_record"),
    )


def quarantined(standardized: DataFrame) -> DataFrame:
    """Rows with a ``_reject_reason``, as quarantine rows: where they came from, the raw record, why."""
    return standardized.filter(F.col("_reject_reason").isNotNull()).select(
        "feed",
        F.col("_source_file").alias("source_file"),
        F.col("_loaded_at").alias("loaded_at"),
        F.coalesce(F.col("corrupt_record"), F.to_json("payload")).alias("raw"),
        F.col("_reject_reason").alias("reason"),
    )


def keep_one_per_key(df: DataFrame, keys: Sequence[str], order_by: Sequence[Column]) -> DataFrame:
    """The first row per ``keys`` under ``order_by`` (make the order total, so reruns pick the same row)."""
    w = Window.partitionBy(*keys).orderBy(*order_by)
    return df.withColumn("_rn", F.row_number().over(w)).filter("_rn = 1").drop("_rn")
