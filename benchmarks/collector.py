"""Benchmark: the collector's accepted events/s with durable acknowledgements (issue 7).

`converge collector` runs in its own process (1 and 2 uvicorn workers); a load generator in Node.js (core
modules only: benchmarks/collector_load.mjs, so the client does not compete for Python's GIL) sends
POST /v1/batch with 100 events per request over keep-alive connections on loopback. Every 200 means the
events were fsync'd. Afterwards the landed lines are counted: they must equal the accepted events.
Results are appended to docs/benchmarks.md. Usage: python -m benchmarks.collector [--seconds 30]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from benchmarks.machine import append_report
from tests.net import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "_runs" / "collector"
KEY = "benchmark-write-key"
CONVERGE = str(Path(sys.executable).with_name("converge"))


def run(workers: int, seconds: int, concurrency: int, batch: int) -> dict:
    work = RUNS / f"workers_{workers}"
    shutil.rmtree(work, ignore_errors=True)
    port = free_port()
    overrides = {
        "collector": {
            "workers": workers,
            "port": port,
            "sources": {"bench": {"write_key": KEY, "rate_limit_per_s": 10**7, "burst": 10**7}},
        }
    }
    env = os.environ | {"CONVERGE_LAKEHOUSE": str(work), "CONVERGE_OVERRIDES": json.dumps(overrides)}
    work.mkdir(parents=True)
    log = open(work.parent / f"collector_{workers}.log", "w")  # noqa: SIM115 - open while it runs
    proc = subprocess.Popen([CONVERGE, "collector"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(port, proc, 60, work.parent / f"collector_{workers}.log")
        out = subprocess.run(
            [
                "node",
                str(ROOT / "benchmarks" / "collector_load.mjs"),
                f"http://127.0.0.1:{port}",
                KEY,
                str(seconds),
                str(concurrency),
                str(batch),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    landed = sum(sum(1 for _ in f.open("rb")) for f in (work / "landing").rglob("*.jsonl*") if f.is_file())
    return result | {"workers": workers, "concurrency": concurrency, "batch": batch, "landed_lines": landed}


def main(seconds: int) -> None:
    results = [run(w, seconds, c, 100) for w, c in ((1, 4), (1, 16), (2, 8), (2, 16))]
    for r in results:
        print(r, flush=True)
    lines = [
        f"`converge collector` (uvicorn + httptools + uvloop), {seconds} s of POST /v1/batch with 100 events a",
        "request (about 27 KB), 4 to 16 requests in flight over keep-alive loopback connections from a Node.js load",
        "generator on the same 2 cores. A 200 is sent only after the events are written and fsync'd (group",
        "commit). Landed lines counted afterwards = accepted events. Goal: >= 20,000 events/s, p99 <= 50 ms.",
        "",
        "| workers | in flight | requests | accepted events | events/s | p50 (ms) | p99 (ms) | max (ms) | non-200 | landed lines |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['workers']} | {r['concurrency']} | {r['requests']:,} | {r['accepted']:,} | {r['events_per_s']:,} | {r['p50_ms']:.1f} | "
        f"{r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['failed']} | {r['landed_lines']:,} |"
        for r in results
    ]
    append_report("Collector", lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    main(parser.parse_args().seconds)
