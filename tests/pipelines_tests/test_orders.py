from decimal import Decimal

from chispa import assert_df_equality

from pipelines.orders import silver_orders, standardize_orders
from pipelines.records import quarantined
from tests.pipelines_tests.helpers import bronze_csv


def _o(oid, amount="10.50", date="2026-03-01T10:00:00Z", system="crm", cust="C1"):
    return {
        "order_id": oid,
        "source_system": system,
        "customer_id": cust,
        "order_date": date,
        "amount": amount,
        "currency": "usd",
        "status": "Completed",
    }


def test_types_dedupes_and_quarantines(spark):
    bronze = bronze_csv(
        spark,
        [
            ("orders", _o("O1"), None),
            ("orders", _o("O1"), None),  # re-sent line: a counted duplicate
            ("orders", _o("O2", amount="N/A"), None),
            ("orders", _o("O3", amount="-5"), None),
            ("orders", _o("O4", date="yesterday"), None),
            ("orders", _o("", cust="C1"), None),
            ("orders", _o("O6", cust=""), None),
            ("orders", _o("O7", system="erp"), None),
            ("orders", {}, "O8,crm,,,"),
        ],
    )
    std = standardize_orders(bronze, ["crm", "shop"])
    silver = silver_orders(std).collect()
    assert len(silver) == 1
    o = silver[0]
    assert (o.order_id, o.source_system, o.customer_source_id, o.amount, o.currency, o.status) == (
        "O1",
        "crm",
        "C1",
        Decimal("10.50"),
        "USD",
        "completed",
    )
    expected = spark.createDataFrame(
        [
            ("invalid_amount",),
            ("invalid_amount",),
            ("invalid_order_date",),
            ("missing_order_id",),
            ("missing_customer_id",),
            ("unknown_source_system",),
            ("malformed_csv_line",),
        ],
        "reason string",
    )
    assert_df_equality(
        quarantined(std).select("reason"), expected, ignore_row_order=True, ignore_nullable=True
    )
