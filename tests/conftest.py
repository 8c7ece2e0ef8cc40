"""Shared fixtures: one SparkSession with Delta for the whole suite, a fresh lakehouse folder per test."""

import os
from pathlib import Path

import pytest

os.environ["CONVERGE_ENV"] = "test"

from pipelines.config import Config, load_config  # noqa: E402
from pipelines.spark import get_spark  # noqa: E402


@pytest.fixture(scope="session")
def session_lakehouse(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lakehouse")
    os.environ["CONVERGE_LAKEHOUSE"] = str(root)
    return root


@pytest.fixture(scope="session")
def spark(session_lakehouse):
    session = get_spark(load_config("test"))
    yield session
    session.stop()


@pytest.fixture
def cfg(spark, tmp_path) -> Config:
    """Configuration pointing at an empty lakehouse of this test's own."""
    c = load_config("test", lakehouse=str(tmp_path / "lakehouse"))
    spark.sparkContext.setCheckpointDir(str(c.lakehouse.checkpoints / "spark"))
    return c


@pytest.fixture(scope="session")
def kafka_broker(spark, tmp_path_factory):
    """A real Kafka 4.1 broker (KRaft, one node) on 127.0.0.1 for the whole session."""
    from tests.kafka.broker import KafkaBroker

    broker = KafkaBroker(
        tmp_path_factory.mktemp("kafka"), load_config("test").spark.ivy_dir / "maven"
    ).start()
    yield broker
    broker.stop()


@pytest.fixture
def report(request):
    """Write a line to the terminal even when the test passes (counts a test is meant to show in CI)."""
    terminal = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def write(message: str) -> None:
        line = f"[{request.node.name}] {message}"
        if terminal is None or capture is None:
            print(line)
            return
        with capture.global_and_fixture_disabled():  # past pytest's capture, onto the CI log
            terminal.write_line("")
            terminal.write_line(line)

    return write
