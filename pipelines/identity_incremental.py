"""Incremental identity updates: recompute only the components that new records touch.

A full rebuild solves every component again. When a micro-batch or a daily load brings new records, only
the components their identifiers fall into can change: everything else keeps its rows as they are. The
touched set is closed so that the result equals a full rebuild on the same input:

1. Hubs (identifiers over their type's ``max_degree``) are found on the whole edge set, as a full rebuild
   does: a degree is a global property.
2. Seeds are the identifiers of the new records, those of the last build that no longer exist, the
   neighbours of every new hub (its cut splits the component it was in, published or oversized, and each
   part holds a neighbour) and every hub of the last build that is one no more, plus every identifier of
   the earlier profiles a seed belonged to (an identifier that no longer exists leaves its profile, and
   the rest of it is recomputed). When new events change how earlier alias calls read, the identifiers
   of those aliases are seeds too, and their edges are rebuilt first (``retyped_edges``).
3. The seeds are closed over the (hub-free) edges, limit-cut edges included: the guards solve a whole
   unconstrained component at once, so the closure is the set a full rebuild would solve together.

The touched subgraph then goes through the same ``identity_graph`` (guards, size bound, stable ids); the
untouched profiles stay live in the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.config import IdentityConfig
from pipelines.identity import (
    EDGE_KEYS,
    IdentityResult,
    build_edges,
    component_id,
    fits_on_driver,
    identifier_observations,
    identity_graph,
    known_for,
    labels_of,
    merge_edges,
    records_holding,
)
from pipelines.identity_guards import (
    HUB_SCHEMA,
    cut_hubs,
    hub_degrees,
    hub_of_cut,
    hubs_on_driver,
    identifier_type,
)
from pipelines.io import upserts_and_deletes
from pipelines.plans import broadcast_if_small


@dataclass
class Retyped:
    """Earlier alias events that new events read differently (``retyped_edges``)."""

    identifiers: DataFrame  # (identifier) of those aliases, as read before and as read now
    edges: DataFrame  # every deterministic edge touching one of them, rebuilt from every record
    vanished: DataFrame  # (identifier) of those read before that no record holds any more


def events_near(new_events: DataFrame, events: DataFrame) -> DataFrame:
    """The ``events`` (every event, the new included; ``_ALIAS_COLUMNS``) that tell how the ``new_events`` and
    the earlier alias calls those may re-read read: those with an anonymousId that is an anonymousId or an
    alias's userId among the new events, a userId that is one of their userIds, anonymousIds or alias
    previousIds, or a previousId that is one of their userIds. What ``identifier_observations`` needs as
    ``known_events`` to observe the new events (``identity._alias_types``) and what ``retyped_edges`` looks
    through first, from one scan of the events with the batch's values broadcast, where each of the two
    scanned them on its own (at 1 M people, 7.6 M events, 10,000 new: the observations and the check
    7.5 -> 5.7 s, medians of four warm alternating rounds in one process). Materialised."""
    spark = events.sparkSession
    fresh = new_events.select("type", "user_id", "anonymous_id", "previous_id").toArrow().to_pandas()
    alias = fresh["type"] == "alias"
    anon = set(fresh["anonymous_id"].dropna())
    users = set(fresh.loc[~alias, "user_id"].dropna())
    alias_users, alias_previous = (
        set(fresh.loc[alias, "user_id"].dropna()),
        set(fresh.loc[alias, "previous_id"].dropna()),
    )
    by_anon, by_user, by_previous = anon | alias_users, users | anon | alias_users | alias_previous, users
    values = sorted(by_anon | by_user)
    if not values:
        return events.limit(0).select(*_ALIAS_COLUMNS).localCheckpoint()
    flags = spark.createDataFrame(
        [(v, v in by_anon, v in by_user, v in by_previous) for v in values],
        "v string, a boolean, u boolean, p boolean",
    )

    def flag(column: str, name: str, source: str) -> DataFrame:
        return F.broadcast(
            flags.filter(F.col(source)).select(F.col("v").alias(column), F.lit(True).alias(name))
        )

    return (
        events.select(*_ALIAS_COLUMNS)
        .join(flag("anonymous_id", "_a", "a"), "anonymous_id", "left")
        .join(flag("user_id", "_u", "u"), "user_id", "left")
        .join(flag("previous_id", "_p", "p"), "previous_id", "left")
        .filter(F.col("_a").isNotNull() | F.col("_u").isNotNull() | F.col("_p").isNotNull())
        .select(*_ALIAS_COLUMNS)
        .localCheckpoint()
    )


def retyped_edges(
    new_events: DataFrame,
    events: DataFrame,
    customers: DataFrame | None,
    identity: IdentityConfig,
    near: DataFrame | None = None,
) -> Retyped | None:
    """What the ``new_events`` change in how earlier alias events read, or None (the usual case).

    An alias's previousId reads as a user id once some non-alias event has used it as userId, and its
    userId as an anonymous id once some event has used it as anonymousId (``identity._alias_types``). An
    event that comes after the alias (a late identify, say) can do that, and the alias's identifiers, and
    the edges stored with them, are then not those a rebuild finds. Every edge touching one of the
    alias's identifiers (read either way) comes from a record holding one, so rebuilding those records'
    edges and putting them in place of the stored ones touching those identifiers (``edge_replacement``)
    gives what a rebuild has. ``events`` are all events, the new included; ``customers`` all CRM records.

    The check is one scan of the events for the new events' ids (a few thousand values), or of ``near``
    (``events_near``: the events it would find, already found); only when an alias reads otherwise now are
    the records holding its identifiers found (a scan of each table) and observed again.
    """
    is_alias = F.col("type") == "alias"
    spark = events.sparkSession
    fresh = new_events.select("message_id", "type", "user_id", "anonymous_id").toArrow().to_pandas()
    as_user = set(fresh.loc[fresh["type"] != "alias", "user_id"].dropna())  # a batch: a few thousand
    as_anon = set(fresh["anonymous_id"].dropna())
    if not as_user and not as_anon:
        return None
    # one scan, three broadcast lookups: the aliases the new values touch and the other uses of those values
    # (an IN list of a few thousand values took about 4 s to plan at 1 M people; this scan about 2.5 s)
    values = spark.createDataFrame(
        [(v, v in as_user, v in as_anon) for v in sorted(as_user | as_anon)],
        "v string, user boolean, anon boolean",
    )

    def flags(column: str, **named: str) -> DataFrame:
        return F.broadcast(
            values.select(F.col("v").alias(column), *[F.col(f).alias(n) for n, f in named.items()])
        )

    hit = lambda c: F.coalesce(F.col(c), F.lit(False))  # noqa: E731
    found = (
        (events if near is None else near)
        .select(*_ALIAS_COLUMNS)
        .join(flags("previous_id", _p_user="user"), "previous_id", "left")
        .join(flags("user_id", _u_user="user", _u_anon="anon"), "user_id", "left")
        .join(flags("anonymous_id", _a_anon="anon"), "anonymous_id", "left")
        .filter(
            (is_alias & (hit("_p_user") | hit("_u_anon"))) | (~is_alias & hit("_u_user")) | hit("_a_anon")
        )
        .select(*_ALIAS_COLUMNS)
        .toArrow()
    )
    rows = found.select(["message_id", "type", "user_id", "anonymous_id", "previous_id"]).to_pandas()
    earlier = ~rows["message_id"].isin(set(fresh["message_id"]))  # what the stored edges were read with
    alias = (rows["type"] == "alias") & earlier
    users_before = set(rows.loc[earlier & (rows["type"] != "alias"), "user_id"].dropna())
    anons_before = set(rows.loc[earlier, "anonymous_id"].dropna())
    # an alias reads otherwise now if a new event used its previousId as userId (its userId as
    # anonymousId) and no earlier event had
    reread = alias & (
        (rows["previous_id"].isin(as_user) & ~rows["previous_id"].isin(users_before))
        | (rows["user_id"].isin(as_anon) & ~rows["user_id"].isin(anons_before))
    )
    if not reread.any():
        return None
    blocklist, normalizers = identity.blocklist, identity.normalizers
    records = spark.createDataFrame(found.filter(pa.array(reread.to_numpy())))
    now = known_for(events, records)
    then = now.join(F.broadcast(spark.createDataFrame(fresh[["message_id"]])), "message_id", "left_anti")
    ids = sorted(
        {
            r.identifier
            for known in (now, then)
            for r in identifier_observations(None, records, blocklist, normalizers, known).collect()
        }
    )
    holding_customers, holding_events = records_holding(customers, events, ids, normalizers)
    holding_events = holding_events.localCheckpoint()
    observed = identifier_observations(
        holding_customers, holding_events, blocklist, normalizers, known_for(events, holding_events)
    ).localCheckpoint()
    rebuilt = merge_edges(build_edges(observed, identity.priorities))
    wanted = spark.createDataFrame([(i,) for i in ids], "identifier string").localCheckpoint()
    vanished = wanted.join(observed.select("identifier"), "identifier", "left_anti").localCheckpoint()
    return Retyped(wanted, touching(rebuilt, wanted).localCheckpoint(), vanished)


# what reading an alias call takes (``identity._alias_types``, ``identity._observe``)
_ALIAS_COLUMNS = [
    "message_id",
    "type",
    "user_id",
    "anonymous_id",
    "previous_id",
    "trait_email",
    "trait_phone",
    "event_time",
]


def touching(edges: DataFrame, ids: DataFrame) -> DataFrame:
    """The ``edges`` with an end in ``ids`` (identifier, few)."""
    small = broadcast_if_small(ids.select(F.col("identifier").alias("_end"), F.lit(True).alias("_hit")))
    return (
        edges.join(small.withColumnRenamed("_end", "src").withColumnRenamed("_hit", "_s"), "src", "left")
        .join(small.withColumnRenamed("_end", "dst").withColumnRenamed("_hit", "_d"), "dst", "left")
        .filter(F.col("_s").isNotNull() | F.col("_d").isNotNull())
        .select(*edges.columns)
    )


def edge_replacement(stored: DataFrame, retyped: Retyped) -> DataFrame:
    """What a MERGE on ``EDGE_KEYS`` (``_delete`` flag: ``io.upserts_and_deletes``) needs to put
    ``retyped.edges`` in place of the ``stored`` edges touching the re-read identifiers. Probabilistic edges,
    between CRM records, stay: they touch no identifier of an event."""
    stale = touching(stored, retyped.identifiers).filter(~F.col("rule").startswith("probabilistic:"))
    rebuilt = retyped.edges.select(*stored.columns)
    gone = stale.select(*EDGE_KEYS).join(rebuilt.select(*EDGE_KEYS), EDGE_KEYS, "left_anti")
    return upserts_and_deletes(rebuilt, gone, EDGE_KEYS)


def identifier_hash(identifier: Column) -> Column:
    """A 64-bit hash of an identifier (Spark's xxhash64), what ``HashedEdges`` moves to the driver."""
    return F.xxhash64(identifier)


class HashedEdges:
    """An edge table's ends on the driver as 64-bit hashes of the identifiers (``identifier_hash``), integer
    coded, for what an incremental update needs of every edge at once: the hubs (``hubs``; a degree is a
    global property) and the closure of its seeds (``subgraph``).

    ``identity.EdgesOnDriver`` moves the identifiers themselves, which a full rebuild needs (a component's
    label is its smallest identifier); the closure only needs to know which ends are the same identifier.
    At 1 M people (5.5 M edges, 4.5 M identifiers) the hashes moved and were coded in 2.7-3.1 s where the
    strings took 7.1-9.6 s warm (3.9 s against 14.2 s in a fresh process).

    A collision (two identifiers with one hash; about n^2 / 2^65, 6e-7 at 4.5 M identifiers) joins their
    components on the driver, so the closure can only grow by whole components, still a set a full rebuild
    solves together; the touched edges and identifiers are then read from Spark, strings and all. A hub
    the driver finds that the last build did not know is named and its degree counted again on Spark, so a
    collision can't make one; what is left is a collision among one identifier's neighbours lowering its
    degree by one, or one with a hub's hash (about 1e-13 here).
    """

    def __init__(self, edges: DataFrame, max_degree: dict[str, int] | None = None) -> None:
        self.spark = edges.sparkSession
        self.edges = edges
        self.max_degree = dict(max_degree or {})
        bounded = list(self.max_degree)
        if len(bounded) > 127:
            raise ValueError("at most 127 identifier types can have a max_degree")
        columns = [identifier_hash(F.col("src")).alias("src"), identifier_hash(F.col("dst")).alias("dst")]
        if bounded:
            # each end's type as an index into ``bounded`` (-1: no bound), one byte: the driver then knows
            # every identifier's bound without its name
            index = F.create_map(*[x for i, t in enumerate(bounded) for x in (F.lit(t), F.lit(i))])
            columns += [
                F.coalesce(F.element_at(index, identifier_type(F.col(c))), F.lit(-1))
                .cast("byte")
                .alias(f"{c}_type")
                for c in ("src", "dst")
            ]
        table = edges.select(*columns).toArrow()

        def ends(column: str) -> np.ndarray:
            return np.concatenate(
                [table.column(f"src{column}").to_numpy(), table.column(f"dst{column}").to_numpy()]
            )

        # a hash table over int64 (pandas' factorize): about 0.3 s for 11 M ends, where a sort took 1.1 s
        codes, self.ids = pd.factorize(ends(""))
        self.codes = codes.astype(np.int64)
        self.bound = np.full(len(self.ids), -1, dtype=np.int64)
        if bounded:
            self.bound[self.codes] = np.array([self.max_degree[t] for t in bounded] + [-1])[ends("_type")]
        self.keep: np.ndarray | None = None  # edges without a hub end, once ``hubs`` found some

    def hubs(self, known: DataFrame) -> DataFrame:
        """``(id, degree, bound)``: what ``cut_hubs`` finds on Spark (``hubs_on_driver``); their edges are left
        out of the closure from now on. ``known`` (id): the hubs of the last build, which name the hubs
        found again; a new one is named, and its degree counted, on Spark."""
        if not self.max_degree:
            return self.spark.createDataFrame([], HUB_SCHEMA)
        codes, degrees, bounds = hubs_on_driver(self.ids, self.codes, self.max_degree, self.bound.__getitem__)
        found = pd.DataFrame({"h": self.ids[codes], "degree": degrees, "bound": bounds})
        names = known.select("id", identifier_hash(F.col("id")).alias("h")).toArrow().to_pandas()
        rows = found.merge(names, on="h")[["id", "degree", "bound", "h"]]
        new = found.loc[~found["h"].isin(names["h"]), "h"].tolist()
        if new:
            # rare (an identifier crossing its bound): a scan of the edges with theirs, exact by name
            src, dst = identifier_hash(F.col("src")), identifier_hash(F.col("dst"))
            near = self.edges.filter(src.isin(new) | dst.isin(new))
            exact = (
                hub_degrees(near, self.max_degree)
                .withColumn("h", identifier_hash(F.col("id")))
                .filter(F.col("h").isin(new))
                .toArrow()
                .to_pandas()
            )
            rows = pd.concat([rows, exact], ignore_index=True)
        if len(rows):
            hub = np.isin(self.ids, rows["h"].to_numpy())
            m = len(self.codes) // 2
            self.keep = ~(hub[self.codes[:m]] | hub[self.codes[m:]])
        return self.spark.createDataFrame(
            rows[["id", "degree", "bound"]].astype({"degree": "int64", "bound": "int32"}), HUB_SCHEMA
        ).localCheckpoint()

    def subgraph(self, reached: DataFrame, edges: DataFrame) -> tuple[DataFrame, DataFrame]:
        """``(touched, sub_edges)``: ``reached`` (id, distinct) and every identifier in a component (hub-free
        edges) that holds one, by SciPy's component labels in one pass instead of a scan of every edge per
        breadth-first round; and the rows of ``edges`` (these edges as Spark has them, hubs' cut) among them."""
        wanted = reached.select(identifier_hash(F.col("id")).alias("h")).toArrow().column("h").to_numpy()
        connected = np.zeros(0, dtype=np.int64)
        if len(self.ids):
            labels = labels_of(self.codes, len(self.ids), self.keep)
            start = np.flatnonzero(np.isin(self.ids, wanted))
            connected = self.ids[np.isin(labels, labels[start])]
        hashes = self.spark.createDataFrame(
            pa.table({"h": pa.array(connected, pa.int64())}), "h long"
        ).localCheckpoint()
        sub_edges = edges.join(
            broadcast_if_small(hashes, len(connected)),
            identifier_hash(edges["src"]) == F.col("h"),
            "left_semi",
        ).localCheckpoint()
        touched = (
            reached.unionByName(sub_edges.select(F.col("src").alias("id")))
            .unionByName(sub_edges.select(F.col("dst").alias("id")))
            .distinct()
            .localCheckpoint()
        )
        return touched, sub_edges


def touched_subgraph(
    seeds: DataFrame,
    edges: DataFrame,
    previous: DataFrame,
    max_rounds: int = 100,
    edge_rows: int | None = None,
    on_driver: HashedEdges | None = None,
) -> tuple[DataFrame, DataFrame]:
    """``(touched, sub_edges)``: the closure (id) of ``seeds`` (id) over ``edges``, after adding the earlier
    profiles of the seeds, and the ``edges`` among it.

    The closure is every identifier in a connected component of ``edges`` that holds a start. Up to
    ``identity.LOCAL_COMPONENTS_MAX_EDGES`` edges (``edge_rows``: their count, or an upper bound, if known)
    it is found on the driver in one pass over the edges (``HashedEdges.subgraph``; ``on_driver``: the
    edges already there, hub edges left out); above that breadth-first on Spark, each round a join of the
    frontier with the edges (rounds = the largest distance from a seed).
    """
    # seeds and their earlier profiles are a few thousand for a micro-batch or a 10,000-event update: each
    # is materialised and broadcast, so finding them is two scans of the earlier graph, not two shuffles
    seeds = seeds.select("id").distinct().localCheckpoint()
    seed_profiles = (
        previous.join(broadcast_if_small(seeds).withColumnRenamed("id", "identifier"), "identifier")
        .select("profile_id")
        .distinct()
        .localCheckpoint()
    )
    reached = (
        seeds.unionByName(
            previous.join(broadcast_if_small(seed_profiles), "profile_id", "left_semi").select(
                F.col("identifier").alias("id")
            )
        )
        .distinct()
        .localCheckpoint()
    )
    if on_driver is None and fits_on_driver(edge_rows if edge_rows is not None else edges.count()):
        on_driver = HashedEdges(edges)
    if on_driver is not None:
        return on_driver.subgraph(reached, edges)
    both = edges.select(F.col("src").alias("id"), F.col("dst").alias("next")).unionByName(
        edges.select(F.col("dst").alias("id"), F.col("src").alias("next"))
    )
    # frontier and reached are a few thousand ids for a micro-batch: broadcast, so a round is one scan of
    # the edges instead of a shuffle of all of them (pipelines.plans)
    frontier, reached_rows = reached, reached.count()
    frontier_rows = reached_rows
    for _ in range(max_rounds):
        step = (
            both.join(broadcast_if_small(frontier, frontier_rows), "id", "left_semi")
            .select(F.col("next").alias("id"))
            .distinct()
            .join(broadcast_if_small(reached, reached_rows), "id", "left_anti")
            .localCheckpoint()
        )
        frontier_rows = step.count()
        if frontier_rows == 0:
            touched = broadcast_if_small(reached, reached_rows)
            sub_edges = edges.join(
                touched.withColumnRenamed("id", "src"), "src", "left_semi"
            ).localCheckpoint()
            return reached, sub_edges
        reached = reached.unionByName(step).localCheckpoint()
        reached_rows += frontier_rows
        frontier = step
    raise RuntimeError(f"touched set did not close in {max_rounds} rounds")


def new_hub_neighbours(new_hubs: DataFrame, edges: DataFrame) -> DataFrame:
    """``(id)``: the identifiers that share an edge with one of ``new_hubs`` (id, a few)."""
    hub = broadcast_if_small(new_hubs)
    return (
        edges.join(hub.withColumnRenamed("id", "src"), "src")
        .select(F.col("dst").alias("id"))
        .unionByName(edges.join(hub.withColumnRenamed("id", "dst"), "dst").select(F.col("src").alias("id")))
        .distinct()
    )


def update_identity_graph(
    observations: DataFrame | None,
    edges: DataFrame,
    new_identifiers: DataFrame,
    previous: DataFrame,
    previous_cut: DataFrame,
    previous_oversized: DataFrame,
    registry: DataFrame,
    max_component_size: int,
    limits: dict[str, int],
    priorities: dict[str, int],
    max_degree: dict[str, int],
    built_at: str,
    vanished: DataFrame | None = None,
) -> IdentityResult:
    """The identity tables after new records, recomputing only what they touch.

    ``observations`` and ``edges`` are complete (old and new records); ``new_identifiers`` (identifier) are
    those of the new records; ``previous``, ``previous_cut``, ``previous_oversized`` and ``registry`` are
    gold.identity_graph, quarantine.identity_edges, quarantine.identity_components and gold.profile_ids as
    the last build left them. Returns full tables, like ``identity_graph``.

    ``observations`` None: the vertices are every identifier of ``previous``, of ``new_identifiers`` and of
    the ``edges`` but ``vanished`` (identifier, few; those no record holds any more, seeds among
    ``new_identifiers``). The touched ones are then the touched set without ``vanished``: no join of the
    whole graph with every identifier to find those that vanished, and no scan of the graph and the edges
    for the touched vertices (at 1 M people the touched subgraph's ``identity_graph`` 8.5 -> 5.4 s).
    """
    # counted from the Delta log's statistics when ``edges`` is the table as read (a stream batch): no scan
    edge_rows = edges.count()
    old_hubs = (
        previous_cut.filter(F.col("reason").startswith("degree:"))
        .select(hub_of_cut(F.col("reason")).alias("id"))
        .distinct()
        .localCheckpoint()
    )
    on_driver = HashedEdges(edges, max_degree) if fits_on_driver(edge_rows) else None
    kept, hub_cuts, hubs = cut_hubs(edges, max_degree, on_driver.hubs(old_hubs) if on_driver else None)
    if on_driver is None:
        kept = kept.localCheckpoint()  # the breadth-first rounds scan it once per round
    seeds = new_identifiers.select(F.col("identifier").alias("id"))
    if observations is not None:
        # identifiers of the last build that no longer exist (an alias's id re-typed once its other use
        # arrived) are seeds too: their profiles must be recomputed without them
        vertices = observations.select(F.col("identifier").alias("id"))
        seeds = seeds.unionByName(
            previous.select(F.col("identifier").alias("id")).join(vertices, "id", "left_anti")
        )
    # A new hub (over its bound only now) splits the component it was in, published or quarantined as
    # oversized, and every part holds one of its neighbours: they are seeds (old hubs' are not: their
    # components were solved without them). An old hub that is one no more (a deletion lowered its degree,
    # or its bound was raised) links its neighbours again: it is a seed, and the closure reaches them.
    new_hubs = hubs.select("id").join(old_hubs, "id", "left_anti").localCheckpoint()
    if not new_hubs.isEmpty():
        seeds = seeds.unionByName(new_hub_neighbours(new_hubs, edges))
    unhubbed = old_hubs.join(hubs, "id", "left_anti").localCheckpoint()
    seeds = seeds.unionByName(unhubbed)
    seeds = seeds.join(hubs, "id", "left_anti").distinct()
    # the touched subgraph, used several times below, comes with it: one scan of the edges
    touched, sub_edges = touched_subgraph(
        seeds,
        kept,
        previous.join(hubs.withColumnRenamed("id", "identifier"), "identifier", "left_anti"),
        edge_rows=edge_rows,
        on_driver=on_driver,
    )
    # hubs are never published: a previous profile row of a new hub goes, like the touched ones
    leaving = touched.unionByName(hubs.select("id")).distinct().localCheckpoint()
    # both are small for a micro-batch: every join of them with a whole table below is a broadcast
    touched, leaving = broadcast_if_small(touched), broadcast_if_small(leaving)

    touched_ids = touched.withColumnRenamed("id", "identifier")
    if observations is not None:
        sub_obs = observations.join(touched_ids, "identifier", "left_semi")
    else:
        # every touched identifier is a seed (a new record's, a re-read alias's, a hub's), a member of a
        # seed's earlier profile or on a touched edge: a vertex, unless it vanished or was a hub that has no
        # edge left (rare: a scan of the edges for those)
        gone = [vanished.select("identifier")] if vanished is not None else []
        if not unhubbed.isEmpty():
            ends = touching(edges, unhubbed.withColumnRenamed("id", "identifier"))
            gone.append(
                unhubbed.join(ends.select(F.col("src").alias("id")), "id", "left_anti")
                .join(ends.select(F.col("dst").alias("id")), "id", "left_anti")
                .join(new_identifiers.select(F.col("identifier").alias("id")), "id", "left_anti")
                .select(F.col("id").alias("identifier"))
                .localCheckpoint()
            )
        sub_obs = touched_ids
        for absent in gone:
            sub_obs = sub_obs.join(broadcast_if_small(absent), "identifier", "left_anti")
    untouched = previous.join(leaving.withColumnRenamed("id", "identifier"), "identifier", "left_anti")
    sub = identity_graph(
        sub_obs,
        sub_edges,
        max_component_size,
        limits=limits,
        priorities=priorities,
        previous=previous.join(leaving.withColumnRenamed("id", "identifier"), "identifier", "left_semi"),
        registry=registry,
        built_at=built_at,
        keep_live=untouched.select("profile_id").distinct(),
    )
    limit_cuts_kept = (
        previous_cut.filter(~F.col("reason").startswith("degree:"))
        .join(leaving.withColumnRenamed("id", "src"), "src", "left_anti")
        .join(leaving.withColumnRenamed("id", "dst"), "dst", "left_anti")
    )
    touched_components = leaving.select(component_id(F.col("id")).alias("component_id"))
    return IdentityResult(
        graph=untouched.unionByName(sub.graph),
        oversized=previous_oversized.join(touched_components, "component_id", "left_anti").unionByName(
            sub.oversized
        ),
        cut_edges=hub_cuts.unionByName(limit_cuts_kept.select(*hub_cuts.columns)).unionByName(
            sub.cut_edges.filter(~F.col("reason").startswith("degree:"))
        ),
        registry=sub.registry,
        registry_changes=sub.registry_changes,
        changes=sub.changes,
        touched=leaving,
    )


def incremental_identity(
    new_observations: DataFrame,
    edges: DataFrame,
    previous: DataFrame,
    previous_cut: DataFrame,
    previous_oversized: DataFrame,
    registry: DataFrame,
    identity: IdentityConfig,
    built_at: str,
    retyped: Retyped | None = None,
) -> IdentityResult:
    """The identity tables after new records, from what the last build stored.

    ``new_observations`` are the identifier observations of the new records (events of a micro-batch, a
    daily load); ``edges`` the complete edge table, the new records' edges merged in (``merge_edges``) and,
    when the new records re-read earlier aliases (``retyped``), their edges replaced (``edge_replacement``).
    The vertices are every identifier the last graph published but those no record holds any more, the new
    ones, and those only edges name (hubs, oversized components).
    """
    changed = new_observations.select("identifier")
    if retyped is not None:
        # the re-read identifiers' components, earlier and now, are recomputed (a vanished one's earlier
        # profile included: it is a seed, as the earlier graph has it)
        changed = changed.unionByName(retyped.identifiers)
    return update_identity_graph(
        None,
        edges,
        changed,
        previous,
        previous_cut,
        previous_oversized,
        registry,
        identity.max_component_size,
        identity.limits,
        identity.priorities,
        identity.max_degree,
        built_at,
        vanished=retyped.vanished if retyped is not None else None,
    )
