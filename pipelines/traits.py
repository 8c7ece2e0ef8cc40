"""Computed traits: named SQL aggregates per profile over events, orders and CRM records (conf/traits.yaml).

Each source becomes a view with the profile_id of every row (through gold.identity_graph), and all traits
of a source are one aggregation over it. ``profile_ids`` restricts everything to some profiles (the ones a
stream batch touched): the views then hold exactly those people's rows, so a trait computed for a person
incrementally equals the batch value (same rows, same expression, same ``as_of``).
"""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.utils import AnalysisException

from pipelines.config import TraitsConfig
from pipelines.profiles import customer_identifier, event_identifier, order_identifier

SOURCES = ("events", "orders", "customers")


def as_of_literal(as_of: datetime) -> str:
    """``{as_of}`` in trait and audience SQL: the evaluation time as a TIMESTAMP literal (UTC)."""
    return f"TIMESTAMP '{as_of.strftime('%Y-%m-%d %H:%M:%S')}'"


def with_as_of(sql: str, as_of: datetime) -> str:
    return sql.replace("{as_of}", as_of_literal(as_of))


def source_views(
    graph: DataFrame,
    events: DataFrame,
    orders: DataFrame,
    customers: DataFrame,
    session_gap_minutes: int,
    small_graph: bool = False,
) -> dict[str, DataFrame]:
    """The rows traits aggregate over, each with its ``profile_id``. ``small_graph``: ``graph`` holds a few
    profiles' rows (an incremental refresh), so it is broadcast into each source's join: the sources are
    scanned once and never shuffled (Spark cannot know the filtered graph is small)."""
    ids = graph.select("identifier", "profile_id")
    if small_graph:
        ids = F.broadcast(ids)
    ev = events.withColumn("identifier", event_identifier()).join(ids, "identifier")
    # Sessions: a device's events (profile, anonymous id) more than the gap apart start a new session.
    # Segment's analytics.js keeps no session id in the event spec, so the rule is written here.
    device = Window.partitionBy("profile_id", "anonymous_id").orderBy("event_time", "message_id")
    gap = F.col("event_time").cast("long") - F.lag(F.col("event_time").cast("long")).over(device)
    ev = (
        ev.withColumn("_new", F.when(gap.isNull() | (gap > session_gap_minutes * 60), 1).otherwise(0))
        .withColumn(
            "session_key",
            F.concat_ws(
                "#",
                F.coalesce("anonymous_id", "user_id"),
                F.sum("_new").over(device.rowsBetween(Window.unboundedPreceding, 0)).cast("string"),
            ),
        )
        .withColumn("page_path", F.get_json_object("properties", "$.path"))
        .withColumn("category", F.get_json_object("properties", "$.category"))
        .drop("_new")
    )
    return {
        "events": ev,
        "orders": orders.withColumn("identifier", order_identifier()).join(ids, "identifier"),
        "customers": customers.withColumn("identifier", customer_identifier()).join(ids, "identifier"),
    }


def compute_traits(
    graph: DataFrame,
    events: DataFrame,
    orders: DataFrame,
    customers: DataFrame,
    traits: TraitsConfig,
    as_of: datetime,
    profile_ids: DataFrame | None = None,
    small_graph: bool = False,
) -> DataFrame:
    """``gold.profile_traits``: one row per profile of ``graph`` (or of ``profile_ids``), a column per trait,
    and ``computed_at`` (= ``as_of``). ``small_graph``: see ``source_views``."""
    if profile_ids is not None:
        graph = graph.join(
            F.broadcast(profile_ids.select("profile_id").distinct()), "profile_id", "left_semi"
        )
    views = source_views(graph, events, orders, customers, traits.session_gap_minutes, small_graph)
    out = graph.select("profile_id").distinct()
    for source in SOURCES:
        defs = {n: t for n, t in traits.definitions.items() if t.source == source}
        if not defs:
            continue
        exprs = []
        for name, t in defs.items():
            try:
                exprs.append(F.expr(with_as_of(t.sql, as_of)).alias(name))
            except Exception as exc:  # a parse error names the trait, not only the SQL
                raise ValueError(f"trait {name!r} (conf/traits.yaml): {exc}") from exc
        try:  # analysed here: an unknown column or a non-aggregate expression fails with the trait names
            agg = views[source].groupBy("profile_id").agg(*exprs)
        except AnalysisException as exc:
            raise ValueError(f"traits over {source} (conf/traits.yaml {sorted(defs)}): {exc}") from exc
        out = out.join(agg, "profile_id", "left")
    columns = [F.col("profile_id")]
    for name, t in traits.definitions.items():
        col = F.col(name)
        if t.default is not None:
            col = F.coalesce(col, F.expr(t.default).cast(out.schema[name].dataType))
        columns.append(col.alias(name))
    return out.select(*columns, F.lit(as_of).cast("timestamp").alias("computed_at"))
