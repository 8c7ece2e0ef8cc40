"""The collector over real HTTP on 127.0.0.1: the official Segment Python SDK, analytics.js-style requests,
and bad input; what it acknowledges reaches silver.events (or quarantine with the reason) through the stream."""

import base64
import gzip
import json
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from segment.analytics.client import Client

from pipelines import io
from pipelines.stream import run_stream
from tests.collector_tests.conftest import KEYS


def post(url: str, path: str, body, key: str | None = None, headers: dict | None = None, raw: bool = False):
    data = body if raw else json.dumps(body).encode()
    h = {"Content-Type": "application/json"} | (headers or {})
    if key:
        h["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    req = urllib.request.Request(url + path, data=data, headers=h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def drain(spark, collector):
    """Stop the collector (its open file is renamed in) and run the stream over what landed."""
    collector.stop()
    run_stream(spark, collector.cfg, available_now=True, update_identity=False)
    return io.read(spark, collector.cfg, "silver.events")


def test_official_python_sdk_events_arrive_in_silver_intact(spark, collector):
    errors = []
    client = Client(
        KEYS["server"],
        host=collector.url,
        sync_mode=True,
        max_retries=0,
        on_error=lambda e, batch: errors.append(e),
    )
    sent = [
        client.identify("user-1", {"email": "Ann@Example.com", "name": "Ann"}, anonymous_id="anon-1")[1],
        client.track(
            "user-1", "Order Completed", {"revenue": 42.5, "currency": "EUR"}, {"ip": "203.0.113.9"}
        )[1],
        client.page("user-1", "Docs", "Intro", {"path": "/docs"})[1],
        client.alias("anon-2", "user-1")[1],
    ]
    client.flush()
    assert errors == []
    silver = {r.message_id: r for r in drain(spark, collector).collect()}
    assert set(silver) == {m["messageId"] for m in sent}
    identify, track, page, alias = (silver[m["messageId"]] for m in sent)
    assert (identify.type, identify.user_id, identify.anonymous_id) == ("identify", "user-1", "anon-1")
    assert json.loads(identify.traits) == {"email": "Ann@Example.com", "name": "Ann"}
    assert identify.trait_email == "ann@example.com"
    assert (track.type, track.event, json.loads(track.properties)) == (
        "track",
        "Order Completed",
        {"revenue": 42.5, "currency": "EUR"},
    )
    context = json.loads(track.context)
    assert context["ip"] == "203.0.113.9" and context["converge"] == {"source": "server"}
    assert context["library"]["name"] == "analytics-python"
    assert page.type == "page" and json.loads(page.properties)["path"] == "/docs"
    assert (alias.type, alias.previous_id, alias.user_id) == ("alias", "anon-2", "user-1")
    for m in sent:
        row = silver[m["messageId"]]
        assert row.received_at is not None
        # the SDK's clock is this machine's: the corrected event time is within a few seconds of it
        assert abs(row.event_time.timestamp() - row.client_timestamp.timestamp()) < 5


def test_analytics_js_style_requests(spark, collector):
    # a page on another origin: the preflight and the answer carry CORS headers
    preflight = urllib.request.Request(
        f"{collector.url}/v1/t",
        method="OPTIONS",
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        },
    )
    with urllib.request.urlopen(preflight) as resp:
        assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] in (
            "*",
            "https://shop.example",
        )
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    # analytics.js: text/plain bodies, writeKey in the body, short paths; the settings endpoint
    with urllib.request.urlopen(f"{collector.url}/v1/projects/{KEYS['web']}/settings") as resp:
        settings = json.loads(resp.read())
    assert settings["integrations"]["Segment.io"]["apiKey"] == KEYS["web"]
    body = {
        "writeKey": KEYS["web"],
        "anonymousId": "a-js",
        "event": "Clicked",
        "messageId": "js-1",
        "timestamp": "2026-11-20T10:00:00.000Z",
        "sentAt": "2026-11-20T10:00:01.000Z",
    }
    status, answer, headers = post(
        collector.url, "/v1/t", body, headers={"Content-Type": "text/plain", "Origin": "https://shop.example"}
    )
    assert (status, answer) == (200, {"success": True})
    assert headers["Access-Control-Allow-Origin"] == "*"
    gz = gzip.compress(json.dumps({"anonymousId": "a-js", "name": "Home", "messageId": "js-2"}).encode())
    status, _, _ = post(
        collector.url, "/v1/p", gz, key=KEYS["web"], headers={"Content-Encoding": "gzip"}, raw=True
    )
    assert status == 200
    # screen and group by their short paths; no messageId: the collector makes one
    for path, body in (
        ("/v1/s", {"userId": "u-js", "name": "Settings"}),
        ("/v1/g", {"userId": "u-js", "groupId": "acme", "traits": {"plan": "team"}}),
    ):
        assert post(collector.url, path, body, KEYS["server"])[:2] == (200, {"success": True})
    silver = {r.message_id: r for r in drain(spark, collector).collect()}
    generated = {m for m in silver if m.startswith("converge-")}
    assert set(silver) - generated == {"js-1", "js-2"} and len(generated) == 2
    # the connection's address is stamped for the web source (it sent none), not for the server source
    assert json.loads(silver["js-1"].context)["ip"] == "127.0.0.1"
    assert all("ip" not in json.loads(silver[m].context) for m in generated)
    assert silver["js-1"].event == "Clicked" and silver["js-2"].type == "page"
    assert {silver[m].type for m in generated} == {"screen", "group"}
    assert {silver[m].group_id for m in generated} == {None, "acme"}


def _stalled_request(port: int) -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(
            b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
            b'{"userId": "u'
        )
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_bad_input_gets_clear_answers_and_nothing_is_lost(spark, collector, report):
    url = collector.url
    track = {"userId": "u1", "event": "E"}
    cases = {
        "invalid_json": post(url, "/v1/track", b"{not json", KEYS["web"], raw=True),
        "not_a_json_object": post(url, "/v1/track", [1, 2], KEYS["web"]),
        "event_too_large": post(url, "/v1/track", track | {"properties": {"x": "y" * 40_000}}, KEYS["web"]),
        "missing_identity": post(url, "/v1/track", {"event": "E"}, KEYS["web"]),
        "missing_event_name": post(url, "/v1/track", {"userId": "u1"}, KEYS["web"]),
        "batch_too_large": post(url, "/v1/batch", {"batch": [track] * 2501}, KEYS["web"]),
        "batch_bytes": post(url, "/v1/batch", {"batch": [track | {"p": "z" * 30_000}] * 20}, KEYS["web"]),
        "gzip_bomb": post(
            url,
            "/v1/track",
            gzip.compress(b" " * 50_000_000),
            KEYS["web"],
            {"Content-Encoding": "gzip"},
            True,
        ),
        "bad_key": post(url, "/v1/track", track, "no-such-key"),
        "disabled_key": post(url, "/v1/track", track, KEYS["off"]),
        "no_key": post(url, "/v1/track", track),
    }
    expected = {
        "invalid_json": (400, "invalid_json"),
        "not_a_json_object": (400, "not_a_json_object"),
        "event_too_large": (413, "event_too_large"),
        "missing_identity": (400, "missing_identity"),
        "missing_event_name": (400, "missing_event_name"),
        "batch_too_large": (413, "batch_too_large"),
        "batch_bytes": (413, "batch_too_large"),
        "gzip_bomb": (413, "body_too_large"),
        "bad_key": (401, "unauthorized"),
        "disabled_key": (401, "unauthorized"),
        "no_key": (401, "unauthorized"),
    }
    for name, (status, body, _) in cases.items():
        assert (status, body["code"]) == expected[name], (name, status, body)
        assert body["message"]
    assert _stalled_request(collector.port) == (
        408,
        {"code": "body_timeout", "message": "the body did not arrive within 1.5 s"},
    )

    # a lone surrogate (legal JSON escape, not UTF-8) is kept as its escape: accepted, not a 500
    odd = b'{"userId": "u1", "event": "Odd", "messageId": "odd-1", "properties": {"x": "\\ud800"}}'
    assert post(url, "/v1/track", odd, KEYS["web"], raw=True)[:2] == (200, {"success": True})

    # rate limit: burst 5 at 1 event/s
    five = {"batch": [track | {"type": "track", "messageId": f"r{i}"} for i in range(5)]}
    assert post(url, "/v1/batch", five, KEYS["slow"])[:2] == (
        200,
        {"success": True, "accepted": 5, "rejected": []},
    )
    status, body, headers = post(url, "/v1/track", track, KEYS["slow"])
    assert (status, body["code"]) == (429, "rate_limited") and int(headers["Retry-After"]) >= 1

    # a mixed batch: valid events accepted, invalid ones written for quarantine, the answer counts both
    batch = [
        {"type": "track", "userId": "u1", "event": "Ok", "messageId": "ok-1"},
        {"type": "identify", "anonymousId": "a1", "messageId": "ok-2"},
        {"type": "track", "userId": "u1", "messageId": "bad-1"},
        {"type": "alias", "userId": "u1", "messageId": "bad-2"},
        {"type": "track", "event": "NoOne", "messageId": "bad-3"},
        "not an object",
    ]
    status, body, _ = post(url, "/v1/batch", {"batch": batch}, KEYS["web"])
    assert status == 200 and body["accepted"] == 2
    assert [(r["index"], r["code"]) for r in body["rejected"]] == [
        (2, "missing_event_name"),
        (3, "missing_previous_id"),
        (4, "missing_identity"),
        (5, "not_a_json_object"),
    ]
    with urllib.request.urlopen(f"{url}/health") as resp:
        assert resp.status == 200  # the server never fell over
    with urllib.request.urlopen(f"{url}/metrics") as resp:
        metrics = resp.read().decode()
    assert "converge_collector_rejects_total{" in metrics and 'reason="event_too_large"} 1' in metrics
    assert "converge_collector_fsync_seconds_count" in metrics

    silver = drain(spark, collector)
    assert {r.message_id for r in silver.collect()} == {"odd-1", "ok-1", "ok-2", "r0", "r1", "r2", "r3", "r4"}
    quarantine = io.read(spark, collector.cfg, "quarantine.events").collect()
    assert sorted(r.reason for r in quarantine) == sorted(
        ["missing_event_name", "missing_previous_id", "missing_identity", "not_a_json_object"]
    )
    assert all(r.source_file and r.source_position is not None for r in quarantine)
    report(
        f"{len(cases) + 2} bad requests answered 4xx with a code; batch of {len(batch)}: 2 accepted, "
        f"{len(quarantine)} quarantined by the stream with the collector's reasons"
    )


NODE_CLIENT = Path(__file__).with_name("node")


def test_official_node_sdk_events_arrive_in_silver_intact(spark, collector):
    # @segment/analytics-node, pinned by the committed package-lock.json; `make test` installs it
    assert (NODE_CLIENT / "node_modules" / "@segment" / "analytics-node").is_dir(), (
        f"the Node SDK is not installed: run `make test` (or `npm ci` in {NODE_CLIENT})"
    )
    out = subprocess.run(
        ["node", "send.mjs", collector.url, KEYS["server"]],
        cwd=NODE_CLIENT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["statuses"] and set(result["statuses"]) == {200}
    sent = {e["messageId"]: e for e in result["sent"]}
    assert len(sent) == 4
    silver = {r.message_id: r for r in drain(spark, collector).collect()}
    assert set(silver) == set(sent)
    by_type = {r.type: r for r in silver.values()}
    assert (by_type["identify"].user_id, by_type["identify"].anonymous_id) == ("node-user", "node-anon")
    assert json.loads(by_type["identify"].traits) == {"email": "Node@Example.com", "plan": "pro"}
    assert by_type["track"].event == "Signed Up"
    assert json.loads(by_type["track"].properties) == {"source": "node", "seats": 3}
    assert json.loads(by_type["page"].properties)["path"] == "/start"
    assert (by_type["alias"].previous_id, by_type["alias"].user_id) == ("node-anon-2", "node-user")
    for message_id, event in sent.items():
        row = silver[message_id]
        context = json.loads(row.context)
        assert context["library"]["name"] == "@segment/analytics-node"
        assert context["converge"] == {"source": "server"}
        assert row.client_timestamp is not None and row.received_at is not None
        assert abs(row.event_time.timestamp() - row.client_timestamp.timestamp()) < 5
        assert event["type"] == row.type


def test_kafka_sink_acknowledges_after_acks_all_and_the_stream_reads_it(spark, tmp_path, kafka_broker):
    from pipelines.config import load_config
    from tests.collector_tests.conftest import Running

    topic = "collector-events"
    cfg = load_config(
        "test",
        lakehouse=str(tmp_path / "lakehouse"),
        overrides={
            "collector": {"sink": "kafka", "sources": {"web": {"write_key": KEYS["web"]}}},
            "streaming": {
                "source": "kafka",
                "kafka": {"bootstrap_servers": kafka_broker.bootstrap_servers, "topic": topic},
            },
        },
    )
    running = Running(cfg).start()
    batch = [
        {"type": "track", "userId": f"k{i % 3}", "event": "Kafka", "messageId": f"k-{i}"} for i in range(50)
    ]
    batch.append({"type": "track", "event": "NoOne", "messageId": "k-bad"})
    status, body, _ = post(running.url, "/v1/batch", {"batch": batch}, KEYS["web"])
    assert (
        status == 200
        and body["accepted"] == 50
        and [r["code"] for r in body["rejected"]] == ["missing_identity"]
    )
    with urllib.request.urlopen(f"{running.url}/metrics") as resp:
        assert "converge_collector_fsync_seconds_count" in resp.read().decode()
    running.stop()
    run_stream(spark, cfg, available_now=True, update_identity=False)
    silver = io.read(spark, cfg, "silver.events").collect()
    assert {r.message_id for r in silver} == {f"k-{i}" for i in range(50)}
    assert all(r._source_file.startswith(f"kafka://{topic}/") for r in silver)
    quarantine = io.read(spark, cfg, "quarantine.events").collect()
    assert [(r.reason, r.source_file.startswith(f"kafka://{topic}/")) for r in quarantine] == [
        ("missing_identity", True)
    ]
