"""Traits and audiences: gold.profile_traits and gold.audience_membership, with their checks.

The asset is the full refresh (every profile, every audience, evaluated now); the stream keeps both fresh
per micro-batch for the people it touches, and the schedule in jobs/definitions.py re-runs this asset so
time-based audiences change when time passes.
"""

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    MetadataValue,
    asset_check,
    multi_asset,
)

from assets.metadata import table_result
from assets.resources import SparkResource
from pipelines import io
from pipelines.audiences import audience_sizes, size_changes
from pipelines.refresh import refresh_traits_and_audiences
from pipelines.stream import identity_lock, traits_lock

TRAITS = AssetKey(["gold", "profile_traits"])
MEMBERSHIP = AssetKey(["gold", "audience_membership"])


@multi_asset(
    name="traits_and_audiences",
    group_name="profiles",
    specs=[
        AssetSpec(
            TRAITS,
            description="Computed traits per profile (conf/traits.yaml): SQL aggregates over events, orders "
            "and CRM records, with time windows.",
            deps=[
                AssetKey(["gold", "identity_graph"]),
                AssetKey(["silver", "events"]),
                AssetKey(["silver", "orders"]),
                AssetKey(["silver", "customers"]),
            ],
            kinds={"spark", "delta"},
        ),
        AssetSpec(
            MEMBERSHIP,
            description="Who is in which audience (conf/audiences.yaml), entered_at / exited_at; its change "
            "data feed is the stream of enter/exit events.",
            deps=[AssetKey(["gold", "profiles"]), TRAITS],
            kinds={"spark", "delta"},
        ),
    ],
    check_specs=[
        AssetCheckSpec("one_row_per_profile", asset=TRAITS),
        AssetCheckSpec("size_change", asset=MEMBERSHIP),
    ],
)
def traits_and_audiences(context: AssetExecutionContext, spark: SparkResource):
    """Recompute every trait for every profile and re-evaluate every audience now."""
    cfg, session = spark.config(), spark.session()
    # the stream's traits refresher and its identity updates wait meanwhile
    with traits_lock(cfg), identity_lock(cfg):
        stats = refresh_traits_and_audiences(session, cfg, full=True)
    if stats.mode == "skipped":
        raise RuntimeError(f"nothing to refresh: {stats.reason}")
    yield table_result(session, cfg, "gold.profile_traits", seconds=stats.seconds, as_of=stats.as_of)
    sizes = audience_sizes(session, cfg)
    yield table_result(
        session,
        cfg,
        "gold.audience_membership",
        membership_changes=stats.membership_changes,
        audience_sizes=MetadataValue.json(sizes),
        **{f"audience/{name}": n for name, n in sizes.items()},
    )
    yield _one_row_per_profile(session, cfg)
    yield _size_change(session, cfg)


def _one_row_per_profile(session, cfg) -> AssetCheckResult:
    traits = io.read(session, cfg, "gold.profile_traits")
    live = io.read(session, cfg, "gold.identity_graph").select("profile_id").distinct()
    rows, distinct = traits.count(), traits.select("profile_id").distinct().count()
    missing = live.join(traits, "profile_id", "left_anti").count()
    orphans = traits.join(live, "profile_id", "left_anti").count()
    return AssetCheckResult(
        asset_key=TRAITS,
        check_name="one_row_per_profile",
        passed=rows == distinct and missing == 0 and orphans == 0,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "rows": rows,
            "duplicates": rows - distinct,
            "live_profiles_missing": missing,
            "orphans": orphans,
        },
    )


def _size_change(session, cfg) -> AssetCheckResult:
    limit = cfg.audiences.size_change_warning
    changes = size_changes(session, cfg)
    jumps = {a: {"before": b, "now": n} for a, (b, n) in changes.items() if b and abs(n - b) / b > limit}
    return AssetCheckResult(
        asset_key=MEMBERSHIP,
        check_name="size_change",
        passed=not jumps,
        severity=AssetCheckSeverity.WARN,
        description=f"an audience grew or shrank by more than {limit:.0%} in the last refresh",
        metadata={
            "over_limit": MetadataValue.json(jumps),
            "sizes": MetadataValue.json({a: list(v) for a, v in changes.items()}),
        },
    )


@asset_check(
    asset=MEMBERSHIP, name="members_are_live_profiles", description="Every current member is a live profile."
)
def members_are_live_profiles(spark: SparkResource) -> AssetCheckResult:
    cfg, session = spark.config(), spark.session()
    members = io.read(session, cfg, "gold.audience_membership").filter("is_member")
    live = io.read(session, cfg, "gold.identity_graph").select("profile_id").distinct()
    stale = members.join(live, "profile_id", "left_anti").count()
    return AssetCheckResult(passed=stale == 0, metadata={"members_of_retired_profiles": stale})
