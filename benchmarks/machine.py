"""Machine details for benchmark reports, and the one place that appends a report to docs/benchmarks.md."""

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

REPORT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def machine_details() -> dict[str, str]:
    cpuinfo, meminfo = (
        Path("/proc/cpuinfo").read_text().splitlines(),
        Path("/proc/meminfo").read_text().splitlines(),
    )
    cpu = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown"
    )
    mem_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    from importlib.metadata import version

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu} x {os.cpu_count()}",
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "java": java,
        "pyspark": version("pyspark"),
        "delta-spark": version("delta-spark"),
        "dagster": version("dagster"),
    }


def append_report(title: str, body: list[str]) -> None:
    """Append ``## title, date`` + ``body`` + the machine line to docs/benchmarks.md, and print it."""
    m = machine_details()
    lines = [
        f"\n## {title}, {m['date']}",
        "",
        *body,
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in m.items()),
        "",
    ]
    REPORT.parent.mkdir(exist_ok=True)
    if not REPORT.exists():
        REPORT.write_text(
            "# Benchmarks\n\nProduced by `make bench`; newest results last. Machines are shared and noisy: compare within one run.\n"
        )
    with open(REPORT, "a") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))
