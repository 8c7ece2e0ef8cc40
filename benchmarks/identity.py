"""Benchmark: identity resolution at scale, and Splink's own DuckDB backend side by side.

For each size (people in the generator's hard set, about 5 identifiers each):
  1. generate, then build silver-shaped customers and events as Parquet (not timed);
  2. full rebuild in a fresh process: observations, deterministic + Splink edges, guards, components, stable
     ids, written out (wall time and the peak memory of the whole process tree, Python + JVM, as summed PSS);
  3. incremental update in a fresh process: the state of a build without the newest 10,000 events (its
     edges as the Delta table silver.identity_edges, as a stream finds them), then those events arrive:
     their edges are MERGEd into that table and only the components they touch are recomputed, the stream's
     path (timed: the update alone, to the new graph and merges, and again once the registry, cut edges and
     oversized components a stream batch also writes are written); then the same update once more in that
     process (*warm*: a running stream's later micro-batches, with the JVM's code compiled);
  4. precision/recall of the full rebuild against the ground truth, over all identifiers;
  5. reference: Splink on DuckDB over the same customer records (same comparisons, blocking and training),
     clustered at the same threshold; time and pairwise F1 over customer records, next to Converge's F1
     on the same records.
Usage: python -m benchmarks.identity 100000 1000000 [--reuse]   (results appended to docs/benchmarks.md;
--reuse keeps the generated and prepared inputs of an earlier run of the same size)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.machine import REPORT, machine_details
from benchmarks.pipeline import RUNS, run_measured
from pipelines.demo_data import generate

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.config import Config

NEW_EVENTS = 10_000


def _session(run: Path):
    from pipelines.config import load_config
    from pipelines.spark import get_spark

    cfg = load_config("dev", lakehouse=str(run / "lakehouse"))
    return get_spark(cfg), cfg


def prepare(run: Path) -> None:
    """Silver-shaped inputs as Parquet, the newest events split off, the ground truth as Parquet."""
    from pyspark.sql import functions as F

    from pipelines.resolve import silver_from_landing

    spark, cfg = _session(run)
    customers, events = silver_from_landing(spark, cfg, run / "landing")
    customers.write.mode("overwrite").parquet(str(run / "customers.parquet"))
    events.write.mode("overwrite").parquet(str(run / "events.parquet"))
    events = spark.read.parquet(str(run / "events.parquet"))
    cutoff = events.orderBy(F.desc("event_time"), F.desc("message_id")).limit(NEW_EVENTS)
    cutoff.write.mode("overwrite").parquet(str(run / "events_new.parquet"))
    events.join(cutoff.select("message_id"), "message_id", "left_anti").write.mode("overwrite").parquet(
        str(run / "events_old.parquet")
    )
    spark.read.option("header", "true").csv(str(run / "landing/ground_truth.csv")).write.mode(
        "overwrite"
    ).parquet(str(run / "truth.parquet"))
    print(
        json.dumps(
            {
                "customers": spark.read.parquet(str(run / "customers.parquet")).count(),
                "events": events.count(),
            }
        )
    )


def full(run: Path, events_file: str, out: str) -> None:
    """The whole resolver over customers + the given events; graph, cut edges, registry written to ``out``."""
    from pipelines.resolve import resolve

    spark, cfg = _session(run)
    t0 = time.time()
    customers = spark.read.parquet(str(run / "customers.parquet"))
    events = spark.read.parquet(str(run / events_file))
    result, observations, edges = resolve(customers, events, cfg.identity, built_at="2026-11-01 00:00:00")
    target = run / out
    result.graph.write.mode("overwrite").parquet(str(target / "graph"))
    result.registry.write.mode("overwrite").parquet(str(target / "registry"))
    result.cut_edges.write.mode("overwrite").parquet(str(target / "cut"))
    result.oversized.write.mode("overwrite").parquet(str(target / "oversized"))
    edges.write.mode("overwrite").parquet(str(target / "edges"))
    print(json.dumps({"seconds": round(time.time() - t0, 1)}))


def incremental(run: Path) -> None:
    """The update after NEW_EVENTS events, on the state of the build without them (timed: the update), in a
    fresh process; then the same update again in that process (*warm*: what a running stream's later
    micro-batches see, with the JVM's code compiled and Delta's logs read once)."""
    spark, cfg = _session(run)
    cold = _update(spark, cfg, run)
    warm = _update(spark, cfg, run)
    if warm["changes"] != cold["changes"]:
        raise SystemExit(f"the second update changed {warm['changes']} rows, the first {cold['changes']}")
    print(
        json.dumps(
            cold | {"warm_seconds": warm["seconds"], "warm_seconds_all_tables": warm["seconds_all_tables"]}
        )
    )


def _update(spark: SparkSession, cfg: Config, run: Path) -> dict:
    from pipelines import io
    from pipelines.identity import identifier_observations
    from pipelines.identity_incremental import events_near, incremental_identity
    from pipelines.stream import add_edges

    state = run / "state_old"
    # what a stream finds in the lakehouse (not timed): the earlier build's edges, Splink's included, as
    # the Delta table silver.identity_edges
    io.overwrite(spark.read.parquet(str(state / "edges")), cfg, "silver.identity_edges")
    customers = spark.read.parquet(str(run / "customers.parquet"))
    new_events = spark.read.parquet(str(run / "events_new.parquet"))
    t0 = time.time()
    known = spark.read.parquet(str(run / "events_old.parquet")).unionByName(new_events)
    near = events_near(new_events, known)
    new_obs = identifier_observations(
        customers.limit(0), new_events, cfg.identity.blocklist, cfg.identity.normalizers, known_events=near
    ).localCheckpoint()
    # the new events' edges MERGEd into the table, and those of earlier aliases they re-read rebuilt, as a
    # stream batch does
    retyped = add_edges(
        spark, cfg, new_obs, new_events=new_events, events=known, customers=customers, near=near
    )
    edges = io.read(spark, cfg, "silver.identity_edges")
    result = incremental_identity(
        new_obs,
        edges,
        spark.read.parquet(str(state / "graph")),
        spark.read.parquet(str(state / "cut")),
        spark.read.parquet(str(state / "oversized")),
        spark.read.parquet(str(state / "registry")),
        cfg.identity,
        "2026-11-02 00:00:00",
        retyped,
    )
    result.graph.write.mode("overwrite").parquet(str(run / "state_inc/graph"))
    touched = result.changes.count()
    seconds = time.time() - t0
    # the other tables a stream batch stages and writes: the registry's new and changed rows (upserted into
    # gold.profile_ids), cut edges, oversized components
    for name in ("registry_changes", "cut_edges", "oversized"):
        getattr(result, name).write.mode("overwrite").parquet(str(run / f"state_inc/{name}"))
    return {
        "seconds": round(seconds, 1),
        "seconds_all_tables": round(time.time() - t0, 1),
        "changes": touched,
    }


def score(run: Path) -> None:
    from pyspark.sql import functions as F

    from pipelines.evaluate import pairwise_scores

    spark, _ = _session(run)
    truth = spark.read.parquet(str(run / "truth.parquet"))
    graph = spark.read.parquet(str(run / "state_full/graph"))
    records = truth.filter(F.col("identifier").rlike("^(crm|shop)_id:"))
    print(
        json.dumps(
            {
                "all": pairwise_scores(graph, truth),
                "records": pairwise_scores(graph, records),
                "profiles": graph.select("profile_id").distinct().count(),
            }
        )
    )


def duckdb_reference(run: Path) -> None:
    """Splink on DuckDB over the customer records, with the same model definition and threshold."""
    import duckdb
    import pandas as pd
    from splink import Linker
    from splink.backends.duckdb import DuckDBAPI

    from pipelines.config import load_config
    from pipelines.matching import splink_settings, train_and_predict

    identity = load_config("dev").identity
    conf = identity.probabilistic
    t0 = time.time()
    con = duckdb.connect()
    c = str(run / "customers.parquet")

    def contact(t: str) -> str:
        """pipelines.matching.contact_identifiers in SQL: the silver value as an identifier, unless it is
        blocklisted or on more records than the type's max_degree (silver values are normalised already)."""
        patterns = identity.blocklist.get(t, [])
        exact = ", ".join(f"'{p.lower()}'" for p in patterns if not p.startswith("^")) or "null"
        blocked = f"lower({t}) in ({exact})" + "".join(
            f" or regexp_matches(lower({t}), '{p}')" for p in patterns if p.startswith("^")
        )
        bound = identity.max_degree.get(t)
        hub = f" or count(*) over (partition by {t}) > {bound}" if bound else ""
        return f"case when {blocked}{hub} then null else '{t}:' || {t} end as {t}"

    records = con.sql(
        f"""select source_system || '_id:' || source_id as unique_id, lower(first_name) first_name,
            lower(last_name) last_name, strftime(date_of_birth, '%Y-%m-%d') date_of_birth, lower(street) street,
            lower(city) city, upper(replace(postal_code, ' ', '')) postal_code, {contact("email")},
            {contact("phone")}, coalesce(updated_at, created_at, _loaded_at) seen_at
            from read_parquet('{c}/*.parquet')"""
    ).df()
    if conf.training.m_label_column:
        records["_label"] = records[conf.training.m_label_column]
    db_api = DuckDBAPI(connection=con)
    linker = Linker(db_api.register(records), splink_settings(conf), log_level=None)
    pairs = train_and_predict(linker, conf)
    clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
        pairs, conf.threshold
    ).as_pandas_dataframe()
    seconds = time.time() - t0
    truth = pd.read_parquet(run / "truth.parquet")
    m = clusters[["unique_id", "cluster_id"]].merge(truth, left_on="unique_id", right_on="identifier")

    def pairs_of(df, *keys):
        n = df.groupby(list(keys)).size()
        return int((n * (n - 1) // 2).sum())

    tp, pred, true = (
        pairs_of(m, "cluster_id", "person_id"),
        pairs_of(m, "cluster_id"),
        pairs_of(m, "person_id"),
    )
    p, r = tp / pred if pred else 1.0, tp / true if true else 1.0
    print(json.dumps({"seconds": round(seconds, 1), "precision": p, "recall": r, "f1": 2 * p * r / (p + r)}))


def _child(people_run: Path, step: str, *args: str) -> tuple[float, int, dict]:
    env = os.environ | {"CONVERGE_LAKEHOUSE": str(people_run / "lakehouse")}
    cmd = [sys.executable, "-m", "benchmarks.identity", "--step", step, str(people_run), *args]
    wall, peak_kb, res = run_measured(cmd, env)
    if res.returncode != 0:
        raise SystemExit(f"{step} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return wall, peak_kb, json.loads(res.stdout.strip().splitlines()[-1])


def bench(people: int, reuse: bool = False) -> dict:
    run = RUNS / f"identity_{people}"
    t0 = time.time()
    if reuse and (run / "truth.parquet").exists():
        # the same seed gives the same data: keep the inputs an earlier run generated and prepared
        shutil.rmtree(run / "lakehouse", ignore_errors=True)
    else:
        shutil.rmtree(run, ignore_errors=True)
        generate(people, 42, run / "landing", hard=True)
        _child(run, "prepare")
    gen_s = time.time() - t0
    full_wall, full_peak, full_out = _child(run, "full", "events.parquet", "state_full")
    _child(run, "full", "events_old.parquet", "state_old")
    _, inc_peak, inc_out = _child(run, "incremental")
    _, _, scores = _child(run, "score")
    duck_wall, duck_peak, duck = _child(run, "duckdb")
    return {
        "people": people,
        "generate_s": round(gen_s, 1),
        "full_s": round(full_wall, 1),
        "full_inner_s": full_out["seconds"],
        "full_peak_gib": round(full_peak / 1024 / 1024, 2),
        "incremental_s": inc_out["seconds"],
        "incremental_all_s": inc_out["seconds_all_tables"],
        "incremental_warm_s": inc_out["warm_seconds"],
        "incremental_peak_gib": round(inc_peak / 1024 / 1024, 2),
        "precision": round(scores["all"]["precision"], 4),
        "recall": round(scores["all"]["recall"], 4),
        "records_f1": round(scores["records"]["f1"], 4),
        "profiles": scores["profiles"],
        "duckdb_s": duck["seconds"],
        "duckdb_peak_gib": round(duck_peak / 1024 / 1024, 2),
        "duckdb_records_f1": round(duck["f1"], 4),
    }


def report(rows: list[dict]) -> str:
    m = machine_details()
    lines = [
        f"\n## Identity resolution, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in m.items()),
        "",
        f"Configuration: conf/dev.yaml{' with CONVERGE_OVERRIDES=' + repr(os.environ['CONVERGE_OVERRIDES']) if os.environ.get('CONVERGE_OVERRIDES') else ''}.",
        "",
        "Hard set (`generate --hard`), seed 42. *full*: a fresh process (JVM start included) resolving everything:"
        " observations, deterministic and Splink edges, guards, components, stable ids, written as Parquet."
        f" *incremental*: the update after the newest {NEW_EVENTS:,} events on the state of a build without them"
        " (the update alone, in a fresh process: the graph and the merges; *with every table* adds the registry's"
        " new and changed rows, cut edges and oversized components a stream batch also writes; *warm*: the same"
        " update again in that process, as a running stream's later micro-batches see it). Precision/recall are pairwise over every identifier of the ground"
        " truth; *records F1* over customer records only, which is what Splink's DuckDB run resolves (same"
        " comparisons, blocking, training and threshold; its time includes training, prediction and clustering).",
        "",
        "| people | full rebuild | peak memory (PSS) | incremental (10k events) | precision | recall | profiles |"
        " records F1 | Splink DuckDB | DuckDB records F1 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['people']:,} | {r['full_s']} s | {r['full_peak_gib']} GiB | {r['incremental_s']} s"
            f" ({r['incremental_all_s']} s with every table; warm {r['incremental_warm_s']} s) |"
            f" {r['precision']} | {r['recall']} | {r['profiles']:,} | {r['records_f1']} | {r['duckdb_s']} s"
            f" ({r['duckdb_peak_gib']} GiB) | {r['duckdb_records_f1']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    if sys.argv[1] == "--step":
        step, run = sys.argv[2], Path(sys.argv[3])
        fns = {"prepare": prepare, "incremental": incremental, "score": score, "duckdb": duckdb_reference}
        if step == "full":
            full(run, sys.argv[4], sys.argv[5])
        else:
            fns[step](run)
        return
    reuse = "--reuse" in sys.argv
    rows = []
    for people in [int(a) for a in sys.argv[1:] if a != "--reuse"]:
        rows.append(bench(people, reuse))
        print(json.dumps(rows[-1]), flush=True)
        # appended after each size: a later size that fails leaves the earlier ones
        with open(REPORT, "a") as fh:
            fh.write(report(rows[-1:]))


if __name__ == "__main__":
    main()
