"""Benchmark: traits and audiences for 1,000 touched people out of N (issue 5), incremental vs full.

A lakehouse of N people is synthesised with Spark (identity resolution at this scale is the identity
benchmark's subject, not this one's): gold.identity_graph (anonymous id, CRM id, and a user id for half
of them), silver.events (EVENTS_PER_PERSON page/track events each, over 200 days), silver.orders (one
order each, 5% refunded) and gold.profiles. Then, in the same process:

1. full refresh: every trait of conf/traits.yaml for every profile, every audience of conf/audiences.yaml
   (``refresh_traits_and_audiences(full=True)``), twice (the first one also creates the tables);
2. 1,000 people get a new event each (a "Product Added" appended to silver.events), then the incremental
   refresh: the touched people from the change data feed, their traits recomputed and MERGEd, their
   audiences re-evaluated. Five rounds: the same 1,000 people three times (the first time they enter the
   cart abandoners; the next two change no membership), then 1,000 other people twice (each enters).
   The medians of the rounds with and without membership changes are reported apart: a refresh writes
   gold.audience_membership only when a membership changes;
3. the incremental result is checked against a full computation for every touched person.

Usage: python -m benchmarks.profiles [--people N]
"""

import argparse
import shutil
import statistics
import time
from datetime import datetime
from pathlib import Path

from pyspark.sql import functions as F

from benchmarks.machine import append_report
from pipelines import io
from pipelines.audiences import evaluate
from pipelines.config import load_config
from pipelines.events import SILVER_COLUMNS as EVENT_COLUMNS
from pipelines.profiles import PROFILE_COLUMNS
from pipelines.refresh import refresh_traits_and_audiences, silver_or_empty
from pipelines.spark import get_spark
from pipelines.traits import compute_traits

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "_runs" / "profiles"
T = datetime(2026, 11, 20, 12, 0, 0)
EVENTS_PER_PERSON = 5
TOUCHED = 1000
ROUNDS = [0, 0, 0, 1, 2]  # per incremental round, the offset of the touched people (same people, then others)
PAGES = ["/", "/products", "/products/shoes", "/cart", "/checkout", "/account", "/account/cancel"]
CATEGORIES = ["shoes", "bags", "hats", "jackets", "socks"]


def _pid(col):
    return F.format_string("p_%08d", col)


def synthesise(spark, cfg, people: int) -> dict[str, int]:
    person = F.col("id")
    graph = (
        spark.range(people)
        .select(
            person,
            F.explode(
                F.array(
                    F.struct(F.lit("anonymous_id").alias("t"), F.format_string("a%08d", person).alias("v")),
                    F.struct(F.lit("crm_id").alias("t"), F.format_string("C%08d", person).alias("v")),
                    F.when(
                        person % 2 == 0,
                        F.struct(F.lit("user_id").alias("t"), F.format_string("u%08d", person).alias("v")),
                    ),
                )
            ).alias("i"),
        )
        .filter(F.col("i").isNotNull())
        .select(
            F.concat_ws(":", "i.t", "i.v").alias("identifier"),
            F.col("i.t").alias("id_type"),
            F.col("i.v").alias("id_value"),
            _pid(person).alias("profile_id"),
            F.when(person % 2 == 0, F.lit(3)).otherwise(F.lit(2)).cast("long").alias("component_size"),
        )
    )
    io.overwrite(graph, cfg, "gold.identity_graph")

    n = people * EVENTS_PER_PERSON
    who = F.col("id") % people
    seconds_ago = (F.abs(F.xxhash64("id")) % (200 * 86400)).cast("long")
    at = (F.lit(T).cast("timestamp").cast("long") - seconds_ago).cast("timestamp")
    kind = F.when(F.col("id") % 3 == 0, F.lit("track")).otherwise(F.lit("page"))
    page = F.element_at(F.array(*[F.lit(p) for p in PAGES]), (F.col("id") % len(PAGES) + 1).cast("int"))
    category = F.element_at(
        F.array(*[F.lit(c) for c in CATEGORIES]), (F.abs(F.xxhash64("id", F.lit(1))) % 5 + 1).cast("int")
    )
    events = spark.range(n).select(
        F.format_string("m%010d", F.col("id")).alias("message_id"),
        kind.alias("type"),
        F.when(kind == "track", F.lit("Product Viewed")).alias("event"),
        F.when(kind == "page", page).alias("name"),
        F.when((who % 2 == 0) & (F.col("id") % 2 == 0), F.format_string("u%08d", who)).alias("user_id"),
        F.format_string("a%08d", who).alias("anonymous_id"),
        at.alias("event_time"),
        at.alias("received_at"),
        F.when(kind == "page", F.to_json(F.struct(page.alias("path"))))
        .otherwise(F.to_json(F.struct(category.alias("category"))))
        .alias("properties"),
        F.lit("bench").alias("_source_file"),
        F.col("id").alias("_source_position"),
        at.alias("_loaded_at"),
    )
    shape = spark.createDataFrame([], _event_schema())
    io.overwrite(_conform(events, shape), cfg, "silver.events")

    orders = spark.range(people).select(
        F.format_string("O%08d", F.col("id")).alias("order_id"),
        F.lit("crm").alias("source_system"),
        F.format_string("C%08d", F.col("id")).alias("customer_source_id"),
        (F.lit(T).cast("timestamp").cast("long") - F.abs(F.xxhash64("id")) % (365 * 86400))
        .cast("timestamp")
        .alias("order_ts"),
        ((F.abs(F.xxhash64("id", F.lit(2))) % 100000) / 100).cast("decimal(12,2)").alias("amount"),
        F.lit("USD").alias("currency"),
        F.when(F.col("id") % 20 == 0, F.lit("refunded")).otherwise(F.lit("completed")).alias("status"),
        F.lit("bench").alias("_source_file"),
        F.lit(T).cast("timestamp").alias("_loaded_at"),
    )
    io.overwrite(_conform(orders, silver_or_empty(spark, cfg, "silver.orders")), cfg, "silver.orders")

    stats = (
        io.read(spark, cfg, "silver.orders")
        .filter("status <> 'refunded'")
        .groupBy(F.regexp_replace("customer_source_id", "^C", "").cast("long").alias("id"))
        .agg(F.count(F.lit(1)).alias("order_count"), F.sum("amount").alias("lifetime_value"))
    )
    profiles = (
        spark.range(people)
        .join(stats, "id", "left")
        .select(
            _pid(F.col("id")).alias("profile_id"),
            F.coalesce("order_count", F.lit(0)).cast("long").alias("order_count"),
            F.coalesce("lifetime_value", F.lit(0)).cast("decimal(14,2)").alias("lifetime_value"),
        )
    )
    io.overwrite(_conform(profiles, _profiles_shape(spark, cfg)), cfg, "gold.profiles")
    return {"identifiers": graph.count(), "events": n, "orders": people}


def _event_schema() -> str:
    times = ("event_time", "client_timestamp", "sent_at", "received_at", "_loaded_at")
    return ", ".join(
        f"{c} {'timestamp' if c in times else 'long' if c == '_source_position' else 'string'}"
        for c in EVENT_COLUMNS
    )


def _profiles_shape(spark, cfg):
    from pipelines.profiles import build_profiles

    graph = spark.createDataFrame(
        [], "identifier string, id_type string, id_value string, profile_id string, component_size long"
    )
    empty = build_profiles(
        graph,
        silver_or_empty(spark, cfg, "silver.customers"),
        silver_or_empty(spark, cfg, "silver.orders"),
        spark.createDataFrame([], _event_schema()),
        cfg.sources.priority,
    )
    return spark.createDataFrame([], empty.select(*PROFILE_COLUMNS).schema)


def _conform(df, shape):
    """``df`` with every column of ``shape`` (missing ones null), in its order and types."""
    return df.select(
        *[
            (F.col(f.name) if f.name in df.columns else F.lit(None)).cast(f.dataType).alias(f.name)
            for f in shape.schema.fields
        ]
    )


def touch(spark, cfg, round_: int, people: int, offset: int = 0) -> None:
    """One new event for each of TOUCHED people (spread over the id range, shifted by ``offset``)."""
    step = people // TOUCHED
    new = spark.range(TOUCHED).select(
        F.format_string(f"n{round_}_%08d", F.col("id")).alias("message_id"),
        F.lit("track").alias("type"),
        F.lit("Product Added").alias("event"),
        F.format_string("a%08d", F.col("id") * step + offset).alias("anonymous_id"),
        F.lit(T).cast("timestamp").alias("event_time"),
        F.lit(T).cast("timestamp").alias("received_at"),
        F.lit('{"category": "shoes"}').alias("properties"),
        F.lit("bench-touch").alias("_source_file"),
        F.col("id").alias("_source_position"),
        F.lit(T).cast("timestamp").alias("_loaded_at"),
    )
    io.append(_conform(new, spark.createDataFrame([], _event_schema())), cfg, "silver.events")


def _timed(fn):
    t0 = time.time()
    out = fn()
    return time.time() - t0, out


def run(people: int) -> dict:
    work = RUNS / str(people)
    shutil.rmtree(work, ignore_errors=True)
    cfg = load_config("dev", lakehouse=str(work / "lakehouse"))
    spark = get_spark(cfg)
    setup_s, sizes = _timed(lambda: synthesise(spark, cfg, people))
    print(f"synthesised {people:,} people in {setup_s:.0f} s: {sizes}", flush=True)
    full_runs = []
    for _ in range(2):
        s, stats = _timed(lambda: refresh_traits_and_audiences(spark, cfg, full=True, as_of=T))
        assert stats.mode == "full" and stats.profiles == people, stats
        full_runs.append(s)
        print(f"full refresh {s:.1f} s", flush=True)
    inc_runs, touched, changes = [], [], []
    step = people // TOUCHED
    for r, offset in enumerate(ROUNDS):
        touch(spark, cfg, r, people, offset)
        s, stats = _timed(lambda: refresh_traits_and_audiences(spark, cfg, as_of=T))
        assert stats.mode == "incremental", stats
        inc_runs.append(s)
        touched.append(stats.profiles)
        changes.append(stats.membership_changes)
        print(
            f"incremental refresh {s:.1f} s ({stats.profiles} profiles, {stats.membership_changes} membership changes)",
            flush=True,
        )
    # the incremental rows equal a full computation for the same people: traits and memberships
    ids = spark.range(TOUCHED).select(
        F.explode(F.array(*[F.col("id") * step + o for o in sorted(set(ROUNDS))])).alias("n")
    )
    ids = ids.select(_pid(F.col("n")).alias("profile_id")).localCheckpoint()
    expected = compute_traits(
        io.read(spark, cfg, "gold.identity_graph"),
        io.read(spark, cfg, "silver.events"),
        io.read(spark, cfg, "silver.orders"),
        silver_or_empty(spark, cfg, "silver.customers"),
        cfg.traits,
        T,
        profile_ids=ids,
    ).localCheckpoint()
    live = io.read(spark, cfg, "gold.profile_traits").join(ids, "profile_id", "left_semi")
    mismatches = expected.exceptAll(live).count() + live.exceptAll(expected).count()
    profiles = io.read(spark, cfg, "gold.profiles").join(ids, "profile_id", "left_semi")
    should = (
        evaluate(profiles, expected, cfg.audiences, T).filter("qualifies").select("audience", "profile_id")
    )
    are = (
        io.read(spark, cfg, "gold.audience_membership")
        .join(ids, "profile_id", "left_semi")
        .filter("is_member")
        .select("audience", "profile_id")
    )
    member_mismatches = should.exceptAll(are).count() + are.exceptAll(should).count()
    moved = [s for s, c in zip(inc_runs, changes, strict=True) if c]
    stayed = [s for s, c in zip(inc_runs, changes, strict=True) if not c]
    full_s = statistics.median(full_runs)
    return {
        "people": people,
        **sizes,
        "setup_s": round(setup_s),
        "full_s": [round(s, 1) for s in full_runs],
        "moved_s": [round(s, 1) for s in moved],
        "stayed_s": [round(s, 1) for s in stayed],
        "touched": touched,
        "changes": changes,
        "speedup_moved": round(full_s / statistics.median(moved), 1) if moved else None,
        "speedup_stayed": round(full_s / statistics.median(stayed), 1) if stayed else None,
        "mismatches": mismatches,
        "member_mismatches": member_mismatches,
        "checked": ids.count(),
    }


def main(people: int) -> None:
    r = run(people)
    append_report(
        "Traits and audiences: incremental vs full",
        [
            f"{r['people']:,} people synthesised with Spark ({r['identifiers']:,} identifiers, {r['events']:,} events,",
            f"{r['orders']:,} orders; setup {r['setup_s']} s, not timed below). {len(load_config('dev').traits.definitions)} traits",
            f"(conf/traits.yaml) and {len(load_config('dev').audiences.definitions)} audiences (conf/audiences.yaml), same process and run.",
            "Full = every trait for every profile + every audience (`refresh_traits_and_audiences(full=True)`);",
            f"incremental = {TOUCHED:,} people get a new event, then the refresh of the people the change data feed names.",
            "",
            "| people | full refresh (s) | incremental, touched people enter an audience (s) | incremental, no membership changes (s) | membership changes per run | full / incremental (medians) | incremental = full for the touched |",
            "|---:|---:|---:|---:|---:|---:|---|",
            f"| {r['people']:,} | {' / '.join(map(str, r['full_s']))} | {' / '.join(map(str, r['moved_s']))} | "
            f"{' / '.join(map(str, r['stayed_s']))} | {', '.join(map(str, r['changes']))} | "
            f"{r['speedup_moved']}x / {r['speedup_stayed']}x | "
            + (
                f"yes: traits and memberships of all {r['checked']:,} touched people"
                if r["mismatches"] == 0 and r["member_mismatches"] == 0
                else f"NO: {r['mismatches']} trait rows, {r['member_mismatches']} memberships differ"
            )
            + " |",
            "",
            "Goal: incremental <= 10 s and >= 10x faster than full.",
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=1_000_000)
    args = parser.parse_args()
    main(args.people)
