"""Durable landing files for the collector: group commit, fsync before acknowledgement, rename into the stream.

Every request hands its lines to ``FileSink.write`` and awaits it. One writer task takes whatever lines are
pending, appends them to the open file, fsyncs once and then releases every request it covered (group
commit: while one fsync runs the next requests gather, so fsyncs per second stay bounded however many
requests arrive). A file lives in a staging folder beside the landing folder (same filesystem) and is
renamed into ``<landing>/events`` when it is ``roll_seconds`` old or ``roll_bytes`` big, so the stream only
ever sees whole files. After a crash, ``recover`` renames what the staging folder still holds (every
acknowledged line was fsync'd) into the landing folder, cutting a torn last line that nobody was told was
written.

Written by hand: no library offers group-committed, fsync-acknowledged JSON-lines files.

``KafkaSink`` is the other choice (``collector.sink: kafka``): each event one message on the stream's topic,
produced idempotently with ``acks=all``; a request is released when every one of its messages is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException, Producer


def staging_dir(landing: Path) -> Path:
    return landing / ".collector"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(landing: Path) -> list[Path]:
    """Move files a crashed collector left in staging into ``<landing>/events``; returns the new paths."""
    staging, events = staging_dir(landing), landing / "events"
    if not staging.is_dir():
        return []
    events.mkdir(parents=True, exist_ok=True)
    moved = []
    for part in sorted(staging.glob("*.jsonl.part")):
        data = part.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]  # a torn last line was never acknowledged
        if len(whole) != len(data):
            with open(part, "r+b") as fh:
                fh.truncate(len(whole))
                os.fsync(fh.fileno())
        if not whole:
            part.unlink()
            continue
        target = events / part.name.removesuffix(".part").replace("collector-", "collector-recovered-", 1)
        os.replace(part, target)
        moved.append(target)
    if moved:
        _fsync_dir(events)
        _fsync_dir(staging)
    return moved


@dataclass
class SinkStats:
    fsyncs: int = 0
    bytes: int = 0
    files: int = 0
    fsync_seconds: list[float] = field(default_factory=list)  # drained by the metrics


class FileSink:
    def __init__(self, landing: Path, roll_seconds: float, roll_bytes: int):
        self.staging, self.events = staging_dir(landing), landing / "events"
        self.roll_seconds, self.roll_bytes = roll_seconds, roll_bytes
        self.stats = SinkStats()
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._fh = None
        self._path: Path | None = None
        self._opened = 0.0
        self._size = 0
        self._seq = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        self.events.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._flush, b"")
        self._roll()

    async def write(self, lines: list[bytes], keys: list[bytes | None] | None = None) -> None:
        """Return once ``lines`` (JSON, no newline) are on disk (written and fsync'd); ``keys`` unused."""
        if self._task is None or self._task.done():
            raise RuntimeError("the landing file writer is not running")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((b"".join(line + b"\n" for line in lines), future))
        self._wake.set()
        await future

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.roll_seconds / 2)
            self._wake.clear()
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._flush, b"".join(d for d, _ in batch))
            except Exception as exc:  # the requests get a 503; nothing was acknowledged
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    def _flush(self, data: bytes) -> None:
        """Append and fsync (runs in a worker thread); roll the file when it is old or big enough."""
        if data:
            if self._fh is None:
                self._seq += 1
                stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
                self._path = self.staging / f"collector-{stamp}-{os.getpid()}-{self._seq:06d}.jsonl.part"
                self._fh = open(self._path, "ab")  # noqa: SIM115 - open across calls until rolled
                self._opened, self._size = time.time(), 0
                _fsync_dir(self.staging)
            t0 = time.perf_counter()
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self.stats.fsync_seconds.append(time.perf_counter() - t0)
            self.stats.fsyncs += 1
            self.stats.bytes += len(data)
            self._size += len(data)
        if self._fh is not None and (
            self._size >= self.roll_bytes or time.time() - self._opened >= self.roll_seconds
        ):
            self._roll()

    def _roll(self) -> None:
        if self._fh is None or self._path is None:
            return
        self._fh.close()
        os.replace(self._path, self.events / self._path.name.removesuffix(".part"))
        _fsync_dir(self.events)
        self._fh, self._path = None, None
        self.stats.files += 1


class KafkaSink:
    """Events as messages on the stream's topic (key: userId, else anonymousId), acks=all, idempotent."""

    def __init__(self, bootstrap_servers: str, topic: str, options: dict[str, str]):
        # the stream's consumer options (kafka.security.protocol, ...) apply to the producer too
        conf = {k.removeprefix("kafka."): v for k, v in options.items()}
        conf |= {
            "bootstrap.servers": bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 2,
        }
        self.topic, self.producer = topic, Producer(conf)
        self.stats = SinkStats()
        self._running = False
        self._poller: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        self._running = True
        self._poller = asyncio.create_task(asyncio.to_thread(self._poll))

    def _poll(self) -> None:
        while self._running:
            self.producer.poll(0.05)  # delivery callbacks run here

    async def close(self) -> None:
        await asyncio.to_thread(self.producer.flush, 30)
        self._running = False
        if self._poller is not None:
            await self._poller

    async def write(self, lines: list[bytes], keys: list[bytes | None] | None = None) -> None:
        """Return once every line is acknowledged by all in-sync replicas; ``keys``: message keys."""
        if not self._running:
            raise RuntimeError("the Kafka producer is not running")
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        remaining, errors, t0 = len(lines), [], time.perf_counter()

        def delivered(err, _msg) -> None:  # on the poll thread
            nonlocal remaining
            if err is not None:
                errors.append(err)
            remaining -= 1
            if remaining == 0:
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        for line, key in zip(lines, keys or [None] * len(lines), strict=True):
            while True:
                try:
                    self.producer.produce(self.topic, line, key, on_delivery=delivered)
                    break
                except BufferError:  # the local queue is full: let deliveries drain
                    await asyncio.sleep(0.005)
                except KafkaException as exc:
                    raise RuntimeError(f"kafka produce failed: {exc}") from exc
        await done
        if errors:
            raise RuntimeError(f"kafka did not acknowledge {len(errors)} message(s): {errors[0]}")
        self.stats.fsync_seconds.append(time.perf_counter() - t0)
        self.stats.fsyncs += 1
        self.stats.bytes += sum(len(x) for x in lines)
