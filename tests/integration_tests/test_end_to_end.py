"""The whole pipeline through Dagster on a small generated data set, with deliberately bad rows."""

import io as pyio
import json
import os
import re
import subprocess
import sys
import time
from contextlib import redirect_stdout
from datetime import UTC, datetime
from pathlib import Path

import pytest
from dagster import DagsterInstance

from jobs.cli import main as converge
from jobs.definitions import ASSET_TABLES, defs
from pipelines import io
from pipelines.config import PROJECT_ROOT
from pipelines.evaluate import pairwise_scores
from tests.integration_tests.lakehouse import ANN_CRM_ROWS, ANN_EVENT_LINES, BAD_CRM_ROWS, BAD_EVENT_LINES


@pytest.fixture
def pipeline_run(built):
    """The lakehouse `converge_all` built once for this module and test_forget.py (conftest.py)."""
    return built.result, built.cfg, built.counts


def test_every_asset_materializes_and_every_check_passes(pipeline_run):
    result, _, _ = pipeline_run
    assert result.success
    materialized = {
        e.asset_key.to_user_string().replace("/", ".")
        for e in result.get_asset_materialization_events()
        for e in [e.event_specific_data.materialization]
    }
    assert materialized == ASSET_TABLES
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 14
    assert [e.check_name for e in evaluations if not e.passed] == []


def test_counts_reconcile_and_bad_rows_are_quarantined_with_reasons(pipeline_run, spark):
    result, cfg, counts = pipeline_run
    recs = {
        e.metadata["feed"].value: {k: v.value for k, v in e.metadata.items()}
        for e in result.get_asset_check_evaluations()
        if e.check_name == "reconciliation"
    }
    assert set(recs) == {"customers", "orders", "events"}
    for rec in recs.values():
        assert rec["balanced"] and rec["bronze"] == rec["silver"] + rec["quarantined"] + rec["duplicates"]
    assert recs["customers"]["bronze"] == counts.crm_rows + counts.shop_rows + BAD_CRM_ROWS + ANN_CRM_ROWS
    assert recs["events"]["bronze"] == counts.event_lines + BAD_EVENT_LINES + ANN_EVENT_LINES
    assert recs["events"]["duplicates"] == counts.duplicate_event_lines
    reasons = {
        (r.feed, r.reason)
        for t in ("quarantine.crm_customers", "quarantine.orders", "quarantine.events")
        for r in io.read(spark, cfg, t).select("feed", "reason").distinct().collect()
    }
    assert {
        ("crm", "missing_source_id"),
        ("crm", "malformed_csv_line"),
        ("orders", "invalid_amount"),
        ("events", "invalid_json"),
        ("events", "missing_identity"),
    } <= reasons


def test_identity_graph_scores_against_ground_truth(pipeline_run, spark):
    _, cfg, counts = pipeline_run
    truth = spark.read.option("header", "true").csv(str(cfg.lakehouse.landing / "ground_truth.csv"))
    scores = pairwise_scores(io.read(spark, cfg, "gold.identity_graph"), truth)
    assert scores["precision"] >= 0.99, scores
    assert scores["recall"] >= 0.98, scores
    profiles = io.read(spark, cfg, "gold.profiles").count()
    assert abs(profiles - counts.people) / counts.people <= 0.02, (profiles, counts.people)


def test_converge_sql_reads_the_registered_tables(pipeline_run, spark):
    _, cfg, _ = pipeline_run
    out = pyio.StringIO()
    with redirect_stdout(out):
        assert (
            converge(
                [
                    "sql",
                    "select count(*) as n, count(distinct profile_id) as d from gold.profiles",
                    "--format",
                    "json",
                ]
            )
            == 0
        )
    row = json.loads(out.getvalue().strip())
    assert row["n"] == row["d"] == io.read(spark, cfg, "gold.profiles").count()
    out = pyio.StringIO()
    with redirect_stdout(out):
        converge(
            [
                "sql",
                "select profile_id, emails from gold.profiles order by profile_id limit 2",
                "--format",
                "csv",
            ]
        )
    lines = out.getvalue().strip().splitlines()
    assert lines[0] == "profile_id,emails" and len(lines) == 3
    out = pyio.StringIO()
    with redirect_stdout(out):
        converge(["sql", "select 1 as one"])
    assert out.getvalue().splitlines() == ["+-------+", "|   one |", "|-------|", "|     1 |", "+-------+"]


def test_converge_explain_prints_every_identifier_of_the_profile(pipeline_run, spark):
    _, cfg, _ = pipeline_run
    row = spark.sql(
        "select identifier, profile_id from gold.identity_graph where id_type = 'email' order by component_size desc, identifier limit 1"
    ).first()
    members = {
        r[0]
        for r in spark.sql(
            f"select identifier from gold.identity_graph where profile_id = '{row.profile_id}'"
        ).collect()
    }
    out = pyio.StringIO()
    with redirect_stdout(out):
        assert (
            converge(["explain", row.identifier.upper().replace("EMAIL:", "email: "), "--format", "json"])
            == 0
        )
    ex = json.loads(out.getvalue())
    assert ex["profile_id"] == row.profile_id and {link["identifier"] for link in ex["links"]} == members
    assert all(link["rule"] for link in ex["links"] if link["parent"]), "every link names its rule and source"
    out = pyio.StringIO()
    with redirect_stdout(out):
        assert converge(["explain", "email:nobody-at-all@example.com"]) == 3
    assert "no profile holds it" in out.getvalue()


def test_exploration_notebook_runs_end_to_end(pipeline_run):
    """The notebook runs in its own kernel (its own Spark JVM) against the lakehouse the pipeline built."""
    import nbformat
    from nbclient import NotebookClient

    from pipelines.config import PROJECT_ROOT

    nb = nbformat.read(PROJECT_ROOT / "notebooks" / "explore_profiles.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit notebooks with outputs stripped"
    )
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(PROJECT_ROOT)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert "profiles" in str(outputs[1]) and "source_record" in str(outputs[2])
    assert any("image/png" in o.get("data", {}) for o in outputs), "the audience plot rendered"
    assert "high_value" in str(outputs) or "churn_risk" in str(outputs), "audience sizes shown"


def test_a_rerun_keeps_every_profile_id_and_loads_nothing_twice(pipeline_run, spark):
    _, cfg, _ = pipeline_run
    before = {r.identifier: r.profile_id for r in io.read(spark, cfg, "gold.identity_graph").collect()}
    bronze_before = {
        t: io.read(spark, cfg, t).count() for t in ("bronze.crm_customers", "bronze.orders", "bronze.events")
    }
    rerun = defs.resolve_job_def("converge_all").execute_in_process(
        instance=DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert rerun.success
    after = {r.identifier: r.profile_id for r in io.read(spark, cfg, "gold.identity_graph").collect()}
    assert after == before
    assert {t: io.read(spark, cfg, t).count() for t in bronze_before} == bronze_before
    assert io.read(spark, cfg, "gold.profile_merges").count() == 0
    registry = io.read(spark, cfg, "gold.profile_ids")
    assert (
        registry.count() == len(set(before.values()))
        and registry.filter("retired_at is not null").count() == 0
    )


def test_converge_profile_shows_provenance_traits_audiences_now_and_as_of(pipeline_run, spark):
    """Time travel: the profile as it was before an update, and before the tables existed."""
    _, cfg, _ = pipeline_run
    row = spark.sql(
        "select profile_id, email, first_name from gold.profiles where email is not null and first_name is not null "
        "order by order_count desc, event_count desc, profile_id limit 1"
    ).first()

    def show(*extra):
        out = pyio.StringIO()
        with redirect_stdout(out):
            code = converge(["profile", f"email:{row.email}", "--format", "json", *extra])
        return code, json.loads(out.getvalue())

    code, now = show()
    assert code == 0 and now["profile_id"] == row.profile_id and f"email:{row.email}" in now["identifiers"]
    email = now["attributes"]["email"]
    assert email["value"] == row.email and email["source_record"] and email["rule"] == "source_priority"
    assert set(now["traits"]) >= {"lifetime_value", "orders_90d", "sessions_7d", "favourite_category"}
    assert now["recent_events"] and now["activity"]["event_count"] >= len(now["recent_events"])
    assert all(a["audience"] in cfg.audiences.definitions for a in now["audiences"])

    time.sleep(1.5)
    before = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    time.sleep(1.5)
    spark.sql(f"UPDATE gold.profiles SET first_name = 'Renamed' WHERE profile_id = '{row.profile_id}'")
    assert show()[1]["attributes"]["first_name"]["value"] == "Renamed"
    code, then = show("--as-of", before)
    assert code == 0 and then["attributes"]["first_name"]["value"] == row.first_name
    out = pyio.StringIO()
    with redirect_stdout(out):
        assert converge(["profile", f"email:{row.email}", "--as-of", "2001-01-01 00:00:00"]) == 3
    assert "no profile" in out.getvalue()
    out = pyio.StringIO()
    with redirect_stdout(out):
        assert converge(["profile", f"email:{row.email}"]) == 0
    text = out.getvalue()
    assert "attributes" in text and "traits:" in text and "audiences:" in text and "recent events:" in text


def test_sql_server_answers_a_real_jdbc_client(pipeline_run, spark, tmp_path):
    """`converge sql-server` in its own process; beeline (pyspark's JDBC client) queries gold.profiles."""
    import pyspark

    from tests.net import free_port, listening, wait_healthy

    _, cfg, _ = pipeline_run
    expected = io.read(spark, cfg, "gold.profiles").count()
    port = free_port()
    log = tmp_path / "sql-server.log"
    env = os.environ | {"CONVERGE_LAKEHOUSE": str(cfg.lakehouse.root), "CONVERGE_ENV": "test"}
    with open(log, "w") as fh:
        server = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", "sql-server", "--port", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=PROJECT_ROOT,
        )
    try:
        wait_healthy(port, server, timeout_s=240, log=log, probe=listening)
        spark_home = Path(pyspark.__file__).parent
        query = (
            "SELECT count(*) AS n FROM gold.profiles; "
            "SELECT count(*) AS m FROM gold.profiles p JOIN gold.profile_traits t USING (profile_id)"
        )
        beeline = subprocess.run(
            [
                str(spark_home / "bin" / "beeline"),
                "-u",
                f"jdbc:hive2://127.0.0.1:{port}/default",
                "-n",
                "analyst",
                "--silent=true",
                "--outputformat=csv2",
                "-e",
                query,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=os.environ | {"SPARK_HOME": str(spark_home)},
        )
        assert beeline.returncode == 0, beeline.stderr[-3000:]
        # beeline echoes its prompt before the first result header in -e mode
        lines = [re.sub(r"^\d+: jdbc:hive2://\S+> ", "", line) for line in beeline.stdout.splitlines()]
        lines = [line for line in lines if line.strip()]
        assert lines == ["n", str(expected), "m", str(expected)], beeline.stdout
    finally:
        server.terminate()
        server.wait(timeout=60)
