"""Benchmark: the floors under issue 3's streaming goals and issue 5's traits goal on this machine (the writes
those issues require, alone, and for issue 5 the reads before them).

Issue 3 asks each micro-batch to append the raw lines to bronze.events, MERGE the new messageIds into
silver.events (deduplicating over all history), add the batch's identity edges and update
gold.identity_graph and gold.profiles for the people it touched: five Delta writes. Issue 5 asks an
incremental refresh to MERGE the touched people's traits into gold.profile_traits and their audience
changes into gold.audience_membership. This benchmark times those writes and nothing else, their inputs
computed beforehand and materialised (no parsing, no identity resolution, no survivorship, no trait
computation, no reads but the writes' own, apart from issue 5's reads, timed apart), on tables of the
benchmarks' own sizes:

- **latency floor**: a lakehouse with history (the latency benchmark's: 10,000 events through
  ``converge stream``), then batches of 2,000 events (two seconds at the 1,000 events/s the goal offers:
  the smallest batch a 2 s trigger sees) of people the lakehouse knows (``returning_batch``). Each batch's
  five writes, their rows what the real batch writes or fewer (the new lines, the new events, their edges,
  the graph rows of the profiles they touch and those profiles' rows, as they are), once one after another
  and once all five side by side (threads of one session; no transaction ids, so no session conf is
  shared), after two batches to warm up. The faster median is the floor ``D`` of a batch's duration.
  Events land continuously, so an event waits for the batch running when it lands (up to ``D``), then for
  its own (``D``): its latency is about ``D`` + U(0, ``D``), and the p95 about 1.95 ``D``.
- **throughput floor**: the throughput benchmark's input (files of 10,000 events): reading its lines once,
  then the bronze append of them and the silver MERGE of its parsed events (parsed beforehand) into empty
  tables, one after another and side by side (the faster counts), against the plain JSON -> Parquet copy
  of the same files in the same run (before and after), every step run once before to warm up; medians of
  ``--batches`` rounds. Their ratio is the highest throughput ratio any implementation that reads the
  files and writes both tables can reach here; adding Spark's ``from_json`` of the lines (the least a
  parse costs), what one that also parses can; adding Converge's parse (``parse_configured``, timed
  apart), what Converge's own steps allow.
- **traits floor**: the traits benchmark's lakehouse (1,000,000 people), the MERGE of 1,000 people's trait
  rows (spread over every file, as the benchmark touches them) and of their entry into an audience, one
  after another and side by side (the membership MERGE in a session of its own, as the refresh does), after
  two rounds to warm up; against the full refresh of the same lakehouse in the same run. Full / floor is
  the highest speed-up an incremental refresh can reach here before it reads anything. Each round first
  commits one new event for each of the same people (``benchmarks.profiles.touch``) and times the reads an
  incremental refresh cannot skip, only the columns that find the rows: the commit's change data feed,
  the profiles it touched and their graph rows (each step needs the one before), then their rows in
  silver.events, silver.orders and silver.customers, their profile rows and their memberships (one after
  another and side by side). Full / (reads + writes) is the highest speed-up any incremental refresh can
  reach here, and full / (the dependent reads + the slowest other read + the writes) a bound that holds
  even were every other read free.

Usage: python -m benchmarks.floor [--events N] [--batches N] [--people N] [--parts latency,throughput,traits]
(results appended to docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from benchmarks.machine import append_report
from benchmarks.streaming import (
    HISTORY_FILES,
    OFFERED_PER_S,
    RUNS,
    _people_for,
    _timed,
    lakehouse_with_history,
)
from pipelines import io
from pipelines.config import load_config
from pipelines.demo_data import generate
from pipelines.events import RAW_EVENT_SCHEMA, silver_events
from pipelines.identity import EDGE_KEYS, EDGE_UPSERT_SET, build_edges, identifier_observations, merge_edges
from pipelines.ingest import parse_configured
from pipelines.spark import get_spark

WORK = RUNS.parent / "floor"
BATCH_EVENTS = 2 * OFFERED_PER_S  # two seconds of the offered rate: what a 2 s trigger takes at the least


def returning_batch(history: list[Path], out: Path, events: int, seed: int) -> Path:
    """A file of ``events`` events of people the lakehouse knows: lines of ``history`` drawn at random, each
    under a new messageId (the people come back; the generator's later files hold other people)."""
    rng = random.Random(seed)
    lines = []
    for f in history:
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("messageId"):
                lines.append(event)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for event in rng.sample(lines, min(events, len(lines))):
            fh.write(json.dumps({**event, "messageId": str(uuid.UUID(int=rng.getrandbits(128)))}) + "\n")
    return out


def batch_writes(spark, cfg, files: list[Path], batch_id: int) -> tuple[dict[str, tuple], dict[str, int]]:
    """The five writes of a micro-batch over ``files``, their inputs materialised: name -> (function, args),
    and each write's number of rows."""
    raw = io.read_text_files(spark, [str(f) for f in files])
    silver = io.read(spark, cfg, "silver.events")
    bronze = raw.withColumn("batch_id", F.lit(batch_id).cast("long")).localCheckpoint()
    parsed = parse_configured(raw, cfg, silver.select("message_id", "_fingerprint")).localCheckpoint()
    events = silver_events(parsed).localCheckpoint()
    observations = identifier_observations(
        None, events, cfg.identity.blocklist, cfg.identity.normalizers, known_events=silver
    ).localCheckpoint()
    edges = merge_edges(build_edges(observations, cfg.identity.priorities)).localCheckpoint()
    # the graph rows of the profiles the batch touches (a batch recomputes whole components) and those
    # profiles' rows, as they are: what a batch that merges nobody still rewrites
    graph = io.read(spark, cfg, "gold.identity_graph")
    touched = (
        graph.join(observations.select("identifier").distinct(), "identifier", "left_semi")
        .select("profile_id")
        .distinct()
    )
    graph = graph.join(touched, "profile_id", "left_semi").localCheckpoint()
    profiles = io.read(spark, cfg, "gold.profiles").join(touched, "profile_id", "left_semi").localCheckpoint()
    rows = {
        name: df.count()
        for name, df in (
            ("bronze", bronze),
            ("silver", events),
            ("edges", edges),
            ("graph", graph),
            ("profiles", profiles),
        )
    }
    return {
        "bronze": (io.append, bronze, cfg, "bronze.events"),
        "silver": (io.merge_insert_new, events, cfg, "silver.events", ["message_id"]),
        "edges": (io.upsert_few, edges, cfg, "silver.identity_edges", EDGE_KEYS, EDGE_UPSERT_SET),
        "graph": (io.merge_upsert, graph, cfg, "gold.identity_graph", ["identifier"]),
        "profiles": (io.merge_upsert, profiles, cfg, "gold.profiles", ["profile_id"]),
    }, rows


def _run_writes(writes: dict[str, tuple], side_by_side: bool) -> tuple[float, dict[str, float]]:
    each: dict[str, float] = {}

    def one(name: str) -> None:
        fn, *args = writes[name]
        each[name] = _timed(lambda: fn(*args))

    names = list(writes)
    t0 = time.time()
    if side_by_side:
        with ThreadPoolExecutor(len(names)) as pool:
            for done in [pool.submit(one, n) for n in names]:
                done.result()
    else:
        for n in names:
            one(n)
    return time.time() - t0, each


def _floor(runs: dict[str, list[float]]) -> tuple[dict[str, float], float]:
    """The median of each way of running the writes, and the faster median: the floor."""
    medians = {k: statistics.median(v) for k, v in runs.items()}
    return medians, min(medians.values())


def latency_floor(spark, batches: int) -> dict:
    work = WORK / "latency"
    cfg, files, _ = lakehouse_with_history(spark, work, HISTORY_FILES)  # every table exists
    runs: dict[str, list[float]] = {"one after another": [], "side by side": []}
    each: dict[str, list[float]] = {}
    rows = None
    for b in range(-2, 2 * batches):  # two batches to warm up, not counted
        batch = returning_batch(files[:HISTORY_FILES], work / "batches" / f"{b + 2}.jsonl", BATCH_EVENTS, b)
        writes, rows = batch_writes(spark, cfg, [batch], 10_000 + b)
        side = b % 2 == 1
        if b < 0:
            _run_writes(writes, side)
            continue
        wall, parts = _run_writes(writes, side)
        runs["side by side" if side else "one after another"].append(wall)
        if not side:
            for k, v in parts.items():
                each.setdefault(k, []).append(v)
        print(f"batch {b} side_by_side={side}: {wall:.2f} s {parts}", flush=True)
    medians, floor = _floor(runs)
    return {
        "runs": runs,
        "medians": medians,
        "each": {k: statistics.median(v) for k, v in each.items()},
        "rows": rows,
        "floor": floor,
        "p95_floor": 1.95 * floor,
    }


def throughput_floor(spark, events: int, rounds: int) -> dict:
    work = WORK / "throughput"
    shutil.rmtree(work, ignore_errors=True)
    generate(_people_for(events), 7, work / "data", events_per_file=10_000)
    files = sorted((work / "data" / "events").glob("*.jsonl"))
    paths = [str(f) for f in files]

    def copy(i: int) -> float:
        return _timed(lambda: spark.read.json(paths).write.mode("overwrite").parquet(str(work / f"copy_{i}")))

    def writes(i: int) -> dict[str, float]:
        """Read the lines once (as the stream's batch, persisted), parse them (timed apart, and Spark's
        ``from_json`` alone), then the bronze append and the silver MERGE into tables made beforehand."""
        cfg = load_config("dev", lakehouse=str(work / f"lakehouse_{i}"))
        lines: list[DataFrame] = []  # localCheckpoint computes the frame (eager): what is timed
        out = {"read": _timed(lambda: lines.append(io.read_text_files(spark, paths).localCheckpoint()))}
        raw = lines[0]
        parsed: list[DataFrame] = []
        out["parse"] = _timed(lambda: parsed.append(parse_configured(raw, cfg).localCheckpoint()))
        # the least any parse costs: Spark's own JSON reader on the lines, into the raw event fields
        out["from_json"] = _timed(
            lambda: (
                raw.select(F.from_json("value", RAW_EVENT_SCHEMA).alias("j")).select("j.*").localCheckpoint()
            )
        )
        bronze = raw.withColumn("batch_id", F.lit(0).cast("long"))
        events = silver_events(parsed[0]).localCheckpoint()
        out["events"] = raw.count()
        io.ensure(spark, cfg, "bronze.events", bronze.schema)
        io.ensure(spark, cfg, "silver.events", events.schema)
        out["bronze"] = _timed(lambda: io.append(bronze, cfg, "bronze.events"))
        out["silver"] = _timed(lambda: io.merge_insert_new(events, cfg, "silver.events", ["message_id"]))
        # the two writes again, side by side into tables of their own: the best they overlap on 2 cores
        other = load_config("dev", lakehouse=str(work / f"lakehouse_{i}_side"))
        io.ensure(spark, other, "bronze.events", bronze.schema)
        io.ensure(spark, other, "silver.events", events.schema)
        writes = {
            "bronze": (io.append, bronze, other, "bronze.events"),
            "silver": (io.merge_insert_new, events, other, "silver.events", ["message_id"]),
        }
        out["side_by_side"] = _run_writes(writes, True)[0]
        return out

    # everything once to warm the JVM up (the first copy, parse and MERGE of a process compile their code),
    # then ``rounds`` times a copy and the steps, and a last copy; medians
    copy(0)
    writes(0)
    copies, steps = [copy(1)], []
    for r in range(rounds):
        steps.append(writes(r + 1))
        copies.append(copy(r + 2))
    w = {k: statistics.median(s[k] for s in steps) for k in steps[0]}
    baseline = statistics.median(copies)
    least = w["read"] + min(w["bronze"] + w["silver"], w["side_by_side"])
    return {
        "events": int(w["events"]),
        "copy_s": copies,
        **{f"{k}_s": w[k] for k in ("read", "bronze", "silver", "side_by_side", "parse", "from_json")},
        "ratio_writes": baseline / least,
        "ratio_with_from_json": baseline / (least + w["from_json"]),
        "ratio_with_parse": baseline / (least + w["parse"]),
    }


def traits_floor(spark, people: int, rounds: int) -> dict:
    """Issue 5's two writes alone: the traits MERGE of 1,000 people's rows into gold.profile_traits and the
    MERGE of their audience entries into gold.audience_membership, at ``people`` people (the traits
    benchmark's lakehouse), and the reads before them, against the full refresh of the same lakehouse in
    the same run."""
    from benchmarks.profiles import TOUCHED, T, synthesise, touch
    from pipelines.audiences import audience_sizes, update_membership
    from pipelines.profiles import customer_identifier, event_identifier, order_identifier
    from pipelines.refresh import refresh_traits_and_audiences, silver_or_empty

    work = WORK / "traits"
    shutil.rmtree(work, ignore_errors=True)
    cfg = load_config("dev", lakehouse=str(work / "lakehouse"))
    synthesise(spark, cfg, people)
    refresh_traits_and_audiences(spark, cfg, full=True, as_of=T)  # creates the tables
    full_s = _timed(lambda: refresh_traits_and_audiences(spark, cfg, full=True, as_of=T))
    sizes = audience_sizes(spark, cfg)
    audience = min(sizes, key=sizes.get)  # the fewest members: the most of the 1,000 enter it
    other = spark.newSession()  # the membership MERGE's own session, as the incremental refresh has
    step = people // TOUCHED

    def sources(r: int) -> tuple[DataFrame, DataFrame]:
        """1,000 people spread over every file, other ones each round: their trait rows with a new
        computed_at, and their entry into an audience they are not in."""
        ids = spark.range(TOUCHED).select(
            F.format_string("p_%08d", F.col("id") * step + r).alias("profile_id")
        )
        traits = (
            io.read(spark, cfg, "gold.profile_traits")
            .join(ids, "profile_id", "left_semi")
            .withColumn(
                "computed_at", F.lit(T).cast("timestamp") + F.expr(f"make_interval(0,0,0,0,0,0,{r + 1})")
            )
            .localCheckpoint()
        )
        members = io.read(spark, cfg, "gold.audience_membership").filter(
            (F.col("audience") == audience) & F.col("is_member")
        )
        entering = (
            ids.join(members, "profile_id", "left_anti")
            .select(F.lit(audience).alias("audience"), "profile_id", F.lit(True).alias("qualifies"))
            .localCheckpoint()
        )
        return traits, entering

    def reads(r: int, side: bool) -> tuple[float, float]:
        """The least an incremental refresh reads for the same people, after a commit of one new event
        each (``touch``): who the commit touched (its change data feed, their profiles through the graph),
        those profiles' graph rows, then their rows in the three sources, their profile rows and their
        memberships (independent: one after another or side by side). Returns (dependent part, the rest)."""
        touch(spark, cfg, 900 + r, people, r)
        v = io.version(spark, cfg, "silver.events")
        graph = io.read(spark, cfg, "gold.identity_graph").select("identifier", "profile_id")
        t0 = time.time()
        changed = (
            io.changes(spark, cfg, "silver.events", v, v)
            .select(event_identifier().alias("identifier"))
            .distinct()
            .localCheckpoint()
        )
        who = (
            graph.join(F.broadcast(changed), "identifier", "left_semi").select("profile_id").localCheckpoint()
        )
        mine = graph.join(F.broadcast(who), "profile_id", "left_semi").localCheckpoint()
        ids = F.broadcast(mine.select("identifier", "profile_id"))
        people_ = F.broadcast(mine.select("profile_id").distinct())
        dependent = time.time() - t0

        # only the columns that find the rows (the identifiers, the profile ids): the least any refresh
        # reads, whatever its traits and audiences read besides
        def rows_of(table: str, identifier: F.Column) -> DataFrame:
            source = silver_or_empty(spark, cfg, table)  # silver.customers may not exist
            return source.select(identifier.alias("identifier")).join(ids, "identifier")

        def of_people(table: str, *columns: str) -> DataFrame:
            return io.read(spark, cfg, table).select(*columns).join(people_, "profile_id", "left_semi")

        rest = {
            "events": rows_of("silver.events", event_identifier()),
            "orders": rows_of("silver.orders", order_identifier()),
            "customers": rows_of("silver.customers", customer_identifier()),
            "profiles": of_people("gold.profiles", "profile_id"),
            "memberships": of_people("gold.audience_membership", "audience", "profile_id", "is_member"),
        }
        t0 = time.time()
        if side:
            with ThreadPoolExecutor(len(rest)) as pool:
                list(pool.map(lambda df: df.localCheckpoint(), rest.values()))
        else:
            for name, df in rest.items():
                each.setdefault(name, []).append(_timed(df.localCheckpoint))
        return dependent, time.time() - t0

    def writes(r: int, side: bool) -> tuple[float, int]:
        traits, entering = sources(r)
        t = lambda: io.merge_upsert(traits, cfg, "gold.profile_traits", ["profile_id"])  # noqa: E731
        m = lambda: update_membership(entering, cfg, T, False, session=other)  # noqa: E731
        n = entering.count()
        t0 = time.time()
        if side:
            with ThreadPoolExecutor(1) as pool:
                done = pool.submit(m)
                t()
                done.result()
        else:
            t()
            m()
        return time.time() - t0, n

    runs: dict[str, list[float]] = {"one after another": [], "side by side": []}
    read_runs: dict[str, list[float]] = {"one after another": [], "side by side": []}
    each: dict[str, list[float]] = {}  # each read, one after another (the first: a warm-up round)
    dependent: list[float] = []
    entries = 0
    for r in range(-2, 2 * rounds):  # two rounds to warm up, not counted
        side = r % 2 == 1
        first, rest = reads(r + 3, side)
        wall, entries = writes(r + 3, side)
        if r >= 0:
            runs["side by side" if side else "one after another"].append(wall)
            read_runs["side by side" if side else "one after another"].append(rest)
            dependent.append(first)
        print(
            f"traits round {r} side_by_side={side}: reads {first:.2f} + {rest:.2f} s, writes {wall:.2f} s"
            f" ({entries} entries)",
            flush=True,
        )
    medians, floor = _floor(runs)
    read_medians, read_floor = _floor(read_runs)
    reads_s = statistics.median(dependent) + read_floor
    each_read = {k: statistics.median(v[1:]) for k, v in each.items()}  # after the warm-up round
    # the bound whatever runs side by side: the dependent reads, the slowest read alone, the writes
    least_s = statistics.median(dependent) + max(each_read.values()) + floor
    return {
        "people": people,
        "full_s": full_s,
        "runs": runs,
        "medians": medians,
        "floor": floor,
        "entries": entries,
        "ratio": full_s / floor,
        "dependent_reads": dependent,
        "read_runs": read_runs,
        "read_medians": read_medians,
        "reads_s": reads_s,
        "each_read": each_read,
        "least_s": least_s,
        "ratio_least": full_s / least_s,
        "ratio_with_reads": full_s / (floor + reads_s),
    }


def _runs_table(result: dict) -> list[str]:
    return [
        "| writes | runs (s) | median (s) |",
        "|---|---|---:|",
        *[
            f"| {k} | {' / '.join(f'{s:.2f}' for s in v)} | {result['medians'][k]:.2f} |"
            for k, v in result["runs"].items()
        ],
    ]


PARTS = ("latency", "throughput", "traits")


def main(events: int, batches: int, people: int, parts: tuple[str, ...] = PARTS) -> None:
    spark = get_spark(load_config("dev", lakehouse=str(WORK / "session")))
    lines = [
        "The writes issues 3 and 5 require, alone: inputs computed and materialised beforehand, no parsing,",
        "identity resolution, survivorship or trait computation in the timings, every step warmed up first",
        "(`benchmarks/floor.py` has the method); for issue 5 also the reads before its writes, timed apart."
        " No implementation of those steps is faster here.",
    ]
    if "latency" in parts:
        lat = latency_floor(spark, batches)
        print("latency floor", lat, flush=True)
        lines += [
            "",
            f"**Latency (issue 3)**: batches of {BATCH_EVENTS:,} events (two seconds at {OFFERED_PER_S:,} events/s)"
            " of people the lakehouse knows, on the latency benchmark's lakehouse; a batch's five writes (rows in"
            " the last batch: " + ", ".join(f"{k} {v:,}" for k, v in lat["rows"].items()) + ").",
            "",
            *_runs_table(lat),
            "",
            "One after another, median per write (s): "
            + ", ".join(f"{k} {v:.2f}" for k, v in lat["each"].items())
            + ".",
            "",
            f"Floor of a batch D = {lat['floor']:.2f} s; events land continuously, so an event's latency is about"
            f" D + U(0, D): p95 >= about 1.95 D = {lat['p95_floor']:.1f} s (goal <= 10 s).",
        ]
    if "throughput" in parts:
        thr = throughput_floor(spark, events, batches)
        print("throughput floor", thr, flush=True)
        lines += [
            "",
            f"**Throughput (issue 3)**: {thr['events']:,} events in files of 10,000, medians of {batches} rounds:"
            f" copy {' / '.join(f'{c:.1f}' for c in thr['copy_s'])} s; reading the lines {thr['read_s']:.1f} s"
            f" + bronze append {thr['bronze_s']:.1f} s + silver MERGE {thr['silver_s']:.1f} s (the two writes side"
            f" by side {thr['side_by_side_s']:.1f} s); Spark's from_json alone {thr['from_json_s']:.1f} s,"
            f" Converge's parse {thr['parse_s']:.1f} s. Ratio at most {thr['ratio_writes']:.2f} with the read and"
            f" the writes alone (the faster way), {thr['ratio_with_from_json']:.2f} with from_json,"
            f" {thr['ratio_with_parse']:.2f} with Converge's parse (goal >= 0.5).",
        ]
    if "traits" in parts:
        tr = traits_floor(spark, people, batches)
        print("traits floor", tr, flush=True)
        lines += [
            "",
            f"**Traits and audiences (issue 5)**: {tr['people']:,} people (the traits benchmark's lakehouse); the"
            " MERGE of 1,000 people's trait rows into gold.profile_traits and of their entry into an audience"
            f" ({tr['entries']:,} rows) into gold.audience_membership; the full refresh of the same lakehouse"
            f" {tr['full_s']:.1f} s.",
            "",
            *_runs_table(tr),
            "",
            f"Floor {tr['floor']:.2f} s: an incremental refresh is at most {tr['ratio']:.1f}x faster than the full"
            " one here (goal >= 10x), before it reads the change feeds and computes anything.",
            "",
            "The reads of the same people after a commit of one new event each (no trait or audience computed):"
            " the commit's change feed, their profiles and those profiles' graph rows"
            f" {' / '.join(f'{s:.2f}' for s in tr['dependent_reads'])} s; then their rows in silver.events,"
            " silver.orders and silver.customers, their profile rows and their memberships (only the columns that"
            " find the rows): "
            + "; ".join(
                f"{k} {' / '.join(f'{s:.2f}' for s in v)} s (median {tr['read_medians'][k]:.2f})"
                for k, v in tr["read_runs"].items()
            )
            + "; one after another, median per read (s): "
            + ", ".join(f"{k} {v:.2f}" for k, v in tr["each_read"].items())
            + f". Reads and writes {tr['floor'] + tr['reads_s']:.2f} s: at most {tr['ratio_with_reads']:.1f}x."
            f" Were every read but the slowest free: {tr['least_s']:.2f} s, at most {tr['ratio_least']:.1f}x.",
        ]
    append_report("Floors: the writes issues 3 and 5 require, alone", lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000, help="throughput input")
    p.add_argument(
        "--batches", type=int, default=3, help="runs timed each way (one after another, side by side)"
    )
    p.add_argument("--people", type=int, default=1_000_000, help="traits lakehouse")
    p.add_argument("--parts", default=",".join(PARTS), help="which floors: " + ", ".join(PARTS))
    a = p.parse_args()
    main(a.events, a.batches, a.people, tuple(a.parts.split(",")))
