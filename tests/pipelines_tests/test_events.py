import json
from datetime import datetime

from chispa import assert_df_equality

from pipelines.events import SILVER_COLUMNS, parse_events, quarantined_events, silver_events
from tests.pipelines_tests.helpers import raw_lines


def ev(**kw):
    base = {
        "messageId": "m1",
        "type": "track",
        "event": "Product Viewed",
        "anonymousId": "a1",
        "timestamp": "2026-10-01T10:00:00.000Z",
        "sentAt": "2026-10-01T10:00:05.000Z",
        "receivedAt": "2026-10-01T09:00:06.000Z",
        "properties": {"price": 9.5},
        "context": {"ip": "1.2.3.4"},
    }
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not None})


def _parse(spark, lines):
    return parse_events(raw_lines(spark, lines), 32768, "2000-01-01T00:00:00Z", 86400)


def test_each_bad_input_is_rejected_with_its_reason(spark):
    cases = {
        "invalid_json": ['{"messageId": "x", "type": "track"', "[1, 2]", "42", "not json"],
        "event_too_large": [ev(messageId="big", properties={"blob": "x" * 40000})],
        "missing_message_id": [ev(messageId=None)],
        "invalid_type": [ev(messageId="t1", type="purchase")],
        "missing_identity": [ev(messageId="n1", anonymousId=None)],
        "missing_event_name": [ev(messageId="e1", event=None)],
        "missing_previous_id": [ev(messageId="al1", type="alias", userId="u1", anonymousId=None)],
        "invalid_timestamp": [ev(messageId="ts1", timestamp="last tuesday")],
        "timestamp_out_of_range": [
            ev(messageId="old", timestamp="1999-12-31T00:00:00Z", sentAt=None, receivedAt=None),
            ev(messageId="future", timestamp="2026-11-03T12:00:01Z", sentAt=None, receivedAt=None),
        ],
    }
    lines = [line for group in cases.values() for line in group] + [ev(messageId="ok")]
    parsed = _parse(spark, lines)
    got = {r.value: r._reject_reason for r in parsed.collect()}
    for reason, group in cases.items():
        for line in group:
            assert got[line] == reason, (line[:80], got[line], reason)
    assert got[ev(messageId="ok")] is None
    q = quarantined_events(parsed)
    assert q.count() == len(lines) - 1
    assert {r.raw for r in q.collect()} == set(lines) - {ev(messageId="ok")}


def test_event_time_corrects_client_clock_and_falls_back(spark):
    lines = [
        ev(
            messageId="skewed"
        ),  # client clock one hour fast: received 09:00:06 - (10:00:05 - 10:00:00) = 09:00:01
        ev(messageId="no_sent", sentAt=None),
        ev(messageId="alias", type="alias", previousId="a0", userId="u1", anonymousId=None, event=None),
        ev(
            messageId="ident",
            type="identify",
            userId="u1",
            traits={"email": " Ann@X.com", "phone": "(415) 234-5678"},
            event=None,
        ),
    ]
    rows = {r.message_id: r for r in silver_events(_parse(spark, lines)).collect()}
    assert rows["skewed"].event_time == datetime(2026, 10, 1, 9, 0, 1)
    assert rows["no_sent"].event_time == datetime(2026, 10, 1, 10, 0, 0)
    assert (rows["alias"].previous_id, rows["alias"].user_id) == ("a0", "u1")
    assert (rows["ident"].trait_email, rows["ident"].trait_phone) == ("ann@x.com", "+14152345678")
    assert json.loads(rows["skewed"].properties) == {"price": 9.5}
    assert json.loads(rows["skewed"].context)["ip"] == "1.2.3.4" and rows["skewed"].context_ip == "1.2.3.4"


def test_duplicates_in_a_batch_keep_one_copy(spark):
    lines = [ev(messageId="m1"), ev(messageId="m1"), ev(messageId="m2")]
    out = silver_events(_parse(spark, lines))
    assert out.columns == SILVER_COLUMNS
    expected = spark.createDataFrame([("m1",), ("m2",)], "message_id string")
    assert_df_equality(out.select("message_id"), expected, ignore_row_order=True, ignore_nullable=True)
