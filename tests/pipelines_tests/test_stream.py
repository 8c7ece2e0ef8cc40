"""The clickstream stream: per-batch identity and profile updates equal a full rebuild; Kafka as a source."""

import json
import os
from datetime import date, datetime
from pathlib import Path

import pytest
from dagster import AssetKey, RunRequest, SkipReason, build_sensor_context
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from assets.resources import SparkResource
from jobs.automation import new_event_files, stream_progress
from jobs.replay import replay_events as replay_events_job
from pipelines import io
from pipelines.demo_data import generate
from pipelines.ingest import parse_configured
from pipelines.profiles import build_profiles
from pipelines.reconcile import reconcile
from pipelines.refresh import silver_or_empty
from pipelines.replay import replay_events
from pipelines.resolve import resolve
from pipelines.stream import read_status, run_stream
from pipelines.traits import compute_traits
from tests.kafka.broker import produce
from tests.pipelines_tests.test_events import ev

PROFILE_FIELDS = ["first_name", "last_name", "email", "phone", "event_count", "first_seen", "last_seen"]


def members(graph) -> dict[str, frozenset]:
    """profile_id -> its identifiers, collected once (``graph`` may also be this dict, already collected)."""
    if isinstance(graph, dict):
        return graph
    groups: dict[str, set] = {}
    for r in graph.select("identifier", "profile_id").collect():
        groups.setdefault(r.profile_id, set()).add(r.identifier)
    return {k: frozenset(v) for k, v in groups.items()}


def partition(graph) -> set[frozenset]:
    """A graph as the set of its profiles' identifier sets (ids may differ between runs; people may not)."""
    return set(members(graph).values())


def profiles_by_members(graph, profiles, fields=PROFILE_FIELDS) -> dict[frozenset, tuple]:
    """Each profile's attributes keyed by its identifier set, so two runs compare without profile ids."""
    members_of = members(graph)
    return {
        members_of[r.profile_id]: tuple(r[c] for c in fields)
        for r in profiles.collect()
        if r.profile_id in members_of
    }


def full_rebuild(spark, cfg):
    """What the batch job builds from the same silver: the whole resolver, then every profile; and the
    resolver's result (cut edges, oversized components)."""
    result, _, _ = resolve(
        silver_or_empty(spark, cfg, "silver.customers"), io.read(spark, cfg, "silver.events"), cfg.identity
    )
    graph = result.graph.localCheckpoint()
    profiles = build_profiles(
        graph,
        silver_or_empty(spark, cfg, "silver.customers"),
        silver_or_empty(spark, cfg, "silver.orders"),
        io.read(spark, cfg, "silver.events"),
        cfg.sources.priority,
        cfg.profiles.survivorship,
    )
    return graph, profiles, result


def assert_stream_equals_full_rebuild(spark, cfg):
    graph, profiles, result = full_rebuild(spark, cfg)
    live_graph = io.read(spark, cfg, "gold.identity_graph")
    assert partition(live_graph) == partition(graph)
    # the quarantine tables a batch rewrites only when they change hold what the rebuild quarantines
    for table, frame, cols in (
        ("quarantine.identity_edges", result.cut_edges, ["src", "dst", "reason"]),
        (
            "quarantine.identity_components",
            result.oversized,
            ["component_size", "most_connected_identifiers"],
        ),
    ):
        live_rows = sorted(tuple(r) for r in io.read(spark, cfg, table).select(*cols).collect())
        assert live_rows == sorted(tuple(r) for r in frame.select(*cols).collect()), table
    live = profiles_by_members(live_graph, io.read(spark, cfg, "gold.profiles"))
    assert live == profiles_by_members(graph, profiles)
    assert io.read(spark, cfg, "gold.profiles").count() == len(live), "no profile row without its people"
    if cfg.streaming.update_traits:
        # traits refreshed batch by batch for the touched people = computed for everyone at once (the
        # ones without a time window: each batch evaluates windows at its own time)
        stable = [n for n, t in cfg.traits.definitions.items() if not t.time_based]
        full = compute_traits(
            graph,
            io.read(spark, cfg, "silver.events"),
            silver_or_empty(spark, cfg, "silver.orders"),
            silver_or_empty(spark, cfg, "silver.customers"),
            cfg.traits,
            datetime.now(),
        )
        live_traits = profiles_by_members(live_graph, io.read(spark, cfg, "gold.profile_traits"), stable)
        assert live_traits == profiles_by_members(graph, full, stable)
        assert io.read(spark, cfg, "gold.profile_traits").count() == len(live_traits)


def _commits_since_creation(spark, cfg, name: str) -> list[str]:
    """Each commit after the table's first, oldest first: ``MERGE``, or ``WRITE <mode>``."""
    history = DeltaTable.forPath(spark, io.path_of(cfg, name)).history().filter("version > 0")
    return [
        f"{r.operation} {r.operationParameters.get('mode', '')}".strip()
        for r in history.orderBy("version").collect()
    ]


def test_stream_batches_keep_identity_and_profiles_equal_to_a_full_rebuild(spark, cfg, monkeypatch):
    cfg.identity.probabilistic = None
    cfg.streaming.max_files_per_trigger = 1
    cfg.streaming.upsert_few_min_mb = 0  # the graph and profiles by io.upsert_few whatever their size
    generate(30, 11, cfg.lakehouse.landing, events_per_file=120)
    bad = ["{broken", ev(messageId="nobody", anonymousId=None), "[1]"]
    (cfg.lakehouse.landing / "events" / "zz-bad.jsonl").write_text("\n".join(bad) + "\n")
    files = sorted((cfg.lakehouse.landing / "events").glob("*.jsonl"))
    assert len(files) >= 2, "several micro-batches"
    batches = run_stream(spark, cfg, available_now=True)
    assert len(batches) == len(files)
    assert_stream_equals_full_rebuild(spark, cfg)
    # upsert_few: an update MERGE of the rows the table held, then an append of the new ones
    for table in ("gold.identity_graph", "gold.profiles"):
        assert {"MERGE", "WRITE Append"} <= set(_commits_since_creation(spark, cfg, table)), table
    status = read_status(cfg)
    assert status["state"] == "stopped" and status["backlog_files"] == 0
    rows = status["batches"]
    assert [r["input_rows"] for r in rows] == [b.rows for b in batches] and rows[-1]["batch_duration_ms"] > 0
    updated = [r for r in rows if "identity_new_events" in r]  # the all-rejects file updates nothing
    assert len(updated) == len(rows) - 1 and all(r["identity_touched_identifiers"] > 0 for r in updated)
    # tables a batch leaves as they were get no commit (version 0: their creation)
    assert io.version(spark, cfg, "quarantine.identity_components") == 0, "nothing is oversized here"
    # the refresher's last refresh, which run_stream waited for, covers the last batch that changed identity
    assert status["traits"]["covers_batch"] == max(r["batch_id"] for r in updated)
    # nothing lost: bronze = silver + quarantine + duplicates, derived again from bronze
    parsed = parse_configured(io.read(spark, cfg, "bronze.events"), cfg)
    rec = reconcile(
        "events",
        parsed,
        ["message_id"],
        io.read(spark, cfg, "silver.events"),
        io.read(spark, cfg, "quarantine.events"),
    )
    assert rec.balanced and rec.quarantined > 0 and rec.duplicates > 0, rec
    # a quarantined line says where it came from: file and line number
    q = io.read(spark, cfg, "quarantine.events").first()
    lines = Path(q.source_file).read_text(encoding="utf-8").split("\n")
    assert lines[q.source_position - 1] == q.raw

    # the Dagster sensors read the same state without Spark
    monkeypatch.setenv("CONVERGE_LAKEHOUSE", str(cfg.lakehouse.root))
    assert isinstance(new_event_files(build_sensor_context()), SkipReason), "nothing new landed"
    (cfg.lakehouse.landing / "events" / "zzz-new.jsonl").write_text(ev(messageId="n1") + "\n")
    request = new_event_files(build_sensor_context())
    assert isinstance(request, RunRequest) and request.run_key.startswith("1:")
    observed = stream_progress(build_sensor_context()).asset_events[0]
    assert observed.asset_key == AssetKey(["silver", "events"])
    assert (
        observed.metadata["stream_state"].value == "stopped" and observed.metadata["backlog_files"].value == 1
    )


@pytest.fixture
def kafka_cfg(cfg, kafka_broker, request):
    cfg.identity.probabilistic = None
    cfg.streaming.source = "kafka"
    cfg.streaming.kafka.bootstrap_servers = kafka_broker.bootstrap_servers
    cfg.streaming.kafka.topic = f"events-{request.node.name[-40:].replace('[', '-').replace(']', '')}"
    return cfg


def test_kafka_source_loads_each_message_once_and_says_where_rejects_came_from(spark, kafka_cfg, monkeypatch):
    cfg, topic = kafka_cfg, kafka_cfg.streaming.kafka.topic
    writes: list[tuple[str, str]] = []  # (io function, table) of each upsert
    for fn in ("merge_upsert", "upsert_few"):
        real = getattr(io, fn)

        def spy(df, cfg_, name, *args, _fn=fn, _real=real, **kwargs):
            writes.append((_fn, name))
            return _real(df, cfg_, name, *args, **kwargs)

        monkeypatch.setattr(io, fn, spy)
    servers = cfg.streaming.kafka.bootstrap_servers
    first = [
        ev(messageId="k1", userId="u1", type="identify", event=None, traits={"email": "ann@example.com"}),
        ev(messageId="k2", anonymousId="a9", userId="u1"),
        ev(messageId="k2", anonymousId="a9", userId="u1"),  # a producer retry
        "{not json",
        None,  # a tombstone
    ]
    produce(spark, servers, topic, first)
    batches = run_stream(spark, cfg, available_now=True)
    assert sum(b.rows for b in batches) == 5 and sum(b.inserted for b in batches) == 2
    q = {r.raw: r for r in io.read(spark, cfg, "quarantine.events").collect()}
    assert q["{not json"].reason == "invalid_json" and q[None].reason == "invalid_json"
    assert q["{not json"].source_file.startswith(f"kafka://{topic}/")
    offsets = {r.source_position for r in io.read(spark, cfg, "bronze.events").collect()}
    assert len(offsets) >= 3 and min(offsets) == 0  # Kafka offsets, per partition
    graph = {r.identifier: r.profile_id for r in io.read(spark, cfg, "gold.identity_graph").collect()}
    assert graph["email:ann@example.com"] == graph["user_id:u1"] == graph["anonymous_id:a9"]

    # a restart reads only what arrived since; a reused messageId with other content is a conflict
    produce(spark, servers, topic, [ev(messageId="k3", anonymousId="a9"), ev(messageId="k1", event="Other")])
    again = run_stream(spark, cfg, available_now=True)
    assert sum(b.rows for b in again) == 2 and sum(b.inserted for b in again) == 1
    reasons = [r.reason for r in io.read(spark, cfg, "quarantine.events").collect()]
    assert sorted(reasons) == ["invalid_json", "invalid_json", "message_id_conflict"]
    assert io.read(spark, cfg, "silver.events").count() == 3
    assert_stream_equals_full_rebuild(spark, cfg)
    # tables this small (conf streaming.upsert_few_min_mb) take a batch's rows by one MERGE
    assert ("merge_upsert", "gold.profiles") in writes and ("upsert_few", "gold.profiles") not in writes
    status = read_status(cfg)
    assert status["source"] == "kafka" and status["batches"][-1]["kafka_offsets_behind_latest"] in (0, "0")
    assert json.loads(json.dumps(status))  # plain JSON for `converge stream status --format json`


def test_events_only_lakehouse_gets_profiles_from_the_stream(spark, cfg):
    """No CRM load has run: the stream still builds the graph and profiles (empty silver batch tables)."""
    cfg.identity.probabilistic = None
    (cfg.lakehouse.landing / "events").mkdir(parents=True)
    (cfg.lakehouse.landing / "events" / "a.jsonl").write_text(
        "\n".join(
            [
                ev(
                    messageId="i1",
                    type="identify",
                    event=None,
                    userId="u5",
                    traits={"email": "bo@example.com"},
                ),
                ev(messageId="t1", userId="u5", anonymousId="d1"),
                "",
                ev(messageId="t2", anonymousId="d2"),
            ]
        )
        + "\n"
    )
    run_stream(spark, cfg, available_now=True)
    profiles = io.read(spark, cfg, "gold.profiles")
    assert profiles.count() == 2
    assert profiles.filter(F.col("email") == "bo@example.com").first().event_count == 2
    assert not io.exists(spark, cfg, "silver.customers")
    assert_stream_equals_full_rebuild(spark, cfg)


def test_a_failing_traits_refresh_stops_the_stream_and_says_why(spark, cfg, monkeypatch):
    """The refresher is a thread beside the stream: its failure is not lost in it. The query stops,
    ``run_stream`` raises with the cause and the status says failed; the batch's profiles stand."""
    import pipelines.stream as stream

    def broken(*args, **kwargs):
        raise ValueError("trait orders_90d does not compile")

    monkeypatch.setattr(stream, "refresh_traits_and_audiences", broken)
    cfg.identity.probabilistic = None
    (cfg.lakehouse.landing / "events").mkdir(parents=True)
    lines = [ev(messageId="f1", userId="u7", anonymousId="d7"), ev(messageId="f2", anonymousId="d8")]
    (cfg.lakehouse.landing / "events" / "a.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RuntimeError, match="trait orders_90d does not compile"):
        run_stream(spark, cfg, available_now=True)
    status = read_status(cfg)
    assert status["state"] == "failed" and "trait orders_90d does not compile" in status["error"]
    assert io.read(spark, cfg, "gold.profiles").count() == 2


def _rows(df):
    return sorted(tuple(str(v) for v in r) for r in df.collect())


def test_replaying_days_from_bronze_rebuilds_the_same_silver(spark, cfg):
    """Kappa: silver.events and its quarantine for a day, rebuilt from bronze, equal what the stream wrote,
    directly and as a partition of the Dagster backfill job."""
    generate(24, 13, cfg.lakehouse.landing, events_per_file=70)
    events = cfg.lakehouse.landing / "events"
    files = sorted(events.glob("*.jsonl"))
    # an event re-sent a day later (a duplicate across days) and a conflicting reuse of a messageId
    first = json.loads(files[0].read_text().splitlines()[0])
    (events / "zz-late.jsonl").write_text(
        json.dumps(first)
        + "\n"
        + json.dumps(first | {"event": "Something Else", "type": "track"})
        + "\n{bad\n"
    )
    days = ["2026-11-18", "2026-11-19", "2026-11-20"]
    for i, f in enumerate([*files, events / "zz-late.jsonl"]):
        t = datetime.fromisoformat(f"{days[min(i, 2)]}T12:00:00+00:00").timestamp() + i
        os.utime(f, (t, t))
    run_stream(spark, cfg, available_now=True, update_identity=False)
    silver, quarantine = (_rows(io.read(spark, cfg, t)) for t in ("silver.events", "quarantine.events"))
    assert any("message_id_conflict" in r for r in quarantine)

    stats = replay_events(spark, cfg, date(2026, 11, 19))
    assert sum(b.rows for b in stats) > 0
    assert _rows(io.read(spark, cfg, "silver.events")) == silver
    assert _rows(io.read(spark, cfg, "quarantine.events")) == quarantine

    resources = {"spark": SparkResource(env="test", lakehouse=str(cfg.lakehouse.root))}
    result = replay_events_job.execute_in_process(partition_key="2026-11-20", resources=resources)
    assert result.success
    assert _rows(io.read(spark, cfg, "silver.events")) == silver
    assert _rows(io.read(spark, cfg, "quarantine.events")) == quarantine
    # the replayed day's lines went through again: the backfill observed them on silver/events
    observed = [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    assert observed and observed[0].event_specific_data.asset_observation.metadata["replay_rows"].value >= 3


def test_a_second_stream_on_the_same_checkpoint_is_refused_while_the_first_lives(tmp_path):
    """The checkpoint lock is a kernel flock: held by a live process it refuses a second runner with a
    clear error; when the holder dies (even by SIGKILL) it is free again."""
    import subprocess
    import sys
    import time

    from pipelines.stream import file_lock

    lock = tmp_path / "events_stream.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pipelines.stream import file_lock; from pathlib import Path\n"
            f"with file_lock(Path({str(lock)!r}), 'the files stream', wait=False):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = f"the files stream is already running \\(pid {holder.pid}\\)"
        with pytest.raises(RuntimeError, match=refused), file_lock(lock, "the files stream", wait=False):
            pass
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.2)
    with file_lock(lock, "the files stream", wait=False):
        assert lock.read_text() == f"pid {os.getpid()}"


def test_the_streams_writers_share_the_writes_lock_and_a_waiting_deletion_goes_first(cfg):
    """A micro-batch and the traits refresher hold the writes lock side by side; a deletion (whose VACUUM
    must see no uncommitted file) waits for them, and a writer arriving after the deletion waits behind it,
    so writers taking turns never keep a deletion out."""
    import threading
    import time

    from pipelines.stream import writes_lock

    order: list[str] = []

    def take(name: str, shared: bool) -> threading.Thread:
        def run() -> None:
            with writes_lock(cfg, shared=shared):
                order.append(name)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    with writes_lock(cfg, shared=True):  # a micro-batch
        take("refresher", shared=True).join(10)
        assert order == ["refresher"], "a second writer gets in beside the first"
        deletion = take("deletion", shared=False)
        time.sleep(0.5)
        writer = take("next batch", shared=True)
        time.sleep(0.5)
        assert order == ["refresher"], "the deletion waits for the batch, the next batch for the deletion"
    deletion.join(10)
    writer.join(10)
    assert order == ["refresher", "deletion", "next batch"]
