import random
from datetime import datetime

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from pipelines.identity import (
    EdgesOnDriver,
    build_edges,
    connected_components,
    identifier_observations,
    identity_graph,
)
from pipelines.identity_guards import cut_hubs, hub_of_cut, hubs_on_driver
from pipelines.identity_incremental import HashedEdges, touched_subgraph

CUSTOMER_SCHEMA = (
    "source_system string, source_id string, user_id string, email string, phone string, "
    "updated_at timestamp, created_at timestamp, _loaded_at timestamp"
)
EVENT_SCHEMA = (
    "message_id string, type string, user_id string, anonymous_id string, previous_id string, "
    "trait_email string, trait_phone string, event_time timestamp"
)
T = datetime(2026, 1, 1)


def _union_find(nodes, edges):
    parent = {n: n for n in nodes}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comps = {}
    for n in nodes:
        comps.setdefault(find(n), []).append(n)
    return {n: min(members) for members in comps.values() for n in members}


@pytest.fixture(params=["driver", "distributed"])
def solver(request, monkeypatch):
    """Run a test with small graphs solved on the driver (the default) and with Spark's distributed path."""
    if request.param == "distributed":
        _distributed(monkeypatch)
    return request.param


def _distributed(monkeypatch):
    """Every graph goes through Spark's jobs, however small."""
    monkeypatch.setattr("pipelines.identity.LOCAL_COMPONENTS_MAX_EDGES", 0)
    monkeypatch.setattr("pipelines.identity_guards.LOCAL_MAX_EDGES", 0)


def test_connected_components_match_union_find_on_random_graphs(spark, solver):
    rng = random.Random(7)
    nodes = [f"n{i:04d}" for i in range(300)]
    edges = [(rng.choice(nodes), rng.choice(nodes)) for _ in range(220)]
    edges += [
        (nodes[i], nodes[i + 1]) for i in range(100, 160)
    ]  # a long chain, the slow case for label propagation
    got = connected_components(
        spark.createDataFrame([(n,) for n in nodes], "id string"),
        spark.createDataFrame(edges, "src string, dst string"),
    )
    expected = spark.createDataFrame(sorted(_union_find(nodes, edges).items()), "id string, component string")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_touched_identifiers_close_over_edges_and_earlier_profiles(spark, solver):
    """The closure an incremental update recomputes: the seeds, every member of a seed's earlier profile,
    and everything connected to those over the edges; the same on the driver and on Spark."""
    rng = random.Random(11)
    nodes = [f"n{i:04d}" for i in range(400)]
    edges = [(rng.choice(nodes), rng.choice(nodes)) for _ in range(250)]
    edges += [(nodes[i], nodes[i + 1]) for i in range(200, 260)]  # a long chain: many rounds on Spark
    # earlier profiles: pairs of identifiers that no edge links any more (a split since the last build)
    previous = [(nodes[i], f"p{i // 2}") for i in range(300, 340)]
    seeds = [nodes[205], nodes[301], nodes[399], "n_new"]  # on the chain, in a profile, anywhere, unseen
    component = _union_find(nodes + ["n_new"], edges)
    starts = set(seeds) | {n for n, p in previous if p in {q for m, q in previous if m in seeds}}
    expected = {n for n in component if component[n] in {component[s] for s in starts}}
    got, _ = touched_subgraph(
        spark.createDataFrame([(s,) for s in seeds], "id string"),
        spark.createDataFrame(edges, "src string, dst string"),
        spark.createDataFrame(previous, "identifier string, profile_id string"),
    )
    ids = [r["id"] for r in got.collect()]
    assert len(ids) == len(set(ids)) and set(ids) == expected
    assert {nodes[200], nodes[260], nodes[300], "n_new"} <= expected and len(expected) < len(nodes)


def test_hubs_on_the_driver_are_the_hubs_spark_finds(spark):
    """An incremental update counts degrees on the driver; a full rebuild with Spark: the same hubs, degrees
    and bounds, with edges listed twice, both ways and as self-loops, and types without a bound; the
    driver's closure then leaves the hubs' edges out, as the closure over Spark's kept edges does."""
    rng = random.Random(5)
    nodes = [f"{t}:{i}" for t in ("email", "phone", "device") for i in range(40)]
    edges = [(rng.choice(nodes), rng.choice(nodes)) for _ in range(300)]
    edges += [("phone:0", n) for n in nodes[:60]] + [(n, "phone:0") for n in nodes[:30]]  # a hub, twice
    edges += [("email:1", f"device:{i}") for i in range(12)] + [("email:1", "email:1")]  # 12, not 13
    edges += [("device:7", n) for n in nodes[40:100]]  # unbounded type: never a hub
    df = spark.createDataFrame(
        [(a, b, "rule", "table", "record", T) for a, b in edges],
        "src string, dst string, rule string, source_table string, source_record string, first_seen timestamp",
    )
    max_degree = {"email": 11, "phone": 10}
    got = sorted(tuple(r) for r in EdgesOnDriver(df).hubs(max_degree).collect())
    kept, cut, hubs = cut_hubs(df, max_degree)
    expected = sorted(tuple(r) for r in hubs.collect())
    assert got == expected and {"phone:0", "email:1"} <= {h[0] for h in got}
    # an incremental update counts hashes: a hub of the last build names one found again, a new one is
    # named and counted on Spark; one that is a hub no more is not named
    for known in ([], ["phone:0"], ["phone:0", "email:1", "email:2"]):
        on_driver = HashedEdges(df, max_degree)
        named = spark.createDataFrame([(k,) for k in known], "id string")
        assert sorted(tuple(r) for r in on_driver.hubs(named).collect()) == expected
    # an incremental update tells new hubs from old ones by the hub each cut's reason names
    named = {r.hub for r in cut.select(hub_of_cut(F.col("reason")).alias("hub")).distinct().collect()}
    assert named == {h[0] for h in got}
    assert "device:7" not in {h[0] for h in got}
    starts = spark.createDataFrame([("email:2",), ("device:3",), ("unseen",)], "id string")
    prev = spark.createDataFrame([], "identifier string, profile_id string")
    driver_closure = {r["id"] for r in touched_subgraph(starts, kept, prev, on_driver=on_driver)[0].collect()}
    spark_closure = {r["id"] for r in touched_subgraph(starts, kept, prev)[0].collect()}
    assert driver_closure == spark_closure and "unseen" in driver_closure and "phone:0" not in driver_closure


def test_a_hash_collision_only_widens_the_touched_set_by_whole_components(spark, monkeypatch):
    """An incremental update moves hashes of the identifiers to the driver (``HashedEdges``). With a hash
    that collides often, the touched set is still whole components of the real graph holding every
    identifier of the exact closure, its edges are every edge among it, and a hub the driver finds only
    because of a collision is not one."""
    rng = random.Random(3)
    nodes = [f"email:{i:03d}" for i in range(300)]
    edges = [(rng.choice(nodes), rng.choice(nodes)) for _ in range(120)]
    edges += [("email:hub", n) for n in nodes[:12]]
    df = spark.createDataFrame(
        [(a, b, "rule", "table", "record", T) for a, b in edges],
        "src string, dst string, rule string, source_table string, source_record string, first_seen timestamp",
    )
    seeds = spark.createDataFrame([(n,) for n in nodes[:40:4]], "id string")
    prev = spark.createDataFrame([], "identifier string, profile_id string")
    everything = nodes + ["email:hub"]
    component = _union_find(everything, edges)
    exact = {n for n in everything if component[n] in {component[s] for s in nodes[:40:4]}}
    monkeypatch.setattr("pipelines.identity_incremental.identifier_hash", lambda c: F.xxhash64(c) % 200)
    touched, sub_edges = touched_subgraph(seeds, df, prev, on_driver=HashedEdges(df))
    ids = {r["id"] for r in touched.collect()}
    whole = {n for n in everything if component[n] in {component[m] for m in ids}}
    assert exact < ids and whole == ids  # a collision widened it (this seed and hash do), by whole components
    assert sorted((r.src, r.dst) for r in sub_edges.collect()) == sorted(e for e in edges if e[0] in ids)
    # more edges on 30 hashes: the driver's degrees of many are over 11; Spark's count keeps the one hub
    edges += [(rng.choice(nodes), rng.choice(nodes)) for _ in range(330)]
    df = spark.createDataFrame([(a, b, "rule", "table", "record", T) for a, b in edges], df.schema)
    _, _, spark_hubs = cut_hubs(df, {"email": 11})
    monkeypatch.setattr("pipelines.identity_incremental.identifier_hash", lambda c: F.xxhash64(c) % 30)
    on_driver = HashedEdges(df, {"email": 11})
    assert (
        len(hubs_on_driver(on_driver.ids, on_driver.codes, {"email": 11}, on_driver.bound.__getitem__)[0]) > 1
    )
    none_known = spark.createDataFrame([], "id string")
    assert [tuple(r) for r in on_driver.hubs(none_known).collect()] == [
        tuple(r) for r in spark_hubs.collect()
    ]
    assert [r["id"] for r in spark_hubs.collect()] == ["email:hub"]


def _inputs(spark):
    customers = spark.createDataFrame(
        [
            ("crm", "C1", None, "ann@x.com", "+14150000001", T, T, T),
            ("shop", "S1", "u1", "ann@x.com", None, T, T, T),
            ("crm", "C2", None, "test@test.com", None, T, T, T),  # blocklisted email: must not link C2 and C3
            ("crm", "C3", None, "test@test.com", "+14150000003", T, T, T),
        ],
        CUSTOMER_SCHEMA,
    )
    events = spark.createDataFrame(
        [
            ("m1", "identify", "u1", "a1", None, "ann@x.com", None, T),
            ("m2", "page", None, "a2", None, None, None, T),
            ("m3", "alias", "u1", None, "a3", None, None, T),
            ("m4", "identify", "undefined", "a4", None, None, "+14150000003", T),  # junk user id
        ],
        EVENT_SCHEMA,
    )
    return customers, events


def test_observations_edges_and_blocklist(spark, cfg):
    customers, events = _inputs(spark)
    obs = identifier_observations(customers, events, cfg.identity.blocklist)
    ids = {r.identifier for r in obs.collect()}
    assert "email:test@test.com" not in ids and "user_id:undefined" not in ids
    assert {"crm_id:C1", "shop_id:S1", "user_id:u1", "anonymous_id:a3", "phone:+14150000001"} <= ids
    edges = build_edges(obs)
    rows = {(r.src, r.dst): r for r in edges.collect()}
    alias = rows[("anonymous_id:a3", "user_id:u1")]
    assert (alias.rule, alias.source_table, alias.source_record) == ("event:alias", "silver.events", "m3")
    crm = rows[("crm_id:C1", "email:ann@x.com")]
    assert (crm.rule, crm.source_record, crm.evidence_count) == ("crm_record:crm", "crm:C1", 1)
    assert not any("C2" in s and "C3" in d for s, d in rows)


def test_identity_graph_groups_people_and_quarantines_oversized(spark, cfg):
    customers, events = _inputs(spark)
    obs = identifier_observations(customers, events, cfg.identity.blocklist)
    r = identity_graph(obs, build_edges(obs), max_component_size=50)
    graph, oversized, cut = r.graph, r.oversized, r.cut_edges
    by_id = {r.identifier: r.profile_id for r in graph.collect()}
    ann = {
        "crm_id:C1",
        "shop_id:S1",
        "email:ann@x.com",
        "phone:+14150000001",
        "user_id:u1",
        "anonymous_id:a1",
        "anonymous_id:a3",
    }
    assert len({by_id[i] for i in ann}) == 1
    assert (
        len({by_id["crm_id:C2"], by_id["crm_id:C3"], by_id["anonymous_id:a2"], by_id[next(iter(ann))]}) == 4
    )
    assert by_id["anonymous_id:a4"] == by_id["crm_id:C3"], (
        "identify traits' phone links the web visitor to the CRM record"
    )
    assert oversized.count() == 0 and cut.count() == 0, "no limits given: nothing is cut"
    r2 = identity_graph(obs, build_edges(obs), max_component_size=6)
    g2, big = r2.graph, r2.oversized
    assert not (set(r.identifier for r in g2.collect()) & ann), "the 7-identifier component is not published"
    row = big.collect()[0]
    assert row.component_size == 7 and row.most_connected_identifiers[:2] == ["email:ann@x.com", "user_id:u1"]


def test_profile_ids_are_the_same_on_a_rebuild(spark, cfg):
    customers, events = _inputs(spark)
    obs = identifier_observations(customers, events, cfg.identity.blocklist)
    a = identity_graph(obs, build_edges(obs), 50).graph
    b = identity_graph(obs, build_edges(obs), 50).graph
    assert_df_equality(a, b, ignore_row_order=True)


def test_two_user_ids_never_merge_through_a_shared_device(spark, cfg, solver):
    t1, t2 = datetime(2026, 1, 1), datetime(2026, 2, 1)
    events = spark.createDataFrame(
        [
            ("e1", "identify", "u1", "shared", None, "u1@x.com", None, t1),
            ("e2", "identify", "u2", "own", None, None, None, t1),
            ("e3", "identify", "u2", "shared", None, None, None, t2),  # u2 logs in on u1's device later
        ],
        EVENT_SCHEMA,
    )
    customers = spark.createDataFrame([], CUSTOMER_SCHEMA)
    obs = identifier_observations(customers, events, cfg.identity.blocklist)
    types = cfg.identity.identifier_types
    limits = {t: c.max_per_profile for t, c in types.items()}
    priorities = {t: c.priority for t, c in types.items()}
    r = identity_graph(obs, build_edges(obs), 50, limits, priorities)
    graph, cut = r.graph, r.cut_edges
    pid = {r.identifier: r.profile_id for r in graph.collect()}
    assert pid["user_id:u1"] != pid["user_id:u2"]
    assert pid["anonymous_id:shared"] == pid["user_id:u1"] == pid["email:u1@x.com"], (
        "the earlier evidence wins"
    )
    assert pid["anonymous_id:own"] == pid["user_id:u2"]
    cuts = [(r.src, r.dst, r.source_record, r.reason) for r in cut.collect()]
    assert cuts == [("anonymous_id:shared", "user_id:u2", "e3", "limit: at most 1 user_id per profile")]
    unguarded = identity_graph(obs, build_edges(obs), 50).graph
    assert unguarded.select("profile_id").distinct().count() == 1, "without limits the device glues them"


def test_guard_keeps_the_stronger_identifier_type(spark, solver):
    """With a limit of 1 email, the email edge of the stronger type (crm record) survives, the weaker is cut."""
    import pandas as pd

    from pipelines.identity_guards import _solve

    vertices = pd.DataFrame(
        {
            "id": ["crm_id:C1", "email:a@x", "email:b@x", "anonymous_id:z"],
            "id_type": ["crm_id", "email", "email", "anonymous_id"],
        }
    )
    edges = pd.DataFrame(
        {
            "src": ["anonymous_id:z", "crm_id:C1", "anonymous_id:z"],
            "dst": ["email:b@x", "email:a@x", "crm_id:C1"],
            "rule": ["event:identify", "crm_record:crm", "event:page"],
            "source_table": ["e", "c", "e"],
            "source_record": ["m1", "crm:C1", "m2"],
            "first_seen": pd.to_datetime(["2020-01-01", "2026-01-01", "2021-01-01"]),
        }
    )
    out = _solve(vertices, edges, {"email": 1}, {"crm_id": 2, "email": 3, "anonymous_id": 5})
    labels = dict(zip(out[out.kind == "vertex"].id, out[out.kind == "vertex"].component, strict=True))
    assert labels["email:a@x"] == labels["crm_id:C1"] == labels["anonymous_id:z"]
    assert labels["email:b@x"] == "email:b@x"
    assert out[out.kind == "cut"].source_record.tolist() == ["m1"]


def test_guard_cuts_a_probabilistic_edge_before_evidence(spark):
    """Two user ids in one component: the Splink edge goes, even though it was seen first."""
    import pandas as pd

    from pipelines.identity_guards import _solve

    vertices = pd.DataFrame(
        {
            "id": ["crm_id:C1", "crm_id:C2", "user_id:u1", "user_id:u2"],
            "id_type": ["crm_id", "crm_id", "user_id", "user_id"],
        }
    )
    edges = pd.DataFrame(
        {
            "src": ["crm_id:C1", "crm_id:C1", "crm_id:C2"],
            "dst": ["crm_id:C2", "user_id:u1", "user_id:u2"],
            "rule": ["probabilistic:splink", "crm_record:shop", "crm_record:shop"],
            "source_table": ["c", "c", "c"],
            "source_record": ["crm_id:C1|crm_id:C2", "shop:C1", "shop:C2"],
            "first_seen": pd.to_datetime(["2020-01-01", "2026-01-01", "2026-01-02"]),
            "score": [0.999, 1.0, 1.0],
        }
    )
    out = _solve(vertices, edges, {"user_id": 1}, {"user_id": 1, "crm_id": 2})
    assert out[out.kind == "cut"].rule.tolist() == ["probabilistic:splink"]


def test_per_type_normalizers_apply_before_blocklist_and_linking(spark, cfg):
    customers = spark.createDataFrame(
        [
            ("crm", "C1", " u1 ", "ANN@X.COM", "415 234 5678", T, T, T),
            ("crm", "C2", "u1", " TEST@TEST.COM", None, T, T, T),
        ],
        CUSTOMER_SCHEMA,
    )
    events = spark.createDataFrame([], EVENT_SCHEMA)
    normalizers = {t: c.normalizer for t, c in cfg.identity.identifier_types.items()}
    ids = {
        r.identifier
        for r in identifier_observations(customers, events, cfg.identity.blocklist, normalizers).collect()
    }
    assert ids == {"crm_id:C1", "crm_id:C2", "user_id:u1", "email:ann@x.com"}, (
        "trimmed, lower-cased, non-E.164 phone and blocked email dropped"
    )


def test_driver_and_spark_resolve_a_random_typed_graph_alike(spark, monkeypatch):
    """The whole identity graph (hubs, components, limit cuts, size bound, ids) from one transfer of the
    edges to the driver equals what Spark's jobs find, on a random graph that trips every guard."""
    rng = random.Random(23)
    kinds = {"user_id": 60, "email": 90, "anonymous_id": 150, "phone": 40}
    nodes = [f"{k}:{i}" for k, n in kinds.items() for i in range(n)]
    pairs = [(rng.choice(nodes), rng.choice(nodes)) for _ in range(330)]
    pairs += [("phone:0", n) for n in rng.sample(nodes, 12)]  # a hub above max_degree
    pairs += [(f"anonymous_id:c{i}", f"anonymous_id:c{i + 1}") for i in range(40)]  # oversized: 41 ids
    edges = spark.createDataFrame(
        [
            (a, b, "event:identify", "silver.events", f"m{i}", T.replace(day=1 + i % 28), T, 1, 1.0)
            for i, (a, b) in enumerate(pairs)
        ],
        "src string, dst string, rule string, source_table string, source_record string, "
        "first_seen timestamp, last_seen timestamp, evidence_count long, score double",
    )
    chain = [f"anonymous_id:c{i}" for i in range(41)]
    obs = spark.createDataFrame([(n,) for n in nodes + chain + ["email:alone"]], "identifier string")
    args = dict(
        max_component_size=35,
        limits={"user_id": 1, "email": 2},
        priorities={"user_id": 1, "email": 2, "phone": 3, "anonymous_id": 4},
        max_degree={"phone": 8},
    )

    def resolved():
        r = identity_graph(obs, edges, **args)
        return (
            sorted(tuple(x) for x in r.graph.collect()),
            sorted(tuple(x) for x in r.cut_edges.collect()),
            sorted((x.component_id, x.component_size) for x in r.oversized.collect()),
        )

    on_driver = resolved()
    _distributed(monkeypatch)
    assert resolved() == on_driver
    graph, cut, oversized = on_driver
    published = {g[0] for g in graph}
    assert {c[-1].split(":")[0] for c in cut} == {"degree", "limit"} and (41,) in {o[1:] for o in oversized}
    assert "email:alone" in published and "phone:0" not in published


_HUB_EDGES = [("user_id:u1", "phone:h"), ("anonymous_id:a1", "phone:h"), ("user_id:u1", "email:e1")]
_HUB_EDGES += [("anonymous_id:a1", "anonymous_id:a5")]
_MORE_ON_HUB = [("anonymous_id:a2", "phone:h"), ("anonymous_id:a3", "phone:h")]  # phone:h: 4 neighbours


@pytest.mark.parametrize(
    "case",
    [
        # new events push phone:h over its max_degree (3): the profile it held together falls apart
        dict(old=_HUB_EDGES, new=_MORE_ON_HUB, max_size=35, degree=(3, 3), parts=4),
        # the same, the component having been quarantined as oversized (5 identifiers, bound 4)
        dict(old=_HUB_EDGES, new=_MORE_ON_HUB, max_size=4, degree=(3, 3), parts=4),
        # the same on Spark's path (hubs, neighbours and closure without the driver)
        dict(old=_HUB_EDGES, new=_MORE_ON_HUB, max_size=4, degree=(3, 3), parts=4, distributed=True),
        # phone:h was a hub and no longer is (its bound raised; a deletion can lower a degree too): the
        # parts it links are one profile again, though no new record touches them
        dict(
            old=_HUB_EDGES + _MORE_ON_HUB,
            new=[("anonymous_id:a9", "email:e9")],
            max_size=35,
            degree=(3, 4),
            parts=2,
        ),
    ],
    ids=["new hub, published", "new hub, oversized", "new hub, oversized, on Spark", "hub no more"],
)
def test_incremental_update_follows_a_hub_that_comes_or_goes(spark, monkeypatch, case):
    """When an identifier becomes a hub or stops being one, components change that no new record touches;
    the incremental update must find them and equal a full rebuild."""
    from pipelines.identity_incremental import update_identity_graph

    if case.get("distributed"):
        _distributed(monkeypatch)

    def edges(pairs):
        return _identify_edges(spark, pairs)

    def ids(pairs):
        return spark.createDataFrame(sorted({(x,) for p in pairs for x in p}), "identifier string")

    old, new, max_size = case["old"], case["new"], case["max_size"]
    limits, priorities = {"user_id": 1}, {"user_id": 1, "email": 2, "phone": 3, "anonymous_id": 4}
    degree_before, degree_after = ({"phone": d} for d in case["degree"])
    first = identity_graph(
        ids(old),
        edges(old),
        max_size,
        limits,
        priorities,
        built_at="2026-11-01 00:00:00",
        max_degree=degree_before,
    )
    g1, reg1 = first.graph.localCheckpoint(), first.registry.localCheckpoint()
    cut1, over1 = first.cut_edges.localCheckpoint(), first.oversized.localCheckpoint()

    both = old + new
    at = "2026-11-02 00:00:00"
    full = identity_graph(ids(both), edges(both), max_size, limits, priorities, g1, reg1, at, degree_after)
    # the vertices given, and (observations None) those of the earlier graph, the new records and the edges
    for observations in (ids(both), None):
        inc = update_identity_graph(
            observations,
            edges(both),
            ids(new),
            g1,
            cut1,
            over1,
            reg1,
            max_size,
            limits,
            priorities,
            degree_after,
            at,
        )
        graph = _assert_incremental_equals_full(inc, full)
    members = {}
    for ident, pid, _ in graph:
        members.setdefault(pid, set()).add(ident)
    everyone = {x for p in both for x in p}
    # everyone is published but a hub
    assert len(members) == case["parts"] and len(graph) == len(everyone) - (case["degree"][1] == 3)
    assert _rows(full.oversized, ["component_id"]) == []


def test_a_hub_whose_edges_are_gone_is_no_vertex_of_the_update(spark):
    """An incremental update that takes its vertices from the earlier graph, the new records and the edges
    (observations None) reaches a hub of the last build that is one no more; with no edge left (its records
    forgotten) it is no vertex, as in a rebuild from those vertices."""
    from pipelines.identity_incremental import update_identity_graph

    def edges(pairs):
        return _identify_edges(spark, pairs)

    def ids(names):
        return spark.createDataFrame(sorted((x,) for x in set(names)), "identifier string")

    hub = [("phone:+15550000000", f"email:{c}@x.com") for c in "abcd"]
    old, new = hub + [("email:a@x.com", "anonymous_id:x")], [("email:a@x.com", "anonymous_id:y")]
    limits, priorities = {"user_id": 1}, {"email": 2, "phone": 3, "anonymous_id": 4}
    first = identity_graph(
        ids(x for p in old for x in p),
        edges(old),
        10,
        limits,
        priorities,
        built_at=str(T),
        max_degree={"phone": 3},
    )
    g1, reg1 = first.graph.localCheckpoint(), first.registry.localCheckpoint()
    cut1, over1 = first.cut_edges.localCheckpoint(), first.oversized.localCheckpoint()
    assert "phone:+15550000000" in {r.reason.split(" ")[1] for r in cut1.collect()}
    now = old[4:] + new  # the hub's records were forgotten: its edges are gone
    vertices = {r.identifier for r in g1.collect()} | {x for p in now for x in p}
    at = "2026-11-02 00:00:00"
    full = identity_graph(ids(vertices), edges(now), 10, limits, priorities, g1, reg1, at, {"phone": 3})
    inc = update_identity_graph(
        None,
        edges(now),
        ids(x for p in new for x in p),
        g1,
        cut1,
        over1,
        reg1,
        10,
        limits,
        priorities,
        {"phone": 3},
        at,
    )
    graph = _assert_incremental_equals_full(inc, full)
    assert "phone:+15550000000" not in {g[0] for g in graph} and "anonymous_id:y" in {g[0] for g in graph}


def _identify_edges(spark, pairs):
    """Edges as silver.identity_edges holds them, one identify call each."""
    return spark.createDataFrame(
        [(a, b, "event:identify", "silver.events", f"m{i}", T, T, 1, 1.0) for i, (a, b) in enumerate(pairs)],
        "src string, dst string, rule string, source_table string, source_record string, "
        "first_seen timestamp, last_seen timestamp, evidence_count long, score double",
    )


def _rows(df, cols):
    return sorted(tuple(r) for r in df.select(*cols).collect())


def _assert_incremental_equals_full(inc, full):
    """The tables an incremental update and a full rebuild make are the same; returns the graph's rows
    (identifier, profile_id, component_size)."""
    graph = _rows(full.graph, ["identifier", "profile_id", "component_size"])
    assert _rows(inc.graph, ["identifier", "profile_id", "component_size"]) == graph
    assert _rows(inc.oversized, ["component_id"]) == _rows(full.oversized, ["component_id"])
    cut_cols = ["src", "dst", "reason"]
    assert _rows(inc.cut_edges, cut_cols) == _rows(full.cut_edges, cut_cols)
    change_cols = ["event", "from_profile_id", "into_profile_id", "identifiers_moved"]
    assert _rows(inc.changes, change_cols) == _rows(full.changes, change_cols)
    reg_cols = ["profile_id", "created_at", "retired_at", "retired_into"]
    assert _rows(inc.registry, reg_cols) == _rows(full.registry, reg_cols)
    return graph


def test_incremental_update_rereads_earlier_aliases_as_a_rebuild_does(spark, cfg):
    """An alias's previousId reads as an anonymous id until some event uses it as userId, and its userId as
    a user id until some event uses it as anonymousId. Late events that do so after the alias was stored
    change its identifiers and edges: the incremental update (through the stream's edge writer) must end
    where a rebuild on all events does, edges table included."""
    from datetime import timedelta

    from pipelines import io
    from pipelines.identity import EDGE_COLUMNS, OBSERVATION_COLUMNS, merge_edges
    from pipelines.identity_incremental import events_near, incremental_identity, retyped_edges
    from pipelines.stream import add_edges

    day = timedelta(days=1)
    old = spark.createDataFrame(
        [
            ("m1", "identify", "X", "A", None, "x@ex.com", None, T),
            ("m2", "alias", "X", None, "V", None, None, T + day),  # V: an anonymous id, so far
            ("m3", "alias", "W", None, "Q", None, None, T + day),  # W: a user id, so far
            ("m4", "identify", "Z", "C", None, None, None, T),  # untouched by what follows
            ("m7", "identify", "J", "D", None, None, None, T),
            ("m8", "alias", "K", None, "J", None, None, T + day),  # J: a user id already
        ],
        EVENT_SCHEMA,
    )
    new = spark.createDataFrame(
        [
            ("m5", "track", "V", "B", None, None, None, T - day),  # late: V was a user id all along
            ("m6", "page", None, "W", None, None, None, T - day),  # late: W was an anonymous id
            ("m9", "track", "J", "E", None, None, None, T + day),  # J as before: m8 reads the same
        ],
        EVENT_SCHEMA,
    )
    every = old.unionByName(new)
    identity, at = cfg.identity, "2026-11-02 00:00:00"
    args = dict(limits=identity.limits, priorities=identity.priorities, max_degree=identity.max_degree)

    def observe(events, known=None):
        return identifier_observations(
            None, events, identity.blocklist, identity.normalizers, known_events=known
        ).localCheckpoint()

    obs1 = observe(old)
    first = identity_graph(
        obs1,
        merge_edges(build_edges(obs1, identity.priorities)),
        identity.max_component_size,
        built_at="2026-11-01 00:00:00",
        **args,
    )
    g1, reg1 = first.graph.localCheckpoint(), first.registry.localCheckpoint()
    io.overwrite(merge_edges(build_edges(obs1, identity.priorities)), cfg, "silver.identity_edges")

    # as a stream batch does: the events near the batch (one scan) say what all the events say
    near = events_near(new, every)
    new_obs = observe(new, near)
    assert _rows(new_obs, OBSERVATION_COLUMNS) == _rows(observe(new, every), OBSERVATION_COLUMNS)
    # an alias whose userId earlier events used as anonymousId and whose previousId as userId
    late_alias = spark.createDataFrame([("m10", "alias", "C", None, "J", None, None, T + day)], EVENT_SCHEMA)
    seen = every.unionByName(late_alias)
    alias_obs = _rows(observe(late_alias, events_near(late_alias, seen)), OBSERVATION_COLUMNS)
    assert alias_obs == _rows(observe(late_alias, seen), OBSERVATION_COLUMNS)
    assert {r[0] for r in alias_obs} == {"anonymous_id:C", "user_id:J"}
    retyped = add_edges(spark, cfg, new_obs, new_events=new, events=every, customers=None, near=near)
    assert retyped is not None
    assert {r.identifier for r in retyped.vanished.collect()} == {"anonymous_id:V", "user_id:W"}
    assert not {"user_id:J", "user_id:K"} & {r.identifier for r in retyped.identifiers.collect()}
    assert retyped_edges(new.filter("message_id = 'm9'"), every, None, identity) is None
    inc = incremental_identity(
        new_obs,
        io.read(spark, cfg, "silver.identity_edges"),
        g1,
        first.cut_edges,
        first.oversized,
        reg1,
        identity,
        at,
        retyped,
    )

    obs2 = observe(every)
    edges2 = merge_edges(build_edges(obs2, identity.priorities))
    full = identity_graph(
        obs2, edges2, identity.max_component_size, previous=g1, registry=reg1, built_at=at, **args
    )

    assert _rows(io.read(spark, cfg, "silver.identity_edges"), EDGE_COLUMNS) == _rows(edges2, EDGE_COLUMNS)
    published = {r[0] for r in _assert_incremental_equals_full(inc, full)}
    assert {"user_id:V", "anonymous_id:W"} <= published and not {"anonymous_id:V", "user_id:W"} & published
