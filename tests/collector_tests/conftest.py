"""A real collector (uvicorn, HTTP on 127.0.0.1) per test, writing into the test's own lakehouse."""

import threading
import time

import pytest
import uvicorn

from collector.app import create_app
from pipelines.config import load_config
from tests.net import free_port

KEYS = {
    "web": "web-write-key-1",
    "server": "server-write-key-1",
    "off": "disabled-key-1",
    "slow": "slow-write-key-1",
}


class Running:
    def __init__(self, cfg):
        self.cfg = cfg
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(cfg), host="127.0.0.1", port=self.port, log_level="warning", http="httptools"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("collector did not start")
            time.sleep(0.05)
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def collector(spark, tmp_path):
    cfg = load_config(
        "test",
        lakehouse=str(tmp_path / "lakehouse"),
        overrides={
            "collector": {
                "roll_seconds": 0.3,
                "body_timeout_s": 1.5,
                "sources": {
                    "web": {"write_key": KEYS["web"], "stamp_ip": True},
                    "server": {"write_key": KEYS["server"], "stamp_ip": False},
                    "off": {"write_key": KEYS["off"], "enabled": False},
                    "slow": {"write_key": KEYS["slow"], "rate_limit_per_s": 1, "burst": 5},
                },
            },
            "streaming": {"max_files_per_trigger": 1000},
        },
    )
    running = Running(cfg).start()
    yield running
    running.stop()
