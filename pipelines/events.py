"""Clickstream: raw Segment-spec JSON lines -> typed silver events (+ quarantine with a reason).

The event time to trust is ``receivedAt - (sentAt - timestamp)``: the client's clock error cancels out
(Segment's own rule). When sentAt is missing the client timestamp is used as is; when receivedAt is
missing too (replayed files from another tool) the client timestamp is used. Nested ``properties``,
``traits`` and ``context`` are kept as JSON text, and the fields identity needs are extracted.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from pipelines.normalize import blank_to_null, normalize_email, normalize_phone
from pipelines.records import keep_one_per_key

EVENT_TYPES = ["track", "identify", "page", "screen", "group", "alias"]

# Objects parsed into StringType keep their JSON text, so one schema takes any properties/traits/context.
RAW_EVENT_SCHEMA = StructType(
    [
        StructField(name, StringType())
        for name in (
            "messageId",
            "type",
            "event",
            "name",
            "userId",
            "anonymousId",
            "previousId",
            "groupId",
            "timestamp",
            "sentAt",
            "receivedAt",
            "originalTimestamp",
            "properties",
            "traits",
            "context",
        )
    ]
    + [StructField("_corrupt_record", StringType())]
)

SILVER_COLUMNS = [
    "message_id",
    "type",
    "event",
    "name",
    "user_id",
    "anonymous_id",
    "previous_id",
    "group_id",
    "event_time",
    "client_timestamp",
    "sent_at",
    "received_at",
    "properties",
    "traits",
    "context",
    "trait_email",
    "trait_phone",
    "context_ip",
    "user_agent",
    "_source_file",
    "_source_position",
    "_loaded_at",
    "_fingerprint",
]
QUARANTINE_COLUMNS = ["feed", "source_file", "source_position", "loaded_at", "raw", "reason"]
# The content a messageId stands for: a retry of the same event may carry another sentAt, receivedAt or
# context (the SDK re-sends the batch), but never another type, name, identity, timestamp or payload.
FINGERPRINT_FIELDS = [
    "type",
    "event",
    "name",
    "user_id",
    "anonymous_id",
    "previous_id",
    "group_id",
    "_raw_ts",
    "properties",
    "traits",
]


def parse_events(
    raw: DataFrame,
    max_event_bytes: int,
    min_event_time: str,
    max_future_seconds: int,
    default_region: str = "US",
) -> DataFrame:
    """Parse ``value`` lines (with ``source_file``, ``source_position`` and ``loaded_at``) into typed
    columns + ``_reject_reason``.

    Rejected, first match wins: over the size limit, not a JSON object, no messageId, unknown type,
    neither userId nor anonymousId (alias: userId and previousId), track without event, alias without
    previousId, a timestamp that does not parse, an event time before ``min_event_time`` or more than
    ``max_future_seconds`` after it was loaded. Identify traits' email and phone are normalised like CRM
    values (phones without a country code read in ``default_region``).

    Repairs, each a documented rule (docs/architecture.md, "Bad input"): a UTF-8 byte-order mark before
    the object is dropped; ids sent as JSON numbers are read as their decimal text (Segment's own rule);
    a timestamp sent as a number (or digit string) is epoch seconds with 10 digits or fewer, else epoch
    milliseconds.
    """
    raw = raw.withColumn("value", F.regexp_replace(F.col("value"), "^\ufeff", ""))
    trimmed = F.trim(F.col("value"))
    parsed = raw.withColumn(
        "j",
        F.when(
            trimmed.startswith("{"),
            F.from_json(
                F.col("value"),
                RAW_EVENT_SCHEMA,
                {
                    "mode": "PERMISSIVE",
                    "columnNameOfCorruptRecord": "_corrupt_record",
                    "allowSingleQuotes": "false",
                },
            ),
        ),
    )
    j = F.col("j")
    client_ts = _timestamp(F.coalesce(j["timestamp"], j["originalTimestamp"]))
    df = parsed.select(
        F.col("value"),
        F.col("source_file"),
        F.col("source_position"),
        F.col("loaded_at"),
        blank_to_null(j["messageId"]).alias("message_id"),
        F.lower(blank_to_null(j["type"])).alias("type"),
        blank_to_null(j["event"]).alias("event"),
        blank_to_null(j["name"]).alias("name"),
        blank_to_null(j["userId"]).alias("user_id"),
        blank_to_null(j["anonymousId"]).alias("anonymous_id"),
        blank_to_null(j["previousId"]).alias("previous_id"),
        blank_to_null(j["groupId"]).alias("group_id"),
        F.coalesce(j["timestamp"], j["originalTimestamp"]).alias("_raw_ts"),
        client_ts.alias("client_timestamp"),
        _timestamp(j["sentAt"]).alias("sent_at"),
        _timestamp(j["receivedAt"]).alias("received_at"),
        j["properties"].alias("properties"),
        j["traits"].alias("traits"),
        j["context"].alias("context"),
        j["_corrupt_record"].alias("_corrupt"),
        j.isNull().alias("_not_object"),
    )
    skew = F.col("sent_at").cast("double") - F.col("client_timestamp").cast("double")
    corrected = F.when(
        F.col("received_at").isNotNull() & F.col("sent_at").isNotNull(),
        F.timestamp_seconds(F.col("received_at").cast("double") - skew),
    ).otherwise(F.col("client_timestamp"))
    df = (
        df.withColumn("event_time", corrected)
        .withColumn("trait_email", normalize_email(F.get_json_object("traits", "$.email")))
        .withColumn(
            "trait_phone", normalize_phone(F.get_json_object("traits", "$.phone"), F.lit(default_region))
        )
        .withColumn("context_ip", F.get_json_object("context", "$.ip"))
        .withColumn("user_agent", F.get_json_object("context", "$.userAgent"))
    )
    is_alias = F.col("type") == "alias"
    no_identity = F.when(is_alias, F.col("user_id").isNull()).otherwise(
        F.col("user_id").isNull() & F.col("anonymous_id").isNull()
    )
    reason = (
        F.when(F.length(F.encode(F.col("value"), "UTF-8")) > max_event_bytes, F.lit("event_too_large"))
        .when(F.col("_not_object") & F.try_parse_json(F.col("value")).isNotNull(), F.lit("not_a_json_object"))
        .when(F.col("_not_object") | F.col("_corrupt").isNotNull(), F.lit("invalid_json"))
        .when(F.col("message_id").isNull(), F.lit("missing_message_id"))
        .when(~F.coalesce(F.col("type").isin(EVENT_TYPES), F.lit(False)), F.lit("invalid_type"))
        .when(no_identity, F.lit("missing_identity"))
        .when((F.col("type") == "track") & F.col("event").isNull(), F.lit("missing_event_name"))
        .when(is_alias & F.col("previous_id").isNull(), F.lit("missing_previous_id"))
        .when(F.col("client_timestamp").isNull(), F.lit("invalid_timestamp"))
        .when(F.col("event_time") < F.to_timestamp(F.lit(min_event_time)), F.lit("timestamp_out_of_range"))
        .when(
            F.col("event_time")
            > F.col("loaded_at") + F.expr(f"make_interval(0,0,0,0,0,0,{max_future_seconds})"),
            F.lit("timestamp_out_of_range"),
        )
    )
    fingerprint = F.sha2(F.to_json(F.struct(*[F.col(c) for c in FINGERPRINT_FIELDS])), 256)
    return df.withColumn("_reject_reason", reason).withColumn("_fingerprint", fingerprint)


def _timestamp(text: F.Column) -> F.Column:
    """ISO-8601 text, or epoch seconds (<= 10 digits) / milliseconds as a number or digit string."""
    digits = F.regexp_extract(F.trim(text), r"^(\d{1,16})(\.\d+)?$", 0)
    epoch = F.when(
        digits != "",
        F.when(
            F.length(F.regexp_extract(digits, r"^\d+", 0)) <= 10, F.timestamp_seconds(digits.cast("double"))
        ).otherwise(F.timestamp_millis(digits.cast("double").cast("long"))),
    )
    return F.coalesce(epoch, F.try_to_timestamp(text))


def flag_conflicts(parsed: DataFrame, known: DataFrame | None = None) -> DataFrame:
    """Reject a messageId reused for other content (``message_id_conflict``).

    The first accepted copy of a messageId (earliest loaded, then file and position) defines its content;
    a later copy with the same fingerprint is a duplicate (a retry), one with another fingerprint is a
    conflict and goes to quarantine. ``known`` (message_id, _fingerprint), the events silver already
    holds, takes precedence: a stream's earlier micro-batches came first.
    """
    accepted = F.col("_reject_reason").isNull()
    first = Window.partitionBy("message_id").orderBy(
        F.col("loaded_at"), F.col("source_file"), F.col("source_position")
    )
    first_fp = F.first(F.when(accepted, F.col("_fingerprint")), ignorenulls=True).over(
        first.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    )
    df = parsed.withColumn("_first_fp", F.when(F.col("message_id").isNotNull(), first_fp))
    if known is not None:
        df = df.join(
            known.select("message_id", F.col("_fingerprint").alias("_known_fp")), "message_id", "left"
        ).withColumn("_first_fp", F.coalesce("_known_fp", "_first_fp"))
    conflict = accepted & (F.col("_fingerprint") != F.col("_first_fp"))
    return df.withColumn(
        "_reject_reason", F.when(conflict, F.lit("message_id_conflict")).otherwise(F.col("_reject_reason"))
    ).drop("_first_fp", "_known_fp")


def silver_events(parsed: DataFrame) -> DataFrame:
    """Accepted events, one per messageId (the earliest loaded copy wins, deterministically)."""
    accepted = parsed.filter(F.col("_reject_reason").isNull()).select(
        *[c for c in SILVER_COLUMNS if not c.startswith("_")],
        F.col("source_file").alias("_source_file"),
        F.col("source_position").alias("_source_position"),
        F.col("loaded_at").alias("_loaded_at"),
        "_fingerprint",
    )
    order = [F.col("_loaded_at").asc(), F.col("_source_file").asc(), F.col("_source_position").asc()]
    return keep_one_per_key(accepted, ["message_id"], order).select(*SILVER_COLUMNS)


def quarantined_events(parsed: DataFrame) -> DataFrame:
    """Rejected lines with the raw text, where they came from and why."""
    return parsed.filter(F.col("_reject_reason").isNotNull()).select(
        F.lit("events").alias("feed"),
        "source_file",
        "source_position",
        "loaded_at",
        F.col("value").alias("raw"),
        F.col("_reject_reason").alias("reason"),
    )
