"""Exactly once under crashes: `converge stream` is killed with SIGKILL at random moments at least five times
while events arrive, restarted each time, and then silver holds exactly the distinct valid messageIds sent,
bronze every line once, and the identity graph and profiles equal those of a clean single run. Once for the
landing folder, once for Kafka. The run itself is tests/integration_tests/crash_harness.py (the streaming
benchmark runs the same one at >= 200,000 events)."""

import pytest

from tests.integration_tests.crash_harness import CrashRun, crash_run, describe


@pytest.mark.parametrize("source", ["files", "kafka"])
def test_sigkill_at_random_moments_loses_and_doubles_nothing(spark, tmp_path, source, request, report):
    broker = request.getfixturevalue("kafka_broker") if source == "kafka" else None
    # The three files arrive within 6 s, before the first start plans its first batch (JVM and session
    # start take 10 s or more here), and a batch may take all three: the kills land while that batch's
    # bronze, silver and identity writes run, and the run after the last kill replays it alone (a batch
    # costs 45-110 s here, nearly all fixed cost; a second one added 45-60 s per source).
    run = CrashRun(
        source=source,
        people=36,
        events_per_file=120,
        feed_interval_s=3,
        kills=5,
        kill_after_s=(1, 20),
        max_files_per_trigger=3,
    )
    counts = crash_run(spark, tmp_path, run, broker)
    assert counts["kills"] >= 5 and counts["bronze"] == counts["lines"]
    shared = " (the other source's: same events)" if counts["clean_run_shared"] else ""
    report(
        f"{describe(counts)}; crash run {counts['crash_run_s']} s, clean run {counts['clean_run_s']} s{shared}"
    )
