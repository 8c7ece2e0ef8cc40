"""Jars from Maven Central through a pom file: resolved once with ``mvn``, cached inside the project.

Spark resolves ``spark.packages`` with Ivy, which cannot override a transitive version; a pom can (see
conf/maven/spark-kafka.pom.xml). The jars land in ``<cache>/<pom name>-<hash of the pom>/``, Maven's own
repository in ``<cache>/m2``; a changed pom resolves again, an unchanged one needs no network.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path


def resolve_pom(pom: Path, cache: Path) -> list[str]:
    """The runtime jars of ``pom``'s dependencies (transitive), as sorted absolute paths."""
    pom, cache = pom.resolve(), cache.resolve()
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
    dest = cache / f"{pom.name.removesuffix('.xml')}-{digest}"
    done = dest / ".resolved"
    if not done.exists():
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError(
                f"Maven (mvn) is needed once to resolve {pom}; install it or add the jars to {dest}"
            )
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        res = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                f"-Dmaven.repo.local={cache / 'm2'}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={tmp}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"mvn could not resolve {pom}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        done.write_text(digest)
    return sorted(str(p) for p in dest.glob("*.jar"))
