"""Right to be forgotten, end to end: a person in every table, file, export and destination delivery is
removed by `converge forget` through the Dagster sensor and job, `--verify` finds no trace in any table
version or file, and a late event for them ends in quarantine."""

import io as pyio
import json
import os
import signal
import subprocess
from contextlib import redirect_stdout
from pathlib import Path

from dagster import build_sensor_context
from pyspark.sql import functions as F

from jobs.cli import main as converge
from jobs.definitions import defs
from pipelines import io
from pipelines.config import load_config
from pipelines.forget import term_hash
from pipelines.proof import scan
from pipelines.stream import file_backlog, read_status
from tests.integration_tests import crash_harness
from tests.integration_tests.lakehouse import ANN, event, land_ann


def _cli(*argv):
    out = pyio.StringIO()
    with redirect_stdout(out):
        code = converge(list(argv))
    return code, out.getvalue()


def test_forget_removes_a_person_from_every_table_version_and_file(built, spark, report):
    """On the lakehouse test_end_to_end.py checked (conftest.py), after it: this test deletes from it."""
    cfg, instance, receiver = built.cfg, built.instance, built.receiver
    assert built.result.success
    graph = io.read(spark, cfg, "gold.identity_graph")
    ann_profile = graph.filter(F.col("identifier") == f"email:{ANN['email']}").first().profile_id
    # a second person, from the generated data, is forgotten in the same run (requests are batched)
    bob = (
        graph.filter((F.col("id_type") == "email") & (F.col("profile_id") != ann_profile))
        .orderBy("identifier")
        .first()
    )
    bob_values = [r.id_value for r in graph.filter(F.col("profile_id") == bob.profile_id).collect()]
    gone = [ann_profile, bob.profile_id]
    others_before = io.read(spark, cfg, "gold.profiles").filter(~F.col("profile_id").isin(gone)).count()
    # Ann is everywhere: every layer, the landing files, the export and the webhook
    hashes = {term_hash(v) for v in [*ANN.values(), ann_profile]}
    bob_hashes = {term_hash(v) for v in [*bob_values, bob.profile_id]}
    before = scan([cfg.lakehouse.root], hashes)
    places = {part for h in before.found for part in Path(h["path"]).relative_to(cfg.lakehouse.root).parts}
    for place in ("events", "crm", "orders", "crm_customers", "identity_edges", "identity_graph", "profiles",
                  "profile_traits", "audience_membership", "consent", "deliveries", "audiences"):  # fmt: skip
        assert place in places, f"Ann should be in {place} before the deletion: {sorted(places)}"
    assert scan([cfg.lakehouse.root], bob_hashes).found
    sent = [e for p in receiver.accepted() for e in p["body"]["events"]]
    assert ann_profile in {e["profile_id"] for e in sent}

    code, out = _cli("forget", "email:Ann.Forget@Example.com", "--reason", "GDPR art. 17")
    assert code == 0
    request_id = out.split("deletion request ")[1].split()[0]
    requested = io.read(spark, cfg, "governance.deletion_requests").first()
    assert requested.status == "pending" and requested.identifier_hash != ANN["email"]
    code, out = _cli("forget", bob.identifier)
    bob_request = out.split("deletion request ")[1].split()[0]

    sensor = defs.get_sensor_def("deletion_requests")
    tick = sensor.evaluate_tick(build_sensor_context(instance=instance))
    requests = list(tick.run_requests)
    assert [r.run_key for r in requests] == [f"{request_id}+1"]  # one run for both
    ops_config = requests[0].run_config["ops"]["fulfil_deletion_requests"]["config"]
    assert ops_config["request_ids"] == [request_id, bob_request]
    # handed out once: the next tick with the cursor starts nothing more
    later = sensor.evaluate_tick(build_sensor_context(instance=instance, cursor=tick.cursor))
    assert not list(later.run_requests)
    run = defs.resolve_job_def("forget").execute_in_process(
        run_config=requests[0].run_config, instance=instance
    )
    assert run.success
    audit = [e.event_specific_data.materialization for e in run.get_asset_materialization_events()]
    removed = next(m.metadata["rows_by_table"].value for m in audit if m.asset_key.path[-1] == "audit_log")
    for table in ("bronze.events", "silver.events", "quarantine.events", "silver.customers", "silver.orders",
                  "bronze.crm_customers", "bronze.orders", "gold.identity_graph", "gold.profiles",
                  "gold.profile_traits", "gold.audience_membership", "gold.consent"):  # fmt: skip
        assert removed.get(table, 0) > 0, f"nothing removed from {table}: {removed}"

    code, out = _cli("forget", "--verify", request_id, bob_request)  # one walk over the files for both
    lines = out.strip().splitlines()
    report("\n".join(lines))
    assert code == 0 and len(lines) == 2
    assert all(
        line.startswith(f"request {r}:") and line.endswith("found 0")
        for line, r in zip(lines, (request_id, bob_request), strict=True)
    )
    after = scan([cfg.lakehouse.root], hashes | bob_hashes)
    assert after.found == [] and after.files_scanned > 100

    # everyone else is still there, and the requests and their proof are in the audit log
    assert io.read(spark, cfg, "gold.profiles").count() == others_before
    kinds = [(r.request_id, r.event_kind) for r in io.read(spark, cfg, "governance.audit_log").collect()]
    assert sorted(kinds) == sorted(
        (r, k) for r in (request_id, bob_request) for k in ("received", "completed", "verified")
    )
    statuses = io.read(spark, cfg, "governance.deletion_requests").select("status").collect()
    assert [r.status for r in statuses] == ["completed", "completed"]
    assert not list(sensor.evaluate_tick(build_sensor_context(instance=instance)).run_requests)

    # a late event for Ann goes to quarantine and does not bring her profile back
    late = event("ann-late", "track", "2026-10-31T09:00:00Z", userId=ANN["user_id"], event="Product Viewed")
    (cfg.lakehouse.landing / "events/late.jsonl").write_text(late + "\n")
    again = defs.resolve_job_def("events_catch_up").execute_in_process(
        instance=instance, raise_on_error=False
    )
    assert again.success, [e.event_specific_data.error.message for e in again.all_events if e.is_step_failure]
    quarantined = io.read(spark, cfg, "quarantine.events").filter(F.col("reason") == "suppressed").collect()
    assert [json.loads(r.raw)["messageId"] for r in quarantined] == ["ann-late"]
    assert (
        graph.sparkSession.read.format("delta")
        .load(io.path_of(cfg, "gold.identity_graph"))
        .filter(F.col("identifier").contains("ann-forget"))
        .count()
        == 0
    )


def _people_file(folder: Path, name: str, people: range) -> int:
    lines = [
        event(
            f"{name}-{i}",
            "identify",
            "2026-10-30T10:00:00Z",
            userId=f"user-{i}",
            anonymousId=f"anon-{i}",
            traits={"email": f"person{i}@example.org"},
        )  # fmt: skip
        for i in people
    ]
    tmp = folder / f".{name}.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, folder / f"{name}.jsonl")  # renamed in, as the file source expects
    return len(lines)


def test_deletion_while_the_stream_is_running(spark, tmp_path, report):
    """`converge stream` keeps running (a separate process) while `converge forget --now` deletes a
    person it has just loaded; other people's events keep flowing, the person is gone, and their late
    event is quarantined by the running stream."""
    env = os.environ | {"CONVERGE_LAKEHOUSE": str(tmp_path / "lh"), "CONVERGE_ENV": "test"}
    env.pop("CONVERGE_OVERRIDES", None)
    cfg = load_config("test", lakehouse=env["CONVERGE_LAKEHOUSE"])
    events = cfg.lakehouse.landing / "events"
    land_ann(cfg.lakehouse.landing, events_only=True)  # the stream reads events only
    sent = _people_file(events, "first", range(0, 5))
    log = tmp_path / "stream.log"
    proc = crash_harness._start(env, log)
    try:

        def ann_loaded():
            if not io.exists(spark, cfg, "gold.identity_graph"):
                return False
            graph = io.read(spark, cfg, "gold.identity_graph")
            return graph.filter(F.col("identifier") == f"email:{ANN['email']}").count() == 1

        crash_harness._wait(ann_loaded, 300, "Ann's profile", proc, log)
        old = os.environ.get("CONVERGE_LAKEHOUSE")
        os.environ["CONVERGE_LAKEHOUSE"] = env["CONVERGE_LAKEHOUSE"]
        try:
            sent += _people_file(events, "during", range(5, 10))  # arrives while the deletion runs
            code, out = _cli("forget", f"email:{ANN['email']}", "--now")
            assert code == 0, out
            request_id = out.split("deletion request ")[1].split()[0]
            sent += _people_file(events, "after", range(10, 15))
            crash_harness._wait(
                lambda: crash_harness._committed(cfg) and not file_backlog(cfg), 300, "the backlog", proc, log
            )
            code, out = _cli("forget", "--verify", request_id)
            report(out.strip().splitlines()[0])
            assert code == 0, out
            # a late event for Ann: the running stream quarantines it
            late = event(
                "ann-late", "track", "2026-10-31T09:00:00Z", userId=ANN["user_id"], event="Product Viewed"
            )
            (events / ".late.tmp").write_text(late + "\n")
            os.replace(events / ".late.tmp", events / "late.jsonl")

            def late_quarantined():
                q = io.read(spark, cfg, "quarantine.events")
                return q.filter(F.col("reason") == "suppressed").count() == 1

            crash_harness._wait(late_quarantined, 300, "the late event in quarantine", proc, log)
        finally:
            if old is None:
                os.environ.pop("CONVERGE_LAKEHOUSE")
            else:
                os.environ["CONVERGE_LAKEHOUSE"] = old
    finally:
        proc.send_signal(signal.SIGTERM)  # `converge stream` stops its query cleanly on SIGTERM
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    silver = io.read(spark, cfg, "silver.events")
    others = silver.filter(F.col("message_id").rlike("^(first|during|after)-")).count()
    assert others == sent  # no other event was lost or doubled while the deletion ran
    assert silver.filter(F.col("user_id") == ANN["user_id"]).count() == 0
    status = read_status(cfg)  # the query never failed (a SIGTERM'd process may not get to write "stopped")
    assert status["error"] is None and "failed" not in status["state"], status
