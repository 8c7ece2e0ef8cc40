from datetime import datetime
from decimal import Decimal

from pipelines.customers import SILVER_COLUMNS as CUSTOMER_COLUMNS
from pipelines.events import SILVER_COLUMNS as EVENT_COLUMNS
from pipelines.orders import SILVER_COLUMNS as ORDER_COLUMNS
from pipelines.profiles import PROFILE_COLUMNS, build_profiles

GRAPH_SCHEMA = "identifier string, id_type string, id_value string, profile_id string, component_size long"


def _customer(system, sid, first, email, street, updated, city="Boston"):
    row = dict.fromkeys(CUSTOMER_COLUMNS)
    row.update(
        source_system=system,
        source_id=sid,
        first_name=first,
        last_name="Smith",
        email=email,
        street=street,
        city=city if street else None,
        country="US" if street else None,
        updated_at=updated,
        created_at=datetime(2020, 1, 1),
        quality_flags=[],
        _source_file="f",
        _loaded_at=datetime(2026, 1, 1),
    )
    return row


def _frames(spark):
    graph = spark.createDataFrame(
        [
            ("crm_id:C1", "crm_id", "C1", "p1", 5),
            ("shop_id:S1", "shop_id", "S1", "p1", 5),
            ("shop_id:S2", "shop_id", "S2", "p1", 5),
            ("email:ann@x.com", "email", "ann@x.com", "p1", 5),
            ("user_id:u1", "user_id", "u1", "p1", 5),
            ("anonymous_id:a9", "anonymous_id", "a9", "p2", 1),
        ],
        GRAPH_SCHEMA,
    )
    customers = spark.createDataFrame(
        [
            _customer("shop", "S1", "Annie", "ann@x.com", "9 New Rd", datetime(2026, 1, 1), city="Leeds"),
            _customer("crm", "C1", None, "ann@x.com", None, datetime(2025, 1, 1)),
            _customer("shop", "S2", "Anna", None, "1 Old St", datetime(2024, 1, 1)),
        ],
        ", ".join(
            f"{c} {t}"
            for c, t in zip(
                CUSTOMER_COLUMNS,
                ["string"] * 11 + ["date", "timestamp", "timestamp", "array<string>", "string", "timestamp"],
                strict=True,
            )
        ),
    )
    orders = spark.createDataFrame(
        [
            (
                "O1",
                "crm",
                "C1",
                datetime(2025, 5, 1),
                Decimal("10.00"),
                "USD",
                "completed",
                "f",
                datetime(2026, 1, 1),
            ),
            (
                "O2",
                "shop",
                "S2",
                datetime(2025, 6, 1),
                Decimal("5.50"),
                "USD",
                "completed",
                "f",
                datetime(2026, 1, 1),
            ),
            (
                "O3",
                "shop",
                "S1",
                datetime(2025, 7, 1),
                Decimal("99.00"),
                "USD",
                "refunded",
                "f",
                datetime(2026, 1, 1),
            ),
        ],
        ", ".join(
            f"{c} {t}"
            for c, t in zip(
                ORDER_COLUMNS,
                [
                    "string",
                    "string",
                    "string",
                    "timestamp",
                    "decimal(12,2)",
                    "string",
                    "string",
                    "string",
                    "timestamp",
                ],
                strict=True,
            )
        ),
    )
    ev = dict.fromkeys(EVENT_COLUMNS)
    events = spark.createDataFrame(
        [
            ev
            | {
                "message_id": "m1",
                "type": "identify",
                "user_id": "u1",
                "anonymous_id": "a1",
                "event_time": datetime(2026, 3, 1),
                "traits": '{"firstName": "annabel"}',
                "trait_email": "ann@x.com",
            },
            ev
            | {"message_id": "m2", "type": "page", "anonymous_id": "a9", "event_time": datetime(2026, 2, 1)},
        ],
        ", ".join(
            f"{c} {'timestamp' if c in ('event_time', 'client_timestamp', 'sent_at', 'received_at', '_loaded_at') else 'string'}"
            for c in EVENT_COLUMNS
        ),
    )
    return graph, customers, orders, events


def test_survivorship_priority_then_recency_and_rollups(spark):
    profiles = build_profiles(*_frames(spark), priority=["crm", "shop"])
    assert profiles.columns == PROFILE_COLUMNS
    p = {r.profile_id: r for r in profiles.collect()}
    ann = p["p1"]
    # crm outranks shop, but crm has no first name: the most recent shop value survives, not the older one,
    # and not the identify trait (events rank after every CRM system).
    assert ann.first_name == "Annie"
    # the address is one unit from one record: crm has none, so the newest shop address with its own city
    assert (ann.street, ann.city, ann.country) == ("9 New Rd", "Leeds", "US")
    assert ann.email == "ann@x.com" and ann.emails == ["ann@x.com"]
    assert (ann.order_count, ann.lifetime_value) == (2, Decimal("15.50")), "refunded orders do not count"
    assert ann.event_count == 1 and ann.last_seen == datetime(2026, 3, 1)
    assert ann.first_seen == datetime(2020, 1, 1)
    assert ann.identifier_count == 5 and ann.source_records == ["crm:C1", "shop:S1", "shop:S2"]
    anon = p["p2"]
    assert (anon.first_name, anon.order_count, anon.event_count, anon.lifetime_value) == (
        None,
        0,
        1,
        Decimal("0.00"),
    )


def test_priority_order_comes_from_config(spark):
    graph, customers, orders, events = _frames(spark)
    customers = customers.union(
        spark.createDataFrame(
            [_customer("crm", "C1", "Ann", "ann@x.com", None, datetime(2019, 1, 1))], customers.schema
        )
    )
    by_crm = {
        r.profile_id: r.first_name
        for r in build_profiles(graph, customers, orders, events, ["crm", "shop"]).collect()
    }
    by_shop = {
        r.profile_id: r.first_name
        for r in build_profiles(graph, customers, orders, events, ["shop", "crm"]).collect()
    }
    assert (by_crm["p1"], by_shop["p1"]) == ("Ann", "Annie")
