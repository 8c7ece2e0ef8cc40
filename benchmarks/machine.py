"""Machine details for benchmark reports."""

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path


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
