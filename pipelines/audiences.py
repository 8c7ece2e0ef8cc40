"""Audiences: SQL predicates over profiles and traits (conf/audiences.yaml), membership kept by MERGE.

``gold.audience_membership`` has one row per (audience, profile_id) that was ever a member: ``is_member``,
``entered_at`` (the latest entry), ``exited_at`` (null while a member) and ``updated_at``. Only changes are
written, so the table's change data feed is the stream of enter/exit events (update_postimage rows with
``is_member`` true = entered, false = exited; inserts = first entries) that activation consumes.
"""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.utils import AnalysisException

from pipelines import io
from pipelines.config import AudiencesConfig, Config
from pipelines.plans import broadcast_if_small
from pipelines.traits import with_as_of

MEMBERSHIP_SCHEMA = (
    "audience string, profile_id string, is_member boolean, entered_at timestamp, exited_at timestamp, "
    "updated_at timestamp"
)


def evaluate(
    profiles: DataFrame, traits: DataFrame, audiences: AudiencesConfig, as_of: datetime
) -> DataFrame:
    """``(audience, profile_id, qualifies)`` for every profile in ``profiles`` and every audience.

    A trait named like a profile column (``last_seen``, ``lifetime_value``) is what predicates see under
    that name: the trait is the definition the user configured."""
    traits = traits.drop("computed_at")
    shadowed = [c for c in traits.columns if c != "profile_id" and c in profiles.columns]
    joined = profiles.drop(*shadowed).join(traits, "profile_id", "left")
    checks = []
    for name, audience in audiences.definitions.items():
        try:
            predicate = F.expr(with_as_of(audience.where, as_of))
        except Exception as exc:
            raise ValueError(f"audience {name!r} (conf/audiences.yaml): {exc}") from exc
        checks.append(F.struct(F.lit(name).alias("audience"), F.coalesce(predicate, F.lit(False)).alias("q")))
    if not checks:
        return profiles.sparkSession.createDataFrame(
            [], "audience string, profile_id string, qualifies boolean"
        )
    try:  # analysed here: a predicate naming a column that is neither a profile's nor a trait fails
        out = joined.select("profile_id", F.explode(F.array(*checks)).alias("a")).select(
            "a.audience", "profile_id", F.col("a.q").alias("qualifies")
        )
    except AnalysisException as exc:
        raise ValueError(
            f"an audience predicate in conf/audiences.yaml does not fit the profile: {exc}"
        ) from exc
    return out


def membership_changes(evaluated: DataFrame, current: DataFrame) -> DataFrame:
    """The rows of ``evaluated`` (audience, profile_id, qualifies) whose ``qualifies`` differs from
    ``current``, the evaluated people's membership rows (``current_membership``; no row = not a member),
    materialised: an incremental ``update_membership``'s source.

    Only these rows go into an incremental MERGE, and no MERGE at all (no commit) when there are none: a
    stream batch re-evaluates a few thousand people, most of whom stay where they are, and a MERGE into the
    whole membership table costs seconds however small its source. The MERGE keeps its conditions, so a
    membership another writer changed in between is still handled right."""
    return (
        evaluated.join(current, ["audience", "profile_id"], "left")
        .filter(F.col("qualifies") != F.coalesce(F.col("is_member"), F.lit(False)))
        .select("audience", "profile_id", "qualifies")
        .localCheckpoint()
    )


def current_membership(
    spark: SparkSession, cfg: Config, people: DataFrame, rows: int | None = None
) -> DataFrame:
    """``(audience, profile_id, is_member)``: the membership rows of ``people`` (profile_id, materialised;
    ``rows``: its count, if known), materialised. One scan of the table, their ids broadcast when few."""
    _ensure_membership(cfg, spark)
    return (
        io.read(spark, cfg, "gold.audience_membership")
        .join(broadcast_if_small(people.select("profile_id"), rows), "profile_id", "left_semi")
        .select("audience", "profile_id", "is_member")
        .localCheckpoint()
    )


def update_membership(
    evaluated: DataFrame,
    cfg: Config,
    as_of: datetime,
    complete: bool,
    txn_app_id: str | None = None,
    txn_version: int | None = None,
    session: SparkSession | None = None,
) -> int:
    """MERGE ``evaluated`` (audience, profile_id, qualifies) into gold.audience_membership; returns rows changed.

    ``complete``: ``evaluated`` covers every live profile and audience, so members it does not mention (their
    profile was merged away, or the audience was removed from conf) exit too. Otherwise only the evaluated
    profiles change (a profile that is gone is evaluated with qualifies = false by the caller), and
    ``evaluated`` should be their ``membership_changes`` (any rows are right; only those are cheap).
    ``session``: the session to MERGE in (``io.merge_with``)."""
    _ensure_membership(cfg, evaluated.sparkSession)
    at = F.lit(as_of).cast("timestamp")
    src = evaluated.withColumn("_at", at)

    def clauses(m):
        m = (
            m.whenMatchedUpdate(
                condition="t.is_member AND NOT s.qualifies",
                set={"is_member": "false", "exited_at": "s._at", "updated_at": "s._at"},
            )
            .whenMatchedUpdate(
                condition="NOT t.is_member AND s.qualifies",
                set={"is_member": "true", "entered_at": "s._at", "exited_at": "null", "updated_at": "s._at"},
            )
            .whenNotMatchedInsert(
                condition="s.qualifies",
                values={
                    "audience": "s.audience",
                    "profile_id": "s.profile_id",
                    "is_member": "true",
                    "entered_at": "s._at",
                    "exited_at": "null",
                    "updated_at": "s._at",
                },
            )
        )
        if complete:
            m = m.whenNotMatchedBySourceUpdate(
                condition="t.is_member",
                set={"is_member": F.lit(False), "exited_at": at, "updated_at": at},
            )
        return m

    return io.merge_with(
        src,
        cfg,
        "gold.audience_membership",
        ["audience", "profile_id"],
        clauses,
        txn_app_id,
        txn_version,
        session,
    )


def _ensure_membership(cfg: Config, spark: SparkSession) -> None:
    io.ensure(spark, cfg, "gold.audience_membership", spark.createDataFrame([], MEMBERSHIP_SCHEMA).schema)


def _members(df: DataFrame) -> dict[str, int]:
    """Current members per audience of a gold.audience_membership frame."""
    return {
        r["audience"]: int(r["count"]) for r in df.filter("is_member").groupBy("audience").count().collect()
    }


def audience_sizes(spark, cfg: Config) -> dict[str, int]:
    """Current members per configured audience (0 for an audience nobody is in)."""
    counts = (
        _members(io.read(spark, cfg, "gold.audience_membership"))
        if io.exists(spark, cfg, "gold.audience_membership")
        else {}
    )
    return {a: counts.get(a, 0) for a in cfg.audiences.definitions}


def size_changes(spark, cfg: Config) -> dict[str, tuple[int, int]]:
    """``audience -> (members before, members now)`` across the last write of gold.audience_membership
    (a full refresh is one MERGE; an incremental one writes only when a membership changes), from Delta time
    travel."""
    now = io.version(spark, cfg, "gold.audience_membership")

    def sizes(version: int) -> dict[str, int]:
        return (
            _members(io.read_version(spark, cfg, "gold.audience_membership", version)) if version >= 0 else {}
        )

    before, after = sizes(now - 1), sizes(now)
    return {a: (before.get(a, 0), after.get(a, 0)) for a in cfg.audiences.definitions}
