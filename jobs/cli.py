"""`converge`: everything a user does outside the Dagster UI.

converge generate --people N --seed S --out DIR   demo data (CSV, JSON lines, ground truth)
converge run [--job converge_all]                 materialize through Dagster (recorded in the instance)
converge demo [--people N] [--reset]              generate + run + print the summary
converge sql "SELECT ..." [--format table|csv|json]
converge score [--truth FILE]                     identity graph vs ground truth
converge explain email:ann@example.com            the profile and the edges that tie its identifiers
converge resolve --input T --config Y --output D  resolve any table of person records -> record id, profile id
converge stream [--source files|kafka]           the long-running clickstream stream (Ctrl-C stops it)
converge stream status                            its progress: rows/s, batch duration, backlog
converge replay --start DAY [--end DAY]           rebuild silver.events for those arrival days from bronze
converge collector [--port P] [--workers N]       Segment's HTTP tracking API: SDKs send here (write keys in conf)
converge profile email:ann@example.com [--as-of T] a profile: identifiers, attributes with provenance, traits, audiences, events
converge sql-server [--port 10000]                JDBC/ODBC (HiveServer2) endpoint for BI tools over every table
converge tables                                   the tables and their row counts
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from pipelines.config import ConfigError, load_config

DEFAULT_JOB = "converge_all"


def _spark():
    from pipelines.spark import get_spark

    cfg = load_config()
    return get_spark(cfg), cfg


def _print_frame(pdf, fmt: str, out=None) -> None:
    out = out or sys.stdout
    if fmt == "csv":
        pdf.to_csv(out, index=False)
    elif fmt == "json":
        out.write(pdf.to_json(orient="records", date_format="iso", default_handler=str, lines=True))
    else:
        from tabulate import tabulate

        out.write(
            tabulate(
                pdf.astype(object).where(pdf.notna(), None),
                headers="keys",
                tablefmt="psql",
                showindex=False,
                missingval="NULL",
            )
            + "\n"
        )


def cmd_generate(args: argparse.Namespace) -> int:
    from pipelines.demo_data import generate

    t0 = time.time()
    counts = generate(args.people, args.seed, args.out, end=args.end, hard=args.hard)
    summary = {k: v for k, v in counts.__dict__.items() if k != "files"}
    print(json.dumps(summary | {"seconds": round(time.time() - t0, 1), "out": str(args.out)}, indent=2))
    return 0


def run_job(job_name: str = DEFAULT_JOB):
    """Execute a job of the Definitions in this process against the project's Dagster instance."""
    from jobs.definitions import defs
    from jobs.instance import get_instance

    return defs.resolve_job_def(job_name).execute_in_process(instance=get_instance(), raise_on_error=False)


def _report_run(result) -> list[dict]:
    checks = []
    for ev in result.get_asset_check_evaluations():
        meta = {k: getattr(v, "value", v) for k, v in ev.metadata.items()}
        checks.append(
            {"asset": ev.asset_key.to_user_string(), "check": ev.check_name, "passed": ev.passed} | meta
        )
    if not result.success:
        for event in result.all_events:
            if event.is_failure:
                print(
                    f"FAILED {event.step_key}: {event.event_specific_data.error.message if event.event_specific_data.error else event.message}",
                    file=sys.stderr,
                )
    return checks


def cmd_run(args: argparse.Namespace) -> int:
    result = run_job(args.job)
    checks = _report_run(result)
    failed = [c for c in checks if not c["passed"]]
    print(
        f"run {result.run_id}: {'succeeded' if result.success else 'FAILED'}; {len(checks)} checks, {len(failed)} failed"
    )
    for c in failed:
        print(f"  check failed: {c['asset']} {c['check']}")
    return 0 if result.success else 1


def cmd_sql(args: argparse.Namespace) -> int:
    spark, _ = _spark()
    df = spark.sql(args.query)
    _print_frame(df.limit(args.limit).toPandas(), args.format)
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    import pandas as pd

    from pipelines import io

    spark, cfg = _spark()
    rows = [
        {
            "table": n,
            "rows": io.read(spark, cfg, n).count(),
            "delta_version": io.version(spark, cfg, n),
            "what": d,
        }
        for n, d in io.TABLES.items()
        if io.exists(spark, cfg, n)
    ]
    _print_frame(pd.DataFrame(rows), args.format)
    return 0


def _truth_path(cfg, explicit: str | None) -> Path:
    return Path(explicit) if explicit else cfg.lakehouse.landing / "ground_truth.csv"


def _score(spark, cfg, truth_file: Path) -> dict:
    from pipelines import io
    from pipelines.evaluate import pairwise_scores

    truth = spark.read.option("header", "true").csv(str(truth_file))
    return pairwise_scores(io.read(spark, cfg, "gold.identity_graph"), truth)


def cmd_score(args: argparse.Namespace) -> int:
    spark, cfg = _spark()
    print(json.dumps(_score(spark, cfg, _truth_path(cfg, args.truth)), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import pandas as pd

    from pipelines.demo_data import generate

    cfg = load_config()
    if args.reset and cfg.lakehouse.root.exists():
        print(f"resetting demo lakehouse {cfg.lakehouse.root}")
        shutil.rmtree(cfg.lakehouse.root)
    t0 = time.time()
    counts = generate(args.people, args.seed, cfg.lakehouse.landing, hard=args.hard)
    print(
        f"generated {counts.people} people: {counts.crm_rows} crm + {counts.shop_rows} shop customers, "
        f"{counts.order_rows} order lines, {counts.event_lines} event lines ({time.time() - t0:.1f}s)"
    )
    t1 = time.time()
    result = run_job(DEFAULT_JOB)
    checks = _report_run(result)
    print(
        f"\nDagster run {result.run_id}: {'succeeded' if result.success else 'FAILED'} in {time.time() - t1:.0f}s"
    )
    if not result.success:
        return 1
    from pipelines import io

    spark, cfg = _spark()
    print("\nRow counts")
    _print_frame(
        pd.DataFrame(
            [
                {"table": n, "rows": io.read(spark, cfg, n).count()}
                for n in io.TABLES
                if io.exists(spark, cfg, n)
            ]
        ),
        "table",
    )
    print("\nReconciliation (bronze = silver + quarantined + duplicates)")
    recs = [c for c in checks if c["check"] == "reconciliation"]
    _print_frame(
        pd.DataFrame(recs)[["feed", "bronze", "silver", "quarantined", "duplicates", "balanced"]], "table"
    )
    print(
        "\nData-quality checks: "
        + ", ".join(
            f"{c['asset']} {'ok' if c['passed'] else 'FAILED'}" for c in checks if c["check"] == "quality"
        )
    )
    profiles = io.read(spark, cfg, "gold.profiles")
    n_profiles = profiles.count()
    scores = _score(spark, cfg, cfg.lakehouse.landing / "ground_truth.csv")
    print(
        f"\nIdentity: {n_profiles} golden profiles for {counts.people} true people "
        f"({100 * (n_profiles - counts.people) / counts.people:+.2f}%); pairwise precision {scores['precision']:.4f}, "
        f"recall {scores['recall']:.4f} against ground truth"
    )
    print("\nTen golden profiles")
    sample = (
        profiles.orderBy(profiles.order_count.desc(), profiles.event_count.desc(), "profile_id")
        .limit(10)
        .select(
            "profile_id",
            "first_name",
            "last_name",
            "email",
            "phone",
            "city",
            "country",
            "order_count",
            "lifetime_value",
            "event_count",
            "identifier_count",
            "last_seen",
        )
    )
    _print_frame(sample.toPandas(), "table")
    from pipelines.audiences import audience_sizes

    print("\nAudiences (conf/audiences.yaml): members now")
    _print_frame(
        pd.DataFrame([{"audience": a, "members": n} for a, n in audience_sizes(spark, cfg).items()]), "table"
    )
    example = profiles.filter("email is not null").orderBy("profile_id").select("email").first()
    hint = f"converge profile email:{example.email}   |   " if example else ""
    print(
        f'\nTry: {hint}converge sql "select count(*) from gold.profiles"   |   make ui  (http://127.0.0.1:3000)'
    )
    return 0 if all(c["passed"] for c in checks) else 1


def cmd_explain(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pipelines import io
    from pipelines.explain import explain, normalize_identifier, render

    spark, cfg = _spark()
    normalizers = {t: c.normalizer for t, c in cfg.identity.identifier_types.items()}
    ident = normalize_identifier(args.identifier, normalizers, cfg.sources.default_phone_region)

    def optional(name: str):
        return io.read(spark, cfg, name) if io.exists(spark, cfg, name) else None

    ex = explain(
        ident,
        io.read(spark, cfg, "gold.identity_graph"),
        io.read(spark, cfg, "silver.identity_edges"),
        optional("gold.profiles"),
        optional("quarantine.identity_edges"),
        optional("gold.profile_merges"),
        optional("quarantine.identity_components"),
    )
    print(json.dumps(asdict(ex), default=str, indent=2) if args.format == "json" else render(ex))
    return 0 if ex.profile_id else 3


def cmd_profile(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pipelines.explain import normalize_identifier
    from pipelines.profile_view import profile_view, render

    spark, cfg = _spark()
    normalizers = {t: c.normalizer for t, c in cfg.identity.identifier_types.items()}
    ident = normalize_identifier(args.identifier, normalizers, cfg.sources.default_phone_region)
    view = profile_view(spark, cfg, ident, args.as_of, args.events)
    print(json.dumps(asdict(view), default=str, indent=2) if args.format == "json" else render(view))
    return 0 if view.profile_id else 3


def cmd_forget(args: argparse.Namespace) -> int:
    """Record deletion requests (the Dagster sensor fulfils them), fulfil them now, or verify them."""
    from pipelines.forget import fulfil, pending_requests, request_deletions
    from pipelines.proof import verify
    from pipelines.stream import identity_lock, writes_lock

    spark, cfg = _spark()
    if args.verify:
        proofs = verify(spark, cfg, args.targets)
        for request_id in args.targets:
            proof = proofs[request_id]
            print(
                f"request {request_id}: {proof.files_scanned} files ({proof.bytes_scanned:,} bytes) searched "
                f"for {proof.values_searched} values; found {len(proof.found)}"
            )
            for hit in proof.found:
                print(f"  FOUND in {hit['path']}")
        return 0 if all(p.clean for p in proofs.values()) else 1
    request_ids = request_deletions(spark, cfg, args.targets, args.reason or "")
    for request_id in request_ids:
        print(f"deletion request {request_id} recorded")
    if args.now:
        requests = [r for r in pending_requests(cfg) if r["request_id"] in request_ids]
        with writes_lock(cfg), identity_lock(cfg):
            result = fulfil(spark, cfg, requests)
        print(
            f"fulfilled in {result.seconds} s: {sum(result.rows_removed.values())} rows from "
            f"{len(result.rows_removed)} tables, {len(result.files)} files rewritten"
        )
    else:
        print("the Dagster sensor `deletion_requests` fulfils them (or run again with --now)")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """Send destinations their audience enter/exit events (resumes a failed sync)."""
    from dataclasses import asdict

    from pipelines.destinations import sync_destination
    from pipelines.senders import DeliveryFailed

    spark, cfg = _spark()
    names = args.destination or [n for n, d in cfg.destinations.definitions.items() if d.enabled]
    failed = 0
    for name in names:
        if name not in cfg.destinations.definitions:
            print(
                f"unknown destination {name!r}; configured: {sorted(cfg.destinations.definitions)}",
                file=sys.stderr,
            )
            return 2
        try:
            stats = asdict(sync_destination(spark, cfg, name))
            print(json.dumps({k: v for k, v in stats.items() if k != "state"}))
        except DeliveryFailed as exc:
            failed += 1
            print(f"{name}: {exc}", file=sys.stderr)
    return 1 if failed else 0


def cmd_sql_server(args: argparse.Namespace) -> int:
    import signal

    from pipelines import sql_server
    from pipelines.spark import get_spark

    cfg = load_config()
    host, port = args.host or cfg.sql_server.host, args.port or cfg.sql_server.port
    sql_server.prepare(cfg, host, port)
    spark = get_spark(cfg)
    sql_server.start(spark)
    tables = [
        f"{t.namespace[0]}.{t.name}"
        for db in ("bronze", "silver", "gold", "quarantine")
        if spark.catalog.databaseExists(db)
        for t in spark.catalog.listTables(db)
    ]
    print(
        f"Spark Thrift Server on jdbc:hive2://{host}:{port}/default ({len(tables)} tables); Ctrl-C stops it",
        flush=True,
    )
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    spark.stop()
    return 0


def _stream_config(args: argparse.Namespace):
    cfg = load_config()
    if args.source:
        cfg.streaming.source = args.source
    if args.trigger:
        cfg.streaming.trigger = args.trigger
    return cfg


def cmd_stream(args: argparse.Namespace) -> int:
    """`converge stream`: the long-running query; `converge stream status`: its progress, without Spark."""
    from pipelines.stream import read_status, run_stream

    cfg = _stream_config(args)
    if args.action == "status":
        status = read_status(cfg)
        if status is None:
            print(f"no {cfg.streaming.source} stream has run on this lakehouse yet", file=sys.stderr)
            return 1
        if args.format == "json":
            print(json.dumps(status, indent=1, default=str))
            return 0
        print(
            f"{status['query']} ({status['source']}): {status['state']}, pid {status['pid']}, "
            f"started {status['started_at']}, updated {status['updated_at']}"
        )
        if "backlog_files" in status:
            print(f"backlog: {status['backlog_files']} landed file(s) not yet read")
        if "seconds_since_last_batch" in status:
            print(f"last batch {status['seconds_since_last_batch']} s ago")
        if status.get("error"):
            print(f"error: {status['error']}")
        rows = [
            {
                k: b.get(k)
                for k in (
                    "batch_id",
                    "input_rows",
                    "processed_rows_per_second",
                    "batch_duration_ms",
                    "kafka_offsets_behind_latest",
                    "inserted",
                    "quarantined",
                    "duplicates",
                    "identity_touched_identifiers",
                )
            }
            for b in status["batches"]
        ]
        if rows:
            import pandas as pd

            _print_frame(pd.DataFrame(rows), "table")
        return 0
    from pipelines.spark import get_spark

    spark = get_spark(cfg)
    print(
        f"streaming {cfg.streaming.source} every {cfg.streaming.trigger} into {cfg.lakehouse.root} "
        "(Ctrl-C to stop; `converge stream status` shows progress)",
        flush=True,
    )
    import signal

    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the query cleanly, like Ctrl-C
    try:
        batches = run_stream(
            spark, cfg, available_now=cfg.streaming.trigger == "available_now", timeout_s=args.timeout
        )
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
    print(json.dumps({"batches": len(batches), "rows": sum(b.rows for b in batches)}))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from datetime import date

    from pipelines.replay import replay_events

    start = date.fromisoformat(args.start)
    end = date.fromisoformat(args.end) if args.end else None
    spark, cfg = _spark()
    batches = replay_events(spark, cfg, start, end)
    totals = {
        k: sum(getattr(b, k) for b in batches) for k in ("rows", "inserted", "quarantined", "duplicates")
    }
    print(json.dumps({"batches": len(batches), **totals}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="converge", description="Converge: lakehouse-native customer data platform"
    )
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write deterministic demo data")
    g.add_argument("--people", type=int, required=True)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--end", default="2026-11-01T00:00:00Z", help="latest event time (ISO-8601)")
    g.add_argument(
        "--hard",
        action="store_true",
        help="add the identity hard cases (nicknames, swapped names, households, junk values, alias chains)",
    )
    g.set_defaults(fn=cmd_generate)

    r = sub.add_parser("run", help="materialize a job through Dagster")
    r.add_argument("--job", default=DEFAULT_JOB)
    r.set_defaults(fn=cmd_run)

    d = sub.add_parser("demo", help="generate demo data, materialize every asset, print a summary")
    d.add_argument("--people", type=int, default=5000)
    d.add_argument("--seed", type=int, default=42)
    d.add_argument("--reset", action="store_true", help="delete the lakehouse folder first")
    d.add_argument(
        "--hard",
        action="store_true",
        help="add the identity hard cases (nicknames, swapped names, households, junk values, alias chains)",
    )
    d.set_defaults(fn=cmd_demo)

    s = sub.add_parser("sql", help="run Spark SQL over the registered tables")
    s.add_argument("query")
    s.add_argument("--format", choices=["table", "csv", "json"], default="table")
    s.add_argument("--limit", type=int, default=1000, help="rows to print at most")
    s.set_defaults(fn=cmd_sql)

    sc = sub.add_parser(
        "score", help="score gold.identity_graph against a ground-truth CSV (identifier,person_id)"
    )
    sc.add_argument("--truth", default=None)
    sc.set_defaults(fn=cmd_score)

    x = sub.add_parser("explain", help="why an identifier belongs to its profile: the chain of edges")
    x.add_argument("identifier", help="type:value, e.g. email:ann@example.com")
    x.add_argument("--format", choices=["text", "json"], default="text")
    x.set_defaults(fn=cmd_explain)

    rs = sub.add_parser(
        "resolve", help="resolve a CSV/Parquet/Delta table of person records with the pipeline's resolver"
    )
    rs.add_argument("--input", required=True, help="CSV, Parquet or Delta path, or a registered table name")
    rs.add_argument(
        "--config", required=True, type=Path, help="YAML: system, columns mapping, identity overrides"
    )
    rs.add_argument(
        "--output", required=True, type=Path, help="folder for record_profiles.csv, edges, summary"
    )
    rs.add_argument(
        "--labels", type=Path, help="optional CSV record_id,label: print pairwise precision/recall"
    )
    rs.set_defaults(fn=cmd_resolve)

    st = sub.add_parser(
        "stream",
        help="run the clickstream stream (files or Kafka, from conf) until stopped; `status` shows progress",
    )
    st.add_argument("action", nargs="?", choices=["run", "status"], default="run")
    st.add_argument("--source", choices=["files", "kafka"], help="override streaming.source")
    st.add_argument("--trigger", help="override streaming.trigger, e.g. '2 seconds' or available_now")
    st.add_argument("--timeout", type=float, help="stop after this many seconds (default: run until stopped)")
    st.add_argument("--format", choices=["text", "json"], default="text", help="status output")
    st.set_defaults(fn=cmd_stream)

    rp = sub.add_parser(
        "replay", help="rebuild silver.events for arrival days [start, end) from bronze (Kappa replay)"
    )
    rp.add_argument("--start", required=True, help="first day, YYYY-MM-DD (UTC)")
    rp.add_argument("--end", help="day after the last one (default: start + 1 day)")
    rp.set_defaults(fn=cmd_replay)

    co = sub.add_parser("collector", help="Segment-compatible HTTP collector in front of the stream")
    co.add_argument("--host", help="override collector.host")
    co.add_argument("--port", type=int, help="override collector.port")
    co.add_argument("--workers", type=int, help="override collector.workers")
    co.set_defaults(fn=cmd_collector)

    pr = sub.add_parser("profile", help="a profile now or at a past time (Delta time travel)")
    pr.add_argument("identifier", help="type:value, e.g. email:ann@example.com")
    pr.add_argument("--as-of", dest="as_of", help="a past time, e.g. '2026-11-20 12:00:00' (UTC)")
    pr.add_argument("--events", type=int, default=10, help="recent events to show")
    pr.add_argument("--format", choices=["text", "json"], default="text")
    pr.set_defaults(fn=cmd_profile)

    ss = sub.add_parser("sql-server", help="Spark Thrift Server (JDBC/ODBC, HiveServer2) over every table")
    ss.add_argument("--host", help="override sql_server.host")
    ss.add_argument("--port", type=int, help="override sql_server.port")
    ss.set_defaults(fn=cmd_sql_server)

    fg = sub.add_parser("forget", help="right to be forgotten: record deletion requests, or verify them")
    fg.add_argument(
        "targets",
        nargs="+",
        metavar="target",
        help="type:value of a person (e.g. email:ann@example.com), or with --verify a request id; several "
        "are fulfilled together",
    )
    fg.add_argument("--reason", help="why (kept in the audit log)")
    fg.add_argument(
        "--now",
        action="store_true",
        help="fulfil them in this process (one batch) instead of via the Dagster sensor",
    )
    fg.add_argument(
        "--verify",
        action="store_true",
        help="search every table version and file for the persons (one walk for all)",
    )
    fg.set_defaults(fn=cmd_forget)

    sy = sub.add_parser("sync", help="send destinations their audience enter/exit events")
    sy.add_argument("--destination", action="append", help="only this destination (repeatable)")
    sy.set_defaults(fn=cmd_sync)

    t = sub.add_parser("tables", help="list tables with row counts")
    t.add_argument("--format", choices=["table", "csv", "json"], default="table")
    t.set_defaults(fn=cmd_tables)
    return p


def cmd_resolve(args: argparse.Namespace) -> int:
    from pyspark.sql import functions as F

    from pipelines.evaluate import pairwise_scores
    from pipelines.resolve import (
        customers_from_records,
        load_resolve_config,
        no_events,
        read_records,
        record_profiles,
        resolve,
    )

    spark, cfg = _spark()
    rc, mapping, identity = load_resolve_config(args.config, cfg)
    t0 = time.time()
    try:
        records = read_records(spark, args.input)
        customers = customers_from_records(records, rc.system, mapping, cfg).localCheckpoint()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result, _, edges = resolve(customers, no_events(spark), identity)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    mapped = record_profiles(customers, result.graph, rc.system).localCheckpoint()
    mapped.orderBy("record_id").toPandas().to_csv(out / "record_profiles.csv", index=False)
    edges.write.mode("overwrite").parquet(str(out / "edges.parquet"))
    result.cut_edges.toPandas().to_csv(out / "cut_edges.csv", index=False)
    summary = {
        "input": str(args.input),
        "records_in": records.count(),
        "records_resolved": customers.count(),
        "profiles": mapped.select("profile_id").distinct().count(),
        "edges_by_rule": {r["rule"]: r["count"] for r in edges.groupBy("rule").count().collect()},
        "cut_edges": result.cut_edges.count(),
        "oversized_components": result.oversized.count(),
        "seconds": round(time.time() - t0, 1),
        "output": str(out),
    }
    if args.labels:
        labels = spark.read.option("header", "true").csv(str(args.labels))
        if not {"record_id", "label"} <= set(labels.columns):
            print(f"error: {args.labels} must have the columns record_id,label", file=sys.stderr)
            return 2
        summary["scores"] = pairwise_scores(
            mapped.select(F.col("record_id").alias("identifier"), "profile_id"),
            labels.select(F.col("record_id").alias("identifier"), F.col("label").alias("person_id")),
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


def cmd_collector(args: argparse.Namespace) -> int:
    from collector.server import serve

    cfg = load_config()
    c = cfg.collector
    print(
        f"collector on http://{args.host or c.host}:{args.port or c.port} ({args.workers or c.workers} worker(s)); "
        f"events land in {cfg.lakehouse.landing / 'events'}",
        flush=True,
    )
    serve(cfg, args.host, args.port, args.workers)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, LookupError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
