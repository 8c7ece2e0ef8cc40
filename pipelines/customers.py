"""CRM customers: bronze payload rows -> normalised silver records, one per (source_system, source_id).

Bronze (pipelines.records.csv_to_bronze) keeps each system's CSV line under its own header; this module
maps each system's columns to the canonical ones from conf and normalises the values.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.config import CANONICAL_CUSTOMER_COLUMNS, SourceSystemConfig
from pipelines.normalize import blank_to_null, clean_name, normalize_country, normalize_email, normalize_phone
from pipelines.records import keep_one_per_key

SILVER_COLUMNS = ["source_system", *CANONICAL_CUSTOMER_COLUMNS, "quality_flags", "_source_file", "_loaded_at"]


def standardize_customers(
    bronze: DataFrame,
    systems: dict[str, SourceSystemConfig],
    country_aliases: dict[str, str],
    default_region: str,
) -> DataFrame:
    """Canonical, normalised columns for every bronze row, with ``_reject_reason`` set for unloadable rows.

    A row is rejected when its CSV line was malformed, its system is not configured, or it has no source
    id. Bad emails/phones/dates do not reject a row (it still identifies a customer): they become null and
    are listed in ``quality_flags``.
    """

    def field(name: str) -> F.Column:
        expr = F.lit(None).cast("string")
        for system, sc in systems.items():
            if name in sc.columns:
                expr = F.when(F.col("feed") == system, F.col("payload")[sc.columns[name]]).otherwise(expr)
        return blank_to_null(expr)

    raw = {name: field(name) for name in CANONICAL_CUSTOMER_COLUMNS}
    country = normalize_country(raw["country"], country_aliases)
    df = bronze.select(
        F.col("feed"),
        F.col("feed").alias("source_system"),
        raw["source_id"].alias("source_id"),
        raw["user_id"].alias("user_id"),
        clean_name(raw["first_name"]).alias("first_name"),
        clean_name(raw["last_name"]).alias("last_name"),
        raw["email"].alias("_raw_email"),
        normalize_email(raw["email"]).alias("email"),
        raw["phone"].alias("_raw_phone"),
        normalize_phone(raw["phone"], F.coalesce(country, F.lit(default_region))).alias("phone"),
        blank_to_null(F.regexp_replace(raw["street"], r"\s+", " ")).alias("street"),
        clean_name(raw["city"]).alias("city"),
        F.upper(raw["postal_code"]).alias("postal_code"),
        country.alias("country"),
        raw["date_of_birth"].alias("_raw_dob"),
        raw["created_at"].alias("_raw_created"),
        raw["updated_at"].alias("_raw_updated"),
        F.col("source_file").alias("_source_file"),
        F.col("loaded_at").alias("_loaded_at"),
        F.col("corrupt_record"),
        F.col("payload"),
    )
    # try_cast: Spark 4 runs ANSI, a plain cast of a bad date string would fail the whole job.
    df = (
        df.withColumn("date_of_birth", F.expr("try_cast(_raw_dob AS DATE)"))
        .withColumn("created_at", F.expr("try_cast(_raw_created AS TIMESTAMP)"))
        .withColumn("updated_at", F.expr("try_cast(_raw_updated AS TIMESTAMP)"))
    )
    flags = F.array_compact(
        F.array(
            F.when(F.col("_raw_email").isNotNull() & F.col("email").isNull(), F.lit("invalid_email")),
            F.when(F.col("_raw_phone").isNotNull() & F.col("phone").isNull(), F.lit("invalid_phone")),
            F.when(
                F.col("_raw_dob").isNotNull() & F.col("date_of_birth").isNull(),
                F.lit("invalid_date_of_birth"),
            ),
            F.when(
                F.col("_raw_updated").isNotNull() & F.col("updated_at").isNull(), F.lit("invalid_updated_at")
            ),
        )
    )
    reason = (
        F.when(F.col("corrupt_record").isNotNull(), F.lit("malformed_csv_line"))
        .when(~F.col("feed").isin(list(systems)), F.lit("unknown_source_system"))
        .when(F.col("source_id").isNull(), F.lit("missing_source_id"))
    )
    return df.withColumn("quality_flags", flags).withColumn("_reject_reason", reason)


def silver_customers(standardized: DataFrame) -> DataFrame:
    """Accepted rows, latest version per (source_system, source_id): a re-exported record supersedes."""
    accepted = standardized.filter(F.col("_reject_reason").isNull())
    order = [F.col("updated_at").desc_nulls_last(), F.col("_loaded_at").desc(), F.col("_source_file").desc()]
    return keep_one_per_key(accepted, ["source_system", "source_id"], order).select(*SILVER_COLUMNS)
