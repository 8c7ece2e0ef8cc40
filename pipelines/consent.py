"""Consent per person and purpose, from Segment's ``context.consent.categoryPreferences``.

``gold.consent`` keeps every answer a person gave (one row per event and category, with its event time),
attributed to the profile the event's identifiers belong to now: after two profiles merge, both devices'
answers are one history. The answer that counts is the latest by event time (``current_consent``), so a
"no" on the phone after a "yes" on the laptop wins, whichever arrived first. A category the person never
answered is not granted (``consented_profiles``).
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

CONSENT_SCHEMA = (
    "profile_id string, category string, granted boolean, event_time timestamp, message_id string"
)


def consent_history(events: DataFrame, graph: DataFrame) -> DataFrame:
    """Every consent answer in ``events`` (silver.events) for a profile of ``graph`` (gold.identity_graph).
    Category names are lower-cased; values that are not booleans are not answers."""
    prefs = F.from_json(F.get_json_object("context", "$.consent.categoryPreferences"), "map<string,string>")
    answers = (
        events.select(
            "message_id",
            "event_time",
            F.array_compact(
                F.array(
                    F.when(F.col("type") != "alias", F.concat(F.lit("user_id:"), "user_id")),
                    F.concat(F.lit("anonymous_id:"), "anonymous_id"),
                )
            ).alias("ids"),
            prefs.alias("prefs"),
        )
        .filter(F.col("prefs").isNotNull())
        .select("message_id", "event_time", "ids", F.explode("prefs").alias("category", "answer"))
        .withColumn("granted", F.expr("try_cast(lower(trim(answer)) AS boolean)"))
        .filter(F.col("granted").isNotNull())
        .withColumn("category", F.lower(F.trim("category")))
    )
    owners = (
        answers.select("message_id", F.explode("ids").alias("identifier"))
        .join(graph.select("identifier", "profile_id"), "identifier")
        .groupBy("message_id")
        .agg(F.min("profile_id").alias("profile_id"))  # an event's ids belong to one profile
    )
    return answers.join(owners, "message_id").select(
        "profile_id", "category", "granted", "event_time", "message_id"
    )


def current_consent(history: DataFrame) -> DataFrame:
    """The answer that counts per (profile_id, category): the latest by event time (ties: message id)."""
    w = Window.partitionBy("profile_id", "category").orderBy(F.desc("event_time"), F.desc("message_id"))
    return (
        history.withColumn("_rn", F.row_number().over(w))
        .filter("_rn = 1")
        .select("profile_id", "category", "granted", F.col("event_time").alias("decided_at"))
    )


def consented_profiles(history: DataFrame, required: list[str]) -> DataFrame:
    """``profile_id`` of everyone who granted every ``required`` category (no answer = not granted)."""
    current = current_consent(history)
    if not required:
        raise ValueError("consented_profiles needs at least one category; with none, everyone qualifies")
    wanted = [c.lower() for c in required]
    return (
        current.filter(F.col("category").isin(wanted) & F.col("granted"))
        .groupBy("profile_id")
        .agg(F.count_distinct("category").alias("_n"))
        .filter(F.col("_n") == len(set(wanted)))
        .select("profile_id")
    )
