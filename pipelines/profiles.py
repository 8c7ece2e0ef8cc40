"""Golden profiles: one row per profile_id, attributes chosen by survivorship, activity rolled up.

Survivorship per attribute comes from conf/profiles.yaml: source priority (CRM systems in conf order,
identify traits from events after them, then the most recent), most recent, most frequent or first seen.
The address is chosen as one unit (street, city, postal code and country of the same record), never mixed
across records. Every surviving value keeps where it came from in ``provenance`` (a map from attribute to
value, source system, source record, updated_at and rule), like Segment's verbose traits:
``SELECT provenance['email'].source_record FROM gold.profiles``.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from pipelines.config import PROFILE_ATTRIBUTES

EVENTS_SOURCE = "events"  # the source_system of identify traits in provenance
ADDRESS_FIELDS = ["street", "city", "postal_code", "country"]
_ADDRESS_SCHEMA = "street string, city string, postal_code string, country string"
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
    "provenance",
]
PROVENANCE_TYPE = (
    "map<string, struct<value: string, source_system: string, source_record: string, "
    "updated_at: timestamp, rule: string>>"
)


def _rank(priority: list[str]) -> Column:
    rank = F.lit(len(priority))
    for i, system in reversed(list(enumerate(priority))):
        rank = F.when(F.col("source_system") == system, F.lit(i)).otherwise(rank)
    return rank


def event_identifier() -> Column:
    """The identifier an event belongs to a person by: its userId, else its anonymousId."""
    return F.when(F.col("user_id").isNotNull(), F.concat(F.lit("user_id:"), "user_id")).otherwise(
        F.concat(F.lit("anonymous_id:"), "anonymous_id")
    )


def customer_identifier() -> Column:
    """A CRM/shop record's own identifier, ``<system>_id:<source_id>``."""
    return F.concat(F.col("source_system"), F.lit("_id:"), F.col("source_id"))


def order_identifier() -> Column:
    """The identifier of the customer record an order belongs to."""
    return F.concat(F.col("source_system"), F.lit("_id:"), F.col("customer_source_id"))


def attribute_candidates(
    graph: DataFrame, customers: DataFrame, events: DataFrame, priority: list[str]
) -> DataFrame:
    """Every source record's attribute values with its profile_id, priority rank and recency."""
    cust = customers.withColumn("identifier", customer_identifier()).join(
        graph.select("identifier", "profile_id"), "identifier"
    )
    cust = cust.select(
        "profile_id",
        "source_system",
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
    ev = identifies.withColumn("identifier", event_identifier()).join(
        graph.select("identifier", "profile_id"), "identifier"
    )
    ev = ev.select(
        "profile_id",
        F.lit(EVENTS_SOURCE).alias("source_system"),
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
        F.concat(F.lit("event:"), F.col("message_id")).alias("source_record"),
    )
    return cust.unionByName(ev)


_FAR = 1e18  # a missing timestamp ranks after every real one, whichever direction a rule sorts


def _rule_key(rule: str) -> Column:
    """The ordering key of a candidate under ``rule``: the smallest key survives (ties: smallest value)."""
    ts = F.col("_ts").cast("double")
    newest_first = F.coalesce(-ts, F.lit(_FAR))
    oldest_first = F.coalesce(F.col("_created").cast("double"), F.lit(_FAR))
    rank = F.col("_rank").cast("double")
    keys = {
        "source_priority": (rank, newest_first, F.lit(0.0)),
        "most_recent": (newest_first, rank, F.lit(0.0)),
        "first_seen": (oldest_first, rank, F.lit(0.0)),
        "most_frequent": (-F.col("_agreeing").cast("double"), newest_first, rank),
    }
    a, b, c = keys[rule]
    return F.struct(a.alias("a"), b.alias("b"), c.alias("c"), F.col("value").alias("v"))


def survivors(candidates: DataFrame, rules: dict[str, str]) -> DataFrame:
    """``(profile_id, provenance)``: each attribute's surviving value under its rule, with where it came from.

    The candidates are stacked into one long frame (attribute, value as a string: the address as JSON of its
    four fields) so every attribute is decided in one aggregation, whatever its rule.
    """
    values = {a: F.col(a).cast("string") for a in PROFILE_ATTRIBUTES if a != "address"}
    values["address"] = F.when(F.col("street").isNotNull(), F.to_json(F.struct(*ADDRESS_FIELDS)))
    long = (
        candidates.select(
            "profile_id",
            "source_system",
            "source_record",
            "_rank",
            "_ts",
            "_created",
            F.explode(
                F.array(*[F.struct(F.lit(a).alias("attribute"), values[a].alias("value")) for a in values])
            ).alias("c"),
        )
        .select("*", "c.attribute", "c.value")
        .drop("c")
        .filter(F.col("value").isNotNull())
    )
    if "most_frequent" in rules.values():
        long = long.withColumn(
            "_agreeing", F.count(F.lit(1)).over(Window.partitionBy("profile_id", "attribute", "value"))
        )
    else:
        long = long.withColumn("_agreeing", F.lit(1))
    key = F.lit(None)
    for attribute, rule in rules.items():
        key = F.when(F.col("attribute") == attribute, _rule_key(rule)).otherwise(key)
    rule_of = F.lit(None).cast("string")
    for attribute, rule in rules.items():
        rule_of = F.when(F.col("attribute") == attribute, F.lit(rule)).otherwise(rule_of)
    chosen = long.groupBy("profile_id", "attribute").agg(
        F.min_by(
            F.struct(
                "value",
                "source_system",
                "source_record",
                F.col("_ts").cast("timestamp").alias("updated_at"),
                rule_of.alias("rule"),
            ),
            key,
        ).alias("p")
    )
    return chosen.groupBy("profile_id").agg(
        F.map_from_entries(F.collect_list(F.struct("attribute", "p"))).alias("provenance")
    )


def build_profiles(
    graph: DataFrame,
    customers: DataFrame,
    orders: DataFrame,
    events: DataFrame,
    priority: list[str],
    survivorship: Mapping[str, str] | None = None,
) -> DataFrame:
    """One golden profile per profile_id in ``graph``; ``survivorship`` maps attribute -> rule
    (conf ``profiles.survivorship``; default: source priority for every attribute)."""
    rules = {**dict.fromkeys(PROFILE_ATTRIBUTES, "source_priority"), **(survivorship or {})}
    cands = attribute_candidates(graph, customers, events, priority)
    records = cands.groupBy("profile_id").agg(
        F.min("_created").alias("_first_record"),
        F.array_sort(
            F.collect_set(F.when(F.col("source_system") != EVENTS_SOURCE, F.col("source_record")))
        ).alias("source_records"),
    )
    prov = F.col("provenance")
    attrs = records.join(survivors(cands, rules), "profile_id", "left").select(
        "profile_id",
        "_first_record",
        "source_records",
        "provenance",
        *[prov[a]["value"].alias(a) for a in ("first_name", "last_name", "email", "phone")],
        F.from_json(prov["address"]["value"], _ADDRESS_SCHEMA).alias("address"),
        prov["date_of_birth"]["value"].cast("date").alias("date_of_birth"),
    )
    ids = graph.groupBy("profile_id").agg(
        F.array_sort(F.collect_set("identifier")).alias("identifiers"),
        F.array_sort(F.collect_set(F.when(F.col("id_type") == "email", F.col("id_value")))).alias("emails"),
        F.array_sort(F.collect_set(F.when(F.col("id_type") == "phone", F.col("id_value")))).alias("phones"),
    )
    order_ids = orders.withColumn("identifier", order_identifier())
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
    ev_ids = events.withColumn("identifier", event_identifier())
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
        F.coalesce("provenance", F.create_map().cast(PROVENANCE_TYPE)).alias("provenance"),
    )
