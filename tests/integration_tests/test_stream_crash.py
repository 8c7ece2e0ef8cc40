"""Exactly once under crashes: `converge stream` is killed with SIGKILL (the whole process group: Python and
its JVM) at random moments at least five times while events arrive, restarted each time, and then
silver holds exactly the distinct valid messageIds sent, bronze every line once, and the identity graph
and profiles equal those of a clean single run. Once for the landing folder, once for Kafka."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipelines import io
from pipelines.config import load_config
from pipelines.demo_data import generate
from pipelines.ingest import parse_configured
from pipelines.reconcile import reconcile
from pipelines.stream import checkpoint_dir, read_status, run_stream
from tests.kafka.broker import produce
from tests.pipelines_tests.test_stream import partition, profiles_by_members

KILLS = 5
CONVERGE = str(Path(sys.executable).with_name("converge"))


def _start(env: dict, log: Path) -> subprocess.Popen:
    with open(log, "a") as fh:
        return subprocess.Popen(
            [CONVERGE, "stream"], env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait(
    condition, timeout_s: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"stream exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()[-4000:]}"
            )
        time.sleep(0.5)
    raise AssertionError(
        f"timed out after {timeout_s}s waiting for {what}:\n{log.read_text()[-4000:] if log else ''}"
    )


def _committed(cfg) -> bool:
    """Every batch the stream planned is committed (its foreachBatch, identity included, is done)."""
    cp = checkpoint_dir(cfg)
    planned = [int(p.name) for p in (cp / "offsets").glob("[0-9]*")]
    done = [int(p.name) for p in (cp / "commits").glob("[0-9]*")]
    return bool(planned) and max(planned) == max(done or [-1])


@pytest.mark.parametrize("source", ["files", "kafka"])
def test_sigkill_at_random_moments_loses_and_doubles_nothing(spark, tmp_path, source, request, report):
    rng = random.Random(f"sigkill-{source}")
    data = tmp_path / "data"
    generate(36, 3, data, events_per_file=120)
    files = sorted((data / "events").glob("*.jsonl"))
    lines = [line for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    overrides: dict = {
        "streaming": {"source": source, "trigger": "1 second", "max_files_per_trigger": 1},
        "identity": {"probabilistic": {"enabled": False}},
    }
    if source == "kafka":
        broker = request.getfixturevalue("kafka_broker")
        overrides["streaming"]["kafka"] = {
            "bootstrap_servers": broker.bootstrap_servers,
            "topic": "sigkill-events",
            "max_offsets_per_trigger": 120,
        }
    lakehouse = tmp_path / "lakehouse"
    cfg = load_config("test", lakehouse=str(lakehouse), overrides=overrides)
    env = os.environ | {
        "CONVERGE_ENV": "test",
        "CONVERGE_LAKEHOUSE": str(lakehouse),
        "CONVERGE_OVERRIDES": json.dumps(overrides),
    }
    log = tmp_path / "stream.log"

    # events keep arriving while the stream is killed and restarted: a file renamed in (or a file's lines
    # sent to Kafka) every few seconds
    landing = cfg.lakehouse.landing / "events"
    landing.mkdir(parents=True, exist_ok=True)
    sent: list[int] = []

    def producer():
        for f in files:
            if source == "files":
                tmp = landing / f".{f.name}.tmp"
                shutil.copy(f, tmp)
                os.replace(tmp, landing / f.name)
            else:
                produce(
                    spark,
                    broker.bootstrap_servers,
                    "sigkill-events",
                    f.read_text(encoding="utf-8").splitlines(),
                )
            sent.append(1)
            time.sleep(6)

    feeder = threading.Thread(target=producer, daemon=True)
    feeder.start()

    kills = 0
    while kills < KILLS:
        proc = _start(env, log)

        def running(p=proc):
            status = read_status(cfg)
            return status is not None and status["pid"] == p.pid and status["state"] == "running"

        _wait(running, 180, "the stream to start", proc, log)
        time.sleep(rng.uniform(1, 30))  # somewhere in a batch: bronze, silver, edges, staging or apply
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1

    feeder.join()
    proc = _start(env, log)
    try:

        def bronze_done() -> bool:
            table = "bronze.events"
            return io.exists(spark, cfg, table) and io.read(spark, cfg, table).count() >= len(lines)

        _wait(lambda: bronze_done() and _committed(cfg), 600, "every event to be processed", proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert kills >= 5 and len(sent) == len(files)

    # exactly once: bronze has every line once, silver every distinct valid messageId once
    bronze = io.read(spark, cfg, "bronze.events")
    assert bronze.count() == len(lines)
    expected = parse_configured(io.read_text_files(spark, [str(f) for f in files]), cfg)
    valid = {
        r.message_id
        for r in expected.filter("_reject_reason IS NULL").select("message_id").distinct().collect()
    }
    silver = io.read(spark, cfg, "silver.events")
    assert silver.count() == len(valid)
    assert {r.message_id for r in silver.select("message_id").collect()} == valid
    rejected = expected.filter("_reject_reason IS NOT NULL").count()
    assert io.read(spark, cfg, "quarantine.events").count() == rejected
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
    clean_root = tmp_path / "clean"
    clean = load_config(
        "test",
        lakehouse=str(clean_root),
        overrides={
            "identity": {"probabilistic": {"enabled": False}},
            "streaming": {"max_files_per_trigger": 100},
        },
    )
    shutil.copytree(data / "events", clean.lakehouse.landing / "events")
    run_stream(spark, clean, available_now=True)
    live_graph, clean_graph = (
        io.read(spark, cfg, "gold.identity_graph"),
        io.read(spark, clean, "gold.identity_graph"),
    )
    assert partition(live_graph) == partition(clean_graph)
    assert profiles_by_members(live_graph, io.read(spark, cfg, "gold.profiles")) == profiles_by_members(
        clean_graph, io.read(spark, clean, "gold.profiles")
    )
    assert io.read(spark, cfg, "gold.profiles").count() == io.read(spark, clean, "gold.profiles").count()
    report(
        f"{source}: {kills} SIGKILLs, {len(lines)} lines sent = bronze {bronze.count()}; silver {silver.count()} "
        f"(= distinct valid messageIds); quarantined {rejected}; duplicates {rec.duplicates}; "
        f"{io.read(spark, cfg, 'gold.profiles').count()} profiles = the clean run's"
    )
