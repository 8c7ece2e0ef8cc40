"""A real single-node Apache Kafka 4.1 broker (KRaft: broker and controller in one JVM) on 127.0.0.1.

The jars are the official ones from Maven Central (tests/kafka/broker.pom.xml), resolved once into the
project's cache; the broker runs with the machine's Java. No mocks, no containers.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from pathlib import Path

from pipelines.maven import resolve_pom
from tests.net import free_port

POM = Path(__file__).with_name("broker.pom.xml")


class KafkaBroker:
    def __init__(self, workdir: Path, cache: Path, partitions: int = 2):
        self.workdir, self.partitions = workdir, partitions
        self.classpath = ":".join(resolve_pom(POM, cache))
        self.port, self.controller_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self, main: str, *args: str, **kw) -> subprocess.Popen:
        cmd = ["java", "-Xms256m", "-Xmx512m", "-cp", self.classpath, main, *args]
        return subprocess.Popen(cmd, cwd=self.workdir, **kw)

    def start(self, timeout_s: float = 90) -> KafkaBroker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        props = self.workdir / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={self.workdir / 'data'}",
                    f"num.partitions={self.partitions}",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                ]
            )
            + "\n"
        )
        cluster_id = _kraft_cluster_id()
        fmt = self._java(
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(props),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        out, _ = fmt.communicate(timeout=120)
        if fmt.returncode != 0:
            raise RuntimeError(f"kafka storage format failed:\n{out}")
        self.log = open(self.workdir / "broker.log", "w")  # noqa: SIM115 - open while the broker runs
        self.proc = self._java("kafka.Kafka", str(props), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"kafka broker exited: {(self.workdir / 'broker.log').read_text()[-3000:]}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"kafka broker did not listen on {self.port} within {timeout_s}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()


def _kraft_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what StorageTool makes)."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # an id starting with "-" reads as an option to StorageTool's parser (1 start in 64 failed so)
        if not cluster_id.startswith("-"):
            return cluster_id


def produce(
    spark, bootstrap_servers: str, topic: str, values: list[str | None], keys: list[str] | None = None
):
    """Send messages with Spark's Kafka sink (the same connector the stream reads with)."""
    keys = keys or [None] * len(values)
    df = spark.createDataFrame(list(zip(keys, values, strict=True)), "key string, value string")
    df.write.format("kafka").option("kafka.bootstrap.servers", bootstrap_servers).option(
        "topic", topic
    ).save()
