"""Computed traits and audiences: values, incremental = batch, enter/exit on events and on passing time."""

import json
from datetime import datetime, timedelta
from decimal import Decimal

from pyspark.sql import functions as F

from assets.gold import _rebuild_profiles
from pipelines import io
from pipelines.audiences import update_membership
from pipelines.customers import SILVER_COLUMNS as CUSTOMER_COLUMNS
from pipelines.events import SILVER_COLUMNS as EVENT_COLUMNS
from pipelines.orders import SILVER_COLUMNS as ORDER_COLUMNS
from pipelines.profiles import build_profiles
from pipelines.refresh import refresh_traits_and_audiences, silver_or_empty
from pipelines.traits import compute_traits

T = datetime(2026, 11, 20, 12, 0, 0)  # the evaluation time of every refresh below, unless said
GRAPH_SCHEMA = "identifier string, id_type string, id_value string, profile_id string, component_size long"
EVENT_SCHEMA = ", ".join(
    f"{c} {'timestamp' if c in ('event_time', 'client_timestamp', 'sent_at', 'received_at', '_loaded_at') else 'long' if c == '_source_position' else 'string'}"
    for c in EVENT_COLUMNS
)


def _event(mid, kind, at, user=None, anon=None, event=None, props=None):
    row = dict.fromkeys(EVENT_COLUMNS)
    row.update(
        message_id=mid,
        type=kind,
        event=event,
        user_id=user,
        anonymous_id=anon,
        event_time=at,
        received_at=at,
        properties=json.dumps(props or {}),
        _source_file="f",
        _source_position=1,
        _loaded_at=at,
    )
    return row


def _graph_rows(assignments):
    return [(i, i.split(":")[0], i.split(":", 1)[1], p, 1) for i, p in assignments]


ANN = [  # p1: Ann, logged in on one device, a CRM record with orders
    ("user_id:u1", "p1"),
    ("anonymous_id:a1", "p1"),
    ("crm_id:C1", "p1"),
]


def _ann_events():
    return [
        _event("e1", "page", T - timedelta(days=3), "u1", "a1", props={"path": "/products"}),
        _event(
            "e2",
            "track",
            T - timedelta(days=3, minutes=-10),
            "u1",
            "a1",
            "Product Viewed",
            {"category": "shoes"},
        ),
        _event("e3", "track", T - timedelta(days=1), "u1", "a1", "Product Viewed", {"category": "bags"}),
        _event(
            "e4",
            "track",
            T - timedelta(days=1, minutes=-5),
            "u1",
            "a1",
            "Product Viewed",
            {"category": "shoes"},
        ),
        _event("e5", "track", T - timedelta(hours=2), "u1", "a1", "Product Added", {"category": "shoes"}),
        _event("e6", "page", T - timedelta(minutes=10), "u1", "a1", props={"path": "/account/Cancel"}),
        _event("e7", "page", T - timedelta(days=20), None, "a1", props={"path": "/"}),
    ]


def _orders(spark, cfg, rows):
    shape = silver_or_empty(spark, cfg, "silver.orders")
    data = [
        dict(zip(ORDER_COLUMNS[:7], r, strict=True)) | {"_source_file": "f", "_loaded_at": T} for r in rows
    ]
    return spark.createDataFrame(data, shape.schema)


def _customers(spark, cfg, ids):
    shape = silver_or_empty(spark, cfg, "silver.customers")
    rows = []
    for system, sid in ids:
        row = dict.fromkeys(CUSTOMER_COLUMNS)
        row.update(
            source_system=system,
            source_id=sid,
            first_name=sid,
            quality_flags=[],
            _source_file="f",
            _loaded_at=T,
        )
        rows.append(row)
    return spark.createDataFrame(rows, shape.schema)


def _write_lakehouse(spark, cfg, graph_rows, events, orders, customers):
    graph = spark.createDataFrame(_graph_rows(graph_rows), GRAPH_SCHEMA)
    io.overwrite(graph, cfg, "gold.identity_graph")
    io.overwrite(spark.createDataFrame(events, EVENT_SCHEMA), cfg, "silver.events")
    io.overwrite(orders, cfg, "silver.orders")
    io.overwrite(customers, cfg, "silver.customers")
    _rebuild_profiles(spark, cfg)


def _base(spark, cfg):
    orders = _orders(
        spark,
        cfg,
        [
            ("O1", "crm", "C1", T - timedelta(days=30), Decimal("600.00"), "USD", "completed"),
            ("O2", "crm", "C1", T - timedelta(days=10), Decimal("50.00"), "USD", "refunded"),
            ("O3", "crm", "C3", T - timedelta(days=200), Decimal("100.00"), "USD", "completed"),
        ],
    )
    _write_lakehouse(
        spark,
        cfg,
        [*ANN, ("anonymous_id:a2", "p2"), ("crm_id:C3", "p3")],
        [*_ann_events(), _event("b1", "page", T - timedelta(days=2), None, "a2", props={"path": "/"})],
        orders,
        _customers(spark, cfg, [("crm", "C1"), ("crm", "C3")]),
    )


def _traits(spark, cfg):
    return {r.profile_id: r.asDict() for r in io.read(spark, cfg, "gold.profile_traits").collect()}


def _members(spark, cfg):
    return {
        (r.audience, r.profile_id)
        for r in io.read(spark, cfg, "gold.audience_membership").filter("is_member").collect()
    }


def test_trait_values_from_conf_sql(spark, cfg):
    _base(spark, cfg)
    stats = refresh_traits_and_audiences(spark, cfg, as_of=T)
    assert stats.mode == "full" and stats.profiles == 3
    t = _traits(spark, cfg)
    ann = t["p1"]
    assert ann["orders_90d"] == 1, "the refunded order does not count"
    assert ann["lifetime_value"] == Decimal("600.00")
    assert ann["last_seen"] == T - timedelta(minutes=10)
    # sessions in 7 days: 3 days ago (two events 10 min apart: one session), 1 day ago, today (2 h and
    # 10 min ago are 110 min apart: two sessions); the page of 20 days ago is outside the window
    assert ann["sessions_7d"] == 4
    assert ann["viewed_cancellation_page_30m"] is True
    assert ann["added_to_cart_24h"] is True and ann["checked_out_24h"] is False
    assert ann["favourite_category"] == "shoes"
    assert ann["computed_at"] == T
    anon, crm_only = t["p2"], t["p3"]
    assert (anon["orders_90d"], anon["lifetime_value"], anon["sessions_7d"]) == (0, Decimal("0"), 1), (
        "defaults"
    )
    assert anon["favourite_category"] is None and anon["viewed_cancellation_page_30m"] is False
    assert (crm_only["orders_90d"], crm_only["lifetime_value"], crm_only["last_seen"]) == (
        0,
        Decimal("100.00"),
        None,
    )
    assert _members(spark, cfg) == {
        ("high_value", "p1"),
        ("cart_abandoners_24h", "p1"),
        ("cancellation_intent", "p1"),
        ("churn_risk", "p3"),
    }


def test_bad_trait_sql_names_the_trait(spark, cfg):
    import pytest

    _base(spark, cfg)
    cfg.traits.definitions["broken"] = cfg.traits.definitions["last_seen"].model_copy(
        update={"sql": "max(no_such_column)"}
    )
    with pytest.raises(ValueError, match="broken"):
        refresh_traits_and_audiences(spark, cfg, as_of=T)


def test_incremental_refresh_equals_a_full_one(spark, cfg, report):
    _base(spark, cfg)
    first = refresh_traits_and_audiences(spark, cfg, as_of=T)
    assert first.mode == "full"
    # Then: the anonymous visitor a2 logs in as Ann (the graph merges p2 into p1), Ann's CRM record gets a
    # new order, and C3 (p3) a new one too; p4 is new. Nothing else changes.
    events = [
        _event("b2", "identify", T - timedelta(minutes=50), "u1", "a2"),
        _event("b3", "page", T - timedelta(minutes=20), "u1", "a2", props={"path": "/cancel"}),
        _event("d1", "page", T - timedelta(hours=1), None, "a4", props={"path": "/"}),
    ]
    io.append(spark.createDataFrame(events, EVENT_SCHEMA), cfg, "silver.events")
    new_orders = _orders(
        spark,
        cfg,
        [
            ("O4", "crm", "C3", T - timedelta(days=5), Decimal("45.00"), "USD", "completed"),
            ("O5", "crm", "C1", T - timedelta(days=1), Decimal("5.00"), "USD", "completed"),
        ],
    )
    io.append(new_orders, cfg, "silver.orders")
    moved = spark.createDataFrame(
        _graph_rows([("anonymous_id:a2", "p1"), ("anonymous_id:a4", "p4")]), GRAPH_SCHEMA
    )
    io.merge_upsert(moved, cfg, "gold.identity_graph", ["identifier"])
    _rebuild_profiles(spark, cfg)

    inc = refresh_traits_and_audiences(spark, cfg, as_of=T)
    report(
        f"incremental refresh: {inc.profiles} profiles recomputed, {inc.removed} removed, of 3 live ({inc.seconds} s)"
    )
    assert inc.mode == "incremental", inc.reason
    assert (inc.profiles, inc.removed) == (3, 1), "p1 and p3 changed, p4 is new, p2 was merged away"
    incremental_traits, incremental_members = _traits(spark, cfg), _members(spark, cfg)

    full = refresh_traits_and_audiences(spark, cfg, full=True, as_of=T)
    assert full.mode == "full"
    assert incremental_traits == _traits(spark, cfg)
    assert incremental_members == _members(spark, cfg)
    assert full.membership_changes == 0, "the incremental run left nothing for the full one to change"
    expected = compute_traits(
        io.read(spark, cfg, "gold.identity_graph"),
        io.read(spark, cfg, "silver.events"),
        io.read(spark, cfg, "silver.orders"),
        io.read(spark, cfg, "silver.customers"),
        cfg.traits,
        T,
    )
    assert {r.profile_id: r.asDict() for r in expected.collect()} == incremental_traits
    assert set(incremental_traits) == {"p1", "p3", "p4"}
    # a2's two sessions (2 days ago; 50 and 20 minutes ago, 30 minutes apart: one) joined Ann's four
    assert incremental_traits["p1"]["sessions_7d"] == 6
    assert incremental_traits["p3"]["orders_90d"] == 1


def test_a_refresh_that_read_a_graph_row_before_its_profile_row_takes_that_person_again(spark, cfg):
    """The stream refreshes traits beside its micro-batches, so a refresh can read a batch's graph rows
    before the batch has written their profile rows (audiences read both). The profile rows' commit is in
    gold.profiles' change feed, and the next refresh evaluates those people."""
    _base(spark, cfg)
    refresh_traits_and_audiences(spark, cfg, as_of=T)
    # a new visitor who left a cart an hour ago: the batch has written the event and the graph row...
    event = _event("n1", "track", T - timedelta(hours=1), None, "a5", "Product Added", {"category": "bags"})
    io.append(spark.createDataFrame([event], EVENT_SCHEMA), cfg, "silver.events")
    graph_row = spark.createDataFrame(_graph_rows([("anonymous_id:a5", "p5")]), GRAPH_SCHEMA)
    io.merge_upsert(graph_row, cfg, "gold.identity_graph", ["identifier"])
    early = refresh_traits_and_audiences(spark, cfg, as_of=T)
    assert early.profiles == 1 and _traits(spark, cfg)["p5"]["added_to_cart_24h"]
    assert ("cart_abandoners_24h", "p5") not in _members(spark, cfg), "no profile row to evaluate yet"
    # ... then the profile row
    row = build_profiles(
        io.read(spark, cfg, "gold.identity_graph").filter("profile_id = 'p5'"),
        io.read(spark, cfg, "silver.customers"),
        io.read(spark, cfg, "silver.orders"),
        io.read(spark, cfg, "silver.events"),
        cfg.sources.priority,
        cfg.profiles.survivorship,
    )
    io.merge_upsert(row, cfg, "gold.profiles", ["profile_id"])
    late = refresh_traits_and_audiences(spark, cfg, as_of=T)
    assert (late.mode, late.profiles) == ("incremental", 1)
    assert ("cart_abandoners_24h", "p5") in _members(spark, cfg)


def test_audiences_enter_and_exit_on_events_and_on_passing_time(spark, cfg, report):
    _base(spark, cfg)
    refresh_traits_and_audiences(spark, cfg, as_of=T)
    start = io.version(spark, cfg, "gold.audience_membership")
    assert ("cart_abandoners_24h", "p1") in _members(spark, cfg)

    # a new event that moves Ann in no audience: her traits are recomputed, the membership table is not
    # written at all (no commit, so the change data feed activation reads has nothing to skip over)
    io.append(
        spark.createDataFrame(
            [_event("e7b", "page", T + timedelta(minutes=1), "u1", "a1", props={"path": "/products"})],
            EVENT_SCHEMA,
        ),
        cfg,
        "silver.events",
    )
    quiet = refresh_traits_and_audiences(spark, cfg, as_of=T + timedelta(minutes=2))
    assert (quiet.mode, quiet.profiles, quiet.membership_changes) == ("incremental", 1, 0)
    assert io.version(spark, cfg, "gold.audience_membership") == start
    assert _traits(spark, cfg)["p1"]["last_seen"] == T + timedelta(minutes=1)

    # a new event: Ann completes her order 5 minutes later -> she leaves the cart abandoners
    io.append(
        spark.createDataFrame(
            [_event("e8", "track", T + timedelta(minutes=5), "u1", "a1", "Order Completed")], EVENT_SCHEMA
        ),
        cfg,
        "silver.events",
    )
    _rebuild_profiles(spark, cfg)
    on_event = refresh_traits_and_audiences(spark, cfg, as_of=T + timedelta(minutes=6))
    assert on_event.mode == "incremental" and on_event.profiles == 1
    members = _members(spark, cfg)
    assert ("cart_abandoners_24h", "p1") not in members
    assert ("cancellation_intent", "p1") in members, "16 minutes after the cancel page view"

    # no event at all, an hour passes: the scheduled refresh takes her out of cancellation_intent
    later = T + timedelta(hours=1)
    scheduled = refresh_traits_and_audiences(spark, cfg, full=True, as_of=later)
    assert ("cancellation_intent", "p1") not in _members(spark, cfg)
    assert ("high_value", "p1") in _members(spark, cfg)
    row = (
        io.read(spark, cfg, "gold.audience_membership")
        .filter("audience = 'cancellation_intent' AND profile_id = 'p1'")
        .first()
    )
    assert (row.is_member, row.entered_at, row.exited_at) == (False, T, later)

    # the change data feed is the stream of enter/exit events activation consumes
    feed = (
        io.changes(
            spark,
            cfg,
            "gold.audience_membership",
            start + 1,
            io.version(spark, cfg, "gold.audience_membership"),
        )
        .filter(F.col("_change_type").isin("insert", "update_postimage"))
        .select("audience", "profile_id", "is_member", "updated_at")
        .collect()
    )
    exits = {(r.audience, r.profile_id, r.updated_at) for r in feed if not r.is_member}
    assert exits == {
        ("cart_abandoners_24h", "p1", T + timedelta(minutes=6)),
        ("cancellation_intent", "p1", later),
    }
    report(
        f"audience feed after the first refresh: {len(feed)} changes, exits {sorted(e[0] for e in exits)}; "
        f"scheduled refresh changed {scheduled.membership_changes} memberships"
    )


def test_a_membership_write_that_fails_beside_the_traits_commit_is_redone(spark, cfg, monkeypatch):
    """An incremental refresh MERGEs its membership changes beside its traits, so the traits commit (which
    records how far the refresh got) can land while the membership MERGE fails. The next refresh must take
    those people again; once their memberships are written, it must not."""
    import pytest

    from pipelines import refresh

    _base(spark, cfg)
    refresh_traits_and_audiences(spark, cfg, as_of=T)
    assert ("cart_abandoners_24h", "p1") in _members(spark, cfg)
    # Ann completes her order: her traits change and she leaves the cart abandoners
    io.append(
        spark.createDataFrame(
            [_event("e8", "track", T + timedelta(minutes=5), "u1", "a1", "Order Completed")], EVENT_SCHEMA
        ),
        cfg,
        "silver.events",
    )
    membership_before = io.version(spark, cfg, "gold.audience_membership")

    sessions = []  # the session each membership MERGE was given

    def broken(*args, **kwargs):
        sessions.append(args[6])
        raise RuntimeError("membership MERGE failed")

    def recorded(*args, **kwargs):
        sessions.append(args[6])
        return update_membership(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(refresh, "update_membership", broken)
        with pytest.raises(RuntimeError, match="membership MERGE failed"):
            refresh_traits_and_audiences(spark, cfg, as_of=T + timedelta(minutes=6))
    assert _traits(spark, cfg)["p1"]["checked_out_24h"] is True, "the traits commit landed"
    assert io.version(spark, cfg, "gold.audience_membership") == membership_before
    assert ("cart_abandoners_24h", "p1") in _members(spark, cfg)

    with monkeypatch.context() as m:
        m.setattr(refresh, "update_membership", recorded)
        again = refresh_traits_and_audiences(spark, cfg, as_of=T + timedelta(minutes=6))
    # one session of its own, made once for the refreshing session and kept
    assert len(sessions) == 2 and sessions[0] is sessions[1] and sessions[0] is not spark, sessions
    assert (again.mode, again.profiles, again.membership_changes) == ("incremental", 1, 1), again
    assert ("cart_abandoners_24h", "p1") not in _members(spark, cfg)
    # the membership commit of that run is found: nobody is taken again
    after = refresh_traits_and_audiences(spark, cfg, as_of=T + timedelta(minutes=6))
    assert (after.mode, after.profiles) == ("skipped", 0), after
    full = refresh_traits_and_audiences(spark, cfg, full=True, as_of=T + timedelta(minutes=6))
    assert full.membership_changes == 0, "nothing left for a full refresh to change"
