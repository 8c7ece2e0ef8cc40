"""Proof that a person is gone: ``converge forget --verify <request>`` searches every file Converge keeps.

The search is over files, not over tables: every version of every Delta table (what time travel can
still read), its change data, its transaction log and checkpoints, the landing and archive folders,
exports, dead letters, the stream's checkpoint and staging, are all files under the lakehouse root (plus
``governance.scan_paths``). Parquet files are read cell by cell (every string, nested ones too), all
other files as text. So a value that survives anywhere, in any version, is found.

It needs no plain-text identifier: the audit log keeps SHA-256 hashes of the person's identifier values
and profile ids (lower-cased), and every token of every text is hashed and looked up. Phone numbers
written with spaces, dashes or brackets are also tried as digits, with and without a leading ``+``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines import io
from pipelines.config import PROJECT_ROOT, Config
from pipelines.forget import TOKEN, audit

_PHONE = re.compile(r"\+?\(?\d[\d\s().\-]{6,}\d")


@dataclass
class Proof:
    request_id: str
    files_scanned: int = 0
    bytes_scanned: int = 0
    values_searched: int = 0
    found: list[dict] = field(default_factory=list)  # {path, hash}: where a value of the person still is

    @property
    def clean(self) -> bool:
        return not self.found


def _hashes_of(text: str) -> Iterator[str]:
    for token in TOKEN.findall(text):
        t = token.lower()
        yield hashlib.sha256(t.encode()).hexdigest()
        stripped = t.strip(".-")
        if stripped != t:
            yield hashlib.sha256(stripped.encode()).hexdigest()
    for phone in _PHONE.findall(text):
        digits = re.sub(r"\D", "", phone)
        for form in (digits, "+" + digits):
            yield hashlib.sha256(form.encode()).hexdigest()


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, bytes):
        yield value.decode("utf-8", errors="replace")


def _file_texts(path: Path) -> Iterator[str]:
    if path.suffix == ".parquet":
        try:
            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=4096):
                for column in batch.columns:
                    yield from _strings(column.to_pylist())
            return
        except Exception:  # not really Parquet: read it as text below
            pass
    yield path.read_bytes().decode("utf-8", errors="replace")


def scan(roots: list[Path], hashes: set[str], request_id: str = "") -> Proof:
    """Every file under ``roots``: where does a value whose hash is in ``hashes`` occur?"""
    proof = Proof(request_id, values_searched=len(hashes))
    for root in roots:
        if not root.exists():
            continue
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = Path(dirpath) / name
                proof.files_scanned += 1
                proof.bytes_scanned += path.stat().st_size
                hits = {h for text in _file_texts(path) for h in _hashes_of(text) if h in hashes}
                proof.found += [{"path": str(path), "hash": h} for h in sorted(hits)]
    return proof


def verify(spark: SparkSession, cfg: Config, request_ids: list[str]) -> dict[str, Proof]:
    """Search everything Converge keeps for the persons of completed requests, in one walk over the files
    for all of them; record each result in the audit log."""
    if not io.exists(spark, cfg, "governance.audit_log"):
        raise LookupError("no deletion has been recorded in this lakehouse")
    rows = (
        io.read(spark, cfg, "governance.audit_log")
        .filter(F.col("request_id").isin(request_ids) & (F.col("event_kind") == "completed"))
        .select("request_id", "details")
        .collect()
    )
    hashes = {r.request_id: set(json.loads(r.details)["verify_hashes"]) for r in rows}
    missing = sorted(set(request_ids) - set(hashes))
    if missing:
        raise LookupError(f"request(s) {', '.join(missing)} unknown or not completed yet")
    extra = [p if p.is_absolute() else PROJECT_ROOT / p for p in cfg.governance.scan_paths]
    every = scan([cfg.lakehouse.root, *extra], set().union(*hashes.values()))
    proofs = {}
    for request_id, mine in hashes.items():
        proofs[request_id] = Proof(
            request_id,
            every.files_scanned,
            every.bytes_scanned,
            len(mine),
            [hit for hit in every.found if hit["hash"] in mine],
        )
    audit(
        spark,
        cfg,
        [
            (
                rid,
                "verified",
                0,
                p.files_scanned,
                {"found": p.found, "bytes_scanned": p.bytes_scanned, "clean": p.clean},
            )
            for rid, p in sorted(proofs.items())
        ],
    )
    return proofs
