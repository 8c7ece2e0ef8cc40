"""Benchmark: right to be forgotten against a lakehouse of N people (issue 6): one request, then a batch.

The lakehouse is built in two steps, in one process:

1. the real thing, small: demo data of BASE_PEOPLE people landed and run through `converge_all` (every
   table, the landing files, the audience export, quarantine rows, merges), which also gives every
   table its real schema;
2. N more people synthesised with Spark into the same tables (identity resolution of 1M people is the
   identity benchmark's subject, not this one's): per person an anonymous id, a CRM id, an email, a
   phone and for half a user id, in gold.identity_graph and silver.identity_edges; EVENTS_PER_PERSON
   page/track events plus one identify (with traits and consent) in bronze.events (the raw JSON line),
   silver.events and landing files with the same lines; a CRM record (bronze + silver) and an order
   (bronze + silver); gold.profiles and gold.profile_ids; then gold.profile_traits,
   gold.audience_membership and gold.consent by the real code over all of it.

Then, timed: ``fulfil`` of one request (by email), then of a batch of BATCH requests (emails, user ids
and phones of people spread over the id range) in one run, as the `forget` job runs them, VACUUM
retention 0 so the files holding the old rows are really deleted. Each is checked afterwards: the
people's identifiers, profiles, events and CRM records are gone, everyone else's are there.

Usage: python -m benchmarks.governance [--people N] [--batch 1000]
"""

import argparse
import json
import os
import shutil
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "_runs" / "governance"
BASE_PEOPLE = 200
EVENTS_PER_PERSON = 5
T = datetime(2026, 11, 20, 12, 0, 0)


def _setup_env(work: Path) -> None:
    """The lakehouse under ``work``; deletions vacuum with retention 0 (what is timed includes removing
    the files), and a driver heap for 1M people. Set before any configuration is loaded."""
    os.environ["CONVERGE_LAKEHOUSE"] = str(work / "lakehouse")
    overrides = {"governance": {"vacuum_retention_hours": 0}, "spark": {"driver_memory": "12g"}}
    overrides.update(json.loads(os.environ.get("CONVERGE_OVERRIDES", "{}") or "{}"))
    os.environ["CONVERGE_OVERRIDES"] = json.dumps(overrides)


def _ids(F, n):
    """Column expressions of person ``n``'s identifier values."""
    return {
        "anonymous_id": F.format_string("ba%08d", n),
        "crm_id": F.format_string("BC%08d", n),
        "user_id": F.when(n % 2 == 0, F.format_string("bu%08d", n)),
        "email": F.format_string("person%08d@bench.example", n),
        "phone": F.format_string("+1555%07d", n),
    }


def _conform(df, shape):
    from pyspark.sql import functions as F

    return df.select(
        *[
            (F.col(f.name) if f.name in df.columns else F.lit(None)).cast(f.dataType).alias(f.name)
            for f in shape.schema.fields
        ]
    )


def _append(spark, cfg, name, df):
    from pipelines import io

    io.append(_conform(df, io.read(spark, cfg, name)), cfg, name)


def synthesise(spark, cfg, people: int) -> dict[str, int]:
    """Append ``people`` synthetic people to every table the base run created (see the module doc)."""
    from pyspark.sql import functions as F

    from pipelines import io

    person = spark.range(people).withColumnRenamed("id", "n")
    n = F.col("n")
    ids = _ids(F, n)
    pid = F.format_string("bp_%08d", n)
    at = (F.lit(T).cast("timestamp").cast("long") - F.abs(F.xxhash64("n")) % (200 * 86400)).cast("timestamp")

    graph = person.select(
        n,
        F.explode(F.array(*[F.struct(F.lit(t).alias("t"), v.alias("v")) for t, v in ids.items()])).alias("i"),
    ).filter(F.col("i.v").isNotNull())
    _append(
        spark,
        cfg,
        "gold.identity_graph",
        graph.select(
            F.concat_ws(":", "i.t", "i.v").alias("identifier"),
            F.col("i.t").alias("id_type"),
            F.col("i.v").alias("id_value"),
            pid.alias("profile_id"),
            F.when(n % 2 == 0, 5).otherwise(4).cast("long").alias("component_size"),
        ),
    )
    anon = F.concat(F.lit("anonymous_id:"), ids["anonymous_id"])
    edges = person.select(
        F.explode(
            F.array(
                F.struct(anon.alias("src"), F.concat(F.lit("email:"), ids["email"]).alias("dst"),
                         F.lit("identify").alias("rule")),
                F.struct(F.concat(F.lit("crm_id:"), ids["crm_id"]).alias("src"),
                         F.concat(F.lit("email:"), ids["email"]).alias("dst"), F.lit("crm_record").alias("rule")),
                F.struct(F.concat(F.lit("crm_id:"), ids["crm_id"]).alias("src"),
                         F.concat(F.lit("phone:"), ids["phone"]).alias("dst"), F.lit("crm_record").alias("rule")),
                F.when(n % 2 == 0, F.struct(anon.alias("src"), F.concat(F.lit("user_id:"), ids["user_id"]).alias("dst"),
                                            F.lit("identify").alias("rule"))),
            )
        ).alias("e"),
        at.alias("first_seen"),
    ).filter(F.col("e").isNotNull())  # fmt: skip
    _append(
        spark,
        cfg,
        "silver.identity_edges",
        edges.select(
            "e.*", "first_seen", F.col("first_seen").alias("last_seen"), F.lit(1).alias("evidence_count")
        ),
    )

    # events: EVENTS_PER_PERSON page/track each, then one identify with traits and consent
    ev = spark.range(people * (EVENTS_PER_PERSON + 1)).select(
        F.col("id").alias("k"),
        (F.col("id") % people).alias("n"),
        (F.col("id") >= people * EVENTS_PER_PERSON).alias("is_identify"),
    )
    ids = _ids(F, F.col("n"))
    kind = F.when(F.col("is_identify"), "identify").when(F.col("k") % 3 == 0, "track").otherwise("page")
    ev_at = (F.lit(T).cast("timestamp").cast("long") - F.abs(F.xxhash64("k")) % (200 * 86400)).cast(
        "timestamp"
    )
    traits = F.when(F.col("is_identify"), F.to_json(F.struct(ids["email"].alias("email"), ids["phone"].alias("phone"),
                                                               F.lit("Bench").alias("firstName"))))  # fmt: skip
    context = F.when(
        F.col("is_identify"),
        F.lit('{"consent":{"categoryPreferences":{"Marketing":true,"Analytics":false}}}'),
    )
    events = ev.select(
        F.format_string("bm%010d", F.col("k")).alias("message_id"),
        kind.alias("type"),
        F.when(kind == "track", F.lit("Product Viewed")).alias("event"),
        F.when(kind == "page", F.lit("/products")).alias("name"),
        F.when(F.col("k") % 2 == 0, ids["user_id"]).alias("user_id"),
        ids["anonymous_id"].alias("anonymous_id"),
        ev_at.alias("event_time"),
        ev_at.alias("received_at"),
        F.when(kind == "page", F.lit('{"path":"/products"}')).alias("properties"),
        traits.alias("traits"),
        context.alias("context"),
        F.when(F.col("is_identify"), ids["email"]).alias("trait_email"),
        F.when(F.col("is_identify"), ids["phone"]).alias("trait_phone"),
        F.format_string("bench-%03d.jsonl", F.col("k") % 64).alias("_source_file"),
        F.col("k").alias("_source_position"),
        ev_at.alias("_loaded_at"),
    ).localCheckpoint()
    _append(spark, cfg, "silver.events", events)
    raw = events.select(
        F.to_json(
            F.struct(
                F.col("message_id").alias("messageId"),
                "type",
                "event",
                "name",
                F.col("user_id").alias("userId"),
                F.col("anonymous_id").alias("anonymousId"),
                F.date_format("event_time", "yyyy-MM-dd'T'HH:mm:ss'Z'").alias("timestamp"),
                F.from_json("traits", "map<string,string>").alias("traits"),
                F.from_json("context", "map<string,string>").alias("context"),
            )
        ).alias("value"),
        "_source_file",
        "_source_position",
        "_loaded_at",
    ).localCheckpoint()
    landing = cfg.lakehouse.landing / "events" / "bench"
    raw.select("value").repartition(64).write.mode("overwrite").text(str(landing))
    _append(
        spark,
        cfg,
        "bronze.events",
        raw.select(
            "value",
            F.concat(F.lit(str(landing) + "/"), "_source_file").alias("source_file"),
            F.col("_source_position").alias("source_position"),
            F.col("_loaded_at").alias("loaded_at"),
            F.lit(0).alias("batch_id"),
        ),
    )

    ids = _ids(F, n)
    customers = person.select(
        F.lit("crm").alias("source_system"),
        ids["crm_id"].alias("source_id"),
        ids["user_id"].alias("user_id"),
        F.lit("Bench").alias("first_name"),
        F.format_string("Person%d", n).alias("last_name"),
        ids["email"].alias("email"),
        ids["phone"].alias("phone"),
        F.format_string("%d Bench Street", n).alias("street"),
        F.lit("Springfield").alias("city"),
        F.lit("US").alias("country"),
        at.alias("created_at"),
        at.alias("updated_at"),
        F.lit("bench-crm.csv").alias("_source_file"),
        at.alias("_loaded_at"),
    ).localCheckpoint()
    _append(spark, cfg, "silver.customers", customers)
    payload = F.create_map(
        *[
            x
            for c in ("source_id", "first_name", "last_name", "email", "phone", "street")
            for x in (F.lit(c), F.col(c))
        ]
    )
    _append(
        spark,
        cfg,
        "bronze.crm_customers",
        customers.select(F.lit("crm").alias("feed"), F.col("_source_file").alias("source_file"),
                         F.col("_loaded_at").alias("loaded_at"), payload.alias("payload")),
    )  # fmt: skip
    orders = person.select(
        F.format_string("BO%08d", n).alias("order_id"),
        F.lit("crm").alias("source_system"),
        ids["crm_id"].alias("customer_source_id"),
        at.alias("order_ts"),
        ((F.abs(F.xxhash64("n")) % 100000) / 100).cast("decimal(12,2)").alias("amount"),
        F.lit("USD").alias("currency"),
        F.lit("completed").alias("status"),
        F.lit("bench-orders.csv").alias("_source_file"),
        at.alias("_loaded_at"),
    ).localCheckpoint()
    _append(spark, cfg, "silver.orders", orders)
    order_payload = F.create_map(
        *[
            x
            for c in ("order_id", "customer_source_id", "amount")
            for x in (F.lit(c), F.col(c).cast("string"))
        ]
    )
    _append(
        spark,
        cfg,
        "bronze.orders",
        orders.select(F.lit("orders").alias("feed"), F.col("_source_file").alias("source_file"),
                      F.col("_loaded_at").alias("loaded_at"), order_payload.alias("payload")),
    )  # fmt: skip

    _append(
        spark,
        cfg,
        "gold.profiles",
        person.select(
            pid.alias("profile_id"),
            F.lit("Bench").alias("first_name"),
            F.format_string("Person%d", n).alias("last_name"),
            ids["email"].alias("email"),
            ids["phone"].alias("phone"),
            F.array(ids["email"]).alias("emails"),
            F.array(ids["phone"]).alias("phones"),
            F.format_string("%d Bench Street", n).alias("street"),
            at.alias("first_seen"),
            at.alias("last_seen"),
            F.lit(1).alias("order_count"),
            F.array(*[F.concat(F.lit(f"{t}:"), v) for t, v in ids.items() if t != "user_id"]).alias(
                "identifiers"
            ),
        ),
    )
    _append(spark, cfg, "gold.profile_ids", person.select(pid.alias("profile_id"), at.alias("created_at")))
    return {
        "identifiers": io.read(spark, cfg, "gold.identity_graph").count(),
        "events": io.read(spark, cfg, "silver.events").count(),
        "bronze_events": io.read(spark, cfg, "bronze.events").count(),
        "profiles": io.read(spark, cfg, "gold.profiles").count(),
    }


def derive(spark, cfg) -> None:
    """Traits, audiences and consent by the real code, over everything."""
    from pipelines import io
    from pipelines.consent import consent_history
    from pipelines.refresh import refresh_traits_and_audiences

    refresh_traits_and_audiences(spark, cfg, full=True, as_of=T)
    history = consent_history(
        io.read(spark, cfg, "silver.events"), io.read(spark, cfg, "gold.identity_graph")
    )
    io.overwrite(history, cfg, "gold.consent")


def _lakehouse_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _gone(spark, cfg, people: list[int]) -> dict[str, int]:
    """Rows still there of the deleted people (all should be 0)."""
    from pyspark.sql import functions as F

    from pipelines import io

    pids = [f"bp_{n:08d}" for n in people]
    emails = [f"person{n:08d}@bench.example" for n in people]
    anons = [f"ba{n:08d}" for n in people]
    return {
        "gold.identity_graph": io.read(spark, cfg, "gold.identity_graph").filter(F.col("profile_id").isin(pids)).count(),
        "gold.profiles": io.read(spark, cfg, "gold.profiles").filter(F.col("profile_id").isin(pids)).count(),
        "gold.profile_traits": io.read(spark, cfg, "gold.profile_traits").filter(F.col("profile_id").isin(pids)).count(),
        "silver.events": io.read(spark, cfg, "silver.events").filter(F.col("anonymous_id").isin(anons)).count(),
        "silver.customers": io.read(spark, cfg, "silver.customers").filter(F.col("email").isin(emails)).count(),
    }  # fmt: skip


def run(people: int, batch: int) -> dict:
    work = RUNS / str(people)
    shutil.rmtree(work, ignore_errors=True)
    _setup_env(work)
    from dagster import DagsterInstance

    from jobs.definitions import defs
    from pipelines import io
    from pipelines.config import load_config
    from pipelines.demo_data import generate
    from pipelines.forget import fulfil, pending_requests, request_deletions
    from pipelines.proof import verify
    from pipelines.spark import get_spark

    cfg = load_config()
    t0 = time.time()
    generate(BASE_PEOPLE, 11, cfg.lakehouse.landing)
    base = defs.resolve_job_def("converge_all").execute_in_process(instance=DagsterInstance.ephemeral())
    assert base.success
    spark = get_spark(cfg)
    base_s = time.time() - t0
    t0 = time.time()
    sizes = synthesise(spark, cfg, people)
    derive(spark, cfg)
    synth_s = time.time() - t0
    files, size = _lakehouse_size(cfg.lakehouse.root)
    print(
        f"base {base_s:.0f} s, synthesised in {synth_s:.0f} s: {sizes}; {files} files, {size / 2**30:.2f} GiB",
        flush=True,
    )
    profiles_before = sizes["profiles"]

    def forget(who: list[int], kinds: list[str]) -> dict:
        identifiers = [
            f"email:person{n:08d}@bench.example" if k == "email"
            else f"user_id:bu{n:08d}" if k == "user_id"
            else f"phone:+1555{n:07d}"
            for n, k in zip(who, kinds, strict=True)
        ]  # fmt: skip
        ids = set(request_deletions(spark, cfg, identifiers, "benchmark"))
        requests = [r for r in pending_requests(cfg) if r["request_id"] in ids]
        t = time.time()
        result = fulfil(spark, cfg, requests)
        seconds = time.time() - t
        left = _gone(spark, cfg, who)
        print(
            f"{len(who)} request(s): {seconds:.1f} s, {sum(result.rows_removed.values()):,} rows; left {left}",
            flush=True,
        )
        return {
            "requests": len(who),
            "seconds": round(seconds, 1),
            "rows": sum(result.rows_removed.values()),
            "tables": len(result.rows_removed),
            "files": len(result.files),
            "profiles": result.profiles,
            "left": sum(left.values()),
            "phases": result.phases,
            "request_ids": sorted(ids),
        }

    single = forget([people // 3], ["email"])
    step = people // batch
    who = [k * step + 7 for k in range(batch)]
    kinds = [
        ("email", "user_id", "phone")[k % 3] if (k * step + 7) % 2 == 0 else ("email", "phone")[k % 2]
        for k in range(batch)
    ]
    many = forget(who, kinds)
    profiles_after = io.read(spark, cfg, "gold.profiles").count()
    t0 = time.time()
    proofs = verify(spark, cfg, single["request_ids"] + many["request_ids"])
    any_proof = next(iter(proofs.values()))
    proof = {
        "seconds": round(time.time() - t0, 1),
        "files": any_proof.files_scanned,
        "gib": round(any_proof.bytes_scanned / 2**30, 2),
        "requests": len(proofs),
        "found": sum(len(p.found) for p in proofs.values()),
    }
    print(f"verify: {proof}", flush=True)
    return {
        "people": people,
        **sizes,
        "files": files,
        "gib": round(size / 2**30, 2),
        "base_s": round(base_s),
        "synth_s": round(synth_s),
        "single": single,
        "batch": many,
        "others_intact": profiles_after == profiles_before - single["profiles"] - many["profiles"],
        "proof": proof,
    }


def main(people: int, batch: int) -> None:
    from benchmarks.machine import append_report

    r = run(people, batch)
    p = r["proof"]
    rows = []
    for label, x in (("1 request", r["single"]), (f"batch of {batch:,}", r["batch"])):
        rows.append(
            f"| {label} | {x['seconds']} s | {x['seconds'] / x['requests']:.2f} s | {x['profiles']:,} | "
            f"{x['rows']:,} | {x['tables']} | {x['files']} | {x['left']} | "
            + ", ".join(f"{k} {v:.0f}" for k, v in x["phases"].items())
            + " |"
        )
    append_report(
        "Right to be forgotten",
        [
            f"Lakehouse: {BASE_PEOPLE} demo people through `converge_all` (every table with real rows and schemas, landing",
            f"files, export) plus {r['people']:,} people synthesised with Spark: {r['identifiers']:,} identity graph rows,",
            f"{r['events']:,} silver events, {r['bronze_events']:,} bronze events with the same lines in 64 landing files,",
            f"{r['profiles']:,} profiles with traits, audiences and consent by the real code; {r['files']:,} files,",
            f"{r['gib']} GiB (built in {r['base_s'] + r['synth_s']} s, not timed below). `fulfil` as the `forget` job runs it:",
            "suppression, resolution, key-only MERGE deletes in every table, landing and export files rewritten,",
            "REORG PURGE where deletion vectors are on, VACUUM LITE with retention 0 (the old files are really",
            "deleted), audit log. One process, one run after the other on the same lakehouse.",
            "",
            "| run | wall | per request | profiles removed | rows removed | tables | files rewritten | rows left after | phases (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
            *rows,
            "",
            f"Everyone else intact (profile count = before - removed): {'yes' if r['others_intact'] else 'NO'}.",
            f"`verify` of all {p['requests']:,} requests afterwards (one walk, every token of every file hashed): "
            f"{p['files']:,} files, {p['gib']} GiB in {p['seconds']} s; found {p['found']}.",
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    main(args.people, args.batch)
