from datetime import datetime

from pipelines.quality import run_suite, suite_for
from pipelines.reconcile import reconcile


def _standardized(spark):
    return spark.createDataFrame(
        [("k1", None), ("k1", None), ("k2", None), ("k3", "bad"), ("k4", None)],
        "key string, _reject_reason string",
    )


def test_balanced_when_tables_hold_exactly_the_split(spark):
    std = _standardized(spark)
    silver = spark.createDataFrame([("k1",), ("k2",), ("k4",)], "key string")
    quarantine = spark.createDataFrame([("k3",)], "key string")
    rec = reconcile("t", std, ["key"], silver, quarantine)
    assert (rec.bronze, rec.silver, rec.quarantined, rec.duplicates, rec.balanced) == (5, 3, 1, 1, True)


def test_a_lost_or_doubled_row_unbalances(spark):
    std = _standardized(spark)
    quarantine = spark.createDataFrame([("k3",)], "key string")
    lost = reconcile("t", std, ["key"], spark.createDataFrame([("k1",), ("k2",)], "key string"), quarantine)
    doubled = reconcile(
        "t",
        std,
        ["key"],
        spark.createDataFrame([("k1",), ("k2",), ("k4",)], "key string"),
        spark.createDataFrame([("k3",), ("k3",)], "key string"),
    )
    assert not lost.balanced and not doubled.balanced
    assert lost.as_row()["balanced"] is False and lost.expected_silver == 3


def test_quality_suite_passes_good_and_fails_bad_silver_events(spark):
    cols = "message_id string, type string, event_time timestamp"
    expectations = suite_for("silver.events", ["crm"], datetime(2000, 1, 1), 50)
    good = spark.createDataFrame(
        [("m1", "track", datetime(2026, 1, 1)), ("m2", "page", datetime(2026, 1, 2))], cols
    )
    bad = spark.createDataFrame(
        [("m1", "track", datetime(2026, 1, 1)), ("m1", "buy", datetime(1990, 1, 1)), (None, "page", None)],
        cols,
    )
    assert run_suite(good, "silver.events", expectations).success
    result = run_suite(bad, "silver.events", expectations)
    assert not result.success
    failed = {f["expectation"] for f in result.failed}
    assert failed == {
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_unique",
        "expect_column_values_to_be_in_set",
        "expect_column_values_to_be_between",
    }
