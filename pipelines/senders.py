"""How a batch of activation events reaches a destination: webhook (HTTP POST), file, Kafka topic.

Every sender takes one batch (its idempotency key and the events) and returns an ``Outcome``; a failure
that a later run may fix (5xx, timeouts, a broker that is down) raises ``DeliveryFailed`` after the
configured retries, so the run stops and the next one resumes at this batch. A permanent refusal (4xx)
is an outcome: the batch is dead-lettered with the response and the run goes on.

Written with the standard library's urllib (one POST with retries needs no client library) and
confluent-kafka (already the collector's producer).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipelines.config import DestinationConfig

RETRYABLE_4XX = {408, 425, 429}  # timeouts and rate limits: worth another try, unlike other 4xx


class DeliveryFailed(RuntimeError):
    """A batch could not be delivered now (the destination may accept it later)."""


@dataclass
class Outcome:
    status: str  # delivered | dead_lettered
    attempts: int
    http_status: int | None = None
    response: str | None = None


def _expand_env(value: str) -> str:
    """``${NAME}`` in a header value is read from the environment (secrets never live in conf)."""

    def sub(m: re.Match) -> str:
        if m.group(1) not in os.environ:
            raise DeliveryFailed(f"environment variable {m.group(1)} (a destination header) is not set")
        return os.environ[m.group(1)]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, value)


class WebhookSender:
    """Batched POST with an Idempotency-Key header; 5xx, 408/425/429 and network errors are retried with
    exponential backoff (honouring Retry-After), other 4xx are permanent."""

    def __init__(self, name: str, dest: DestinationConfig, sleep=time.sleep):
        self.name, self.dest, self.sleep = name, dest, sleep

    def send(self, key: str, events: list[dict]) -> Outcome:
        body = json.dumps({"batch_id": key, "destination": self.name, "events": events}).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        headers |= {k: _expand_env(v) for k, v in self.dest.headers.items()}
        last = ""
        for attempt in range(1, self.dest.max_attempts + 1):
            wait = self.dest.backoff_s * 2 ** (attempt - 1)
            request = urllib.request.Request(str(self.dest.url), data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.dest.timeout_s) as resp:
                    return Outcome(
                        "delivered", attempt, resp.status, resp.read(2000).decode(errors="replace")
                    )
            except urllib.error.HTTPError as exc:
                text = exc.read(2000).decode(errors="replace")
                if 400 <= exc.code < 500 and exc.code not in RETRYABLE_4XX:
                    return Outcome("dead_lettered", attempt, exc.code, text)
                last = f"HTTP {exc.code}: {text[:200]}"
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.isdigit():
                    wait = max(wait, float(retry_after))
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt < self.dest.max_attempts:
                self.sleep(wait)
        raise DeliveryFailed(
            f"destination {self.name}: batch {key} not delivered after {self.dest.max_attempts} attempts ({last})"
        )


class FileSender:
    """One file per batch, named by the batch, written aside and renamed in: a rerun finds it there."""

    def __init__(self, name: str, dest: DestinationConfig, root: Path):
        folder = Path(str(dest.path))
        self.folder = folder if folder.is_absolute() else root / folder
        self.name, self.dest = name, dest

    def path_for(self, key: str) -> Path:
        return self.folder / f"{key}.{self.dest.format}"

    def send(self, key: str, events: list[dict]) -> Outcome:
        final = self.path_for(key)
        if not final.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            rows = [{k: v for k, v in e.items() if k != "traits"} | e.get("traits", {}) for e in events]
            table = pa.Table.from_pylist(rows)
            tmp = self.folder / f".{final.name}.tmp"
            if self.dest.format == "csv":
                pacsv.write_csv(table, tmp)
            else:
                pq.write_table(table, tmp)
            os.replace(tmp, final)
        return Outcome("delivered", 1, None, str(final))


class KafkaSender:
    """One message per event (key profile_id; headers idempotency-key and message-id); an idempotent
    producer with acks=all; the batch counts as delivered once every message is acknowledged."""

    def __init__(self, name: str, dest: DestinationConfig, default_servers: str):
        from confluent_kafka import Producer

        self.name, self.dest = name, dest
        self.producer = Producer(
            {
                "bootstrap.servers": dest.bootstrap_servers or default_servers,
                "enable.idempotence": True,
                "acks": "all",
                "message.timeout.ms": int(dest.timeout_s * 1000),
            }
        )

    def send(self, key: str, events: list[dict]) -> Outcome:
        errors: list[str] = []

        def done(err, _msg) -> None:
            if err is not None:
                errors.append(str(err))

        for e in events:
            self.producer.produce(
                str(self.dest.topic),
                key=e["profile_id"].encode(),
                value=json.dumps(e).encode(),
                headers=[("idempotency-key", key.encode()), ("message-id", e["message_id"].encode())],
                on_delivery=done,
            )
            self.producer.poll(0)
        left = self.producer.flush(self.dest.timeout_s * 2)
        if errors or left:
            raise DeliveryFailed(
                f"destination {self.name}: batch {key}: {left} message(s) unacknowledged, errors {errors[:3]}"
            )
        return Outcome("delivered", 1, None, f"{len(events)} messages")


def sender_for(
    name: str, dest: DestinationConfig, lakehouse_root: Path, kafka_servers: str, sleep=time.sleep
):
    if dest.type == "webhook":
        return WebhookSender(name, dest, sleep)
    if dest.type == "file":
        return FileSender(name, dest, lakehouse_root)
    return KafkaSender(name, dest, kafka_servers)
