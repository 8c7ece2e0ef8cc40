from datetime import datetime

from chispa import assert_df_equality

from pipelines.customers import SILVER_COLUMNS, silver_customers, standardize_customers
from pipelines.records import quarantined
from tests.pipelines_tests.helpers import bronze_csv


def _crm(id_, email="ann@x.com", phone="(415) 234-5678", updated="2026-01-01T00:00:00Z", **kw):
    return {
        "customer_id": id_,
        "first_name": kw.get("first", " aNN "),
        "last_name": "smith",
        "email": email,
        "phone": phone,
        "street": "1  Main St",
        "city": "boston",
        "postal_code": "021ab",
        "country": kw.get("country", "USA"),
        "date_of_birth": kw.get("dob", "1990-02-03"),
        "created_at": "2025-01-01T00:00:00Z",
        "updated_at": updated,
    }


def test_maps_each_systems_columns_and_normalises(spark, cfg):
    shop = {
        "shop_customer_id": "S1",
        "web_user_id": "u1",
        "given_name": "bob",
        "family_name": "LEE",
        "email_address": " BOB@Mail.com ",
        "phone_number": "07412 345678",
        "address1": "2 High Rd",
        "town": "london",
        "zip": "sw1a 1",
        "country_code": "United Kingdom",
        "signup_date": "2024-05-01",
        "last_modified": "2024-06-01 10:00:00",
    }
    bronze = bronze_csv(spark, [("crm", _crm("C1"), None), ("shop", shop, None)])
    std = standardize_customers(
        bronze, cfg.sources.systems, cfg.sources.country_aliases, cfg.sources.default_phone_region
    )
    got = {r.source_id: r for r in silver_customers(std).collect()}
    c, s = got["C1"], got["S1"]
    assert (c.source_system, c.first_name, c.last_name, c.email, c.phone, c.country, c.city, c.street) == (
        "crm",
        "Ann",
        "Smith",
        "ann@x.com",
        "+14152345678",
        "US",
        "Boston",
        "1 Main St",
    )
    assert c.date_of_birth.isoformat() == "1990-02-03" and c.updated_at == datetime(2026, 1, 1)
    # The GB national format only parses because the record's country picks the phone region.
    assert (s.source_system, s.user_id, s.first_name, s.email, s.phone, s.country, s.postal_code) == (
        "shop",
        "u1",
        "Bob",
        "bob@mail.com",
        "+447412345678",
        "GB",
        "SW1A 1",
    )
    assert c.quality_flags == [] and s.quality_flags == []


def test_bad_values_are_flagged_not_rejected(spark, cfg):
    bronze = bronze_csv(spark, [("crm", _crm("C1", email="nope", phone="12", dob="31/02/1990"), None)])
    std = standardize_customers(bronze, cfg.sources.systems, cfg.sources.country_aliases, "US")
    row = silver_customers(std).first()
    assert (row.email, row.phone, row.date_of_birth) == (None, None, None)
    assert row.quality_flags == ["invalid_email", "invalid_phone", "invalid_date_of_birth"]


def test_rejects_go_to_quarantine_with_reason_and_raw_record(spark, cfg):
    bronze = bronze_csv(
        spark,
        [
            ("crm", _crm(""), None),
            ("crm", {}, 'C9,"broken'),
            ("erp", {"id": "E1"}, None),
            ("crm", _crm("C2"), None),
        ],
    )
    std = standardize_customers(bronze, cfg.sources.systems, cfg.sources.country_aliases, "US")
    q = quarantined(std)
    expected = spark.createDataFrame(
        [("crm", "missing_source_id"), ("crm", "malformed_csv_line"), ("erp", "unknown_source_system")],
        "feed string, reason string",
    )
    assert_df_equality(q.select("feed", "reason"), expected, ignore_row_order=True, ignore_nullable=True)
    raws = {r.reason: r.raw for r in q.collect()}
    assert raws["malformed_csv_line"] == 'C9,"broken' and '"id":"E1"' in raws["unknown_source_system"]
    assert [r.source_id for r in silver_customers(std).collect()] == ["C2"]


def test_latest_version_of_a_record_wins(spark, cfg):
    bronze = bronze_csv(
        spark,
        [
            (
                "crm",
                _crm("C1", email="old@x.com", updated="2025-01-01T00:00:00Z"),
                None,
                datetime(2026, 2, 1),
            ),
            (
                "crm",
                _crm("C1", email="new@x.com", updated="2026-01-01T00:00:00Z"),
                None,
                datetime(2026, 1, 1),
            ),
        ],
    )
    std = standardize_customers(bronze, cfg.sources.systems, cfg.sources.country_aliases, "US")
    out = silver_customers(std)
    assert out.columns == SILVER_COLUMNS
    assert [r.email for r in out.collect()] == ["new@x.com"]
