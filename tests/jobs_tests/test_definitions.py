from dagster import AssetKey

from assets.checks import CHECKED_TABLES
from jobs.definitions import ASSET_TABLES, converge_all, defs


def test_every_job_resolves_and_covers_every_table():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string().replace("/", ".") for k in graph.get_all_asset_keys()}
    assert keys == ASSET_TABLES, "one asset per registered table (or sync), no more, no less"
    for job in defs.resolve_all_job_defs():
        assert job.name
    job = defs.resolve_job_def("converge_all")
    assert job.executor_def.name == "in_process", "one SparkSession per run"
    assert {k.to_user_string().replace("/", ".") for k in job.asset_layer.selected_asset_keys} == ASSET_TABLES


def test_assets_have_layer_prefix_group_and_description():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert key.path[0] in {"bronze", "silver", "gold", "quarantine", "activation"}
        assert node.group_name and node.group_name != "default", key
        assert node.description, key


def test_quality_and_reconciliation_checks_exist_and_silver_ones_block():
    checks = {(k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys}
    for table in CHECKED_TABLES:
        assert (table.replace(".", "/"), "quality") in checks
    for feed in ("silver/customers", "silver/orders", "silver/events"):
        assert (feed, "reconciliation") in checks
    specs = {s.key: s for a in defs.resolve_asset_graph().assets_defs for s in a.check_specs}
    from dagster import AssetCheckKey

    assert specs[AssetCheckKey(AssetKey(["silver", "events"]), "reconciliation")].blocking


def test_nightly_schedule_targets_the_main_job():
    schedule = defs.resolve_schedule_def("converge_nightly")
    assert schedule.job_name == converge_all.name and schedule.cron_schedule == "0 2 * * *"


def test_audience_schedule_skips_until_profiles_exist_then_requests_a_refresh(tmp_path, monkeypatch):
    from dagster import RunRequest, build_schedule_context

    monkeypatch.setenv("CONVERGE_LAKEHOUSE", str(tmp_path))
    schedule = defs.resolve_schedule_def("audiences_refresh_schedule")
    assert schedule.job_name == "audiences_refresh" and schedule.cron_schedule == "*/15 * * * *"
    assert schedule.default_status.value == "RUNNING"
    result = schedule.evaluate_tick(build_schedule_context())
    assert result.skip_message and "no gold.profiles" in result.skip_message
    (tmp_path / "gold" / "profiles" / "_delta_log").mkdir(parents=True)
    result = schedule.evaluate_tick(build_schedule_context())
    assert len(result.run_requests) == 1 and isinstance(result.run_requests[0], RunRequest)


def test_traits_and_audiences_have_their_checks():
    checks = {(k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys}
    assert {
        ("gold/profile_traits", "one_row_per_profile"),
        ("gold/audience_membership", "size_change"),
        ("gold/audience_membership", "members_are_live_profiles"),
    } <= checks
