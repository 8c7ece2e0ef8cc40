"""Splink's scored pairs become edges without Spark re-running every comparison inside the threshold filter."""

import random
import re
from datetime import datetime

from pyspark.sql import functions as F

from pipelines.config import load_config
from pipelines.matching import RECORD_COLUMNS, scored_edges, splink_linker, train_and_predict


def _comparison_calls(df) -> int:
    """How often the optimized plan calls a string comparison function (what each comparison level runs)."""
    plan = df._jdf.queryExecution().optimizedPlan().toString()
    return len(re.findall(r"(jaro_winkler|levenshtein|jaccard|damerau)\(", plan, re.I))


def test_threshold_filter_does_not_inline_splinks_comparisons(spark):
    """A filter on the match probability that Spark pushes below Splink's projections copies every
    comparison level into every Bayes factor it feeds (hundreds of calls, and generated code too large to
    compile). The edges' plan must call each comparison as often as Splink's prediction alone does."""
    conf = load_config("test").identity.probabilistic
    rng = random.Random(3)
    firsts, lasts = ["ann", "anne", "bob", "rob", "carla"], ["lee", "leigh", "smith", "smyth"]
    rows = [
        (
            f"crm_id:R{i}",
            rng.choice(firsts),
            rng.choice(lasts),
            f"1990-0{rng.randint(1, 3)}-1{rng.randint(0, 2)}",
            f"{rng.randint(1, 4)} main st",
            rng.choice(["springfield", "shelbyville"]),
            "12345",
            f"email:p{i % 40}@example.com",
            None,
            datetime(2026, 1, 1),
        )
        for i in range(120)
    ]
    records = spark.createDataFrame(
        rows, ", ".join(f"{c} {'timestamp' if c == 'seen_at' else 'string'}" for c in RECORD_COLUMNS)
    )
    if conf.training.m_label_column:
        records = records.withColumn("_label", F.col(conf.training.m_label_column))
    with splink_linker(records.localCheckpoint(), conf) as linker:
        pairs = train_and_predict(linker, conf, threshold=False).as_spark_dataframe()
        edges = scored_edges(pairs, conf.threshold)
        predicted, filtered = _comparison_calls(pairs), _comparison_calls(edges)
        naive = _comparison_calls(pairs.filter(F.col("match_probability") >= conf.threshold))
        assert (
            edges.count()
            == pairs.filter(
                (F.col("match_probability") >= conf.threshold)
                & ~F.coalesce(
                    (F.col("email_l") == F.col("email_r")) | (F.col("phone_l") == F.col("phone_r")),
                    F.lit(False),
                )
            ).count()
        )
    assert predicted > 0
    assert filtered == predicted, (filtered, predicted)
    # the hazard this guards against is real in this Spark: a plain filter inlines the comparisons
    assert naive > 2 * predicted, (naive, predicted)
