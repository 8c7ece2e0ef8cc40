"""The collector's counters in the Prometheus text exposition format (version 0.0.4).

Written by hand rather than with prometheus_client: a handful of counters and one histogram, per worker
process (label ``pid``), with no shared state between uvicorn workers to configure.
"""

from __future__ import annotations

import os
from collections import Counter

from collector.sink import SinkStats

FSYNC_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    def __init__(self, sink: SinkStats):
        self.sink = sink
        self.requests: Counter[tuple[str, int]] = Counter()
        self.events: Counter[str] = Counter()
        self.rejects: Counter[str] = Counter()
        self.bytes_in = 0
        self.fsync_buckets = [0] * len(FSYNC_BUCKETS)
        self.fsync_count = 0
        self.fsync_sum = 0.0

    def request(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, status)] += 1

    def accepted(self, source: str, n: int) -> None:
        self.events[source] += n

    def rejected(self, reason: str) -> None:
        self.rejects[reason] += 1

    def _drain_fsyncs(self) -> None:
        samples, self.sink.fsync_seconds[:] = list(self.sink.fsync_seconds), []
        for s in samples:
            self.fsync_count += 1
            self.fsync_sum += s
            for i, bound in enumerate(FSYNC_BUCKETS):
                if s <= bound:
                    self.fsync_buckets[i] += 1

    def render(self) -> str:
        self._drain_fsyncs()
        pid = f'pid="{os.getpid()}"'
        out = [
            "# HELP converge_collector_requests_total HTTP requests by endpoint and status.",
            "# TYPE converge_collector_requests_total counter",
        ]
        out += [
            f'converge_collector_requests_total{{{pid},endpoint="{e}",status="{s}"}} {n}'
            for (e, s), n in sorted(self.requests.items())
        ]
        out += [
            "# HELP converge_collector_events_total Events accepted (written durably) by source.",
            "# TYPE converge_collector_events_total counter",
        ]
        out += [
            f'converge_collector_events_total{{{pid},source="{k}"}} {n}'
            for k, n in sorted(self.events.items())
        ]
        out += [
            "# HELP converge_collector_rejects_total Rejected requests and batch events by reason.",
            "# TYPE converge_collector_rejects_total counter",
        ]
        out += [
            f'converge_collector_rejects_total{{{pid},reason="{k}"}} {n}'
            for k, n in sorted(self.rejects.items())
        ]
        out += [
            "# HELP converge_collector_bytes_total Request body bytes received (as sent, before gunzip).",
            "# TYPE converge_collector_bytes_total counter",
            f"converge_collector_bytes_total{{{pid}}} {self.bytes_in}",
            "# HELP converge_collector_landing_files_total Landing files renamed into the stream's folder.",
            "# TYPE converge_collector_landing_files_total counter",
            f"converge_collector_landing_files_total{{{pid}}} {self.sink.files}",
            "# HELP converge_collector_fsync_seconds Latency of one group commit (write + fsync).",
            "# TYPE converge_collector_fsync_seconds histogram",
        ]
        for bound, n in zip(FSYNC_BUCKETS, self.fsync_buckets, strict=True):
            out.append(f'converge_collector_fsync_seconds_bucket{{{pid},le="{bound}"}} {n}')
        out += [
            f'converge_collector_fsync_seconds_bucket{{{pid},le="+Inf"}} {self.fsync_count}',
            f"converge_collector_fsync_seconds_sum{{{pid}}} {self.fsync_sum:.6f}",
            f"converge_collector_fsync_seconds_count{{{pid}}} {self.fsync_count}",
        ]
        return "\n".join(out) + "\n"
