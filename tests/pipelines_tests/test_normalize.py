from chispa import assert_df_equality
from pyspark.sql import functions as F

from pipelines.normalize import (
    blank_to_null,
    blocked,
    clean_name,
    normalize_country,
    normalize_email,
    normalize_phone,
)


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


def test_blank_to_null_trims_exactly_what_the_unicode_space_regex_trims(spark):
    """blank_to_null trims a listed set of characters (btrim); it must trim the characters the regex
    ``[\\s\\p{Z}\\x{200B}-\\x{200D}\\x{2060}\\x{FEFF}]`` matches at either end, in Java's regex engine, and
    nothing else: checked on every character of the Basic Multilingual Plane (surrogates aside), at the
    start, at the end and alone."""
    junk = r"[\s\p{Z}\x{200B}-\x{200D}\x{2060}\x{FEFF}]"
    regex = f"^{junk}+|{junk}+$"
    bmp = [(chr(i),) for i in range(0x10000) if not 0xD800 <= i <= 0xDFFF]
    chars = spark.createDataFrame(bmp, "c string")
    cases = chars.select(F.concat("c", F.lit("x"), "c").alias("v")).unionByName(
        chars.select(F.col("c").alias("v"))
    )
    by_regex = F.regexp_replace("v", regex, "")
    out = cases.select(
        "v",
        F.when(by_regex == "", None).otherwise(by_regex).alias("want"),
        blank_to_null(F.col("v")).alias("got"),
    )
    differ = out.filter(~F.col("want").eqNullSafe(F.col("got")))
    assert differ.count() == 0, [(hex(ord(r.v[0])), r.want, r.got) for r in differ.limit(10).collect()]
    trimmed = out.filter(F.col("want").isNull()).count()
    # \s 6, \p{Z} 19 (the space is in both), zero-width marks and BOM 5
    assert trimmed == 6 + 19 - 1 + 5, f"{trimmed} characters trimmed"
    assert out.filter("want = 'x' AND v != 'x'").count() == trimmed, (
        "each trimmed character goes from both ends"
    )
