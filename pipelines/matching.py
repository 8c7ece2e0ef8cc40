"""Probabilistic record matching with Splink on the Spark backend: edges for records that share no identifier.

Deterministic edges link records that share an email, phone or id. A CRM record whose only contact value
is an old email, or that has none, stays alone unless its name, date of birth and address say who it is.
Splink (Fellegi-Sunter) scores candidate pairs from the blocking rules in conf/identity.yaml: it estimates
the prior from deterministic rules, u-probabilities from random pairs and m-probabilities from the records
that share an email (``contact_identifiers``: blocklisted and hub values do not count; optionally refined
by EM), then predicts. Pairs at or above the configured match probability become edges between the two
record ids, rule ``probabilistic:splink``, with the match probability as the edge's score and both records
as source.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import ComparisonConfig, ProbabilisticConfig
from pipelines.profiles import customer_identifier

RULE = "probabilistic:splink"
RECORD_COLUMNS = [
    "unique_id",
    "first_name",
    "last_name",
    "date_of_birth",
    "street",
    "city",
    "postal_code",
    "email",
    "phone",
    "seen_at",
]


def match_records(customers: DataFrame) -> DataFrame:
    """silver.customers -> the fields Splink compares, one row per record, keyed by its record identifier.

    Names and addresses are lower-cased (the silver values keep their case for display); the date of
    birth becomes an ISO string, which is what Splink's date comparison reads.
    """
    lower = {c: F.lower(F.col(c)) for c in ("first_name", "last_name", "street", "city")}
    return customers.select(
        customer_identifier().alias("unique_id"),
        *[v.alias(k) for k, v in lower.items()],
        F.date_format("date_of_birth", "yyyy-MM-dd").alias("date_of_birth"),
        F.upper(F.regexp_replace("postal_code", r"\s+", "")).alias("postal_code"),
        "email",
        "phone",
        F.coalesce("updated_at", "created_at", "_loaded_at").alias("seen_at"),
    ).select(*RECORD_COLUMNS)


def _comparison(c: ComparisonConfig) -> Any:
    import splink.comparison_library as cl

    col = c.columns[0]
    if c.kind == "forename_surname":
        return cl.ForenameSurnameComparison(c.columns[0], c.columns[1])
    if c.kind == "date_of_birth":
        # exact, one typo, within `thresholds` months (default 1), else: no "within 1 or 10 years" levels,
        # which would let two members of a household (same surname and address, years apart) match.
        months: list[int | float] = [int(t) for t in (c.thresholds or [1])]
        return cl.DateOfBirthComparison(
            col, input_is_string=True, datetime_thresholds=months, datetime_metrics=["month"] * len(months)
        )
    if c.kind == "email":
        return cl.EmailComparison(col)
    if c.kind == "name":
        return cl.NameComparison(col)
    if c.kind == "postcode":
        return cl.PostcodeComparison(col)
    if c.kind == "levenshtein":
        return cl.LevenshteinAtThresholds(col, [int(t) for t in (c.thresholds or [1, 2])])
    if c.kind == "jaro_winkler":
        return cl.JaroWinklerAtThresholds(col, c.thresholds or [0.9, 0.7])
    return cl.ExactMatch(col)


def splink_settings(conf: ProbabilisticConfig) -> Any:
    from splink import SettingsCreator, block_on

    return SettingsCreator(
        link_type="dedupe_only",
        unique_id_column_name="unique_id",
        comparisons=[_comparison(c) for c in conf.comparisons],
        blocking_rules_to_generate_predictions=[block_on(*cols) for cols in conf.blocking_rules],
        max_iterations=conf.training.max_iterations,
        em_convergence=conf.training.em_convergence,
        retain_matching_columns=True,
        additional_columns_to_retain=["seen_at", "email", "phone"],
    )


def train_and_predict(linker: Any, conf: ProbabilisticConfig, threshold: bool = True) -> Any:
    """Train the model (prior, u by random sampling, m by EM) and return Splink's scored pairs: those at or
    above the threshold, or every candidate pair when ``threshold`` is False (the caller filters)."""
    from splink import block_on

    t = conf.training
    linker.training.estimate_probability_two_random_records_match(
        [block_on(*cols) for cols in t.deterministic_rules], recall=t.deterministic_recall
    )
    linker.training.estimate_u_using_random_sampling(
        max_pairs=t.u_max_pairs, seed=t.seed, num_chunks=t.u_chunks
    )
    if t.m_label_column:
        # Records that share an email are one person (that is a deterministic edge): how their names,
        # dates of birth and addresses differ is what a true match looks like, typos and nicknames included.
        # Unsupervised EM, by contrast, learns "same surname and address" as a match and merges households.
        linker.training.estimate_m_from_label_column("_label")
    for cols in t.em_blocking_rules:
        linker.training.estimate_parameters_using_expectation_maximisation(block_on(*cols))
    return linker.inference.predict(threshold_match_probability=conf.threshold if threshold else None)


def contact_identifiers(
    customers: DataFrame, observations: DataFrame, max_degree: dict[str, int]
) -> DataFrame:
    """``unique_id, email, phone``: each customer record's email and phone as identity resolution observed
    them (``identifier_observations``: normalised, missing where blocklisted), and missing too where the
    value sits on more records than its type's ``max_degree`` (the hub guard's bound).

    Splink reads these columns to estimate the prior (pairs equal on them), to learn m-probabilities (pairs
    sharing an email) and to leave out pairs already linked. The raw columns will not do: in the
    100,000-people hard set test@test.com is on 2,132 records and a front-desk phone on 2,714, so nearly
    every "same email" pair is two different people; the prior came out 270 times too high (0.0016 for
    5.9e-6), the m-probabilities near the u-probabilities, and no pair reached the threshold.
    """
    bound = (
        F.create_map(*[x for t, n in max_degree.items() for x in (F.lit(t), F.lit(n))])
        if max_degree
        else None
    )
    contacts = observations.filter(
        (F.col("source_table") == "silver.customers") & F.col("id_type").isin("email", "phone")
    )
    per_value = contacts.groupBy("identifier").agg(F.countDistinct("source_record").alias("_records"))
    contacts = contacts.join(per_value, "identifier")
    if bound is not None:
        contacts = contacts.filter(F.coalesce(F.col("_records") <= bound[F.col("id_type")], F.lit(True)))
    by_record = contacts.groupBy(F.col("source_record").alias("_record")).agg(
        *[F.max(F.when(F.col("id_type") == t, F.col("identifier"))).alias(t) for t in ("email", "phone")]
    )
    record = F.concat_ws(":", "source_system", "source_id")
    return (
        customers.select(customer_identifier().alias("unique_id"), record.alias("_record"))
        .join(by_record, "_record", "left")
        .dropDuplicates(["unique_id"])
        .drop("_record")
    )


def probabilistic_edges(
    customers: DataFrame, conf: ProbabilisticConfig, observations: DataFrame, max_degree: dict[str, int]
) -> DataFrame:
    """Edges (silver.identity_edges columns plus ``score``) between records Splink scores as one person.

    Pairs that share an email or a phone are already linked by deterministic edges and are left out. Email
    and phone are the records' identifiers (``contact_identifiers``), not their raw columns.
    """
    records = (
        match_records(customers)
        .drop("email", "phone")
        .join(contact_identifiers(customers, observations, max_degree), "unique_id", "left")
        .select(*RECORD_COLUMNS)
    )
    if conf.training.m_label_column:
        records = records.withColumn("_label", F.col(conf.training.m_label_column))
    with splink_linker(records.localCheckpoint(), conf) as linker:
        pairs = train_and_predict(linker, conf, threshold=False).as_spark_dataframe()
        # materialised here: the pairs read Splink's cached tables, which are released after this
        return scored_edges(pairs, conf.threshold).localCheckpoint()


@contextmanager
def splink_linker(records: DataFrame, conf: ProbabilisticConfig) -> Iterator[Any]:
    """A Splink linker on the Spark backend over ``records`` (``RECORD_COLUMNS``); on leaving, every table it
    cached and every view it registered are released (``_spark_api``)."""
    from splink import Linker

    spark = records.sparkSession
    # Splink logs every training step, and warns about levels the sample lacks: keep that out of job logs.
    logging.getLogger("splink").setLevel(logging.ERROR)
    views_before = _splink_views(spark)
    db_api = _spark_api(spark)
    try:
        yield Linker(db_api.register(records), splink_settings(conf), log_level=None)
    finally:
        for df in reversed(db_api.persisted):  # dependents first: uncaching a base re-caches them
            df.unpersist()
        for name in _splink_views(spark) - views_before:
            spark.catalog.dropTempView(name)


def _splink_views(spark: SparkSession) -> set[str]:
    return {t.name for t in spark.catalog.listTables() if t.isTemporary and t.name.startswith("__splink__")}


def _spark_api(spark: SparkSession) -> Any:
    """Splink's Spark backend, keeping a list of the tables it persists so they can be released.

    Splink persists its intermediate tables (``break_lineage_method="persist"``) and registers each as a
    temp view, about a hundred per run; it never unpersists them, and its own clean-up drops views but
    leaves their data and plans in Spark's cache. In a long-lived session (the test suite) they held over
    500 MB of a 2 GB driver heap until a later broadcast failed for want of memory. Splink has no hook for
    this: the override sees each frame its ``_break_lineage_and_repartition`` may persist (pinned Splink;
    the hard-set test fails if anything is left cached).
    """
    from splink.backends.spark import SparkAPI

    class ReleasableSparkAPI(SparkAPI):  # type: ignore[misc]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.tables: list[DataFrame] = []

        # Splink persists the very frame this returns, when the table's name says so
        def _repartition_if_needed(self, spark_df: DataFrame, templated_name: str) -> DataFrame:
            out = super()._repartition_if_needed(spark_df, templated_name)
            self.tables.append(out)
            return out

        def _break_lineage_and_repartition(
            self, spark_df: DataFrame, templated_name: str, physical_name: str
        ) -> DataFrame:
            # The scored pairs are read once, by ``scored_edges``, which keeps those over the threshold
            # (1 in 14 at 1 M people): shuffling and caching all 4.3 M candidate pairs first is wasted work.
            if templated_name == "__splink__df_predict":
                return spark_df
            return super()._break_lineage_and_repartition(spark_df, templated_name, physical_name)

        @property
        def persisted(self) -> list[DataFrame]:
            return [df for df in self.tables if df.is_cached]

    return ReleasableSparkAPI(spark_session=spark, break_lineage_method="persist")


def scored_edges(pairs: DataFrame, threshold: float) -> DataFrame:
    """Splink's scored pairs -> edges: those at or above ``threshold``, leaving out pairs already linked by a
    shared email or phone.

    The threshold is applied here, not in Splink's SQL, and above an optimisation barrier: a filter on the
    match probability is pushed by Spark's optimizer below Splink's projections, which inlines every
    comparison level's CASE into every Bayes factor's and the probability's: 260 jaro_winkler calls in the
    optimized plan instead of 4, in a join condition whose generated code is over 64 KB, so Spark runs it
    interpreted. ``spark_partition_id()`` is non-deterministic to the optimizer, which pushes no filter
    through a projection that holds one."""
    same_contact = (F.col("email_l") == F.col("email_r")) | (F.col("phone_l") == F.col("phone_r"))
    return (
        pairs.withColumn("_barrier", F.spark_partition_id())
        # the filter names the barrier column: one that no operator above reads is pruned away, and the
        # projection below the filter would be deterministic again (the barrier had no effect that way)
        .filter((F.col("match_probability") >= threshold) & (F.col("_barrier") >= 0))
        .filter(~F.coalesce(same_contact, F.lit(False)))
        .select(
            F.least("unique_id_l", "unique_id_r").alias("src"),
            F.greatest("unique_id_l", "unique_id_r").alias("dst"),
            F.lit(RULE).alias("rule"),
            F.lit("silver.customers").alias("source_table"),
            F.concat_ws(
                "|", F.least("unique_id_l", "unique_id_r"), F.greatest("unique_id_l", "unique_id_r")
            ).alias("source_record"),
            F.least("seen_at_l", "seen_at_r").alias("first_seen"),
            F.greatest("seen_at_l", "seen_at_r").alias("last_seen"),
            F.lit(1).cast("long").alias("evidence_count"),
            F.round("match_probability", 6).alias("score"),
        )
    )
