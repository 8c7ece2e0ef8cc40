"""Identity and profile assets: edges, the identity graph and golden profiles."""

from datetime import UTC, datetime

from dagster import AssetExecutionContext, AssetKey, AssetSpec, MaterializeResult, asset, multi_asset

from assets.metadata import table_result
from assets.resources import SparkResource
from pipelines import io
from pipelines.identity import all_edges, identifier_observations, identity_graph
from pipelines.profiles import build_profiles
from pipelines.stream import identity_lock


def _observations(session, cfg):
    return identifier_observations(
        io.read(session, cfg, "silver.customers"),
        io.read(session, cfg, "silver.events"),
        cfg.identity.blocklist,
        cfg.identity.normalizers,
    )


@asset(
    key_prefix="silver",
    group_name="identity",
    deps=[AssetKey(["silver", "customers"]), AssetKey(["silver", "events"])],
    kinds={"spark", "delta"},
)
def identity_edges(spark: SparkResource) -> MaterializeResult:
    """Identifier <-> identifier edges from CRM records and identify/alias/track calls, plus Splink's
    probabilistic edges between customer records; each with rule, score and source record."""
    cfg, session = spark.config(), spark.session()
    edges = all_edges(
        _observations(session, cfg),
        io.read(session, cfg, "silver.customers"),
        cfg.identity,
    )
    io.overwrite(edges, cfg, "silver.identity_edges")
    by_rule = {
        r["rule"]: r["count"]
        for r in io.read(session, cfg, "silver.identity_edges").groupBy("rule").count().collect()
    }
    return table_result(
        session,
        cfg,
        "silver.identity_edges",
        probabilistic_edges=by_rule.get("probabilistic:splink", 0),
        edges_by_rule=by_rule,
    )


@multi_asset(
    name="identity_graph",
    group_name="identity",
    specs=[
        AssetSpec(
            ["gold", "identity_graph"],
            description="Identifier -> profile_id (connected components over the edges).",
            deps=[
                AssetKey(["silver", "identity_edges"]),
                AssetKey(["silver", "customers"]),
                AssetKey(["silver", "events"]),
            ],
            kinds={"spark", "delta"},
        ),
        AssetSpec(
            ["gold", "profile_ids"],
            description="Every profile id ever issued, with when it was retired and into which profile: ids are never reused.",
            deps=[AssetKey(["silver", "identity_edges"])],
            kinds={"spark", "delta"},
        ),
        AssetSpec(
            ["gold", "profile_merges"],
            description="Profile merges and splits per build, with the edge that caused each.",
            deps=[AssetKey(["silver", "identity_edges"])],
            kinds={"spark", "delta"},
        ),
        AssetSpec(
            ["quarantine", "identity_edges"],
            description="Edges cut because they would put more identifiers of a type into one profile than allowed.",
            deps=[AssetKey(["silver", "identity_edges"])],
            kinds={"spark", "delta"},
        ),
        AssetSpec(
            ["quarantine", "identity_components"],
            description="Components above the size bound: not published, listed with their most-connected identifiers.",
            deps=[
                AssetKey(["silver", "identity_edges"]),
                AssetKey(["silver", "customers"]),
                AssetKey(["silver", "events"]),
            ],
            kinds={"spark", "delta"},
        ),
    ],
)
def identity_graph_assets(context: AssetExecutionContext, spark: SparkResource):
    """Connected components (large-star/small-star) over the edges; oversized components are quarantined."""
    cfg, session = spark.config(), spark.session()
    with identity_lock(cfg):  # the stream's per-batch identity updates wait meanwhile
        yield from _rebuild_identity(context, session, cfg)


def _rebuild_identity(context: AssetExecutionContext, session, cfg):
    previous = (
        io.read(session, cfg, "gold.identity_graph")
        if io.exists(session, cfg, "gold.identity_graph")
        else None
    )
    registry = (
        io.read(session, cfg, "gold.profile_ids") if io.exists(session, cfg, "gold.profile_ids") else None
    )
    result = identity_graph(
        _observations(session, cfg),
        io.read(session, cfg, "silver.identity_edges"),
        cfg.identity.max_component_size,
        limits=cfg.identity.limits,
        priorities=cfg.identity.priorities,
        previous=previous,
        registry=registry,
        built_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        max_degree=cfg.identity.max_degree,
    )
    # Merges, splits and the registry derive from the previous graph and registry: settle them before
    # either table is overwritten.
    changes, new_registry = result.changes.localCheckpoint(), result.registry.localCheckpoint()
    graph = result.graph.localCheckpoint()
    io.append(changes, cfg, "gold.profile_merges")
    io.overwrite(new_registry, cfg, "gold.profile_ids")
    io.overwrite(graph, cfg, "gold.identity_graph")
    io.overwrite(result.oversized, cfg, "quarantine.identity_components")
    io.overwrite(result.cut_edges, cfg, "quarantine.identity_edges")
    yield table_result(session, cfg, "gold.identity_graph")
    yield table_result(session, cfg, "gold.profile_ids")
    by_event = {r["event"]: r["count"] for r in changes.groupBy("event").count().collect()}
    yield table_result(
        session,
        cfg,
        "gold.profile_merges",
        merges_this_build=by_event.get("merge", 0),
        splits_this_build=by_event.get("split", 0),
    )
    yield table_result(session, cfg, "quarantine.identity_edges")
    oversized = table_result(session, cfg, "quarantine.identity_components")
    too_big = oversized.metadata["dagster/row_count"] if oversized.metadata else 0
    if too_big:
        context.log.warning(
            f"{too_big} component(s) above {cfg.identity.max_component_size} identifiers quarantined"
        )
    yield oversized


@asset(
    key_prefix="gold",
    group_name="profiles",
    deps=[
        AssetKey(["gold", "identity_graph"]),
        AssetKey(["silver", "customers"]),
        AssetKey(["silver", "orders"]),
        AssetKey(["silver", "events"]),
    ],
    kinds={"spark", "delta"},
)
def profiles(spark: SparkResource) -> MaterializeResult:
    """One golden profile per person: survivorship by source priority then recency, orders and events rolled up."""
    cfg, session = spark.config(), spark.session()
    with identity_lock(cfg):
        _rebuild_profiles(session, cfg)
    return table_result(session, cfg, "gold.profiles", preview_rows=cfg.profiles.preview_rows)


def _rebuild_profiles(session, cfg) -> None:
    built = build_profiles(
        io.read(session, cfg, "gold.identity_graph"),
        io.read(session, cfg, "silver.customers"),
        io.read(session, cfg, "silver.orders"),
        io.read(session, cfg, "silver.events"),
        cfg.sources.priority,
        cfg.profiles.survivorship,
    )
    io.overwrite(built, cfg, "gold.profiles")
