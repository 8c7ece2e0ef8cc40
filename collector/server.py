"""`converge collector`: the ASGI app under uvicorn (httptools + uvloop), workers from conf.

Each worker builds the app from the same configuration (CONVERGE_ENV, CONVERGE_LAKEHOUSE and
CONVERGE_OVERRIDES are inherited). Before any worker starts, files a crashed collector left in staging
are renamed into the landing folder, so their acknowledged events reach the stream.
"""

from __future__ import annotations

import uvicorn

from collector.app import create_app
from collector.sink import recover
from pipelines.config import Config, load_config


def app_factory():
    return create_app(load_config())


def serve(cfg: Config, host: str | None = None, port: int | None = None, workers: int | None = None) -> None:
    c = cfg.collector
    if not c.sources:
        raise SystemExit("collector.sources configures no write key: nothing could be accepted")
    moved = recover(cfg.lakehouse.landing)
    if moved:
        print(f"recovered {len(moved)} landing file(s) a previous collector left in staging", flush=True)
    uvicorn.run(
        "collector.server:app_factory",
        factory=True,
        host=host or c.host,
        port=port or c.port,
        workers=workers or c.workers,
        http="httptools",
        loop="uvloop",
        access_log=False,
        timeout_keep_alive=30,
        log_level="warning",
    )
