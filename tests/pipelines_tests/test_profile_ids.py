"""Stable profile ids: same ids on a rebuild, the older id survives a merge, the larger part keeps it on a
split, every change is recorded with its edge, and a retired id is never issued again."""

from datetime import datetime

from pipelines.profile_ids import REGISTRY_SCHEMA, assign_profile_ids

EDGE_SCHEMA = "src string, dst string, rule string, source_table string, source_record string, first_seen timestamp, last_seen timestamp, evidence_count long"


def _edges(spark, pairs):
    t = datetime(2026, 1, 1)
    rows = [
        (a, b, "event:identify", "silver.events", f"m-{a}-{b}", t, datetime(2026, 1, 1 + i), 1)
        for i, (a, b) in enumerate(pairs)
    ]
    return spark.createDataFrame(rows, EDGE_SCHEMA)


def _components(spark, groups):
    return spark.createDataFrame([(i, min(g)) for g in groups for i in g], "id string, component string")


def _build(spark, groups, pairs, previous=None, registry=None, at="2026-01-01 00:00:00"):
    ids, reg, reg_changes, changes = assign_profile_ids(
        spark, _components(spark, groups), previous, registry, _edges(spark, pairs), at
    )
    # the changed rows are exactly what the new registry has that the last one had not
    before = registry if registry is not None else spark.createDataFrame([], REGISTRY_SCHEMA)
    changed = [tuple(r) for r in reg_changes.collect()]
    assert len(changed) == len(set(changed)) and set(changed) == {
        tuple(r) for r in reg.exceptAll(before).collect()
    }
    graph = (
        _components(spark, groups)
        .join(ids, "component")
        .select("id", "profile_id")
        .withColumnRenamed("id", "identifier")
    )
    return graph.localCheckpoint(), reg.localCheckpoint(), changes.localCheckpoint()


def _pid(graph):
    return {r.identifier: r.profile_id for r in graph.collect()}


def test_rebuild_keeps_ids_and_records_nothing(spark):
    groups = [["a", "b"], ["c"]]
    g1, r1, c1 = _build(spark, groups, [("a", "b")])
    g2, r2, c2 = _build(spark, groups, [("a", "b")], g1, r1, "2026-02-01 00:00:00")
    assert _pid(g1) == _pid(g2)
    assert c1.count() == 0 and c2.count() == 0
    assert r2.count() == 2 and r2.filter("retired_at is null").count() == 2


def test_merge_keeps_the_older_id_and_records_the_edge(spark):
    g1, r1, _ = _build(spark, [["a", "b"], ["c", "d"]], [("a", "b"), ("c", "d")])
    # both ids were issued at the same time: the tie goes to the smaller id, deterministically
    old = _pid(g1)
    g2, r2, changes = _build(
        spark, [["a", "b", "c", "d"]], [("a", "b"), ("c", "d"), ("b", "c")], g1, r1, "2026-02-01 00:00:00"
    )
    new = _pid(g2)
    assert len(set(new.values())) == 1
    survivor = new["a"]
    assert survivor in {old["a"], old["c"]}
    retired = old["c"] if survivor == old["a"] else old["a"]
    row = changes.collect()
    assert [(r.event, r.from_profile_id, r.into_profile_id) for r in row] == [("merge", retired, survivor)]
    assert (row[0].edge_src, row[0].edge_dst) == ("b", "c"), (
        "the newest edge across the two profiles caused it"
    )
    reg = {r.profile_id: r for r in r2.collect()}
    assert reg[retired].retired_into == survivor and reg[retired].retired_at == datetime(2026, 2, 1)
    assert reg[survivor].retired_at is None


def test_split_larger_part_keeps_the_id_and_retired_ids_are_never_reissued(spark):
    g1, r1, _ = _build(spark, [["a", "b", "c"]], [("a", "b"), ("b", "c")])
    p = _pid(g1)["a"]
    g2, r2, changes = _build(spark, [["a", "b"], ["c"]], [("a", "b")], g1, r1, "2026-02-01 00:00:00")
    ids = _pid(g2)
    assert ids["a"] == ids["b"] == p and ids["c"] != p
    assert [
        (r.event, r.from_profile_id, r.into_profile_id, r.identifiers_moved) for r in changes.collect()
    ] == [("split", p, ids["c"], 1)]
    # c merges back: c's id is retired into p; then c splits off again and must get a brand-new id
    g3, r3, _ = _build(spark, [["a", "b", "c"]], [("a", "b"), ("b", "c")], g2, r2, "2026-03-01 00:00:00")
    assert set(_pid(g3).values()) == {p}
    g4, r4, _ = _build(spark, [["a", "b"], ["c"]], [("a", "b")], g3, r3, "2026-04-01 00:00:00")
    issued_before = {r.profile_id for r in r3.collect()}
    assert _pid(g4)["c"] not in issued_before, "a retired id is never reused"
    assert r4.count() == len(issued_before) + 1
