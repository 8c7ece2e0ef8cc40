"""The clickstream stream: landing files or Kafka -> bronze, silver, quarantine, identity and profiles.

One micro-batch, exactly once whatever crashes:

1. bronze.events (append), silver.events (MERGE of unseen messageIds) and quarantine.events (append), each
   with Delta's transaction id (the checkpoint's app id, the batch id): a replayed batch commits nothing
   twice (``pipelines.ingest.process_event_batch``).
2. The events silver holds *from this batch* (same file and position) give new identifier observations;
   their edges are MERGEd into silver.identity_edges under the same transaction id.
3. The identity tables and profiles are updated for the components those identifiers touch
   (``incremental_identity``). Five tables change together and Delta has no multi-table transaction, so
   the result is computed once into a staging folder under the checkpoint (write-ahead), then applied
   table by table, each write with the transaction id. A crash during the apply replays the same staged
   result; a staged result whose input tables someone else changed meanwhile (a full rebuild ran while
   the stream was down) is computed again.
4. Traits and audience memberships are refreshed for the profiles whose rows changed since the last
   refresh (``pipelines.refresh``: Delta change data feed; the versions read are kept in the traits
   commit, so a crash just recomputes the same people). This runs beside the stream, in a thread of its
   own (``TraitsRefresher``), not inside the micro-batch: the next batch, and so the next events'
   profiles, need not wait for it. Batches that finish while a refresh runs are taken by the next one
   together; when the query stops, a last refresh covers its last batch.

Identity updates hold an inter-process lock (``identity_lock``) that the full rebuild takes too, so the
two never interleave; refreshes of traits hold ``traits_lock`` (the Dagster asset's full refresh too).
The stream's progress goes to a status file that ``converge stream status`` and the Dagster sensor read
without Spark.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines import io
from pipelines.config import Config
from pipelines.identity import EDGE_KEYS, EDGE_UPSERT_SET, build_edges, identifier_observations, merge_edges
from pipelines.identity_guards import CUT_EDGE_SCHEMA
from pipelines.identity_incremental import (
    Retyped,
    edge_replacement,
    events_near,
    incremental_identity,
    retyped_edges,
)
from pipelines.ingest import BatchStats, process_event_batch
from pipelines.plans import broadcast_if_small
from pipelines.profile_ids import MERGES_SCHEMA, REGISTRY_SCHEMA
from pipelines.profiles import build_profiles
from pipelines.refresh import refresh_traits_and_audiences, silver_or_empty
from pipelines.timing import PhaseTimer

QUERY_NAME = "converge_events"
STATUS_FILE = "converge_status.json"
GRAPH_SCHEMA = "identifier string, id_type string, id_value string, profile_id string, component_size long"
OVERSIZED_SCHEMA = "component_id string, component_size long, most_connected_identifiers array<string>"
# the tables a batch's identity update upserts into (and deletes from), by one MERGE or by io.upsert_few
UPSERTED_TABLES = ("gold.identity_graph", "gold.profiles")
# the tables an identity update reads and writes, in the order the staged result is applied
GOLD_TABLES = [
    "gold.profile_merges",
    "gold.profile_ids",
    "quarantine.identity_edges",
    "quarantine.identity_components",
    "gold.identity_graph",
    "gold.profiles",
]


def checkpoint_dir(cfg: Config) -> Path:
    """The stream's checkpoint: one per source (offsets of files and of Kafka partitions differ)."""
    return cfg.lakehouse.checkpoints / (
        "events_stream" if cfg.streaming.source == "files" else "events_kafka"
    )


def event_source(spark: SparkSession, cfg: Config) -> DataFrame:
    """The configured clickstream source as lines: value, source_file, source_position, loaded_at."""
    s = cfg.streaming
    if s.source == "kafka":
        k = s.kafka
        return io.read_kafka_stream(
            spark, k.bootstrap_servers, k.topic, k.starting_offsets, k.max_offsets_per_trigger, k.options
        )
    return io.read_text_stream(spark, cfg.lakehouse.landing / "events", "*.jsonl", s.max_files_per_trigger)


@contextmanager
def file_lock(path: Path, what: str, wait: bool = True, shared: bool = False) -> Iterator[None]:
    """An inter-process lock (flock: released by the kernel when the holder dies), exclusive unless
    ``shared``. Two opens of the same file conflict even inside one process (flock locks an open file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            fcntl.flock(fh, mode | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.seek(0)
            raise RuntimeError(
                f"{what} is already running ({fh.read().strip() or 'another process'})"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def identity_lock(cfg: Config):
    """Held by every writer of the identity tables (a stream's batch, the full rebuild)."""
    return file_lock(cfg.lakehouse.root / "_locks" / "identity.lock", "an identity update")


def traits_lock(cfg: Config):
    """Held by every refresh of traits and audiences (the stream's refresher, the Dagster asset). Taken
    after ``writes_lock`` and before ``identity_lock`` wherever they are held together."""
    return file_lock(cfg.lakehouse.root / "_locks" / "traits.lock", "a traits refresh")


@contextmanager
def writes_lock(cfg: Config, shared: bool = False) -> Iterator[None]:
    """Held shared by the stream for each micro-batch and by its traits refresher, exclusively by a
    deletion for its whole run: a deletion's VACUUM must never see files written but not yet committed
    (it would remove them), while the stream's two writers may work side by side. Taken before
    ``identity_lock`` wherever both are held.

    flock does not make new shared holders wait for a waiting exclusive one, so two writers that take
    turns could keep a deletion out for ever: a gate lock in front (a turnstile) is passed by each shared
    holder on its way in and held by the deletion while it waits and works."""
    locks = cfg.lakehouse.root / "_locks"
    with ExitStack() as held:
        gate = held.enter_context(ExitStack())
        gate.enter_context(file_lock(locks / "writes.gate", "a lakehouse write"))
        held.enter_context(file_lock(locks / "writes.lock", "a lakehouse write", shared=shared))
        if shared:
            gate.close()  # through the turnstile
        yield


@dataclass
class IdentityStats(PhaseTimer):
    new_events: int = 0
    touched_identifiers: int = 0
    profiles_written: int = 0
    replayed_staging: bool = False
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step, for `stream status`


def _ensure_identity_tables(spark: SparkSession, cfg: Config) -> None:
    for name, schema in (
        ("gold.identity_graph", GRAPH_SCHEMA),
        ("gold.profile_ids", REGISTRY_SCHEMA),
        ("gold.profile_merges", MERGES_SCHEMA),
        ("quarantine.identity_edges", CUT_EDGE_SCHEMA),
        ("quarantine.identity_components", OVERSIZED_SCHEMA),
    ):
        if not io.exists(spark, cfg, name):
            io.ensure(spark, cfg, name, spark.createDataFrame([], schema).schema)


def _stage_identity(
    spark: SparkSession,
    cfg: Config,
    obs: DataFrame,
    stage: Path,
    built_at: str,
    stats: IdentityStats,
    retyped: Retyped | None = None,
) -> None:
    """Compute the identity update of the new events' identifier observations ``obs`` (and of the aliases
    they re-read, ``retyped``) and write it to ``stage`` (complete when _COMPLETE)."""
    shutil.rmtree(stage, ignore_errors=True)
    base = io.versions(spark, cfg, GOLD_TABLES)
    silver = io.read(spark, cfg, "silver.events")
    with stats.phase("components"):
        result = incremental_identity(
            obs,
            io.read(spark, cfg, "silver.identity_edges"),
            io.read(spark, cfg, "gold.identity_graph"),
            io.read(spark, cfg, "quarantine.identity_edges"),
            io.read(spark, cfg, "quarantine.identity_components"),
            io.read(spark, cfg, "gold.profile_ids"),
            cfg.identity,
            built_at,
            retyped,
        )
    assert result.touched is not None
    with stats.phase("components"):
        touched = result.touched.withColumnRenamed("id", "identifier").localCheckpoint()
        graph = result.graph.localCheckpoint()
    new_rows = graph.join(touched, "identifier", "left_semi")
    graph_delta = io.upserts_and_deletes(
        new_rows, touched.join(new_rows, "identifier", "left_anti"), "identifier"
    )
    previous = io.read(spark, cfg, "gold.identity_graph")
    rebuilt = new_rows.select("profile_id").distinct()
    gone = (
        previous.join(touched, "identifier", "left_semi")
        .select("profile_id")
        .distinct()
        .join(rebuilt, "profile_id", "left_anti")
    )
    out = {
        "graph_delta": graph_delta,
        "registry": result.registry_changes,
        "changes": result.changes,
        "cut": result.cut_edges,
        "oversized": result.oversized,
    }
    profiles = build_profiles(
        graph.join(rebuilt, "profile_id", "left_semi"),
        silver_or_empty(spark, cfg, "silver.customers"),
        silver_or_empty(spark, cfg, "silver.orders"),
        silver,
        cfg.sources.priority,
        cfg.profiles.survivorship,
    )
    out["profiles_delta"] = io.upserts_and_deletes(profiles, gone, "profile_id")
    _write_staged_frames(out, stage, stats)
    stats.touched_identifiers = io.read_staged(spark, stage / "graph_delta").count()
    (stage / "base_versions.json").write_text(json.dumps(base))
    # decided here, from the tables as this update read them, so a replay writes each table as the first
    # attempt began to (upsert_few's second commit has a txn id of its own, which one MERGE would not make)
    least = cfg.streaming.upsert_few_min_mb * 2**20
    few = [t for t in UPSERTED_TABLES if io.size_in_bytes(spark, cfg, t) >= least]
    (stage / "upsert_few.json").write_text(json.dumps(few))
    (stage / "_COMPLETE").write_text(built_at)


def _write_staged_frames(frames: dict[str, DataFrame], stage: Path, stats: IdentityStats) -> None:
    """Write a batch's staged frames side by side, one thread each. Each write is a few small Spark jobs
    whose time goes largely to planning, scheduling and file commits on the driver, so they overlap even
    on 2 cores: in the latency benchmark the six took 6.3 s one after another and 5.3-5.5 s side by side
    (the profiles' frame, the longest, sets the pace). Parquet writes set no session conf, so nothing
    leaks between the threads. The phases ``stage_<name>`` are each write's own wall time (they
    overlap); ``stage`` is the whole."""

    def write(name: str, df: DataFrame) -> None:
        with stats.phase(f"stage_{name}"):
            io.write_staged(df, stage / name)

    with stats.phase("stage"), ThreadPoolExecutor(len(frames), thread_name_prefix="converge-stage") as pool:
        for done in [pool.submit(write, name, df) for name, df in frames.items()]:
            done.result()  # a failed write raises here


def _apply_identity(spark: SparkSession, cfg: Config, stage: Path, app_id: str, batch_id: int) -> int:
    """Write a staged identity update, each table with the batch's transaction id. Returns profiles written.

    A table with nothing to change gets no commit (most batches merge no profiles, and the cut edges and
    oversized components, recomputed over the whole graph, rarely change): a commit costs most of a second
    here, and an overwrite a new copy of the table. A replay then finds that table at its base version,
    which ``_staging_is_current`` accepts."""

    def staged(name: str) -> DataFrame:
        return io.read_staged(spark, stage / name)

    changes = staged("changes")
    if not changes.isEmpty():
        io.append(changes, cfg, "gold.profile_merges", app_id, batch_id)
    registry = staged("registry")
    if not registry.isEmpty():
        io.merge_upsert(registry, cfg, "gold.profile_ids", ["profile_id"], None, app_id, batch_id)
    io.overwrite_if_changed(staged("cut"), cfg, "quarantine.identity_edges", app_id, batch_id)
    io.overwrite_if_changed(staged("oversized"), cfg, "quarantine.identity_components", app_id, batch_id)
    # a batch's few thousand rows into a large graph or profiles table: an update MERGE that broadcasts them,
    # then an append (conf streaming.upsert_few_min_mb; a stage written before that file: the graph alone);
    # the registry's 759 rows into 1 M rows without deletion vectors went the other way, 3.2 -> 4.1 s
    plan = stage / "upsert_few.json"
    few = json.loads(plan.read_text()) if plan.exists() else ["gold.identity_graph"]

    def upsert(df: DataFrame, name: str, key: str) -> int:
        write = io.upsert_few if name in few else io.merge_upsert
        return write(df, cfg, name, [key], None, app_id, batch_id, "_delete")

    upsert(staged("graph_delta"), "gold.identity_graph", "identifier")
    profiles = staged("profiles_delta")
    if not io.exists(spark, cfg, "gold.profiles"):
        io.overwrite(
            profiles.filter(~F.col("_delete")).drop("_delete"), cfg, "gold.profiles", app_id, batch_id
        )
        return int(profiles.count())
    return upsert(profiles, "gold.profiles", "profile_id")


def _staging_is_current(spark: SparkSession, cfg: Config, stage: Path, app_id: str, batch_id: int) -> bool:
    """A staged update still applies if every table is as it was read, or its last commit is ours."""
    base = json.loads((stage / "base_versions.json").read_text())
    ours = f"{app_id}:{batch_id}"
    for table, version in base.items():
        if not io.exists(spark, cfg, table):
            continue
        if io.version(spark, cfg, table) == version:
            continue
        last = io.commits(spark, cfg, table, limit=1)
        if not last or last[0]["user_metadata"] != ours:
            return False
    return True


def add_edges(
    spark: SparkSession,
    cfg: Config,
    observations: DataFrame,
    txn_app_id: str | None = None,
    txn_version: int | None = None,
    new_events: DataFrame | None = None,
    events: DataFrame | None = None,
    customers: DataFrame | None = None,
    near: DataFrame | None = None,
) -> Retyped | None:
    """MERGE the edges of new records' identifier ``observations`` into silver.identity_edges (the table a
    rebuild would have: ``merge_edges``' rules for an edge seen again). A batch's edges are few: they are
    broadcast, and ``io.upsert_few`` updates the edges seen again and appends the new ones instead of one
    MERGE that shuffles the whole table (at 1 M people, 4,554 edges into 5.5 M: 11.8 -> 8.6 s, medians of 4).

    With ``new_events`` (the records of ``observations``; ``events``: every event, the new ones included;
    ``customers``: every CRM record, if any; ``near``: ``events_near``, if the caller has it), earlier
    aliases they re-read get their edges rebuilt (``retyped_edges``, a second MERGE); what changed is
    returned for ``incremental_identity``."""
    edges = merge_edges(build_edges(observations, cfg.identity.priorities)).localCheckpoint()
    io.ensure(spark, cfg, "silver.identity_edges", edges.schema)
    io.upsert_few(
        broadcast_if_small(edges),
        cfg,
        "silver.identity_edges",
        EDGE_KEYS,
        EDGE_UPSERT_SET,
        txn_app_id,
        txn_version,
    )
    if new_events is None or events is None:
        return None
    retyped = retyped_edges(new_events, events, customers, cfg.identity, near)
    if retyped is not None:
        io.merge_upsert(
            edge_replacement(io.read(spark, cfg, "silver.identity_edges"), retyped),
            cfg,
            "silver.identity_edges",
            EDGE_KEYS,
            None,
            None if txn_app_id is None else f"{txn_app_id}/retyped",
            txn_version,
            "_delete",
        )
    return retyped


def update_identity_for_batch(
    spark: SparkSession, cfg: Config, batch_events: DataFrame, app_id: str, batch_id: int
) -> IdentityStats:
    """Steps 2 and 3 of the module docstring for one micro-batch's accepted, deduplicated events."""
    t0 = time.time()
    stats = IdentityStats()
    stage = checkpoint_dir(cfg) / "identity_staging" / str(batch_id)
    with identity_lock(cfg):
        _ensure_identity_tables(spark, cfg)
        silver = io.read(spark, cfg, "silver.events")
        keys = ["message_id", "_source_file", "_source_position"]
        with stats.phase("new_events"):
            new_events = silver.join(batch_events.select(*keys), keys, "left_semi").localCheckpoint()
            n_new = new_events.count()
        with stats.phase("observe"):
            near = events_near(new_events, silver)  # read by the observations and the re-read check
            obs = identifier_observations(
                None, new_events, cfg.identity.blocklist, cfg.identity.normalizers, known_events=near
            ).localCheckpoint()
        with stats.phase("edges"):
            customers = silver_or_empty(spark, cfg, "silver.customers")
            retyped = add_edges(spark, cfg, obs, app_id, batch_id, new_events, silver, customers, near)
        stats.replayed_staging = (stage / "_COMPLETE").exists() and _staging_is_current(
            spark, cfg, stage, app_id, batch_id
        )
        if not stats.replayed_staging:
            built_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
            _stage_identity(spark, cfg, obs, stage, built_at, stats, retyped)
        with io.user_metadata(spark, f"{app_id}:{batch_id}"), stats.phase("apply"):
            stats.profiles_written = _apply_identity(spark, cfg, stage, app_id, batch_id)
    # earlier batches' staging is no longer needed once this batch's is applied
    for old in stage.parent.iterdir():
        if old.name.isdigit() and int(old.name) < batch_id:
            shutil.rmtree(old, ignore_errors=True)
    stats.new_events, stats.seconds = n_new, round(time.time() - t0, 2)
    return stats


class TraitsRefresher:
    """Step 4 of the module docstring, in a thread beside the stream: after a micro-batch's identity
    update (``notify``), the traits and audience memberships of the people touched since the last refresh
    are recomputed. Batches that finish while a refresh runs are covered together by the next one; ``stop``
    runs what is pending, then ends the thread.

    Its writes carry the stream's transaction app id and, as version, the newest batch they cover, so a
    replayed refresh commits nothing twice. It has a Spark session of its own (same SparkContext): Delta's
    idempotency and commit-metadata settings are session confs, and the micro-batch sets them at the same
    time. It reads the tables while a batch may be writing them; what a refresh reads half-updated (a graph
    row whose profile row is not written yet) changes again afterwards, so the next refresh, which reads
    the change feeds from the versions this one recorded, takes those people again."""

    def __init__(self, spark: SparkSession, cfg: Config, app_id: str) -> None:
        self.session = spark.newSession()
        self.cfg, self.app_id = cfg, app_id
        self.error: BaseException | None = None
        self.last: dict | None = None  # the last refresh, for `stream status`
        self._wake = threading.Condition()
        self._pending: int | None = None  # the newest batch no refresh has covered yet
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="converge-traits-refresher", daemon=True)
        self._thread.start()

    def notify(self, batch_id: int) -> None:
        with self._wake:
            self._pending = batch_id if self._pending is None else max(self._pending, batch_id)
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._stopping:
                    self._wake.wait()
                if self._pending is None:
                    return
                batch_id, self._pending = self._pending, None
            try:
                with writes_lock(self.cfg, shared=True), traits_lock(self.cfg):
                    stats = refresh_traits_and_audiences(
                        self.session, self.cfg, txn_app_id=self.app_id, txn_version=batch_id
                    )
            except BaseException as exc:  # raised in the stream's thread (``run_stream``)
                self.error = exc
                return
            self.last = {
                "covers_batch": batch_id,
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "mode": stats.mode,
                "profiles": stats.profiles,
                "membership_changes": stats.membership_changes,
                "seconds": stats.seconds,
                "phases": stats.phases,
            }


@dataclass
class StreamStatus:
    """What ``converge stream status`` shows; written after every micro-batch, read without Spark."""

    source: str
    query: str
    pid: int
    state: str = "starting"
    started_at: str = ""
    updated_at: str = ""
    batches: list[dict] = field(default_factory=list)  # the last ones: Spark's progress + Converge's stats
    traits: dict | None = None  # the last refresh of traits and audiences (``TraitsRefresher``)
    error: str | None = None

    def write(self, path: Path) -> None:
        self.updated_at = datetime.now(UTC).isoformat(timespec="seconds")
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(asdict(self), indent=1, default=str))
        tmp.replace(path)


def _progress_row(progress: dict, stats: BatchStats | None, ident: IdentityStats | None) -> dict:
    sources = progress.get("sources") or [{}]
    metrics = sources[0].get("metrics") or {}
    duration_ms = (progress.get("durationMs") or {}).get("triggerExecution")
    # Spark counts source rows: whole files for the file source; Converge's own count is lines (events)
    rows = stats.rows if stats is not None else progress.get("numInputRows")
    row = {
        "batch_id": progress.get("batchId"),
        "timestamp": progress.get("timestamp"),
        "input_rows": rows,
        "processed_rows_per_second": round(rows * 1000 / duration_ms, 1) if rows and duration_ms else 0.0,
        "batch_duration_ms": duration_ms,
        "kafka_offsets_behind_latest": metrics.get("maxOffsetsBehindLatest"),
        "end_offset": sources[0].get("endOffset"),
    }
    if stats is not None:
        row |= {k: v for k, v in stats.as_dict().items() if k != "batch_id"}
    if ident is not None:
        row |= {f"identity_{k}": v for k, v in asdict(ident).items()}
    return row


def run_stream(
    spark: SparkSession,
    cfg: Config,
    available_now: bool = False,
    timeout_s: float | None = None,
    keep_batches: int = 20,
    update_identity: bool | None = None,
) -> list[BatchStats]:
    """Run the clickstream query; ``available_now`` stops when the backlog is done, otherwise it runs until
    ``timeout_s`` (None: until the process is stopped). ``update_identity`` (default: from conf) updates
    identity and profiles per batch; a caller that rebuilds them right after turns it off.
    Returns the stats of the micro-batches it ran."""
    if update_identity is None:
        update_identity = cfg.streaming.update_identity
    checkpoint = checkpoint_dir(cfg)
    app_id = io.checkpoint_app_id(checkpoint, "converge-events")
    status = StreamStatus(source=cfg.streaming.source, query=QUERY_NAME, pid=os.getpid())
    status.started_at = datetime.now(UTC).isoformat(timespec="seconds")
    status_path = checkpoint / STATUS_FILE
    processed: list[BatchStats] = []
    identity: dict[int, IdentityStats] = {}

    refresher: TraitsRefresher | None = None

    def handle(batch: DataFrame, batch_id: int) -> None:
        if refresher is not None and refresher.error is not None:
            raise RuntimeError("the traits refresh failed") from refresher.error
        with writes_lock(cfg, shared=True):
            stats, events = process_event_batch(batch, batch_id, cfg, app_id, return_events=True)
            if update_identity and stats.accepted:
                identity[batch_id] = update_identity_for_batch(spark, cfg, events, app_id, batch_id)
        if refresher is not None and batch_id in identity:
            refresher.notify(batch_id)
        processed.append(stats)

    with file_lock(
        checkpoint.parent / f"{checkpoint.name}.lock", f"the {cfg.streaming.source} stream", wait=False
    ):
        if update_identity and cfg.streaming.update_traits:
            refresher = TraitsRefresher(spark, cfg, app_id)
            last = _last_committed_batch(checkpoint)
            if last is not None:
                # a process that died may have left its last batches' traits undone: catch up first
                refresher.notify(last)
        writer = (
            event_source(spark, cfg)
            .writeStream.queryName(QUERY_NAME)
            .option("checkpointLocation", str(checkpoint))
            .foreachBatch(handle)
        )
        trigger = available_now or cfg.streaming.trigger == "available_now"
        writer = (
            writer.trigger(availableNow=True)
            if trigger
            else writer.trigger(processingTime=cfg.streaming.trigger)
        )
        try:
            query = writer.start()
        except BaseException:
            if refresher is not None:
                refresher.stop()
            raise
        status.state = "running"
        status.write(status_path)
        deadline = None if timeout_s is None else time.time() + timeout_s
        seen: set[int] = set()

        def progress_rows() -> list[dict]:
            by_id = {s.batch_id: s for s in processed}
            rows = []
            for p in query.recentProgress:
                batch_id = cast(int, p.get("batchId"))  # an int in every progress Spark reports
                rows.append(_progress_row(p, by_id.get(batch_id), identity.get(batch_id)))
            return rows[-keep_batches:]

        try:
            while query.isActive:
                wait = 1.0 if deadline is None else max(0.1, min(1.0, deadline - time.time()))
                # seconds as a float: PySpark converts to milliseconds (its stub says int)
                query.awaitTermination(wait)  # type: ignore[arg-type]
                rows = progress_rows()
                traits = refresher.last if refresher is not None else None
                if {r["batch_id"] for r in rows} - seen or traits != status.traits:
                    seen |= {r["batch_id"] for r in rows}
                    status.batches, status.traits = rows, traits
                    status.write(status_path)
                if deadline is not None and time.time() >= deadline:
                    query.stop()
                if refresher is not None and refresher.error is not None:
                    query.stop()  # reported below
        finally:
            if query.isActive:
                query.stop()
            if refresher is not None:
                refresher.stop()  # after a last refresh covering the last batch
                status.traits = refresher.last
            # the last batches may have finished after the loop's last look (a short availableNow run)
            status.batches = progress_rows() or status.batches
            exc: BaseException | None = query.exception()
            if exc is None and refresher is not None and refresher.error is not None:
                exc = refresher.error
            status.state = "failed" if exc else "stopped"
            status.error = str(exc) if exc else None
            status.write(status_path)
    if exc is not None:
        raise RuntimeError(f"event stream failed: {exc}") from exc
    return processed


def _last_committed_batch(checkpoint: Path) -> int | None:
    """The id of the last micro-batch the query committed, from its checkpoint's commit log."""
    commits = checkpoint / "commits"
    ids = [int(f.name) for f in commits.iterdir() if f.name.isdigit()] if commits.is_dir() else []
    return max(ids, default=None)


def read_status(cfg: Config) -> dict | None:
    """The last status the stream wrote, with liveness and the file backlog worked out now."""
    path = checkpoint_dir(cfg) / STATUS_FILE
    if not path.exists():
        return None
    status = json.loads(path.read_text())
    alive = _pid_alive(int(status["pid"]))
    if status["state"] == "running" and not alive:
        status["state"] = "dead (the process is gone; restart `converge stream` to resume)"
    status["alive"] = alive and status["state"] == "running"
    if cfg.streaming.source == "files":
        status["backlog_files"] = len(file_backlog(cfg))
    last = status["batches"][-1] if status["batches"] else None
    if last and last.get("timestamp"):
        at = datetime.fromisoformat(last["timestamp"].replace("Z", "+00:00"))
        status["seconds_since_last_batch"] = round((datetime.now(UTC) - at).total_seconds(), 1)
    return status


def file_backlog(cfg: Config) -> list[str]:
    """Landed event files the file stream has not taken into a batch yet (no Spark needed)."""
    seen = seen_files(checkpoint_dir(cfg))
    return [f for f in io.landing_files(cfg.lakehouse.landing / "events", "*.jsonl") if f not in seen]


def seen_files(checkpoint: Path) -> set[str]:
    """Files the file source has taken into a batch, from its log in the checkpoint (plain JSON lines)."""
    return set(files_by_batch(checkpoint))


def files_by_batch(checkpoint: Path) -> dict[str, int]:
    """Each file the file source has taken, with the micro-batch id that took it (the source's log names
    its entries by batch id; compacted entries list earlier batches' files too, so the lowest id wins)."""
    log = checkpoint / "sources" / "0"
    taken: dict[str, int] = {}
    if not log.is_dir():
        return taken
    for f in log.iterdir():
        if f.name.startswith("."):
            continue
        batch_id = int(f.name.split(".")[0])
        for line in f.read_text(errors="replace").splitlines()[1:]:
            try:
                entry = json.loads(line)
                path = io.local_path(entry["path"])
            except (ValueError, KeyError):
                continue
            # entries carry the batch that took them (batchId); a compacted file lists many batches
            bid = int(entry.get("batchId", batch_id))
            taken[path] = min(bid, taken.get(path, bid))
    return taken


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
