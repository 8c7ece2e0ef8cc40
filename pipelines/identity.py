"""Identity resolution: identifiers observed together -> edges -> connected components -> profile ids.

An identifier is ``type:value`` (``email:ann@example.com``, ``crm_id:C0001``, ``anonymous_id:...``).
Identifiers observed in one record (a CRM row, an identify/alias/track call) are linked by edges, each
with the rule and the source record that produced it; a person is a connected component.
Blocklisted values (``test@test.com``, ``undefined`` ...) never become identifiers, so they cannot glue
strangers together; a component larger than the size bound is quarantined instead of published.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as scipy_components

from pipelines.config import IdentityConfig
from pipelines.identity_guards import HUB_SCHEMA, cut_hubs, enforce_limits, hubs_on_driver, identifier_type
from pipelines.normalize import E164_PATTERN, blank_to_null, blocked, normalize_email
from pipelines.profile_ids import assign_profile_ids

OBSERVATION_COLUMNS = ["identifier", "id_type", "rule", "source_table", "source_record", "seen_at"]
EDGE_COLUMNS = [
    "src",
    "dst",
    "rule",
    "source_table",
    "source_record",
    "first_seen",
    "last_seen",
    "evidence_count",
    "score",
]
# Graphs up to this many distinct edges are solved on the driver (``_local_components``): about 150 bytes an
# edge there (Arrow strings, codes, the sparse matrix), so 10 M edges stay near 1.5 GB, and the collected
# Arrow data (about 70 bytes an edge) stays under Spark's default spark.driver.maxResultSize of 1 GiB.
# A cluster with a larger graph takes the distributed path.
LOCAL_COMPONENTS_MAX_EDGES = 10_000_000
DETERMINISTIC_SCORE = (
    1.0  # an edge from identifiers seen together is certain; probabilistic edges carry Splink's
)


def _observe(
    df: DataFrame,
    pairs: list[tuple[str | F.Column, str]],
    rule: F.Column,
    table: str,
    record: F.Column,
    seen: F.Column,
    normalize: Callable[[F.Column, F.Column], F.Column],
) -> DataFrame:
    """One row per (record, identifier) for the listed (id_type, column) pairs, each value normalised for
    its type (``normalize(id_type, value)``); nulls dropped.

    The normaliser runs inside the array that is exploded, once per value: applied after the explode, Spark
    pushes every later filter (not null, each blocklist pattern) below the projection and inlines the whole
    per-type expression into each of them, and the regexes ran about ten times per row (the observations of
    7.6 M events took 158 s of CPU)."""
    structs = []
    for t, c in pairs:
        id_type = F.lit(t) if isinstance(t, str) else t
        structs.append(
            F.struct(id_type.alias("id_type"), normalize(id_type, F.col(c).cast("string")).alias("value"))
        )
    return (
        df.select(
            rule.alias("rule"),
            record.alias("source_record"),
            seen.alias("seen_at"),
            F.explode(F.array(*structs)).alias("o"),
        )
        .filter(F.col("o.value").isNotNull())
        .select(
            F.concat_ws(":", "o.id_type", "o.value").alias("identifier"),
            F.col("o.id_type").alias("id_type"),
            F.col("o.value").alias("value"),
            "rule",
            F.lit(table).alias("source_table"),
            "source_record",
            "seen_at",
        )
    )


def identifier_observations(
    customers: DataFrame | None,
    events: DataFrame,
    blocklist: dict[str, list[str]],
    normalizers: dict[str, str] | None = None,
    known_events: DataFrame | None = None,
) -> DataFrame:
    """Every identifier in every source record, minus blocklisted values.

    Customers contribute their record id (``<system>_id``), email, phone and linked web user_id. Events
    contribute userId, anonymousId and identify traits' email and phone; an alias call's previousId is the
    anonymousId the visitor had before (analytics.js sends it that way), unless it was used as a userId.
    ``known_events`` (default: ``events``) are the events that tell which ids were used as which (see
    ``_alias_types``): an incremental run observes its new events in the light of all earlier ones.
    ``customers`` None: events alone (a stream's micro-batch).
    """

    normalize = _type_normalizer(normalizers)
    ev = _event_observations(
        _alias_types(events, events if known_events is None else known_events),
        [(F.col("_user_id_type"), "user_id"), (F.col("_previous_id_type"), "previous_id")],
        normalize,
    )
    obs = ev if customers is None else _customer_observations(customers, normalize).unionByName(ev)
    is_blocked = F.lit(False)
    for id_type, patterns in blocklist.items():
        is_blocked = is_blocked | ((F.col("id_type") == id_type) & blocked(F.col("value"), patterns))
    return obs.filter(~is_blocked).select(*OBSERVATION_COLUMNS)


def _type_normalizer(normalizers: dict[str, str] | None) -> Callable[[F.Column, F.Column], F.Column]:
    """``normalize(id_type, value)``: the conf's normaliser of the value's type."""

    def normalize(id_type: F.Column, value: F.Column) -> F.Column:
        out = value
        for t, how in (normalizers or {}).items():
            out = F.when(id_type == t, _normalized(value, how)).otherwise(out)
        return out

    return normalize


def _event_observations(
    events: DataFrame,
    alias_ids: Sequence[tuple[str | F.Column, str]],
    normalize: Callable[[F.Column, F.Column], F.Column],
) -> DataFrame:
    """An event's anonymousId and identify traits' email and phone, plus ``alias_ids``: how its userId and
    previousId read (``_alias_types``), or several readings of them."""
    return _observe(
        events,
        [*alias_ids, *_EVENT_IDS],
        F.concat(F.lit("event:"), F.col("type")),
        "silver.events",
        F.col("message_id"),
        F.col("event_time"),
        normalize,
    )


# (identifier type, column) of an event's ids whose type is fixed; its userId and previousId read as the
# other events say (``_alias_types``)
_EVENT_IDS: list[tuple[str | F.Column, str]] = [
    ("anonymous_id", "anonymous_id"),
    ("email", "trait_email"),
    ("phone", "trait_phone"),
]


def _customer_ids() -> list[tuple[str | F.Column, str]]:
    """A CRM record's own id (``<system>_id``), email, phone and linked web user id."""
    return [
        (F.concat(F.col("source_system"), F.lit("_id")), "source_id"),
        ("email", "email"),
        ("phone", "phone"),
        ("user_id", "user_id"),
    ]


def records_holding(
    customers: DataFrame | None, events: DataFrame, identifiers: list[str], normalizers: dict[str, str]
) -> tuple[DataFrame | None, DataFrame]:
    """``(customers, events)``: the records that hold one of ``identifiers`` (a few hundred at most: they
    make an IN list), an event's userId and previousId each read as a user id and as an anonymous id,
    blocklists aside: a superset of those that do, with one scan of each table and no shuffle."""
    normalize = _type_normalizer(normalizers)

    def holds(pairs: Sequence[tuple[str | F.Column, str]]) -> F.Column:
        out = F.lit(False)
        for t, c in pairs:
            id_type = F.lit(t) if isinstance(t, str) else t
            out = out | F.concat_ws(":", id_type, normalize(id_type, F.col(c).cast("string"))).isin(
                identifiers
            )
        return out

    readings: list[tuple[str | F.Column, str]] = [
        (t, c) for c in ("user_id", "previous_id") for t in ("user_id", "anonymous_id")
    ]
    held = events.filter(holds([*readings, *_EVENT_IDS]))
    return (None if customers is None else customers.filter(holds(_customer_ids()))), held


def known_for(events: DataFrame, aliases: DataFrame) -> DataFrame:
    """The ``events`` that decide how the alias calls among ``aliases`` (a few) read (``_alias_types``): those
    using an alias's userId as anonymousId, or its previousId as the userId of a non-alias event. One scan
    with two IN lists instead of the joins of every event that ``_alias_types`` makes; materialised."""
    calls = aliases.filter(F.col("type") == "alias").select("user_id", "previous_id").collect()
    users = sorted({r.user_id for r in calls if r.user_id is not None})
    previous = sorted({r.previous_id for r in calls if r.previous_id is not None})
    return events.filter(
        F.col("anonymous_id").isin(users) | ((F.col("type") != "alias") & F.col("user_id").isin(previous))
    ).localCheckpoint()


def _customer_observations(
    customers: DataFrame, normalize: Callable[[F.Column, F.Column], F.Column]
) -> DataFrame:
    """The identifiers of CRM records (``_customer_ids``)."""
    return _observe(
        customers,
        _customer_ids(),
        F.concat(F.lit("crm_record:"), F.col("source_system")),
        "silver.customers",
        F.concat_ws(":", "source_system", "source_id"),
        F.coalesce("updated_at", "created_at", "_loaded_at"),
        normalize,
    )


def _alias_types(events: DataFrame, known: DataFrame) -> DataFrame:
    """Events with the identifier type of their ``userId`` and ``previousId``.

    Segment's alias links a previous id to a new one, and either may be an anonymous id: cross-domain
    tracking aliases one visitor id to another, which is aliased to the user id later (a chain). So in an
    alias call, ``userId`` is an anonymous id when some event was sent with it as its anonymousId, and
    ``previousId`` is a user id when some non-alias event was sent with it as its userId; otherwise they
    are what their field says. Outside alias calls userId is always a user id.
    """
    is_alias = F.col("type") == "alias"
    aliases = events.filter(is_alias)
    anon_values = (
        known.select(F.col("anonymous_id").alias("_v"))
        .join(aliases.select(F.col("user_id").alias("_v")), "_v", "left_semi")
        .distinct()
        .select("_v", F.lit(True).alias("_seen_as_anon"))
    )
    user_values = (
        known.filter(~is_alias)
        .select(F.col("user_id").alias("_v"))
        .join(aliases.select(F.col("previous_id").alias("_v")), "_v", "left_semi")
        .distinct()
        .select("_v", F.lit(True).alias("_seen_as_user"))
    )
    typed_aliases = (
        aliases.join(anon_values, aliases["user_id"] == anon_values["_v"], "left")
        .drop("_v")
        .join(user_values, aliases["previous_id"] == user_values["_v"], "left")
        .drop("_v")
        .withColumn("_user_id_type", F.when(F.col("_seen_as_anon"), "anonymous_id").otherwise("user_id"))
        .withColumn("_previous_id_type", F.when(F.col("_seen_as_user"), "user_id").otherwise("anonymous_id"))
        .drop("_seen_as_anon", "_seen_as_user")
    )
    others = (
        events.filter(~is_alias)
        .withColumn("_user_id_type", F.lit("user_id"))
        .withColumn("_previous_id_type", F.lit("anonymous_id"))
    )
    return others.unionByName(typed_aliases)


def _normalized(value: F.Column, how: str) -> F.Column:
    """Per-type normaliser from conf. Emails and phones were normalised in silver with their context (a
    phone with its record's country); here ``email`` re-applies the email rule and ``phone`` keeps only
    values already in E.164, so a value from a new source cannot slip in un-normalised."""
    if how == "lower":
        return F.lower(F.trim(value))
    if how == "email":
        return normalize_email(value)
    if how == "phone":
        return F.when(value.rlike(E164_PATTERN), value)
    return blank_to_null(value)


def build_edges(observations: DataFrame, priorities: dict[str, int] | None = None) -> DataFrame:
    """Link the identifiers of each source record: a star on the record's strongest identifier.

    The centre is the identifier whose type has the best (lowest) priority, then the smallest. So when a
    guard cuts a weak shared link (a family tablet's anonymous id), the record's other identifiers stay
    with its user id instead of following the tablet. Identical edges from many records are collapsed;
    the edge keeps its rule, the first source record that produced it (the explanation), when it was first
    and last seen and how many records agree.
    """
    rank = F.lit(2**31 - 1)
    for id_type, priority in (priorities or {}).items():
        rank = F.when(F.col("id_type") == id_type, F.lit(priority)).otherwise(rank)
    # a window, not an aggregate joined back: one shuffle of the observations instead of two (16 M rows on
    # the 1 M-people hard set: 39.5 -> 33.7 s with the merge below, same edges)
    record = Window.partitionBy("source_table", "source_record")
    anchor = F.min_by("identifier", F.struct(rank, F.col("identifier"))).over(record)
    linked = (
        observations.withColumn("anchor", anchor)
        .filter(F.col("identifier") != F.col("anchor"))
        .select(
            F.col("anchor").alias("src"),
            F.col("identifier").alias("dst"),
            "rule",
            "source_table",
            "source_record",
            F.col("seen_at").alias("first_seen"),
            F.col("seen_at").alias("last_seen"),
            F.lit(1).cast("long").alias("evidence_count"),
            F.lit(DETERMINISTIC_SCORE).alias("score"),
        )
    )
    return merge_edges(linked)


# The Delta MERGE twin of ``merge_edges``: folds a batch's merged edges (s) into the stored table (t).
_S_FIRST = "struct(s.first_seen, s.source_record) < struct(t.first_seen, t.source_record)"
EDGE_UPSERT_SET = {
    "source_table": f"CASE WHEN {_S_FIRST} THEN s.source_table ELSE t.source_table END",
    "source_record": f"CASE WHEN {_S_FIRST} THEN s.source_record ELSE t.source_record END",
    "first_seen": "least(t.first_seen, s.first_seen)",
    "last_seen": "greatest(t.last_seen, s.last_seen)",
    "evidence_count": "t.evidence_count + s.evidence_count",
    "score": "greatest(t.score, s.score)",
}
EDGE_KEYS = ["src", "dst", "rule"]


def merge_edges(edges: DataFrame) -> DataFrame:
    """Collapse rows of the same edge (src, dst, rule): the first source record that produced it (the
    explanation), first and last seen, how many records agree, the best score. Merging an edge table with
    the edges of new records gives the table a rebuild would."""
    first = F.min_by(F.struct("source_table", "source_record"), F.struct("first_seen", "source_record"))
    return (
        edges.groupBy("src", "dst", "rule")
        .agg(
            first.alias("f"),
            F.min("first_seen").alias("first_seen"),
            F.max("last_seen").alias("last_seen"),
            F.sum("evidence_count").alias("evidence_count"),
            F.max("score").alias("score"),
        )
        .select(
            "src",
            "dst",
            "rule",
            "f.source_table",
            "f.source_record",
            "first_seen",
            "last_seen",
            "evidence_count",
            "score",
        )
    )


def all_edges(observations: DataFrame, customers: DataFrame, identity: IdentityConfig) -> DataFrame:
    """Deterministic edges plus, when enabled in conf, Splink's probabilistic edges between customer records."""
    edges = build_edges(observations, identity.priorities)
    probabilistic = identity.probabilistic
    if probabilistic is None or not probabilistic.enabled:
        return edges
    from pipelines.matching import probabilistic_edges

    return edges.unionByName(probabilistic_edges(customers, probabilistic, observations, identity.max_degree))


def _large_star(edges: DataFrame) -> DataFrame:
    both = edges.select("src", "dst").unionByName(
        edges.select(F.col("dst").alias("src"), F.col("src").alias("dst"))
    )
    mins = both.groupBy("src").agg(F.least(F.min("dst"), F.col("src")).alias("m"))
    return (
        both.join(mins, "src")
        .filter(F.col("dst") > F.col("src"))
        .select(F.col("dst").alias("src"), F.col("m").alias("dst"))
        .distinct()
    )


def _small_star(edges: DataFrame) -> DataFrame:
    oriented = edges.select(F.greatest("src", "dst").alias("src"), F.least("src", "dst").alias("dst"))
    mins = oriented.groupBy("src").agg(F.min("dst").alias("m"))
    joined = oriented.join(mins, "src")
    return (
        joined.select(F.col("dst").alias("src"), F.col("m").alias("dst"))
        .unionByName(joined.select("src", F.col("m").alias("dst")))
        .filter(F.col("src") != F.col("dst"))
        .distinct()
    )


def connected_components(
    vertices: DataFrame,
    edges: DataFrame,
    max_iterations: int = 100,
    local_max_edges: int | None = None,
    on_driver: EdgesOnDriver | None = None,
) -> DataFrame:
    """``(id, component)`` with component = the smallest id in the vertex's connected component.

    Up to ``local_max_edges`` (default ``LOCAL_COMPONENTS_MAX_EDGES``) distinct edges, the graph is solved on
    the driver by SciPy's compiled connected components; above that, by the two-phase large-star/small-star
    algorithm on Spark (Kiveris et al., "Connected Components in MapReduce and Beyond", 2014): O(log^2 n)
    rounds of joins, what GraphFrames' ``two_phase`` runs; we write it on DataFrames because the GraphFrames
    jar is not on the Maven registry this project installs from. Both give the same result. ``on_driver``:
    ``edges`` already on the driver (``EdgesOnDriver``, ascending), solved there without another transfer.
    """
    local_max_edges = LOCAL_COMPONENTS_MAX_EDGES if local_max_edges is None else local_max_edges
    if on_driver is not None:
        current = on_driver.component_pairs()
    else:
        current = (
            edges.select(F.greatest("src", "dst").alias("src"), F.least("src", "dst").alias("dst"))
            .filter(F.col("src") != F.col("dst"))
            .distinct()
            .localCheckpoint()
        )
        if local_max_edges and current.limit(local_max_edges + 1).count() <= local_max_edges:
            current = _local_components(current)
        else:
            current = _star_components(current, max_iterations)
    # Converged: every edge points from a vertex straight to its component's minimum.
    return (
        vertices.select(F.col("id"))
        .distinct()
        .join(current.withColumnRenamed("src", "id"), "id", "left")
        .select("id", F.coalesce("dst", "id").alias("component"))
    )


def encode_edges(src: pa.Array, dst: pa.Array, ascending: bool = False) -> tuple[pa.Array, np.ndarray]:
    """``(ids, codes)``: the distinct identifiers of the edges ``src``-``dst`` and an integer code per edge end
    (``codes[:m]`` the sources, ``codes[m:]`` the destinations), from one dictionary encoding (at 5.5 M edges
    about 2.5x faster than distinct values, a sort and two lookups); ``ascending`` sorts ``ids`` (codes then
    follow identifier order)."""
    encoded = pa.concat_arrays([src, dst]).dictionary_encode()
    ids, codes = encoded.dictionary, encoded.indices.to_numpy()
    n = len(ids)
    if ascending and n:
        order = pc.sort_indices(ids).to_numpy()
        ids = ids.take(pa.array(order))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        codes = rank[codes]
    return ids, codes


def labels_of(codes: np.ndarray, n: int, keep: np.ndarray | None = None) -> np.ndarray:
    """The connected component label of each of ``n`` codes over the edges ``codes`` (``encode_edges``), by
    SciPy's compiled connected components; ``keep`` (a boolean per edge) leaves the other edges out."""
    m = len(codes) // 2
    src, dst = codes[:m], codes[m:]
    if keep is not None:
        src, dst = src[keep], dst[keep]
    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n))
    return scipy_components(graph, directed=False)[1]


def _local_components(edges: DataFrame) -> DataFrame:
    """(src, dst): every vertex of ``edges`` (src, dst) pointing at its component's smallest id.

    The edges travel to the driver as Arrow, the identifiers become integer codes in sorted order (so a
    component's smallest code is its smallest identifier, in the byte order Spark's ``least`` uses) and
    SciPy labels the components in compiled code: 5.5 M edges in seconds, where the star rounds on 2 cores
    take minutes and a union-find in Python about as long.
    """
    return EdgesOnDriver(edges, ascending=True).component_pairs()


def fits_on_driver(edge_rows: int) -> bool:
    """Whether a graph of ``edge_rows`` edges (or an upper bound) is solved on the driver."""
    return bool(LOCAL_COMPONENTS_MAX_EDGES) and edge_rows <= LOCAL_COMPONENTS_MAX_EDGES


class EdgesOnDriver:
    """An edge table's two columns on the driver as integer codes (one Arrow transfer, one dictionary
    encoding: ``encode_edges``), for what a full rebuild needs of every edge at once: the hubs (``hubs``, a
    degree is a global property), the components (``component_pairs``) and the components over a per-type
    limit (``violating``): at 1,000,000 people (5.5 M edges) Spark's jobs for the same took about 26 s more
    than this one transfer. An incremental update needs no identifier order and moves hashes instead
    (``identity_incremental.HashedEdges``).

    ``ascending``: codes in identifier order, so that a component's smallest code is its smallest
    identifier (its label, as Spark's ``least`` orders strings); ``component_pairs`` and ``violating``
    need it.
    """

    def __init__(self, edges: DataFrame, ascending: bool = False) -> None:
        self.spark = edges.sparkSession
        self.ascending = ascending
        table = edges.select("src", "dst").toArrow()
        self.ids, self.codes = encode_edges(
            table.column("src").combine_chunks(), table.column("dst").combine_chunks(), ascending
        )
        self.keep: np.ndarray | None = None  # edges without a hub end, once ``hubs`` found some
        self._roots: np.ndarray | None = None

    def hubs(self, max_degree: dict[str, int]) -> DataFrame:
        """``(id, degree, bound)``: what ``cut_hubs`` finds on Spark (``hubs_on_driver``); their edges are left
        out of the components and the closure from now on."""
        codes, degrees, bounds = hubs_on_driver(self.ids, self.codes, max_degree)
        if len(codes):
            hub = np.zeros(len(self.ids), dtype=bool)
            hub[codes] = True
            m = len(self.codes) // 2
            self.keep = ~(hub[self.codes[:m]] | hub[self.codes[m:]])
            self._roots = None
        rows = pa.table(
            {
                "id": self.ids.take(pa.array(codes)).cast(pa.string()),
                "degree": pa.array(degrees, pa.int64()),
                "bound": pa.array(bounds, pa.int32()),
            }
        )
        return self.spark.createDataFrame(rows, HUB_SCHEMA).localCheckpoint()

    def roots(self) -> np.ndarray:
        """The code of each identifier's component label: its smallest member (hub-free edges)."""
        if not self.ascending:
            raise ValueError("component labels need the codes in identifier order (ascending=True)")
        if self._roots is None:
            labels = labels_of(self.codes, len(self.ids), self.keep) if len(self.ids) else np.zeros(0, int)
            # codes ascend, so the first code of each label is its component's smallest identifier
            _, first = np.unique(labels, return_index=True)
            self._roots = first[labels]
        return self._roots

    def component_pairs(self) -> DataFrame:
        """``(src, dst)``: every identifier that is not its component's smallest, pointing at it (what the
        star rounds converge to; a hub or an identifier only hubs linked is a component of its own)."""
        root = self.roots()
        moved = root != np.arange(len(self.ids))
        pairs = pa.table(
            {
                "src": self.ids.filter(pa.array(moved)).cast(pa.string()),
                "dst": self.ids.take(pa.array(root[moved])).cast(pa.string()),
            }
        )
        return self.spark.createDataFrame(pairs, "src string, dst string").localCheckpoint()

    def violating(self, limits: dict[str, int]) -> DataFrame:
        """``(component, id, id_type)``: the identifiers of every component with more identifiers of some type
        than its limit, what ``enforce_limits`` finds by grouping all components on Spark (an identifier
        on no edge is a component of its own, within every limit)."""
        root = self.roots()
        n = len(self.ids)
        bad = np.zeros(n, dtype=bool)
        types = pc.list_element(pc.split_pattern(self.ids, ":", max_splits=1), 0).dictionary_encode()
        kinds, type_code = types.dictionary.to_pylist(), types.indices.to_numpy().astype(np.int64)
        limit = np.array([limits.get(k, -1) for k in kinds], dtype=np.int64)
        limited = limit[type_code] >= 0 if n else bad
        if limited.any():
            key = root[limited].astype(np.int64) * len(kinds) + type_code[limited]
            keys, counts = np.unique(key, return_counts=True)
            over = keys[counts > limit[keys % len(kinds)]] // len(kinds)
            bad = np.isin(root, over)
        rows = pa.table(
            {
                "component": self.ids.take(pa.array(root[bad])).cast(pa.string()),
                "id": self.ids.filter(pa.array(bad)).cast(pa.string()),
                "id_type": types.filter(pa.array(bad)).cast(pa.string()),
            }
        )
        return self.spark.createDataFrame(
            rows, "component string, id string, id_type string"
        ).localCheckpoint()


def _star_components(current: DataFrame, max_iterations: int) -> DataFrame:
    """Large-star/small-star rounds until the edges stop changing."""
    for _ in range(max_iterations):
        after_large = _large_star(current).localCheckpoint()
        after_small = _small_star(after_large).localCheckpoint()
        changed = (
            after_small.exceptAll(current).limit(1).count() + current.exceptAll(after_small).limit(1).count()
        )
        current = after_small
        if changed == 0:
            return current
    raise RuntimeError(f"connected components did not converge in {max_iterations} rounds")


def component_id(smallest_identifier: F.Column) -> F.Column:
    """The id a quarantined component is reported under, derived from its smallest identifier."""
    return F.concat(F.lit("c_"), F.substring(F.sha2(smallest_identifier, 256), 1, 20))


@dataclass
class IdentityResult:
    graph: DataFrame  # identifier -> profile_id, published components only
    oversized: DataFrame  # components above the size bound
    cut_edges: DataFrame  # edges cut by a per-type limit
    registry: DataFrame  # every profile id ever issued (gold.profile_ids)
    registry_changes: DataFrame  # the rows of ``registry`` this build added or changed (issued, retired)
    changes: DataFrame  # merges and splits of this build (gold.profile_merges)
    # incremental updates only: (id) the identifiers whose rows were recomputed or removed; every other
    # row of ``graph`` is the previous build's, unchanged
    touched: DataFrame | None = None


def identity_graph(
    observations: DataFrame,
    edges: DataFrame,
    max_component_size: int,
    limits: dict[str, int] | None = None,
    priorities: dict[str, int] | None = None,
    previous: DataFrame | None = None,
    registry: DataFrame | None = None,
    built_at: str = "1970-01-01 00:00:00",
    max_degree: dict[str, int] | None = None,
    keep_live: DataFrame | None = None,
) -> IdentityResult:
    """Components within the per-type ``limits`` (edges cut by priority, see identity_guards) and the size
    bound, with profile ids that survive rebuilds (see profile_ids); oversized components are reported
    with their most-connected identifiers, which are usually the junk value."""
    spark = observations.sparkSession
    limits, max_degree = limits or {}, max_degree or {}
    # a graph that fits is solved on the driver from one transfer of its edges: hubs, components and the
    # components over a limit (1 M people: edges -> written tables 128 -> 102 s)
    on_driver = None
    if LOCAL_COMPONENTS_MAX_EDGES and fits_on_driver(edges.limit(LOCAL_COMPONENTS_MAX_EDGES + 1).count()):
        on_driver = EdgesOnDriver(edges, ascending=True)
    edges, hub_cuts, hubs = cut_hubs(edges, max_degree, on_driver.hubs(max_degree) if on_driver else None)
    vertices = observations.select(F.col("identifier").alias("id")).join(hubs, "id", "left_anti")
    cc = connected_components(vertices, edges, on_driver=on_driver)
    cc, cut = enforce_limits(
        cc, edges, limits, priorities or {}, on_driver.violating(limits) if on_driver else None
    )
    cut = hub_cuts.unionByName(cut)
    sized = cc.withColumn(
        "component_size", F.count(F.lit(1)).over(Window.partitionBy("component"))
    ).localCheckpoint()
    published = sized.filter(F.col("component_size") <= max_component_size)
    ids, new_registry, registry_changes, changes = assign_profile_ids(
        spark, published.select("id", "component"), previous, registry, edges, built_at, keep_live
    )
    graph = (
        published.join(ids, "component")
        .withColumn("id_type", identifier_type(F.col("id")))
        .select(
            F.col("id").alias("identifier"),
            "id_type",
            F.expr("substring(id, length(id_type) + 2)").alias("id_value"),
            "profile_id",
            "component_size",
        )
    )
    degree = (
        edges.select(F.col("src").alias("id"))
        .unionByName(edges.select(F.col("dst").alias("id")))
        .groupBy("id")
        .count()
    )
    oversized = (
        sized.filter(F.col("component_size") > max_component_size)
        .join(degree, "id", "left")
        .groupBy("component", "component_size")
        .agg(
            F.slice(
                F.sort_array(F.collect_list(F.struct(-F.coalesce("count", F.lit(0)), F.col("id")))), 1, 10
            ).alias("top")
        )
        .select(
            component_id(F.col("component")).alias("component_id"),
            "component_size",
            F.transform("top", lambda s: s["id"]).alias("most_connected_identifiers"),
        )
    )
    return IdentityResult(graph, oversized, cut, new_registry, registry_changes, changes)
