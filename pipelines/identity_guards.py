"""Guards against over-merging: per-type limits per profile, enforced by cutting the weakest edges.

Connected components merge everything that is connected; one shared device or a mistyped user id then
glues two people together. Each identifier type has a limit per profile (conf/identity.yaml: at most 1
user_id, 5 emails ...). A component within every limit is kept as it is. A component that breaks a limit
is solved again with a constrained union-find: its edges are applied strongest first, and an edge whose
union would put more identifiers of some type into one profile than allowed is cut (and reported).

Union-find with constraints is sequential, so the violating components are solved in Python: on the driver
in one pass while their edges fit (``LOCAL_MAX_EDGES``), else one component per call of a grouped pandas UDF;
the components within limits, which are nearly all of them, never leave Spark.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.plans import broadcast_if_small

CUT_EDGE_COLUMNS = ["src", "dst", "rule", "source_table", "source_record", "first_seen", "reason"]
CUT_EDGE_SCHEMA = (
    "src string, dst string, rule string, source_table string, source_record string, first_seen timestamp, "
    "reason string"
)
HUB_SCHEMA = "id string, degree long, bound int"
# the reason of an edge cut for its hub end; ``hub_of_cut`` reads the hub back
HUB_REASON = "degree: %s links %d identifiers (max_degree %d)"
# Violating components up to this many edges in all are solved on the driver: the same results, and on 2
# cores Spark's per-job and per-group overhead costs seconds where the driver needs milliseconds. Bounded
# by the driver's memory for the edges as pandas (a few hundred bytes an edge); a cluster with more takes
# the cogroup path.
LOCAL_MAX_EDGES = 2_000_000
_OUT_SCHEMA = (
    "kind string, id string, component string, src string, dst string, rule string, source_table string, "
    "source_record string, first_seen timestamp, reason string"
)
_ARROW_OUT = pa.schema(
    [
        (c.split()[0], pa.timestamp("us", tz="UTC") if c.endswith("timestamp") else pa.string())
        for c in _OUT_SCHEMA.split(", ")
    ]
)


def _solve(
    vertices: pd.DataFrame, edges: pd.DataFrame, limits: dict[str, int], priorities: dict[str, int]
) -> pd.DataFrame:
    """Constrained union-find over one component or many (they are disjoint, so one pass over all their
    edges in one order is each component's own pass): returns vertex labels and cut edges."""
    ids = vertices["id"].tolist()
    id_type = dict(zip(ids, vertices["id_type"].tolist(), strict=True))
    parent = {v: v for v in ids}
    counts = {v: {t: 1} for v, t in id_type.items()}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    default = max(priorities.values(), default=0) + 1
    rank = {t: priorities.get(t, default) for t in set(id_type.values())}
    strength = np.minimum(
        edges["src"].map(id_type).map(rank).to_numpy(), edges["dst"].map(id_type).map(rank).to_numpy()
    )
    edges = edges.assign(_strength=strength).assign(
        _uncertainty=1.0 - (edges["score"].fillna(1.0) if "score" in edges else 1.0)
    )
    # certain edges first (strongest identifier type, then earliest seen); probabilistic ones after them,
    # most likely first, so a limit cuts a guess before it cuts evidence
    edges = edges.sort_values(
        ["_uncertainty", "_strength", "first_seen", "src", "dst"], na_position="last", kind="mergesort"
    )
    cut_at: list[int] = []
    reasons: list[str] = []
    # Every set is within its limits (limits are >= 1), so a union breaks a limit only in a type of both.
    # Plain Python: the loop is sequential by nature, and dict lookups beat NumPy scalar access here.
    for i, (s, d) in enumerate(zip(edges["src"].tolist(), edges["dst"].tolist(), strict=True)):
        a, b = find(s), find(d)
        if a == b:
            continue
        ca, cb = counts[a], counts[b]
        if len(ca) < len(cb):
            a, b, ca, cb = b, a, cb, ca
        broken = [t for t, n in cb.items() if t in limits and ca.get(t, 0) + n > limits[t]]
        if broken:
            t = min(broken)
            cut_at.append(i)
            reasons.append(f"limit: at most {limits[t]} {t} per profile")
            continue
        parent[b] = a
        for t, n in cb.items():
            ca[t] = ca.get(t, 0) + n
        del counts[b]
    roots = [find(v) for v in ids]
    # a set's label is its smallest member, like the unconstrained components
    smallest: dict[str, str] = {}
    for v, r in zip(ids, roots, strict=True):
        if r not in smallest or v < smallest[r]:
            smallest[r] = v
    columns = [c.split()[0] for c in _OUT_SCHEMA.split(", ")]
    cuts = edges.iloc[cut_at][["src", "dst", "rule", "source_table", "source_record", "first_seen"]]
    cut_rows = cuts.assign(kind="cut", id=None, component=None, reason=np.array(reasons, dtype=object))
    # the vertex rows' empty columns typed like the cut rows' (first_seen a timestamp), so concat need not
    # guess a dtype from all-null columns (pandas deprecates that guess)
    vertex_rows = pd.DataFrame(
        {c: pd.Series(None, index=range(len(ids)), dtype=cut_rows[c].dtype) for c in columns}
    ).assign(kind="vertex", id=ids, component=[smallest[r] for r in roots])
    return pd.concat([vertex_rows[columns], cut_rows[columns]], ignore_index=True)


def identifier_type(identifier: F.Column) -> F.Column:
    """The type of a ``type:value`` identifier (types have no colon): no join with the vertices needed."""
    return F.substring_index(identifier, ":", 1)


def cut_hubs(
    edges: DataFrame, max_degree: dict[str, int], hubs: DataFrame | None = None
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """``(edges, cut_edges, hubs)``: every edge of an identifier linked to more distinct identifiers than its
    type's ``max_degree`` is cut. ``hubs`` (id, degree, bound), when the caller found them already
    (``hubs_on_driver``), saves the count of every identifier's neighbours.

    Blocklists catch the junk values someone thought of; a value typed into hundreds of records (a store's
    phone number, a shared inbox) is found by its degree: a person's email or phone is linked to a handful
    of records and devices, junk to a crowd. Cut edges are reported with the hub and its degree; ``hubs``
    (id, degree, bound; materialised, with a broadcast hint when small) are not published as profiles.
    """
    spark = edges.sparkSession
    if not max_degree:
        return (
            edges,
            spark.createDataFrame([], CUT_EDGE_SCHEMA),
            spark.createDataFrame([], HUB_SCHEMA),
        )
    if hubs is None:
        hubs = hub_degrees(edges, max_degree).localCheckpoint()
    # hubs are a few junk values: every join with them (here and in the callers) is a broadcast, not a
    # shuffle of the edges
    small = broadcast_if_small(hubs)
    # an edge is cut for its first hub end (src, else dst)
    by_src = edges.join(small.withColumnRenamed("id", "src"), "src")
    by_dst = edges.join(small.withColumnRenamed("id", "dst"), "dst").join(
        small.select(F.col("id").alias("src")), "src", "left_anti"
    )
    reason = lambda hub: F.format_string(HUB_REASON, hub, F.col("degree"), F.col("bound"))  # noqa: E731
    cut = by_src.withColumn("reason", reason(F.col("src"))).unionByName(
        by_dst.withColumn("reason", reason(F.col("dst")))
    )
    kept = edges.join(small.select(F.col("id").alias("src")), "src", "left_anti").join(
        small.select(F.col("id").alias("dst")), "dst", "left_anti"
    )
    return kept, cut.select(*CUT_EDGE_COLUMNS), small


def hub_degrees(edges: DataFrame, max_degree: dict[str, int]) -> DataFrame:
    """``(id, degree, bound)``: the identifiers of ``edges`` linked to more distinct identifiers than their
    type's ``max_degree`` (not empty), counted on Spark."""
    bound = F.element_at(
        F.create_map(*[x for t, n in max_degree.items() for x in (F.lit(t), F.lit(n))]),
        identifier_type(F.col("id")),
    )
    # only identifiers of a bounded type can be hubs: count their neighbours, nobody else's
    ends = (
        edges.select(F.col("src").alias("id"), F.col("dst").alias("other"))
        .unionByName(edges.select(F.col("dst").alias("id"), F.col("src").alias("other")))
        .filter(bound.isNotNull())
    )
    return (
        ends.groupBy("id")
        .agg(F.countDistinct("other").alias("degree"))
        .filter(F.col("degree") > bound)
        .select("id", "degree", bound.alias("bound"))
    )


def hub_of_cut(reason: Column) -> Column:
    """The hub a cut edge's ``reason`` names (``HUB_REASON``); empty for an edge cut by a per-type limit."""
    return F.regexp_extract(reason, r"^degree: (.*) links [0-9]+ identifiers \(max_degree [0-9]+\)$", 1)


def hubs_on_driver(
    ids: pa.Array | np.ndarray,
    codes: np.ndarray,
    max_degree: dict[str, int],
    bound_of: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(codes, degrees, bounds)`` of the hubs, what ``cut_hubs`` finds with Spark, from edges already on the
    driver as integer codes (``identity.encode_edges``: ``codes[:m]`` sources, ``codes[m:]`` destinations).
    A degree is the number of distinct other identifiers an identifier shares an edge with (a self-loop
    counts once, an edge listed twice or both ways once). NumPy counts 5.5 M edges in about a second, where
    Spark's count of every identifier's distinct neighbours took about 10 s on 2 cores. ``bound_of`` (codes
    -> bounds, -1 for none): the caller knows the bounds (``ids`` are then not identifiers but hashes)."""
    empty = np.zeros(0, dtype=np.int64)
    n, m = len(ids), len(codes) // 2
    if not max_degree or n == 0:
        return empty, empty, empty
    a, b = codes[:m].astype(np.int64), codes[m:].astype(np.int64)
    pairs = np.sort(np.minimum(a, b) * n + np.maximum(a, b))  # np.unique took 3.6 s here, the sort 0.03 s
    pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]
    lo, hi = pairs // n, pairs % n
    degree = np.bincount(lo, minlength=n) + np.bincount(hi[hi != lo], minlength=n)
    # only identifiers above the smallest bound can be hubs: their types are looked up, nobody else's
    candidates = np.flatnonzero(degree > min(max_degree.values()))
    if bound_of is not None:
        bound = bound_of(candidates)
    else:
        kinds = pc.list_element(
            pc.split_pattern(pa.array(ids).take(pa.array(candidates)), ":", max_splits=1), 0
        )
        bound = np.array([max_degree.get(k, -1) for k in kinds.to_pylist()], dtype=np.int64)
    over = (bound >= 0) & (degree[candidates] > bound)
    return candidates[over], degree[candidates][over], bound[over]


def enforce_limits(
    components: DataFrame,
    edges: DataFrame,
    limits: dict[str, int],
    priorities: dict[str, int],
    violating_vertices: DataFrame | None = None,
) -> tuple[DataFrame, DataFrame]:
    """``(components, cut_edges)``: components (id, component) with every per-type limit respected.

    ``edges`` has the silver.identity_edges columns. ``violating_vertices`` (component, id, id_type): the
    identifiers of the components over a limit, when the caller found them already
    (``identity.EdgesOnDriver.violating``); otherwise they are found by grouping every component here.
    """
    spark = components.sparkSession
    if violating_vertices is None:
        # Read three times below, and `violating` derives from it: materialise once (also avoids a
        # self-join).
        components = components.localCheckpoint()
        typed = components.withColumn("id_type", identifier_type(F.col("id")))
        limit_of = F.coalesce(
            F.element_at(
                F.create_map(*[x for t, n in limits.items() for x in (F.lit(t), F.lit(n))]), F.col("id_type")
            ),
            F.lit(2**31 - 1),
        )
        violating = (
            typed.groupBy("component", "id_type")
            .agg(F.count(F.lit(1)).alias("n"))
            .filter(F.col("n") > limit_of)
            .select("component")
            .distinct()
            .localCheckpoint()
        )
        bad_vertices = typed.join(broadcast_if_small(violating), "component")
    else:
        bad_vertices = violating_vertices
        violating = violating_vertices.select("component").distinct().localCheckpoint()
    if violating.isEmpty():  # the common case for a micro-batch's subgraph: nothing to solve
        return components, spark.createDataFrame([], CUT_EDGE_SCHEMA)
    # the edges side gets its own grouping column: both sides derive from `typed`, and a cogroup on the
    # same attribute of one lineage is ambiguous to the analyzer
    bad_edges = edges.join(
        broadcast_if_small(bad_vertices).select(
            F.col("id").alias("src"), F.col("component").alias("edge_component")
        ),
        "src",
    ).select("edge_component", "src", "dst", "rule", "source_table", "source_record", "first_seen", "score")

    if bad_edges.limit(LOCAL_MAX_EDGES + 1).count() <= LOCAL_MAX_EDGES:
        # on the driver, every violating component in one _solve: no Python worker pool, no per-component
        # pandas overhead (the cogroup below spent about 50 s on the 1 M-people hard set). Arrow both ways:
        # timestamps stay UTC instants.
        vs = bad_vertices.select("id", "id_type").toArrow().to_pandas()
        es = bad_edges.toArrow().to_pandas()
        out = pa.Table.from_pandas(_solve(vs, es, limits, priorities), _ARROW_OUT, preserve_index=False)
        solved = spark.createDataFrame(out, _OUT_SCHEMA).localCheckpoint()
    else:
        solved = (
            bad_vertices.select("component", "id", "id_type")
            .groupBy("component")
            .cogroup(bad_edges.groupBy("edge_component"))
            .applyInPandas(lambda vs, es: _solve(vs, es, limits, priorities), schema=_OUT_SCHEMA)
            .localCheckpoint()  # read twice below (labels, cut edges): solve once
        )
    relabelled = solved.filter("kind = 'vertex'").select("id", "component")
    kept = components.join(broadcast_if_small(violating), "component", "left_anti")
    cut = solved.filter("kind = 'cut'").select(*CUT_EDGE_COLUMNS)
    return kept.unionByName(relabelled), cut
