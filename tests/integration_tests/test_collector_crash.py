"""Durable acknowledgements: `converge collector` is SIGKILLed (its whole process group) while clients send,
right after it acknowledged their events, three times; restarted each time. Every event it answered 200 for
must then be in silver.events (the files a killed collector left in staging are renamed in on restart;
with the Kafka sink, a 200 follows acks=all). Once per sink."""

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipelines import io
from pipelines.config import load_config
from pipelines.stream import run_stream
from tests.net import free_port, wait_healthy

CONVERGE = str(Path(sys.executable).with_name("converge"))
KEY = "crash-test-write-key"
KILLS = 3
SENDERS = 4


def _sender(port: int, prefix: str, stop: threading.Event, sent: set, acked: set, lock: threading.Lock):
    """Batches of 25 over one keep-alive connection until stopped or the server dies."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    n = 0
    while not stop.is_set():
        ids = [f"{prefix}-{n + i}" for i in range(25)]
        n += 25
        batch = [
            {"type": "track", "userId": f"u{i % 7}", "event": "Crash Test", "messageId": m}
            for i, m in enumerate(ids)
        ]
        with lock:
            sent.update(ids)
        try:
            conn.request(
                "POST",
                "/v1/batch",
                json.dumps({"batch": batch, "writeKey": KEY}),
                {"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            body = json.loads(resp.read())
        except (OSError, http.client.HTTPException, ValueError):
            return  # killed mid-request: not acknowledged
        if resp.status == 200 and body.get("accepted") == 25:
            with lock:
                acked.update(ids)


@pytest.mark.parametrize("sink", ["files", "kafka"])
def test_sigkill_right_after_acknowledgements_loses_no_acknowledged_event(
    spark, tmp_path, sink, request, report
):
    port = free_port()
    overrides: dict = {
        # files stay in staging for 60 s: every kill leaves acknowledged events only there
        "collector": {
            "port": port,
            "sink": sink,
            "roll_seconds": 60,
            "sources": {"app": {"write_key": KEY, "burst": 10**6}},
        },
        "streaming": {"max_files_per_trigger": 1000},
    }
    if sink == "kafka":
        broker = request.getfixturevalue("kafka_broker")
        overrides["streaming"] |= {
            "source": "kafka",
            "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic": "collector-crash"},
        }
    lakehouse = tmp_path / "lakehouse"
    env = os.environ | {
        "CONVERGE_ENV": "test",
        "CONVERGE_LAKEHOUSE": str(lakehouse),
        "CONVERGE_OVERRIDES": json.dumps(overrides),
    }
    log = tmp_path / "collector.log"
    sent: set[str] = set()
    acked: set[str] = set()
    lock = threading.Lock()

    def start() -> subprocess.Popen:
        with open(log, "a") as fh:
            proc = subprocess.Popen(
                [CONVERGE, "collector"], env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_healthy(port, proc, 60, log)
        return proc

    for round_ in range(KILLS):
        proc = start()
        stop = threading.Event()
        threads = [
            threading.Thread(target=_sender, args=(port, f"r{round_}s{i}", stop, sent, acked, lock))
            for i in range(SENDERS)
        ]
        for t in threads:
            t.start()
        target = len(acked) + 500
        while len(acked) < target:
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)  # right after acknowledgements, with requests in flight
        proc.wait()
        stop.set()
        for t in threads:
            t.join()

    proc = start()  # the last restart recovers the third kill's staging; then a clean stop
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    if sink == "files":
        assert log.read_text().count("recovered") >= KILLS

    cfg = load_config("test", lakehouse=str(lakehouse), overrides=overrides)
    run_stream(spark, cfg, available_now=True, update_identity=False)
    in_silver = {r.message_id for r in io.read(spark, cfg, "silver.events").select("message_id").collect()}
    missing = acked - in_silver
    assert not missing, f"{len(missing)} acknowledged events are not in silver, e.g. {sorted(missing)[:5]}"
    assert in_silver <= sent
    assert io.read(spark, cfg, "quarantine.events").count() == 0  # no torn line reached the stream
    report(
        f"{sink}: {KILLS} SIGKILLs right after acknowledgements: {len(sent)} events sent, {len(acked)} acknowledged, "
        f"all {len(acked)} in silver; {len(in_silver) - len(acked)} written but unacknowledged (in flight at a kill)"
    )
