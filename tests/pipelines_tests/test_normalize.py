from chispa import assert_df_equality
from pyspark.sql import functions as F

from pipelines.normalize import blocked, clean_name, normalize_country, normalize_email, normalize_phone


def test_normalize_email(spark):
    df = spark.createDataFrame(
        [
            ("  Ann.Smith@Example.COM ", "ann.smith@example.com"),
            ("BOB @ mail.com", "bob@mail.com"),
            ("not-an-email", None),
            ("", None),
            (None, None),
            ("o'neil+tag@x.io", "o'neil+tag@x.io"),
        ],
        "raw string, expected string",
    )
    out = df.select(normalize_email(F.col("raw")).alias("got"), "expected")
    assert [r.got for r in out.collect()] == [r.expected for r in out.collect()]


def test_normalize_phone_mixed_national_and_international_formats(spark):
    rows = [
        ("(415) 234-5678", "US", "+14152345678"),
        ("415.234.5678", "US", "+14152345678"),
        ("1-415-234-5678", "US", "+14152345678"),
        ("+1 415 234 5678", "GB", "+14152345678"),  # an international number ignores the region
        ("07412 345678", "GB", "+447412345678"),
        ("0044 7412 345678", "GB", "+447412345678"),
        ("12345", "US", None),  # too short: invalid
        ("call me", "US", None),
        (None, "US", None),
    ]
    df = spark.createDataFrame(rows, "raw string, region string, expected string")
    got = df.select(normalize_phone(F.col("raw"), F.col("region")).alias("expected"))
    assert_df_equality(got, df.select("expected"), ignore_nullable=True)


def test_clean_name_and_country(spark):
    df = spark.createDataFrame(
        [("  aNN   marie ", "united kingdom"), ("BOB", "USA"), ("   ", "Narnia"), (None, " us ")],
        "name string, country string",
    )
    aliases = {"USA": "US", "UNITED KINGDOM": "GB"}
    out = df.select(
        clean_name(F.col("name")).alias("n"), normalize_country(F.col("country"), aliases).alias("c")
    ).collect()
    assert [(r.n, r.c) for r in out] == [("Ann Marie", "GB"), ("Bob", "US"), (None, None), (None, "US")]


def test_blocked_matches_exact_values_case_insensitively_and_regexes(spark):
    df = spark.createDataFrame(
        [("Test@Test.com",), ("0000000",), ("+000-000",), ("ann@x.com",), (None,)], "v string"
    )
    out = df.select(blocked(F.col("v"), ["test@test.com", r"^\+?[0-]*$"]).alias("b")).collect()
    assert [r.b for r in out] == [True, True, True, False, False]
