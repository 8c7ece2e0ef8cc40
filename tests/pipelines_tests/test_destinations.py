"""Consent and destination syncs: exactly the consented, policy-allowed fields, exactly once across a
rerun and a crash-resume, against a real HTTP server, a real Kafka broker and real files."""

import hashlib
import json
from datetime import datetime, timedelta

import pyarrow.csv as pacsv
import pytest
from confluent_kafka import Consumer

from pipelines import io
from pipelines.audiences import update_membership
from pipelines.config import ConfigError, load_config
from pipelines.consent import consent_history, current_consent
from pipelines.destinations import sync_destination
from pipelines.senders import DeliveryFailed
from tests.net import Receiver

T = datetime(2026, 11, 20, 12, 0, 0)
GRAPH = [  # Ann on two devices (one merged profile), Bob, Cy (never answered), Di, Ed, Flo
    ("user_id:ann", "p1"), ("anonymous_id:ann-phone", "p1"), ("anonymous_id:ann-laptop", "p1"),
    ("user_id:bob", "p2"), ("user_id:cy", "p3"), ("user_id:di", "p4"), ("user_id:ed", "p5"), ("user_id:flo", "p6"),
]  # fmt: skip
EVENT_SCHEMA = "message_id string, type string, user_id string, anonymous_id string, event_time timestamp, context string"


def _consent_event(mid, at, prefs, user=None, anon=None):
    context = json.dumps({"ip": "203.0.113.9", "consent": {"categoryPreferences": prefs}})
    return (mid, "track", user, anon, at, context)


CONSENT_EVENTS = [
    # Ann: "no" on the laptop, then "yes" on the phone (a later event time, though it arrived first)
    _consent_event("c1", T - timedelta(days=2), {"Marketing": False}, anon="ann-laptop"),
    _consent_event("c2", T - timedelta(days=1), {"Marketing": True, "Advertising": False}, anon="ann-phone"),
    # Bob: "yes", then "no"
    _consent_event("c3", T - timedelta(days=3), {"marketing": True}, user="bob"),
    _consent_event("c4", T - timedelta(days=1), {"marketing": False}, user="bob"),
    _consent_event("c5", T - timedelta(days=1), {"marketing": "yes please"}, user="cy"),  # not an answer
    _consent_event("c6", T - timedelta(days=1), {"marketing": True}, user="di"),
    _consent_event("c7", T - timedelta(days=1), {"marketing": True}, user="ed"),
    _consent_event("c8", T - timedelta(days=1), {"marketing": True}, user="flo"),
]
PEOPLE = {  # profile_id: (first_name, email, phone, lifetime_value)
    "p1": ("Ann", "Ann@Example.com", "+15550000001", 900.0),
    "p2": ("Bob", "bob@example.com", "+15550000002", 800.0),
    "p3": ("Cy", "cy@example.com", "+15550000003", 700.0),
    "p4": ("Di", "di@example.com", "+15550000004", 600.0),
    "p5": ("Ed", "ed@example.com", "+15550000005", 650.0),
    "p6": ("Flo", "flo@example.com", "+15550000006", 675.0),
}


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _config(tmp_path, destinations, policies=None):
    return load_config(
        "test",
        lakehouse=str(tmp_path / "lakehouse"),
        overrides={
            "destinations": {"definitions": destinations},
            "policies": {"destinations": policies or {}},
        },
    )


def _lakehouse(spark, cfg, members):
    graph = spark.createDataFrame(
        [(i, i.split(":")[0], i.split(":", 1)[1], p, 1) for i, p in GRAPH],
        "identifier string, id_type string, id_value string, profile_id string, component_size long",
    )
    io.overwrite(graph, cfg, "gold.identity_graph")
    events = spark.createDataFrame(CONSENT_EVENTS, EVENT_SCHEMA)
    io.overwrite(consent_history(events, graph), cfg, "gold.consent")
    io.overwrite(
        spark.createDataFrame(
            [(p, *v) for p, v in PEOPLE.items()],
            "profile_id string, first_name string, email string, phone string, lifetime_value double",
        ),
        cfg,
        "gold.profiles",
    )
    io.overwrite(
        spark.createDataFrame([(p, i) for i, p in enumerate(PEOPLE)], "profile_id string, orders_90d int"),
        cfg,
        "gold.profile_traits",
    )
    _members(spark, cfg, members, T)


def _members(spark, cfg, members, at):
    evaluated = spark.createDataFrame(
        [("high_value", p, p in members) for p in PEOPLE],
        "audience string, profile_id string, qualifies boolean",
    )
    update_membership(evaluated, cfg, at, complete=True)


def _sha(v):
    return hashlib.sha256(v.lower().encode()).hexdigest()


def test_current_consent_is_the_latest_answer_across_devices_and_merges(spark, tmp_path):
    cfg = _config(tmp_path, {})
    _lakehouse(spark, cfg, set())
    current = {
        (r.profile_id, r.category): r.granted
        for r in current_consent(io.read(spark, cfg, "gold.consent")).collect()
    }
    assert current[("p1", "marketing")] is True  # the phone's later "yes" beats the laptop's "no"
    assert current[("p1", "advertising")] is False
    assert current[("p2", "marketing")] is False
    assert ("p3", "marketing") not in current  # "yes please" is no answer


def test_a_destination_asking_for_a_field_its_policy_forbids_is_a_config_error(tmp_path):
    hook = {
        "type": "webhook",
        "url": "http://127.0.0.1:1/x",
        "audiences": ["high_value"],
        "fields": ["phone"],
    }
    with pytest.raises(ConfigError, match="field 'phone' holds phone data"):
        _config(tmp_path, {"crm": hook}, {"crm": {"email": "sha256"}})


def test_webhook_gets_consented_policy_allowed_fields_once_across_rerun_and_crash_resume(
    spark, tmp_path, receiver
):
    hook = {
        "type": "webhook",
        "url": receiver.url,
        "audiences": ["high_value"],
        "fields": ["email", "first_name", "lifetime_value", "orders_90d"],
        "consent": ["marketing"],
        "batch_size": 1,
        "max_attempts": 2,
        "backoff_s": 0.01,
    }
    cfg = _config(tmp_path, {"crm": hook}, {"crm": {"email": "sha256", "name": "plain"}})
    _lakehouse(spark, cfg, {"p1", "p2", "p3", "p4"})

    first = sync_destination(spark, cfg, "crm")
    assert (first.events, first.batches_sent, first.without_consent) == (
        2,
        2,
        2,
    )  # Bob said no, Cy never said
    events = [e for p in receiver.accepted() for e in p["body"]["events"]]
    assert [(e["profile_id"], e["type"]) for e in events] == [
        ("p1", "audience_entered"),
        ("p4", "audience_entered"),
    ]
    ann = events[0]
    assert set(ann) == {"message_id", "type", "audience", "profile_id", "at", "traits"}
    assert ann["traits"] == {
        "email": _sha("ann@example.com"),  # hashed as the policy says; the phone is not there at all
        "first_name": "Ann",
        "lifetime_value": 900.0,
        "orders_90d": 0,
    }
    assert all(p["key"] == p["body"]["batch_id"] for p in receiver.posts)

    again = sync_destination(spark, cfg, "crm")  # nothing changed: nothing is sent
    assert (again.events, again.batches_sent, len(receiver.posts)) == (0, 0, 2)

    # Ann exits, Ed and Flo enter; the second batch fails (500 twice) and the run stops there
    _members(spark, cfg, {"p2", "p3", "p4", "p5", "p6"}, T + timedelta(hours=1))
    receiver.answers = [200, 500, 500]
    with pytest.raises(DeliveryFailed, match="after 2 attempts"):
        sync_destination(spark, cfg, "crm")
    delivered_keys = [p["key"] for p in receiver.accepted()]
    resumed = sync_destination(spark, cfg, "crm")
    assert resumed.resumed and (resumed.batches, resumed.batches_sent) == (3, 2)
    keys = [p["key"] for p in receiver.accepted()]
    assert len(keys) == len(set(keys)) == 5 and keys[:3] == delivered_keys
    second_run = [e for p in receiver.accepted()[2:] for e in p["body"]["events"]]
    assert [(e["profile_id"], e["type"]) for e in second_run] == [
        ("p1", "audience_exited"),
        ("p5", "audience_entered"),
        ("p6", "audience_entered"),
    ]
    assert sync_destination(spark, cfg, "crm").batches_sent == 0
    assert len(receiver.posts) == 7  # 2 + (1 + 2 failed attempts) + 2: no batch was sent after acceptance


def test_a_refused_batch_is_dead_lettered_with_the_response_and_the_run_goes_on(spark, tmp_path, receiver):
    hook = {
        "type": "webhook",
        "url": receiver.url,
        "fields": ["lifetime_value"],
        "batch_size": 1,
        "backoff_s": 0,
    }
    cfg = _config(tmp_path, {"crm": hook})
    _lakehouse(spark, cfg, {"p1", "p2", "p3"})
    receiver.answers = [400]
    stats = sync_destination(spark, cfg, "crm")
    assert (stats.batches_sent, stats.dead_lettered, len(receiver.posts)) == (3, 1, 3)  # a 4xx is not retried
    dead = io.read(spark, cfg, "activation.dead_letters").collect()
    assert len(dead) == 1 and dead[0].http_status == 400 and "bad field" in dead[0].response
    assert json.loads(dead[0].payload)[0]["profile_id"] == "p1"
    statuses = sorted(r.status for r in io.read(spark, cfg, "activation.deliveries").collect())
    assert statuses == ["dead_lettered", "delivered", "delivered"]


def test_file_and_kafka_destinations_receive_each_event_once(spark, tmp_path, kafka_broker):
    topic = "converge.audiences.test"
    destinations = {
        "export": {"type": "file", "path": "exports/hv", "fields": ["email"], "consent": ["marketing"], "batch_size": 2},
        "topic": {
            "type": "kafka",
            "topic": topic,
            "bootstrap_servers": kafka_broker.bootstrap_servers,
            "fields": ["first_name"],
            "consent": ["marketing"],
        },
    }  # fmt: skip
    cfg = _config(tmp_path, destinations, {"export": {"email": "sha256"}, "topic": {"name": "mask"}})
    _lakehouse(spark, cfg, {"p1", "p2", "p4", "p5", "p6"})
    for _ in range(2):  # the rerun sends nothing
        sync_destination(spark, cfg, "export")
        sync_destination(spark, cfg, "topic")

    files = sorted((cfg.lakehouse.root / "exports/hv").glob("*.csv"))
    rows = [r for f in files for r in pacsv.read_csv(f).to_pylist()]
    assert len(files) == 2  # 4 consented members, 2 per batch
    assert sorted((r["profile_id"], r["email"]) for r in rows) == sorted(
        (p, _sha(PEOPLE[p][1])) for p in ("p1", "p4", "p5", "p6")
    )
    assert set(rows[0]) == {"message_id", "type", "audience", "profile_id", "at", "email"}

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker.bootstrap_servers,
            "group.id": "t",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    got = []
    deadline = datetime.now() + timedelta(seconds=10)  # waits for a 5th (duplicate) message too
    while len(got) < 5 and datetime.now() < deadline:
        msg = consumer.poll(1.0)
        if msg is not None and msg.error() is None:
            got.append(json.loads(msg.value()))
    consumer.close()
    assert sorted((e["profile_id"], e["traits"]["first_name"]) for e in got) == [
        ("p1", "A***"),
        ("p4", "D***"),
        ("p5", "E***"),
        ("p6", "F***"),
    ]
