"""Scoring identity resolution against ground truth: pairwise precision, recall and F1.

A pair is two identifiers of the same true person (true pair) or the same profile (predicted pair).
Identifiers in the truth that the graph does not hold (blocked, quarantined) count as singletons.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def _pairs(df: DataFrame, *keys: str) -> int:
    n = df.groupBy(*keys).count()
    return int(n.agg(F.sum(F.col("count") * (F.col("count") - 1) / 2)).collect()[0][0] or 0)


def pairwise_scores(predicted: DataFrame, truth: DataFrame) -> dict[str, float]:
    """``predicted``: (identifier, profile_id); ``truth``: (identifier, person_id)."""
    labelled = (
        truth.join(predicted.select("identifier", "profile_id"), "identifier", "left")
        .withColumn("profile_id", F.coalesce("profile_id", F.concat(F.lit("unresolved:"), "identifier")))
        .persist()
    )
    tp, predicted_pairs, true_pairs = (
        _pairs(labelled, "profile_id", "person_id"),
        _pairs(labelled, "profile_id"),
        _pairs(labelled, "person_id"),
    )
    labelled.unpersist()
    precision = tp / predicted_pairs if predicted_pairs else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_positive_pairs": tp,
        "predicted_pairs": predicted_pairs,
        "true_pairs": true_pairs,
    }
