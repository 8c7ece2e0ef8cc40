"""Builders for small bronze-shaped DataFrames used across pipeline tests."""

from datetime import datetime

from pyspark.sql import functions as F

BRONZE_CSV_SCHEMA = (
    "feed string, source_file string, loaded_at timestamp, payload map<string,string>, corrupt_record string"
)


def bronze_csv(spark, rows):
    """rows: (feed, payload dict or None, corrupt_record or None[, loaded_at])."""
    data = [
        (r[0], f"/landing/{r[0]}.csv", r[3] if len(r) > 3 else datetime(2026, 1, 1), r[1] or {}, r[2])
        for r in rows
    ]
    return spark.createDataFrame(data, BRONZE_CSV_SCHEMA)


def raw_lines(spark, lines, loaded_at=datetime(2026, 11, 1, 12, 0, 0), source_file="/landing/events/e.jsonl"):
    return spark.createDataFrame([(v,) for v in lines], "value string").select(
        "value",
        F.lit(source_file).alias("source_file"),
        F.lit(loaded_at).cast("timestamp").alias("loaded_at"),
    )
