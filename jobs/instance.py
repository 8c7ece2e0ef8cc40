"""The Dagster instance the CLI and `make ui` share: DAGSTER_HOME inside the project, config from dagster.yaml."""

import os
import shutil
from pathlib import Path

from dagster import DagsterInstance

from pipelines.config import PROJECT_ROOT


def dagster_home() -> Path:
    """$DAGSTER_HOME, defaulting to <project>/.dagster_home, holding a copy of the project's dagster.yaml."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    source = PROJECT_ROOT / "dagster.yaml"
    target = home / "dagster.yaml"
    if source.exists() and (not target.exists() or target.read_bytes() != source.read_bytes()):
        shutil.copyfile(source, target)
    return home


def get_instance() -> DagsterInstance:
    dagster_home()
    return DagsterInstance.get()
