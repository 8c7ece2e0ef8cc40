"""Builders for small bronze-shaped DataFrames used across pipeline tests."""

from datetime import datetime

from pyspark.sql import functions as F

from pipelines.records import BRONZE_CSV_SCHEMA


def bronze_csv(spark, rows):
    """rows: (feed, payload dict or None, corrupt_record or None[, loaded_at])."""
    data = [
        (r[0], f"/landing/{r[0]}.csv", r[3] if len(r) > 3 else datetime(2026, 1, 1), r[1] or {}, r[2])
        for r in rows
    ]
    return spark.createDataFrame(data, BRONZE_CSV_SCHEMA)


def raw_lines(spark, lines, loaded_at=datetime(2026, 11, 1, 12, 0, 0), source_file="/landing/events/e.jsonl"):
    rows = [(v, i + 1) for i, v in enumerate(lines)]
    return spark.createDataFrame(rows, "value string, source_position long").select(
        "value",
        F.lit(source_file).alias("source_file"),
        "source_position",
        F.lit(loaded_at).cast("timestamp").alias("loaded_at"),
    )
