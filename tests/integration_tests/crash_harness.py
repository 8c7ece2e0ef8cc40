"""The SIGKILL run shared by the CI crash test (small) and the streaming benchmark (>= 200,000 events).

`converge stream` is killed with SIGKILL (the whole process group: Python and its JVM) at random moments
while events keep arriving, restarted each time, and then: bronze holds every line sent once, silver every
distinct valid messageId once, quarantine the expected rejects, the reconciliation balances, and the
identity graph and profiles equal those of a clean single run over the same events.
"""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines import io
from pipelines.config import load_config
from pipelines.demo_data import generate
from pipelines.ingest import parse_configured
from pipelines.reconcile import reconcile
from pipelines.stream import checkpoint_dir, read_status, run_stream
from tests.kafka.broker import produce
from tests.pipelines_tests.test_stream import members, partition, profiles_by_members

CONVERGE = str(Path(sys.executable).with_name("converge"))


@dataclass
class CrashRun:
    """What a crash run is asked to do."""

    source: str  # files | kafka
    people: int
    events_per_file: int
    feed_interval_s: float  # a file renamed in (or its lines sent to Kafka) this often
    kills: int = 5
    kill_after_s: tuple[float, float] = (1, 30)  # a kill lands this long after the stream reports running
    max_files_per_trigger: int = 1
    drain_timeout_s: float = 600
    seed: int = 3
    env: str = "test"  # the conf environment of the stream and of the clean run


def _start(env: dict, log: Path) -> subprocess.Popen:
    with open(log, "a") as fh:
        return subprocess.Popen(
            [CONVERGE, "stream"], env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait(condition, timeout_s: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"stream exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()[-4000:]}"
            )
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}:\n{log.read_text()[-4000:]}")


def _committed(cfg) -> bool:
    """Every batch the stream planned is committed (its foreachBatch, identity included, is done)."""
    cp = checkpoint_dir(cfg)
    planned = [int(p.name) for p in (cp / "offsets").glob("[0-9]*")]
    done = [int(p.name) for p in (cp / "commits").glob("[0-9]*")]
    return bool(planned) and max(planned) == max(done or [-1])


# A clean run's result by its input: the CI test's two sources send the same generated events, so the
# second compares with the first's clean run instead of running the same one again (a minute or two here).
_CLEAN_RUNS: dict[str, dict] = {}


def _clean_run(spark, workdir: Path, run: CrashRun, events: Path, files: list[Path]) -> dict:
    """One ``available_now`` run of ``files`` in a single batch on a fresh lakehouse: its partition of the
    identifiers into people, their profiles keyed by members, the number of profiles and its seconds."""
    digest = hashlib.sha256(run.env.encode())
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    key = digest.hexdigest()
    if key not in _CLEAN_RUNS:
        clean = load_config(
            run.env,
            lakehouse=str(workdir / "clean"),
            overrides={
                "identity": {"probabilistic": {"enabled": False}},
                "streaming": {"max_files_per_trigger": len(files)},
            },
        )
        shutil.copytree(events, clean.lakehouse.landing / "events")
        t1 = time.time()
        run_stream(spark, clean, available_now=True)
        seconds = round(time.time() - t1, 1)
        graph = members(io.read(spark, clean, "gold.identity_graph"))
        profiles = io.read(spark, clean, "gold.profiles")
        _CLEAN_RUNS[key] = {
            "partition": partition(graph),
            "profiles": profiles_by_members(graph, profiles),
            "count": profiles.count(),
            "seconds": seconds,
            "runs": 0,
        }
    _CLEAN_RUNS[key]["runs"] += 1
    return _CLEAN_RUNS[key]


def crash_run(spark, workdir: Path, run: CrashRun, broker=None) -> dict:
    """Feed, kill ``run.kills`` times, restart, drain; assert exactly-once and equality with a clean run.
    Returns the counts (and timings) the test prints and the benchmark records."""
    rng = random.Random(f"sigkill-{run.source}-{run.people}")
    data = workdir / "data"
    generate(run.people, run.seed, data, events_per_file=run.events_per_file)
    files = sorted((data / "events").glob("*.jsonl"))
    lines = [line for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    topic = f"sigkill-events-{run.people}"
    overrides: dict = {
        "streaming": {
            "source": run.source,
            "trigger": "1 second",
            "max_files_per_trigger": run.max_files_per_trigger,
            # kills also land between io.upsert_few's two commits, and the clean run (one MERGE at this
            # size) checks it against a MERGE
            "upsert_few_min_mb": 0,
        },
        "identity": {"probabilistic": {"enabled": False}},
    }
    if run.source == "kafka":
        overrides["streaming"]["kafka"] = {
            "bootstrap_servers": broker.bootstrap_servers,
            "topic": topic,
            "max_offsets_per_trigger": run.events_per_file * run.max_files_per_trigger,
        }
    lakehouse = workdir / "lakehouse"
    cfg = load_config(run.env, lakehouse=str(lakehouse), overrides=overrides)
    env = os.environ | {
        "CONVERGE_ENV": run.env,
        "CONVERGE_LAKEHOUSE": str(lakehouse),
        "CONVERGE_OVERRIDES": json.dumps(overrides),
    }
    log = workdir / "stream.log"

    # events keep arriving while the stream is killed and restarted
    landing = cfg.lakehouse.landing / "events"
    landing.mkdir(parents=True, exist_ok=True)
    sent: list[int] = []

    def producer():
        for f in files:
            if run.source == "files":
                tmp = landing / f".{f.name}.tmp"
                shutil.copy(f, tmp)
                os.replace(tmp, landing / f.name)
            else:
                produce(spark, broker.bootstrap_servers, topic, f.read_text(encoding="utf-8").splitlines())
            sent.append(1)
            time.sleep(run.feed_interval_s)

    t0 = time.time()
    feeder = threading.Thread(target=producer, daemon=True)
    feeder.start()

    kills = 0
    while kills < run.kills:
        proc = _start(env, log)

        def running(p=proc):
            status = read_status(cfg)
            return status is not None and status["pid"] == p.pid and status["state"] == "running"

        _wait(running, 180, "the stream to start", proc, log)
        time.sleep(rng.uniform(*run.kill_after_s))  # somewhere in a batch: bronze, silver, identity
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1

    feeder.join()
    proc = _start(env, log)
    try:

        def bronze_done() -> bool:
            table = "bronze.events"
            return io.exists(spark, cfg, table) and io.read(spark, cfg, table).count() >= len(lines)

        _wait(
            lambda: bronze_done() and _committed(cfg),
            run.drain_timeout_s,
            "every event to be processed",
            proc,
            log,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    crashed_s = time.time() - t0
    assert kills >= run.kills and len(sent) == len(files)

    # exactly once: bronze has every line once, silver every distinct valid messageId once
    bronze = io.read(spark, cfg, "bronze.events")
    n_bronze = bronze.count()
    assert n_bronze == len(lines)
    expected = parse_configured(io.read_text_files(spark, [str(f) for f in files]), cfg)
    valid = {
        r.message_id
        for r in expected.filter("_reject_reason IS NULL").select("message_id").distinct().collect()
    }
    silver = io.read(spark, cfg, "silver.events")
    silver_ids = [r.message_id for r in silver.select("message_id").collect()]
    n_silver = len(silver_ids)
    assert n_silver == len(valid)
    assert set(silver_ids) == valid
    rejected = expected.filter("_reject_reason IS NOT NULL").count()
    quarantined = io.read(spark, cfg, "quarantine.events").count()
    assert quarantined == rejected
    rec = reconcile(
        "events",
        parse_configured(bronze, cfg),
        ["message_id"],
        silver,
        io.read(spark, cfg, "quarantine.events"),
    )
    assert rec.balanced, rec

    # the same people as a clean single run over the same events (profile ids may differ: the order
    # in which components first appeared differs; the people and their attributes may not)
    clean = _clean_run(spark, workdir, run, data / "events", files)
    live_graph = members(io.read(spark, cfg, "gold.identity_graph"))
    assert partition(live_graph) == clean["partition"]
    profiles = io.read(spark, cfg, "gold.profiles")
    assert profiles_by_members(live_graph, profiles) == clean["profiles"]
    n_profiles = profiles.count()
    assert n_profiles == clean["count"]
    return {
        "source": run.source,
        "kills": kills,
        "lines": len(lines),
        "bronze": n_bronze,
        "silver": n_silver,
        "quarantined": quarantined,
        "duplicates": rec.duplicates,
        "profiles": n_profiles,
        "crash_run_s": round(crashed_s, 1),
        "clean_run_s": clean["seconds"],
        "clean_run_shared": clean["runs"] > 1,
    }


def describe(counts: dict) -> str:
    return (
        f"{counts['source']}: {counts['kills']} SIGKILLs, {counts['lines']} lines sent = bronze "
        f"{counts['bronze']}; silver {counts['silver']} (= distinct valid messageIds); quarantined "
        f"{counts['quarantined']}; duplicates {counts['duplicates']}; {counts['profiles']} profiles = the "
        "clean run's"
    )
