"""Golden profiles: one row per profile_id, attributes chosen by survivorship, activity rolled up.

Survivorship per attribute: the configured source priority first (CRM systems in conf order, identify
traits from events after them), then the most recently updated non-null value. The address is chosen as
one unit (street, city, postal code and country of the same record), never mixed across records.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

PROFILE_COLUMNS = [
    "profile_id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "emails",
    "phones",
    "street",
    "city",
    "postal_code",
    "country",
    "date_of_birth",
    "first_seen",
    "last_seen",
    "order_count",
    "lifetime_value",
    "event_count",
    "identifiers",
    "identifier_count",
    "source_records",
]


def _rank(priority: list[str]) -> Column:
    rank = F.lit(len(priority))
    for i, system in reversed(list(enumerate(priority))):
        rank = F.when(F.col("source_system") == system, F.lit(i)).otherwise(rank)
    return rank


def _survivor(value: str, rank: str = "_rank", ts: str = "_ts") -> Column:
    """The value of the best-ranked, most recent row where ``value`` is not null."""
    candidate = F.when(
        F.col(value).isNotNull(),
        F.struct(F.col(rank).alias("r"), (-F.col(ts).cast("double")).alias("t"), F.col(value).alias("v")),
    )
    return F.min(candidate)["v"]


def attribute_candidates(
    graph: DataFrame, customers: DataFrame, events: DataFrame, priority: list[str]
) -> DataFrame:
    """Every source record's attribute values with its profile_id, priority rank and recency."""
    cust = customers.withColumn(
        "identifier", F.concat(F.col("source_system"), F.lit("_id:"), F.col("source_id"))
    ).join(graph.select("identifier", "profile_id"), "identifier")
    cust = cust.select(
        "profile_id",
        _rank(priority).alias("_rank"),
        F.coalesce("updated_at", "created_at", "_loaded_at").alias("_ts"),
        F.coalesce("created_at", "updated_at", "_loaded_at").alias("_created"),
        "first_name",
        "last_name",
        "email",
        "phone",
        "street",
        "city",
        "postal_code",
        "country",
        "date_of_birth",
        F.concat_ws(":", "source_system", "source_id").alias("source_record"),
    )
    identifies = events.filter(F.col("type") == "identify")
    ev = identifies.withColumn(
        "identifier",
        F.when(F.col("user_id").isNotNull(), F.concat(F.lit("user_id:"), "user_id")).otherwise(
            F.concat(F.lit("anonymous_id:"), "anonymous_id")
        ),
    ).join(graph.select("identifier", "profile_id"), "identifier")
    ev = ev.select(
        "profile_id",
        F.lit(len(priority)).alias("_rank"),
        F.col("event_time").alias("_ts"),
        F.col("event_time").alias("_created"),
        F.initcap(F.trim(F.get_json_object("traits", "$.firstName"))).alias("first_name"),
        F.initcap(F.trim(F.get_json_object("traits", "$.lastName"))).alias("last_name"),
        F.col("trait_email").alias("email"),
        F.col("trait_phone").alias("phone"),
        *[
            F.lit(None).cast(t).alias(c)
            for c, t in [
                ("street", "string"),
                ("city", "string"),
                ("postal_code", "string"),
                ("country", "string"),
                ("date_of_birth", "date"),
            ]
        ],
        F.lit(None).cast("string").alias("source_record"),
    )
    return cust.unionByName(ev)


def build_profiles(
    graph: DataFrame, customers: DataFrame, orders: DataFrame, events: DataFrame, priority: list[str]
) -> DataFrame:
    """One golden profile per profile_id in ``graph``."""
    cands = attribute_candidates(graph, customers, events, priority).withColumn(
        "_address", F.when(F.col("street").isNotNull(), F.struct("street", "city", "postal_code", "country"))
    )
    attrs = cands.groupBy("profile_id").agg(
        _survivor("first_name").alias("first_name"),
        _survivor("last_name").alias("last_name"),
        _survivor("email").alias("email"),
        _survivor("phone").alias("phone"),
        _survivor("_address").alias("address"),
        _survivor("date_of_birth").alias("date_of_birth"),
        F.min("_created").alias("_first_record"),
        F.array_sort(F.collect_set("source_record")).alias("source_records"),
    )
    ids = graph.groupBy("profile_id").agg(
        F.array_sort(F.collect_set("identifier")).alias("identifiers"),
        F.array_sort(F.collect_set(F.when(F.col("id_type") == "email", F.col("id_value")))).alias("emails"),
        F.array_sort(F.collect_set(F.when(F.col("id_type") == "phone", F.col("id_value")))).alias("phones"),
    )
    order_ids = orders.withColumn(
        "identifier", F.concat(F.col("source_system"), F.lit("_id:"), F.col("customer_source_id"))
    )
    order_stats = (
        order_ids.join(graph.select("identifier", "profile_id"), "identifier")
        .groupBy("profile_id")
        .agg(
            F.count(F.when(F.col("status") != "refunded", 1)).alias("order_count"),
            F.sum(F.when(F.col("status") != "refunded", F.col("amount"))).alias("lifetime_value"),
            F.min("order_ts").alias("_first_order"),
            F.max("order_ts").alias("_last_order"),
        )
    )
    ev_ids = events.withColumn(
        "identifier",
        F.when(F.col("user_id").isNotNull(), F.concat(F.lit("user_id:"), "user_id")).otherwise(
            F.concat(F.lit("anonymous_id:"), "anonymous_id")
        ),
    )
    event_stats = (
        ev_ids.join(graph.select("identifier", "profile_id"), "identifier")
        .groupBy("profile_id")
        .agg(
            F.count(F.lit(1)).alias("event_count"),
            F.min("event_time").alias("_first_event"),
            F.max("event_time").alias("_last_event"),
        )
    )
    profiles = (
        ids.join(attrs, "profile_id", "left")
        .join(order_stats, "profile_id", "left")
        .join(event_stats, "profile_id", "left")
    )
    return profiles.select(
        "profile_id",
        "first_name",
        "last_name",
        "email",
        "phone",
        "emails",
        "phones",
        F.col("address.street").alias("street"),
        F.col("address.city").alias("city"),
        F.col("address.postal_code").alias("postal_code"),
        F.col("address.country").alias("country"),
        "date_of_birth",
        F.least("_first_event", "_first_order", "_first_record").alias("first_seen"),
        F.greatest("_last_event", "_last_order").alias("last_seen"),
        F.coalesce("order_count", F.lit(0)).cast("long").alias("order_count"),
        F.coalesce("lifetime_value", F.lit(0)).cast("decimal(14,2)").alias("lifetime_value"),
        F.coalesce("event_count", F.lit(0)).cast("long").alias("event_count"),
        "identifiers",
        F.size("identifiers").alias("identifier_count"),
        F.coalesce("source_records", F.array().cast("array<string>")).alias("source_records"),
    )
