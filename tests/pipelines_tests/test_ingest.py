import json
import os

from pipelines import io
from pipelines.demo_data import generate
from pipelines.ingest import load_csv_feed, process_event_batch
from pipelines.stream import run_stream
from tests.pipelines_tests.helpers import raw_lines
from tests.pipelines_tests.test_events import ev


def test_csv_feed_loads_each_file_once(spark, cfg):
    folder = cfg.lakehouse.landing / "orders"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("order_id,amount\nO1,1\nO2,2\n")
    (folder / ".b.csv.tmp").write_text("order_id,amount\nO9,9\n")  # in flight: not loaded
    assert load_csv_feed(spark, cfg, folder, "orders", "bronze.orders") == [str(folder / "a.csv")]
    assert load_csv_feed(spark, cfg, folder, "orders", "bronze.orders") == []
    (folder / "c.csv").write_text("order_id,amount,extra\nO3,3,x\n")  # a different header still loads
    assert load_csv_feed(spark, cfg, folder, "orders", "bronze.orders") == [str(folder / "c.csv")]
    rows = {r.payload["order_id"]: r for r in io.read(spark, cfg, "bronze.orders").collect()}
    assert set(rows) == {"O1", "O2", "O3"} and rows["O3"].payload["extra"] == "x"
    assert rows["O1"].source_file == str(folder / "a.csv")


def test_a_replayed_batch_writes_nothing_twice(spark, cfg):
    batch = raw_lines(spark, [ev(messageId="m1"), ev(messageId="m1"), ev(messageId="m2"), "garbage"])
    first = process_event_batch(batch, 0, cfg, "app-1")
    again = process_event_batch(batch, 0, cfg, "app-1")  # same (app id, batch id): the crash-retry case
    assert (first.rows, first.accepted, first.quarantined, first.inserted, first.duplicates) == (
        4,
        3,
        1,
        2,
        1,
    )
    assert again.inserted == 0
    counts = {
        n: io.read(spark, cfg, n).count() for n in ("bronze.events", "silver.events", "quarantine.events")
    }
    assert counts == {"bronze.events": 4, "silver.events": 2, "quarantine.events": 1}
    later = process_event_batch(raw_lines(spark, [ev(messageId="m2"), ev(messageId="m3")]), 1, cfg, "app-1")
    assert (later.inserted, later.duplicates) == (1, 1), "dedup holds across batches, not only within one"
    assert io.read(spark, cfg, "silver.events").count() == 3


def test_stream_processes_landed_files_once(spark, cfg):
    generate(60, 5, cfg.lakehouse.landing, events_per_file=200)
    first = run_stream(spark, cfg, available_now=True, update_identity=False)
    lines = sum(len(f.read_text().splitlines()) for f in (cfg.lakehouse.landing / "events").glob("*.jsonl"))
    assert sum(b.rows for b in first) == lines and io.read(spark, cfg, "bronze.events").count() == lines
    assert run_stream(spark, cfg, available_now=True, update_identity=False) == [], (
        "nothing new landed: no batch"
    )
    extra = cfg.lakehouse.landing / "events" / ".late.jsonl.tmp"
    extra.write_text(ev(messageId="late-1") + "\n" + json.dumps({"type": "page"}) + "\n")
    os.replace(extra, cfg.lakehouse.landing / "events" / "late.jsonl")
    second = run_stream(spark, cfg, available_now=True, update_identity=False)
    assert [(b.rows, b.inserted, b.quarantined) for b in second] == [(2, 1, 1)]
    assert spark.sql("select count(*) from silver.events where message_id = 'late-1'").first()[0] == 1
