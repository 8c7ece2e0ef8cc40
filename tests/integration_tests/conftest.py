"""The lakehouse the end-to-end and the forget tests share (see lakehouse.py)."""

import pytest

from tests.integration_tests.lakehouse import Built, build


@pytest.fixture(scope="session")
def built_lakehouse(spark, tmp_path_factory) -> Built:
    """Built once. test_end_to_end.py only reads it (its rerun changes nothing); test_forget.py deletes two
    people from it, and runs after it because pytest runs modules in file-name order."""
    built = build(tmp_path_factory.mktemp("e2e"))
    yield built
    built.receiver.close()


@pytest.fixture
def built(built_lakehouse, monkeypatch) -> Built:
    """The shared lakehouse, with the environment (`CONVERGE_LAKEHOUSE`, the webhook) set for this test."""
    for k, v in built_lakehouse.env.items():
        monkeypatch.setenv(k, v)
    return built_lakehouse
