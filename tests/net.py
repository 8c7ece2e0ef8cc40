"""Loopback helpers for tests and benchmarks that start real servers (Kafka, the collector)."""

import http.client
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(port: int, path: str = "/health") -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False


def listening(port: int) -> bool:
    """Something accepts TCP connections on 127.0.0.1:``port`` (a server that speaks no HTTP)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def wait_healthy(
    port: int,
    proc: subprocess.Popen,
    timeout_s: float = 60,
    log: Path | None = None,
    probe: Callable[[int], bool] = healthy,
) -> None:
    """Until ``probe(port)`` (default: GET /health answers 200); a clear error (with the end of ``log``)
    if ``proc`` exits or time runs out."""
    deadline = time.time() + timeout_s
    while not probe(port):
        tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}) while starting:\n{tail}")
        if time.time() > deadline:
            raise RuntimeError(f"server not healthy on port {port} within {timeout_s}s:\n{tail}")
        time.sleep(0.2)


class Receiver:
    """A webhook endpoint on 127.0.0.1 that records every POST and answers as told."""

    def __init__(self):
        self.posts: list[dict] = []
        self.answers: list[int] = []  # status codes to answer next, in order (then 200)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = receiver.answers.pop(0) if receiver.answers else 200
                receiver.posts.append(
                    {"key": self.headers["Idempotency-Key"], "status": status, "body": body}
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(
                    json.dumps({"status": status, "error": "bad field" if status == 400 else None}).encode()
                )

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accepted(self) -> list[dict]:
        return [p for p in self.posts if p["status"] == 200]

    def close(self):
        self.server.shutdown()
