from datetime import datetime
from decimal import Decimal

from pyspark.sql import functions as F

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


def _dob_customers(spark, customers):
    """Three records of Ann with dates of birth: two systems agree on one, the newest record has another."""
    rows = []
    for system, sid, dob, updated, created in [
        ("shop", "S1", "1990-05-01", datetime(2026, 1, 1), datetime(2023, 1, 1)),
        ("crm", "C1", "1990-01-05", datetime(2025, 1, 1), datetime(2021, 1, 1)),
        ("shop", "S2", "1990-01-05", datetime(2024, 1, 1), datetime(2022, 1, 1)),
    ]:
        row = _customer(system, sid, None, None, None, updated)
        row.update(date_of_birth=datetime.strptime(dob, "%Y-%m-%d").date(), created_at=created)
        rows.append(row)
    return spark.createDataFrame(rows, customers.schema)


def _ann(spark, customers, rules):
    graph, _, orders, events = _frames(spark)
    profiles = build_profiles(graph, customers, orders, events, ["crm", "shop"], rules)
    return {r.profile_id: r for r in profiles.collect()}["p1"]


def test_each_survivorship_rule_with_provenance(spark):
    _, customers, _, _ = _frames(spark)
    dobs = _dob_customers(spark, customers)
    from datetime import date

    # most frequent: two records agree on 1990-01-05, outvoting the newest record's 1990-05-01
    ann = _ann(spark, dobs, {"date_of_birth": "most_frequent"})
    assert ann.date_of_birth == date(1990, 1, 5)
    p = ann.provenance["date_of_birth"]
    assert (p.rule, p.value, p.source_system, p.source_record) == (
        "most_frequent",
        "1990-01-05",
        "crm",  # of the two agreeing records the most recent (crm, 2025) is the one shown
        "crm:C1",
    )
    # most recent: the shop record of 2026, whatever the priority
    ann = _ann(spark, dobs, {"date_of_birth": "most_recent"})
    assert ann.date_of_birth == date(1990, 5, 1)
    assert ann.provenance["date_of_birth"].source_record == "shop:S1"
    assert ann.provenance["date_of_birth"].updated_at == datetime(2026, 1, 1)
    # source priority: crm first
    ann = _ann(spark, dobs, {"date_of_birth": "source_priority"})
    assert (ann.date_of_birth, ann.provenance["date_of_birth"].source_record) == (date(1990, 1, 5), "crm:C1")
    # first seen: the earliest created record (crm, 2021)... change its value to tell it apart
    first = dobs.withColumn(
        "date_of_birth",
        F.when(F.col("source_id") == "C1", F.to_date(F.lit("1989-12-31"))).otherwise(F.col("date_of_birth")),
    )
    ann = _ann(spark, first, {"date_of_birth": "first_seen"})
    assert (ann.date_of_birth, ann.provenance["date_of_birth"].source_record) == (
        date(1989, 12, 31),
        "crm:C1",
    )


def test_identify_traits_carry_event_provenance_and_most_recent_beats_priority(spark):
    graph, customers, orders, events = _frames(spark)
    by_priority = {
        r.profile_id: r for r in build_profiles(graph, customers, orders, events, ["crm", "shop"]).collect()
    }
    assert by_priority["p1"].first_name == "Annie"
    assert by_priority["p1"].provenance["first_name"].source_system == "shop"
    # the identify call of 2026-03-01 is the newest first name: most_recent picks it, with the event as source
    ann = _ann(spark, customers, {"first_name": "most_recent"})
    assert ann.first_name == "Annabel"
    prov = ann.provenance["first_name"]
    assert (prov.source_system, prov.source_record, prov.rule) == ("events", "event:m1", "most_recent")
    # the address stays one unit under every rule
    for rule in ("most_recent", "first_seen", "most_frequent"):
        a = _ann(spark, customers, {"address": rule})
        assert (a.street, a.city) in {("9 New Rd", "Leeds"), ("1 Old St", "Boston")}
    # a profile with no attribute at all has an empty provenance, not null
    assert by_priority["p2"].provenance == {}


def test_survivorship_rules_are_validated(tmp_path):
    import pytest

    from pipelines.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="profiles.survivorship"):
        load_config("test", overrides={"profiles": {"survivorship": {"shoe_size": "most_recent"}}})
    with pytest.raises(ConfigError, match="profiles.survivorship.email"):
        load_config("test", overrides={"profiles": {"survivorship": {"email": "loudest"}}})
    cfg = load_config("test", overrides={"profiles": {"survivorship": {"email": "most_recent"}}})
    assert cfg.profiles.survivorship["email"] == "most_recent"
    assert cfg.profiles.survivorship["first_name"] == "source_priority", (
        "unlisted attributes keep the default"
    )
