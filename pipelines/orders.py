"""Orders: bronze payload rows -> typed silver orders, one per order_id (+ quarantine)."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.normalize import blank_to_null
from pipelines.records import keep_one_per_key

SILVER_COLUMNS = [
    "order_id",
    "source_system",
    "customer_source_id",
    "order_ts",
    "amount",
    "currency",
    "status",
    "_source_file",
    "_loaded_at",
]


def standardize_orders(bronze: DataFrame, known_systems: list[str]) -> DataFrame:
    """Typed order columns with ``_reject_reason`` for rows that cannot be loaded.

    Rejected: malformed CSV lines, no order id or customer id, a customer of an unknown system,
    an amount that is not a number (or negative), an unparsable order date.
    """
    p = F.col("payload")
    df = bronze.select(
        "feed",
        blank_to_null(p["order_id"]).alias("order_id"),
        F.lower(blank_to_null(p["source_system"])).alias("source_system"),
        blank_to_null(p["customer_id"]).alias("customer_source_id"),
        blank_to_null(p["order_date"]).alias("_raw_date"),
        blank_to_null(p["amount"]).alias("_raw_amount"),
        F.upper(blank_to_null(p["currency"])).alias("currency"),
        F.lower(blank_to_null(p["status"])).alias("status"),
        F.col("source_file").alias("_source_file"),
        F.col("loaded_at").alias("_loaded_at"),
        "corrupt_record",
        "payload",
    )
    # try_cast: Spark 4 is ANSI; one 'N/A' amount must quarantine a row, not fail the load.
    df = df.withColumn("order_ts", F.expr("try_cast(_raw_date AS TIMESTAMP)")).withColumn(
        "amount", F.expr("try_cast(_raw_amount AS DECIMAL(12,2))")
    )
    reason = (
        F.when(F.col("corrupt_record").isNotNull(), F.lit("malformed_csv_line"))
        .when(F.col("order_id").isNull(), F.lit("missing_order_id"))
        .when(F.col("customer_source_id").isNull(), F.lit("missing_customer_id"))
        .when(
            ~F.coalesce(F.col("source_system").isin(known_systems), F.lit(False)),
            F.lit("unknown_source_system"),
        )
        .when(F.col("amount").isNull() | (F.col("amount") < 0), F.lit("invalid_amount"))
        .when(F.col("order_ts").isNull(), F.lit("invalid_order_date"))
    )
    return df.withColumn("_reject_reason", reason)


def silver_orders(standardized: DataFrame) -> DataFrame:
    """Accepted orders, one per order_id: a re-sent line is a duplicate, the first load wins."""
    accepted = standardized.filter(F.col("_reject_reason").isNull())
    order = [F.col("_loaded_at").asc(), F.col("_source_file").asc(), F.col("order_ts").asc()]
    return keep_one_per_key(accepted, ["order_id"], order).select(*SILVER_COLUMNS)
