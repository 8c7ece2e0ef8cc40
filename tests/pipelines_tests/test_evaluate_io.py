from pathlib import Path

import pytest

from pipelines import io
from pipelines.evaluate import pairwise_scores


def test_pairwise_scores(spark):
    truth = spark.createDataFrame(
        [("a", "P1"), ("b", "P1"), ("c", "P1"), ("d", "P2"), ("e", "P2"), ("f", "P3")],
        "identifier string, person_id string",
    )
    # a,b together; c alone (a split); d,e,f merged (f wrongly); 'x' not in truth is ignored
    predicted = spark.createDataFrame(
        [("a", "p1"), ("b", "p1"), ("c", "p2"), ("d", "p3"), ("e", "p3"), ("f", "p3"), ("x", "p9")],
        "identifier string, profile_id string",
    )
    s = pairwise_scores(predicted, truth)
    # true pairs: ab ac bc de = 4; predicted pairs: ab de df ef = 4; correct: ab de = 2
    assert (s["true_pairs"], s["predicted_pairs"], s["true_positive_pairs"]) == (4, 4, 2)
    assert s["precision"] == 0.5 and s["recall"] == 0.5 and s["f1"] == 0.5
    unresolved = pairwise_scores(predicted.filter("identifier != 'b'"), truth)
    assert unresolved["true_positive_pairs"] == 1, (
        "an identifier missing from the graph counts as a singleton"
    )


def test_retry_on_conflict_retries_only_delta_conflicts():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("[DELTA_CONCURRENT_APPEND] ConcurrentAppendException: Files were added ...")
        return "done"

    assert io.retry_on_conflict(flaky, base_delay=0.01) == "done" and len(calls) == 3
    with pytest.raises(ValueError):
        io.retry_on_conflict(lambda: (_ for _ in ()).throw(ValueError("not a conflict")), base_delay=0.01)
    with pytest.raises(RuntimeError, match="ConcurrentAppendException"):
        io.retry_on_conflict(
            lambda: (_ for _ in ()).throw(RuntimeError("ConcurrentAppendException")),
            attempts=2,
            base_delay=0.01,
        )


def test_concurrent_merges_on_one_table_both_land(spark, cfg):
    """Concurrent insert-only MERGEs read the same snapshot; a rejected commit (ConcurrentAppendException) is retried."""
    import threading

    df = spark.createDataFrame([("k0", 0)], "k string, v int")
    io.ensure(spark, cfg, "silver.orders", df.schema)
    io.merge_insert_new(df, cfg, "silver.orders", ["k"])
    errors = []

    def writer(i):
        try:
            rows = spark.createDataFrame([(f"k{i}{j}", j) for j in range(50)], "k string, v int")
            io.merge_insert_new(rows, cfg, "silver.orders", ["k"])
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert io.read(spark, cfg, "silver.orders").count() == 151


def test_a_table_creation_killed_before_its_first_commit_is_created_again(spark, cfg):
    """SIGKILL during a table's creation leaves a _delta_log holding only a temporary file; Delta would take
    it for a table and fail every later write. The next create or append starts it afresh."""
    for name in ("gold.profile_merges", "bronze.events"):
        log = Path(io.path_of(cfg, name)) / "_delta_log"
        log.mkdir(parents=True)
        (log / ".00000000000000000000.json.4f0c.tmp").write_text("{}")
        assert not io.exists(spark, cfg, name)
    io.ensure(spark, cfg, "gold.profile_merges", spark.createDataFrame([], "x string").schema)
    assert io.read(spark, cfg, "gold.profile_merges").count() == 0
    io.append(spark.createDataFrame([("a",)], "value string"), cfg, "bronze.events", "app", 0)
    assert io.read(spark, cfg, "bronze.events").count() == 1


def test_a_table_another_process_creates_is_seen_once_its_first_commit_lands(spark, cfg, tmp_path):
    """A session that looked while the table was being created elsewhere (log folder, no commit yet) must
    see the table once the commit is on disk: Delta's isDeltaTable alone keeps answering from its cache."""
    import shutil

    name = "gold.identity_graph"
    log = Path(io.path_of(cfg, name)) / "_delta_log"
    log.mkdir(parents=True)
    assert not io.exists(spark, cfg, name)  # this session has now looked at the empty log
    # "another process" writes the table: files copied in, so this session's Delta cache is not told
    elsewhere = tmp_path / "elsewhere"
    spark.createDataFrame(
        [("email:a@example.com", "p1")], "identifier string, profile_id string"
    ).write.format("delta").save(str(elsewhere))
    shutil.rmtree(log)
    shutil.copytree(elsewhere, io.path_of(cfg, name), dirs_exist_ok=True)
    assert io.exists(spark, cfg, name)
    assert io.read(spark, cfg, name).count() == 1


def test_a_tables_version_and_size_are_its_last_commits_even_one_another_process_made(spark, cfg, tmp_path):
    """``io.version`` and ``io.size_in_bytes`` read Delta's log, not the history or DESCRIBE DETAIL: they must
    agree with those after each write, answer -1 and 0 before the first commit, and see a commit that reached
    the folder from elsewhere."""
    import shutil

    from delta.tables import DeltaTable

    name = "gold.profile_merges"

    def agree() -> None:
        assert io.version(spark, cfg, name) == io.commits(spark, cfg, name, limit=1)[0]["version"]
        detail = DeltaTable.forPath(spark, io.path_of(cfg, name)).detail().first()
        assert io.size_in_bytes(spark, cfg, name) == detail["sizeInBytes"]

    assert io.version(spark, cfg, name) == -1 and io.size_in_bytes(spark, cfg, name) == 0
    df = spark.createDataFrame([("a",)], "x string")
    io.ensure(spark, cfg, name, df.schema)
    for _ in range(2):
        io.append(df, cfg, name)
        agree()
    assert io.version(spark, cfg, name) == 2
    size = io.size_in_bytes(spark, cfg, name)
    # "another process" commits versions 3 and 4: its log files are copied in, this session is not told
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(io.path_of(cfg, name), elsewhere)
    for _ in range(2):
        df.write.format("delta").mode("append").save(str(elsewhere))
    shutil.copytree(elsewhere, io.path_of(cfg, name), dirs_exist_ok=True)
    assert io.version(spark, cfg, name) == 4 and io.size_in_bytes(spark, cfg, name) > size > 0
    agree()
    assert io.read(spark, cfg, name).count() == 4


def test_tables_conf_lists_are_created_with_deletion_vectors_and_no_others(spark, cfg):
    """``lakehouse.deletion_vectors`` decides which tables a MERGE marks rows in instead of rewriting files:
    the default list, and a deployment that empties it gets plain tables."""
    from delta.tables import DeltaTable

    def dv(c, name):
        io.ensure(spark, c, name, spark.createDataFrame([], "profile_id string, n long").schema)
        props = DeltaTable.forPath(spark, io.path_of(c, name)).detail().first().properties
        return props.get("delta.enableDeletionVectors")

    assert "gold.profile_traits" in cfg.lakehouse.deletion_vectors
    assert "gold.profile_merges" not in cfg.lakehouse.deletion_vectors
    assert dv(cfg, "gold.profile_traits") == "true"
    assert dv(cfg, "gold.profile_merges") is None
    plain = cfg.model_copy(
        update={
            "lakehouse": cfg.lakehouse.model_copy(
                update={"root": cfg.lakehouse.root.parent / "plain", "deletion_vectors": []}
            )
        }
    )
    assert dv(plain, "gold.profile_traits") is None
    # MERGE into each: with deletion vectors the updated row is marked, not its file rewritten
    rows = spark.createDataFrame([(f"p{i}", i) for i in range(50)], "profile_id string, n long")
    for c in (cfg, plain):
        io.merge_upsert(rows.coalesce(1), c, "gold.profile_traits", ["profile_id"])
        io.merge_upsert(
            spark.createDataFrame([("p7", 70)], "profile_id string, n long"),
            c,
            "gold.profile_traits",
            ["profile_id"],
        )
    metrics = {
        c.lakehouse.root.name: DeltaTable.forPath(spark, io.path_of(c, "gold.profile_traits"))
        .history(1)
        .first()
        .operationMetrics
        for c in (cfg, plain)
    }
    assert metrics["lakehouse"]["numTargetDeletionVectorsAdded"] == "1"
    assert metrics["lakehouse"]["numTargetRowsCopied"] == "0"
    assert metrics["plain"]["numTargetDeletionVectorsAdded"] == "0"
    assert metrics["plain"]["numTargetRowsCopied"] == "49"
    assert {
        r.n for r in io.read(spark, plain, "gold.profile_traits").filter("profile_id = 'p7'").collect()
    } == {70}


def test_overwrite_if_changed_writes_only_a_different_multiset_of_rows(spark, cfg):
    # an array column, as quarantine.identity_components has (most_connected_identifiers)
    schema = "k string, n int, ids array<string>"
    rows = [("a", 1, ["x", "y"]), ("b", 2, None), ("b", 2, None)]
    io.overwrite(spark.createDataFrame(rows, schema), cfg, "quarantine.identity_components")
    start = io.version(spark, cfg, "quarantine.identity_components")

    def again(data) -> bool:
        return io.overwrite_if_changed(
            spark.createDataFrame(data, schema), cfg, "quarantine.identity_components"
        )

    assert not again(list(reversed(rows))), "the same rows in another order: no commit"
    assert io.version(spark, cfg, "quarantine.identity_components") == start
    assert again([("a", 1, ["x", "y"]), ("b", 2, None)]), "a repeat fewer is a change"
    assert again([("a", 1, ["y", "x"]), ("b", 2, None)]), "an array's order is its content"
    assert again([("a", 1, ["y", "x"]), ("b", 2, None), ("b", 3, None)])
    assert not again([("b", 3, None), ("a", 1, ["y", "x"]), ("b", 2, None)])
    assert io.version(spark, cfg, "quarantine.identity_components") == start + 3
    assert sorted(
        (r.k, r.n, r.ids) for r in io.read(spark, cfg, "quarantine.identity_components").collect()
    ) == [("a", 1, ["y", "x"]), ("b", 2, None), ("b", 3, None)]


def test_upsert_few_ends_as_one_merge_does_and_a_replay_adds_nothing(spark, cfg, monkeypatch):
    """``io.upsert_few`` (an update MERGE, then an append) leaves the table the upsert MERGE of the same rows
    leaves; with a txn app id, a replay after a crash between its two commits, or after both, changes
    nothing more: no edge counted twice, none lost."""
    from pipelines.identity import EDGE_KEYS, EDGE_UPSERT_SET

    schema = (
        "src string, dst string, rule string, source_table string, source_record string, "
        "first_seen timestamp, last_seen timestamp, evidence_count long, score double"
    )
    from datetime import datetime

    def edge(a, b, day, n, record):
        t = datetime(2026, 11, day)
        return (a, b, "event:identify", "silver.events", record, t, t, n, 1.0)

    name = "silver.identity_edges"
    start = [edge("a", "b", 1, 1, "m1"), edge("b", "c", 2, 2, "m2")]
    batch = spark.createDataFrame([edge("a", "b", 5, 1, "m9"), edge("c", "d", 5, 1, "m9")], schema)
    cols = [c.split()[0] for c in schema.split(", ")]

    def table_after(write, *txn):
        io.overwrite(spark.createDataFrame(start, schema), cfg, name)
        write(batch, cfg, name, EDGE_KEYS, EDGE_UPSERT_SET, *txn)
        return sorted(tuple(r) for r in io.read(spark, cfg, name).select(*cols).collect())

    expected = table_after(io.merge_upsert)
    assert [(r[0], r[1], r[7]) for r in expected] == [("a", "b", 2), ("b", "c", 2), ("c", "d", 1)]
    assert table_after(io.upsert_few) == expected

    # a crash between the update and the append: the replay appends, and does not update again
    replayed = lambda *call: _killed_before_the_append_then_replayed(monkeypatch, *call)  # noqa: E731
    assert table_after(replayed, "stream-1", 7) == expected
    # only new rows: the append is the first commit; its replay sees them held and skips the update
    io.overwrite(spark.createDataFrame(start, schema), cfg, name)
    fresh = spark.createDataFrame([edge("x", "y", 5, 1, "m8")], schema)
    for _ in range(2):
        io.upsert_few(fresh, cfg, name, EDGE_KEYS, EDGE_UPSERT_SET, "stream-2", 3)
    rows = io.read(spark, cfg, name).filter("src = 'x'").select("evidence_count").collect()
    assert [r[0] for r in rows] == [1]


def test_upsert_few_with_a_delete_flag_ends_as_one_merge_does_and_a_replay_adds_nothing(
    spark, cfg, monkeypatch
):
    """With ``delete_flag`` (a stream batch's graph delta: rows to upsert, keys to delete), ``io.upsert_few``
    deletes the flagged rows the table holds in its MERGE, ignores a flagged key it does not hold, and leaves
    the table (and count) one ``merge_upsert`` of the same rows leaves, also after a crash between its two
    commits and a replay."""
    name = "gold.identity_graph"
    start = [("a", "p1"), ("b", "p1"), ("d", "p2")]
    rows = spark.createDataFrame([("a", "p3"), ("c", "p3")], "identifier string, profile_id string")
    gone = spark.createDataFrame([("b",), ("z",)], "identifier string")
    delta = io.upserts_and_deletes(rows, gone, "identifier")

    def table_after(write, *txn):
        io.overwrite(spark.createDataFrame(start, "identifier string, profile_id string"), cfg, name)
        n = write(delta, cfg, name, ["identifier"], None, *txn)
        return n, sorted(tuple(r) for r in io.read(spark, cfg, name).collect())

    expected = table_after(io.merge_upsert, None, None, "_delete")
    assert expected == (3, [("a", "p3"), ("c", "p3"), ("d", "p2")])
    assert table_after(io.upsert_few, None, None, "_delete") == expected

    replayed = lambda *call: _killed_before_the_append_then_replayed(monkeypatch, *call)  # noqa: E731
    assert table_after(replayed, "stream-9", 4, "_delete") == (0, expected[1]), "the last run: nothing left"


def _killed_before_the_append_then_replayed(monkeypatch, *call) -> int:
    """``io.upsert_few(*call)`` killed between its two commits (its append raises), then replayed, then run
    once more after both landed; returns what the last run did."""
    real_append = io.append

    def killed(*args, **kwargs):
        raise RuntimeError("killed before the append")

    monkeypatch.setattr(io, "append", killed)
    with pytest.raises(RuntimeError, match="killed"):
        io.upsert_few(*call)
    monkeypatch.setattr(io, "append", real_append)
    io.upsert_few(*call)
    return io.upsert_few(*call)
