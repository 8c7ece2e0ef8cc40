"""Benchmark: the whole demo pipeline (converge_all through Dagster) at several sizes.

For each size: generate the demo data, then run `converge run` in a fresh process (JVM start included, as a
user sees it), sampling the resident memory of the whole process tree (Python driver + JVM) every 0.2 s.
Results are appended to docs/benchmarks.md. Usage: python -m benchmarks.pipeline 10000 100000
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import append_report
from pipelines.demo_data import generate

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "_runs"


def _memory_kb(pid: int) -> int:
    """The process's proportional set size (PSS): its private pages plus its share of pages it shares. Summed
    over a process tree this counts a shared page once; RSS would count it in every process that maps it
    (Spark's forked Python workers share most of their pages with the daemon they were forked from), and a
    sum of RSS can exceed the machine's memory. VmRSS where smaps_rollup is not available."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        return next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    except (PermissionError, StopIteration):
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))


def _memory_in_use_kb() -> int:
    """Memory in use on the whole machine: MemTotal - MemAvailable."""
    info = {
        line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
    }
    return info["MemTotal"] - info["MemAvailable"]


def _tree_memory_kb(pid: int) -> int:
    """Memory of the process tree under ``pid``: the sum of each process's PSS (see ``_memory_kb``), at most
    the memory in use on the machine.

    The bound is needed: sampled process by process, the sum reached 34.54 GiB in the identity benchmark on
    this 23.5 GiB machine, where a separate watcher of the same run (every 0.5 s, next to /proc/meminfo) saw
    18.79 GiB at most. The double count is not pinned down: the likely case is a child between vfork and
    exec, which shares its parent's address space and reports all of it as its own PSS (not reproduced
    with a Python parent). The memory in use on the machine is a hard bound either way."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            total += _memory_kb(p)
            for task in os.listdir(f"/proc/{p}/task"):
                stack += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return min(total, _memory_in_use_kb())


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, int, subprocess.CompletedProcess]:
    """Run ``cmd``, sampling the peak memory (summed PSS) of its process tree. Output goes to temporary
    files, not pipes: a child that logs more than a pipe holds (Spark's plan dumps) would block on a pipe nobody reads.

    A PSS sample is not free: the kernel walks the process's page tables, about 50 ms of CPU at 8 GB
    resident (measured), so about twice that at the identity benchmark's 18 GB. Sampled every 0.2 s, that
    was about a third of one of this machine's two cores taken from the run being timed (the full identity
    step took 350 s inside the benchmark at 411de29, where unsampled processes had taken 311-327 s with
    slower Splink code). So the pause between samples is twenty times what
    the last sample cost (at least 0.2 s): the sampler stays under 5% of a core. The wall time ends when
    the run does, not at the next sample."""
    t0 = time.time()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        peak = 0
        while True:
            started = time.time()
            peak = max(peak, _tree_memory_kb(proc.pid))
            try:  # returns as soon as the run ends, so the wall time is not rounded up to a pause
                proc.wait(timeout=max(0.2, 20 * (time.time() - started)))
                break
            except subprocess.TimeoutExpired:
                continue
        out.seek(0)
        err.seek(0)
        return (
            time.time() - t0,
            peak,
            subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read()),
        )


def bench(people: int) -> dict:
    lakehouse = RUNS / f"pipeline_{people}"
    shutil.rmtree(lakehouse, ignore_errors=True)
    t0 = time.time()
    generate(people, 42, lakehouse / "landing")
    gen_s = time.time() - t0
    env = os.environ | {"CONVERGE_LAKEHOUSE": str(lakehouse), "DAGSTER_HOME": str(lakehouse / "_dagster")}
    Path(env["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "dagster.yaml", Path(env["DAGSTER_HOME"]) / "dagster.yaml")
    converge = str(Path(sys.executable).parent / "converge")
    wall, peak_kb, res = run_measured([converge, "run"], env)
    if res.returncode != 0:
        raise SystemExit(f"pipeline failed at {people} people:\n{res.stdout}\n{res.stderr[-4000:]}")
    tables = subprocess.run(
        [converge, "tables", "--format", "json"], env=env, capture_output=True, text=True, check=True
    )
    rows = {r["table"]: r["rows"] for r in map(json.loads, tables.stdout.splitlines())}
    score = json.loads(
        subprocess.run([converge, "score"], env=env, capture_output=True, text=True, check=True).stdout
    )
    return {
        "people": people,
        "generate_s": round(gen_s, 1),
        "pipeline_s": round(wall, 1),
        "peak_rss_gib": round(peak_kb / 1024 / 1024, 2),
        "events": rows.get("bronze.events"),
        "profiles": rows.get("gold.profiles"),
        "precision": round(score["precision"], 4),
        "recall": round(score["recall"], 4),
    }


def main(sizes: list[int]) -> None:
    results = [bench(n) for n in sizes]
    append_report(
        "Demo pipeline",
        [
            "Whole `converge_all` job through Dagster in a fresh process (JVM start included), demo data of N people;",
            "peak memory = summed PSS of the process tree (Python driver + Spark JVM), sampled every 0.2 s.",
            "",
            "| people | bronze events | profiles | generate (s) | pipeline wall (s) | peak memory, PSS (GiB) | precision | recall |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        + [
            f"| {r['people']:,} | {r['events']:,} | {r['profiles']:,} | {r['generate_s']} | {r['pipeline_s']} | {r['peak_rss_gib']} | "
            f"{r['precision']} | {r['recall']} |"
            for r in results
        ],
    )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10_000, 100_000])
