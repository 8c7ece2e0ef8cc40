"""Benchmark: the clickstream stream (issue 3).

1. Throughput, landing files -> silver: `run_stream` (availableNow, identity off: bronze append, silver MERGE
   with dedup over all history, quarantine) against a plain Spark JSON -> Parquet copy of the same files,
   measured in the same process and run (the copy before and after the stream; the baseline is their mean).
2. The same from Kafka: a real broker on 127.0.0.1, the same lines produced to a topic; the baseline reads
   the topic in one batch, parses the JSON with the schema the file copy inferred, and writes Parquet.
3. End-to-end latency at ~1,000 events/s offered: one file of 1,000 events renamed into the landing folder
   every second while `run_stream` runs continuously with identity updates on. An event's latency is from
   its file's rename to the commit of the gold.profiles MERGE of the micro-batch that took it (the last
   write of a batch: the profile is updated). p50 and p95 over every event, once the backlog is drained;
   the same to the commit of the traits refresh that covered it (traits and audiences are refreshed beside
   the stream, in a thread of their own).
4. The SIGKILL run at >= 200,000 events (tests/integration_tests/crash_harness.py: 5 kills, restarts, then
   exactly-once counts and equality of identity graph and profiles with a clean run).

Results are appended to docs/benchmarks.md. Usage: python -m benchmarks.streaming [--events N] [--latency-seconds S]
"""

import argparse
import json
import math
import os
import shutil
import threading
import time
from pathlib import Path

from pyspark.sql import functions as F

from benchmarks.machine import append_report
from pipelines import io
from pipelines.config import Config, load_config
from pipelines.demo_data import generate
from pipelines.refresh import STATE_KEY
from pipelines.spark import get_spark
from pipelines.stream import checkpoint_dir, files_by_batch, read_status, run_stream
from tests.integration_tests.crash_harness import CrashRun, crash_run, describe
from tests.kafka.broker import KafkaBroker, produce

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "_runs" / "streaming"
EVENTS_PER_PERSON = 7.37  # what the generator writes on average (1M people = 7.37M lines)
OFFERED_PER_S = 1000
HISTORY_FILES = 10  # files of 1,000 events a latency run's lakehouse starts with


def _people_for(events: int) -> int:
    return math.ceil(events / EVENTS_PER_PERSON)


def _lines(files: list[Path]) -> list[str]:
    return [line for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]


def _timed(fn) -> float:
    t0 = time.time()
    fn()
    return time.time() - t0


def throughput_files(spark, events: int) -> tuple[dict, object]:
    work = RUNS / "files"
    shutil.rmtree(work, ignore_errors=True)
    generate(_people_for(events), 7, work / "data", events_per_file=10_000)
    files = sorted((work / "data" / "events").glob("*.jsonl"))
    n = len(_lines(files))
    cfg = load_config("dev", lakehouse=str(work / "lakehouse"), overrides={"streaming": {"source": "files"}})
    shutil.copytree(work / "data" / "events", cfg.lakehouse.landing / "events")
    paths = [str(f) for f in files]

    def copy(i: int) -> None:
        spark.read.json(paths).write.mode("overwrite").parquet(str(work / f"copy_{i}"))

    copy_1 = _timed(lambda: copy(1))
    stream_s = _timed(lambda: run_stream(spark, cfg, available_now=True, update_identity=False))
    copy_2 = _timed(lambda: copy(2))
    silver = io.read(spark, cfg, "silver.events").count()
    row = _throughput(n, silver, copy_1, copy_2, stream_s) | {"files": len(files)}
    return row, spark.read.json(paths).schema


def _throughput(events: int, silver: int, copy_1: float, copy_2: float, stream_s: float) -> dict:
    baseline = (copy_1 + copy_2) / 2
    return {
        "events": events,
        "silver": silver,
        "copy_s": [round(copy_1, 1), round(copy_2, 1)],
        "stream_s": round(stream_s, 1),
        "copy_eps": round(events / baseline),
        "stream_eps": round(events / stream_s),
        "ratio": round(baseline / stream_s, 2),
    }


def throughput_kafka(spark, events: int, schema) -> dict:
    work = RUNS / "kafka"
    shutil.rmtree(work, ignore_errors=True)
    cfg0 = load_config("dev")
    broker = KafkaBroker(work / "broker", cfg0.spark.ivy_dir / "maven", partitions=2).start()
    try:
        lines = _lines(sorted((RUNS / "files" / "data" / "events").glob("*.jsonl")))[:events]
        topic = "bench-events"
        for i in range(0, len(lines), 50_000):
            produce(spark, broker.bootstrap_servers, topic, lines[i : i + 50_000])
        cfg = load_config(
            "dev",
            lakehouse=str(work / "lakehouse"),
            overrides={
                "streaming": {
                    "source": "kafka",
                    "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic": topic},
                }
            },
        )

        def copy(i: int) -> None:
            (
                spark.read.format("kafka")
                .option("kafka.bootstrap.servers", broker.bootstrap_servers)
                .option("subscribe", topic)
                .option("startingOffsets", "earliest")
                .load()
                .select(F.from_json(F.col("value").cast("string"), schema).alias("e"))
                .select("e.*")
                .write.mode("overwrite")
                .parquet(str(work / f"copy_{i}"))
            )

        copy_1 = _timed(lambda: copy(1))
        stream_s = _timed(lambda: run_stream(spark, cfg, available_now=True, update_identity=False))
        copy_2 = _timed(lambda: copy(2))
        silver = io.read(spark, cfg, "silver.events").count()
        bronze = io.read(spark, cfg, "bronze.events").count()
    finally:
        broker.stop()
    return _throughput(len(lines), silver, copy_1, copy_2, stream_s) | {"bronze": bronze}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def lakehouse_with_history(spark, work: Path, live_files: int) -> tuple[Config, list[Path], Path]:
    """A lakehouse with history under ``work`` (emptied first): files of 1,000 events generated for
    HISTORY_FILES + ``live_files`` seconds and more, the first HISTORY_FILES through the stream (one batch,
    profiles built). Returns the config (files source, trigger 2 s), every file generated (the history
    first) and the landing folder."""
    shutil.rmtree(work, ignore_errors=True)
    generate(_people_for(OFFERED_PER_S * (live_files + 30)), 11, work / "data", events_per_file=1000)
    files = sorted((work / "data" / "events").glob("*.jsonl"))
    cfg = load_config(
        "dev",
        lakehouse=str(work / "lakehouse"),
        overrides={"streaming": {"source": "files", "trigger": "2 seconds", "max_files_per_trigger": 1000}},
    )
    landing = cfg.lakehouse.landing / "events"
    landing.mkdir(parents=True)
    for f in files[:HISTORY_FILES]:
        shutil.copy(f, landing / f.name)
    run_stream(spark, cfg, available_now=True)
    return cfg, files, landing


def latency(spark, seconds: int) -> dict:
    """Files of 1,000 events renamed in once a second while the stream runs with identity updates."""
    work = RUNS / "latency"
    cfg, files, landing = lakehouse_with_history(spark, work, seconds)
    live = files[HISTORY_FILES : HISTORY_FILES + seconds]

    landed: dict[str, tuple[float, int]] = {}

    def feed() -> None:
        start = time.time()
        for i, f in enumerate(live):
            time.sleep(max(0.0, start + i - time.time()))  # one file a second, on a fixed schedule
            tmp = landing / f".{f.name}.tmp"
            shutil.copy(f, tmp)
            os.replace(tmp, landing / f.name)
            landed[str(landing / f.name)] = (time.time(), sum(1 for _ in f.open(encoding="utf-8")))

    checkpoint = checkpoint_dir(cfg)
    app_id = io.checkpoint_app_id(checkpoint, "converge-events")

    def done() -> bool:
        taken = files_by_batch(checkpoint)
        if len(landed) < len(live) or any(p not in taken for p in landed):
            return False
        status = read_status(cfg) or {}
        finished = {b["batch_id"] for b in status.get("batches", []) if b.get("identity_seconds") is not None}
        return max(taken[p] for p in landed) in finished

    errors: list[BaseException] = []

    def stream() -> None:
        try:
            run_stream(spark, cfg, timeout_s=seconds * 20 + 600)
        except BaseException as exc:  # reported below
            errors.append(exc)

    runner = threading.Thread(target=stream)
    runner.start()
    time.sleep(5)
    feeder = threading.Thread(target=feed)
    t0 = time.time()
    feeder.start()
    feeder.join()
    offered_s = time.time() - t0
    while not done() and runner.is_alive():
        time.sleep(1)
    for q in spark.streams.active:
        q.stop()
    runner.join()
    if errors:
        raise errors[0]

    taken = files_by_batch(checkpoint)
    profile_commits = {
        c["user_metadata"]: c for c in io.commits(spark, cfg, "gold.profiles") if c["user_metadata"]
    }
    # a traits refresh records the gold.profiles version it read: the first one at or after a batch's
    # profiles commit is the one that gave that batch's people their traits and audiences
    refreshes = sorted(
        (
            json.loads(c["user_metadata"])[STATE_KEY]["versions"].get("gold.profiles", -1),
            c["timestamp_ms"] / 1000,
        )
        for c in io.commits(spark, cfg, "gold.profile_traits")
        if c["user_metadata"] and STATE_KEY in c["user_metadata"]
    )
    per_event: list[float] = []
    per_event_traits: list[float] = []
    for path, (at, n) in landed.items():
        commit = profile_commits[f"{app_id}:{taken[path]}"]
        per_event += [commit["timestamp_ms"] / 1000 - at] * n
        traits_at = min(t for v, t in refreshes if v >= commit["version"])
        per_event_traits += [traits_at - at] * n
    status = read_status(cfg) or {}
    live_batches = {taken[p] for p in landed}
    # one row per live batch (a restarted query reports its last batch again, with no work)
    by_id = {b["batch_id"]: b for b in status.get("batches", []) if b.get("identity_seconds") is not None}
    batches = [b for bid, b in sorted(by_id.items()) if bid in live_batches]
    return {
        "events": len(per_event),
        "offered_eps": round(len(per_event) / offered_s),
        "p50_s": round(_percentile(per_event, 0.50), 1),
        "p95_s": round(_percentile(per_event, 0.95), 1),
        "max_s": round(max(per_event), 1),
        "traits_p50_s": round(_percentile(per_event_traits, 0.50), 1),
        "traits_p95_s": round(_percentile(per_event_traits, 0.95), 1),
        "batches": len({taken[p] for p in landed}),
        "batch_s_mean": round(sum(b["batch_duration_ms"] for b in batches) / max(1, len(batches)) / 1000, 1),
        "identity_s_mean": round(sum(b["identity_seconds"] for b in batches) / max(1, len(batches)), 1),
        "phases": _mean_phases(batches),
    }


def _mean_phases(batches: list[dict]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for b in batches:
        for k, v in (b.get("identity_phases") or {}).items():
            totals[k] = totals.get(k, 0.0) + v
    return {k: round(v / max(1, len(batches)), 1) for k, v in totals.items()}


def crash(spark, events: int) -> dict:
    work = RUNS / "crash"
    shutil.rmtree(work, ignore_errors=True)
    run = CrashRun(
        source="files",
        people=_people_for(events),
        events_per_file=10_000,
        feed_interval_s=4,
        kills=5,
        kill_after_s=(5, 60),
        max_files_per_trigger=4,
        drain_timeout_s=3600,
        env="dev",
    )
    counts = crash_run(spark, work, run)
    print(describe(counts), flush=True)
    return counts


def main(events: int, latency_seconds: int, with_crash: bool = True) -> None:
    spark = get_spark(load_config("dev", lakehouse=str(RUNS / "session")))
    files, schema = throughput_files(spark, events)
    print("files", files, flush=True)
    kafka = throughput_kafka(spark, events, schema)
    print("kafka", kafka, flush=True)
    lat = latency(spark, latency_seconds)
    print("latency", lat, flush=True)
    if not with_crash:
        return
    crashed = crash(spark, events)
    lines = [
        "Landing -> silver throughput (identity off: bronze append, silver MERGE deduplicating over all history,",
        "quarantine), against a plain Spark JSON -> Parquet copy of the same input in the same process and run",
        "(copy before and after the stream; baseline = their mean). Ratio = stream events/s / copy events/s (goal >= 0.5).",
        "",
        "| source | events | silver rows | copy (s) | stream (s) | copy events/s | stream events/s | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("landing files", files), ("Kafka (2 partitions)", kafka)):
        lines.append(
            f"| {name} | {r['events']:,} | {r['silver']:,} | {r['copy_s'][0]} / {r['copy_s'][1]} | "
            f"{r['stream_s']} | {r['copy_eps']:,} | {r['stream_eps']:,} | {r['ratio']} |"
        )
    lines += [
        "",
        f"End-to-end latency, identity updates on (trigger 2 s): {lat['events']:,} events in files of 1,000 renamed in",
        f"once a second ({lat['offered_eps']:,} events/s offered) onto a lakehouse with history; latency = file rename",
        "-> commit of the gold.profiles MERGE of the batch that took it; traits = file rename -> commit of the",
        "first gold.profile_traits refresh (the stream's refresher thread) that read that gold.profiles version.",
        "",
        "| p50 (s) | p95 (s) | max (s) | traits p50 (s) | traits p95 (s) | batches | mean batch (s) | mean identity update (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {lat['p50_s']} | {lat['p95_s']} | {lat['max_s']} | {lat['traits_p50_s']} | {lat['traits_p95_s']} | "
        f"{lat['batches']} | {lat['batch_s_mean']} | {lat['identity_s_mean']} |",
        "",
        "Mean seconds per identity phase and batch: "
        + ", ".join(f"{k} {v}" for k, v in lat["phases"].items()),
        "",
        f"SIGKILL run ({crashed['lines']:,} events, landing files of 10,000 renamed in every 4 s, 5 kills 5-60 s after",
        f"each start, identity on): {describe(crashed)}. Crash run wall {crashed['crash_run_s']} s (kills and",
        f"restarts included); clean single run over the same files {crashed['clean_run_s']} s.",
    ]
    append_report("Streaming", lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--latency-seconds", type=int, default=90, help="how long 1,000 events/s are offered")
    parser.add_argument("--no-crash", action="store_true", help="skip the SIGKILL run (a quick look only)")
    args = parser.parse_args()
    main(args.events, args.latency_seconds, not args.no_crash)
