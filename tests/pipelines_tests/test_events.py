import json
from datetime import datetime

from chispa import assert_df_equality

from pipelines.events import SILVER_COLUMNS, flag_conflicts, parse_events, quarantined_events, silver_events
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


def test_each_bad_input_is_rejected_with_its_reason(spark, report):
    cases = {
        "invalid_json": ['{"messageId": "x", "type": "track"', "not json", "{'single': 'quotes'}"],
        "not_a_json_object": ["[1, 2]", "42", '"a string"', "null"],
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
    by_reason = {r.reason: r["count"] for r in q.groupBy("reason").count().collect()}
    report(
        f"{len(lines)} lines: 1 accepted, {q.count()} quarantined by reason {dict(sorted(by_reason.items()))}"
    )


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


def test_awkward_input_is_repaired_by_documented_rules(spark):
    nbsp_user = "\u00a0u-7\u200b"  # a non-breaking space before, a zero-width space after
    lines = {
        "bom": "\ufeff" + ev(messageId="bom"),
        "numbers": json.dumps(
            {"messageId": 12345, "type": "identify", "userId": 987, "timestamp": 1790000000, "sentAt": None}
        ),
        "millis": ev(messageId="ms", timestamp="1790000000123", sentAt=None, receivedAt=None),
        "unicode": ev(messageId="uni", userId=nbsp_user, properties={"name": "Zoë 🚀 \u202e"}),
        "price_string": ev(messageId="ps", properties={"price": "19.99"}),
    }
    rows = {r.message_id: r for r in _parse(spark, list(lines.values())).collect()}
    assert all(r._reject_reason is None for r in rows.values()), {
        k: r._reject_reason for k, r in rows.items()
    }
    assert set(rows) == {"bom", "12345", "ms", "uni", "ps"}
    assert rows["12345"].user_id == "987"  # ids sent as numbers are their decimal text
    assert rows["12345"].client_timestamp == datetime(2026, 9, 21, 14, 13, 20)  # epoch seconds
    assert rows["ms"].client_timestamp == datetime(2026, 9, 21, 14, 13, 20, 123000)  # epoch millis
    assert rows["uni"].user_id == "u-7"
    assert json.loads(rows["uni"].properties)["name"] == "Zoë 🚀 \u202e"  # payload text kept as sent
    assert json.loads(rows["ps"].properties) == {"price": "19.99"}


def test_a_reused_message_id_with_other_content_is_a_conflict(spark):
    retry = ev(messageId="r1", sentAt="2026-10-01T10:00:09.000Z")  # a retry: only sentAt differs
    lines = [ev(messageId="r1"), retry, ev(messageId="r1", event="Order Completed"), ev(messageId="r2")]
    parsed = flag_conflicts(_parse(spark, lines))
    got = [(r.value, r._reject_reason) for r in parsed.orderBy("source_position").collect()]
    assert [reason for _, reason in got] == [None, None, "message_id_conflict", None]
    # against what silver already holds: the stored content wins, even when a batch agrees with itself
    known = silver_events(parsed).filter("message_id = 'r2'")
    later = flag_conflicts(
        _parse(spark, [ev(messageId="r2", event="Other"), ev(messageId="r2", event="Other")]), known
    )
    assert [r._reject_reason for r in later.collect()] == ["message_id_conflict"] * 2
    assert quarantined_events(later).first().reason == "message_id_conflict"
