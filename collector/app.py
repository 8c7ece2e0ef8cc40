"""Segment's HTTP tracking API (https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/)
as an ASGI app: SDKs change only their host.

POST /v1/{track,identify,page,screen,group,alias,batch,import} and analytics.js's short forms /v1/{t,i,p,s,g,a,b};
GET /v1/projects/{writeKey}/settings (analytics.js self-hosted), /health, /metrics (Prometheus text).
A request is answered 200 only after its events are fsync'd (collector/sink.py). Every answer other than
200 carries ``{"code": ..., "message": ...}``. The stream applies the full event rules again (pipelines/
events.py): invalid events inside a batch are written too, marked by nothing but their content, and land in
quarantine.events with the reason and their file and line; the response lists them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import time
import uuid
import zlib
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from collector.metrics import Metrics
from collector.sink import FileSink, KafkaSink
from pipelines.config import CollectorConfig, CollectorSourceConfig, Config

TYPES = {
    "track": "track",
    "t": "track",
    "identify": "identify",
    "i": "identify",
    "page": "page",
    "p": "page",
    "screen": "screen",
    "s": "screen",
    "group": "group",
    "g": "group",
    "alias": "alias",
    "a": "alias",
}
BATCH_PATHS = {"batch", "b", "import"}
log = logging.getLogger("converge.collector")


class Rejected(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"code": self.code, "message": self.message}, status_code=self.status, headers=self.headers
        )


class TokenBucket:
    def __init__(self, rate: float, burst: int):
        self.rate, self.burst, self.tokens, self.at = rate, burst, float(burst), time.monotonic()

    def take(self, n: int) -> float:
        """0 when ``n`` events may pass now, else the seconds until they could."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if n <= self.tokens:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate if n <= self.burst else math.inf


def _encode(event: object) -> bytes:
    """The landed line. UTF-8 as sent; a lone surrogate (valid in JSON text as an escape, not encodable in
    UTF-8) keeps its escape instead."""
    try:
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(event, separators=(",", ":")).encode()


def event_problem(event: object, max_event_bytes: int, size: int) -> tuple[str, str] | None:
    """The first rule an event breaks, as (reason, message): the reasons quarantine.events uses."""
    if not isinstance(event, dict):
        return "not_a_json_object", "an event must be a JSON object"
    if size > max_event_bytes:
        return "event_too_large", f"event is {size} bytes; the limit is {max_event_bytes}"

    def present(key: str) -> bool:
        value = event.get(key)
        return value is not None and str(value).strip() != ""

    kind = event.get("type")
    if kind not in TYPES.values():
        return "invalid_type", f"type must be one of {sorted(set(TYPES.values()))}, got {kind!r}"
    if not present("userId") and not present("anonymousId"):
        return "missing_identity", "userId or anonymousId is required"
    if kind == "track" and not present("event"):
        return "missing_event_name", "track calls need an event name"
    if kind == "alias" and not present("previousId"):
        return "missing_previous_id", "alias calls need a previousId"
    return None


def create_app(cfg: Config) -> Starlette:
    c: CollectorConfig = cfg.collector
    by_key: dict[str, tuple[str, CollectorSourceConfig]] = {
        s.write_key: (name, s) for name, s in c.sources.items()
    }
    buckets = {name: TokenBucket(s.rate_limit_per_s, s.burst) for name, s in c.sources.items()}
    max_event_bytes = cfg.events.max_event_bytes
    sink: FileSink | KafkaSink
    if c.sink == "kafka":
        k = cfg.streaming.kafka
        sink = KafkaSink(k.bootstrap_servers, k.topic, k.options)
    else:
        sink = FileSink(cfg.lakehouse.landing, c.roll_seconds, c.roll_bytes)
    metrics = Metrics(sink.stats)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > c.max_body_bytes:
            raise Rejected(413, "body_too_large", f"the body may be at most {c.max_body_bytes} bytes")
        chunks, total = [], 0

        async def collect() -> None:
            nonlocal total
            async for chunk in request.stream():
                total += len(chunk)
                if total > c.max_body_bytes:
                    raise Rejected(413, "body_too_large", f"the body may be at most {c.max_body_bytes} bytes")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(collect(), timeout=c.body_timeout_s)
        except TimeoutError as exc:
            raise Rejected(
                408, "body_timeout", f"the body did not arrive within {c.body_timeout_s} s"
            ) from exc
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "deflate"):
            inflater = zlib.decompressobj(wbits=47)  # gzip or zlib header
            try:
                body = inflater.decompress(body, c.max_body_bytes + 1)
            except zlib.error as exc:
                raise Rejected(400, "bad_encoding", f"the body is not valid {encoding}: {exc}") from exc
            if len(body) > c.max_body_bytes or inflater.unconsumed_tail:
                raise Rejected(413, "body_too_large", f"the body inflates past {c.max_body_bytes} bytes")
        elif encoding not in ("", "identity"):
            raise Rejected(415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported")
        return body

    def authenticate(request: Request, body: dict) -> tuple[str, CollectorSourceConfig]:
        key = None
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                key = base64.b64decode(auth[6:].strip()).decode("utf-8").split(":", 1)[0]
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise Rejected(401, "unauthorized", "malformed Basic authorization") from exc
        key = key or body.get("writeKey")
        if not key or key not in by_key:
            raise Rejected(401, "unauthorized", "a valid write key is required (HTTP Basic or writeKey)")
        name, source = by_key[key]
        if not source.enabled:
            raise Rejected(401, "unauthorized", f"source {name!r} is disabled")
        return name, source

    def stamp(event: dict, name: str, source: CollectorSourceConfig, ip: str | None, received: str) -> None:
        event["receivedAt"] = received
        if not event.get("timestamp"):  # Segment: an event sent without a timestamp happened when received
            event["timestamp"] = received
        if not event.get("messageId"):
            event["messageId"] = f"converge-{uuid.uuid4()}"
        context = event.get("context")
        if not isinstance(context, dict):
            context = {} if context is None else {"original": context}
        if source.stamp_ip and ip and not context.get("ip"):
            context["ip"] = ip
        context["converge"] = {"source": name}
        event["context"] = context
        event.pop("writeKey", None)

    async def handle(request: Request) -> Response:
        kind = request.path_params["kind"]
        try:
            if kind not in TYPES and kind not in BATCH_PATHS:
                raise Rejected(404, "not_found", f"no such endpoint /v1/{kind}")
            body = await read_body(request)
            metrics.bytes_in += len(body)
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise Rejected(400, "invalid_json", f"the body is not valid JSON: {exc}") from exc
            if not isinstance(payload, dict):
                raise Rejected(400, "not_a_json_object", "the body must be a JSON object")
            name, source = authenticate(request, payload)
            received = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            ip = request.client.host if request.client else None
            if kind in BATCH_PATHS:
                if len(body) > c.max_batch_bytes:
                    raise Rejected(
                        413, "batch_too_large", f"a batch may be at most {c.max_batch_bytes} bytes"
                    )
                events = payload.get("batch")
                if not isinstance(events, list):
                    raise Rejected(400, "invalid_batch", "a batch body needs a 'batch' array")
                if len(events) > c.max_batch_events:
                    raise Rejected(
                        413, "batch_too_large", f"a batch may hold at most {c.max_batch_events} events"
                    )
                shared = payload.get("context") if isinstance(payload.get("context"), dict) else None
            else:
                events, shared = [dict(payload, type=TYPES[kind])], None
            wait = buckets[name].take(len(events))
            if wait:
                retry = "60" if math.isinf(wait) else str(max(1, math.ceil(wait)))
                raise Rejected(
                    429, "rate_limited", f"source {name!r} is over its rate limit", {"Retry-After": retry}
                )
            lines, keys, problems = [], [], []
            for i, event in enumerate(events):
                if isinstance(event, dict):
                    if shared and "context" not in event:
                        event["context"] = dict(shared)
                    stamp(event, name, source, ip, received)
                # the size rule measures the line as it lands, as the stream does (pipelines/events.py)
                line = _encode(event)
                problem = event_problem(event, max_event_bytes, len(line))
                if problem and kind not in BATCH_PATHS:
                    raise Rejected(413 if problem[0] == "event_too_large" else 400, *problem)
                if problem:
                    problems.append({"index": i, "code": problem[0], "message": problem[1]})
                    metrics.rejected(problem[0])
                lines.append(line)
                # the Kafka message key: the person, so one person's events keep their order
                who = (event.get("userId") or event.get("anonymousId")) if isinstance(event, dict) else None
                keys.append(str(who).encode() if who is not None else None)
            if lines:
                try:
                    await sink.write(lines, keys)
                except Exception as exc:  # nothing acknowledged: the client retries
                    raise Rejected(503, "unavailable", f"events could not be written durably: {exc}") from exc
            accepted = len(events) - len(problems)
            metrics.accepted(name, accepted)
            metrics.request(kind, 200)
            body_out: dict = {"success": True}
            if kind in BATCH_PATHS:
                body_out |= {"accepted": accepted, "rejected": problems}
            return JSONResponse(body_out)
        except Rejected as rej:
            metrics.request(kind, rej.status)
            if rej.status != 401 and rej.code not in ("rate_limited",):
                metrics.rejected(rej.code)
            return rej.response()
        except ClientDisconnect:
            metrics.request(kind, 499)
            return Response(status_code=400)
        except Exception:  # a bug, not the client's input: logged, answered, and the server keeps serving
            log.exception("unexpected error on /v1/%s", kind)
            metrics.request(kind, 500)
            return Rejected(
                500, "internal_error", "unexpected error; the events were not accepted"
            ).response()

    async def settings(request: Request) -> Response:
        key = request.path_params["write_key"]
        if key not in by_key or not by_key[key][1].enabled:
            return Rejected(404, "not_found", "unknown write key").response()
        host = request.headers.get("host", f"{c.host}:{c.port}")
        return JSONResponse(
            {
                "integrations": {
                    "Segment.io": {"apiKey": key, "apiHost": f"{host}/v1", "protocol": request.url.scheme}
                },
                "plan": {
                    "track": {"__default": {"enabled": True}},
                    "identify": {"__default": {"enabled": True}},
                },
                "edgeFunction": {},
                "analyticsNextEnabled": True,
            }
        )

    async def health(request: Request) -> Response:
        ok = sink.running
        return JSONResponse({"status": "ok" if ok else "failing"}, status_code=200 if ok else 503)

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @asynccontextmanager
    async def lifespan(app):
        await sink.start()
        try:
            yield
        finally:
            await sink.close()

    app = Starlette(
        # analytics.js posts from the website's origin (text/plain, no preflight) and reads the answer;
        # an SDK sending JSON or Basic auth from a page is preflighted: both need CORS
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=c.cors_origins,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Content-Type", "Authorization", "Content-Encoding"],
                max_age=600,
            )
        ],
        routes=[
            Route("/v1/projects/{write_key}/settings", settings, methods=["GET"]),
            Route("/v1/{kind}", handle, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.sink = sink
    return app
