"""The Dagster UI serves every asset of the pipeline: a real dagster-webserver on 127.0.0.1, queried over HTTP."""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from jobs.definitions import ASSET_TABLES
from pipelines.config import PROJECT_ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_webserver_lists_every_asset_job_and_check(tmp_path):
    port = _free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT_ROOT / "dagster.yaml").read_text())
    webserver = Path(sys.executable).parent / "dagster-webserver"
    proc = subprocess.Popen(
        [str(webserver), "-h", "127.0.0.1", "-p", str(port), "-m", "jobs.definitions"],
        cwd=PROJECT_ROOT,
        env={**__import__("os").environ, "DAGSTER_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(
                        f"webserver did not start: {proc.stderr.read() if proc.poll() is not None else 'timeout'}"
                    ) from None
                time.sleep(1)
        data = _graphql(
            port,
            "{ assetNodes { assetKey { path } groupName jobNames assetChecksOrError { ... on AssetChecks { checks { name } } } } }",
        )
        nodes = data["data"]["assetNodes"]
        assert {".".join(n["assetKey"]["path"]) for n in nodes} == ASSET_TABLES
        assert all("converge_all" in n["jobNames"] for n in nodes)
        checks = {
            (".".join(n["assetKey"]["path"]), c["name"])
            for n in nodes
            for c in n["assetChecksOrError"].get("checks", [])
        }
        assert ("silver.events", "reconciliation") in checks and ("gold.profiles", "quality") in checks
        loc = _graphql(
            port, "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
        )
        assert [e["loadStatus"] for e in loc["data"]["workspaceOrError"]["locationEntries"]] == ["LOADED"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
