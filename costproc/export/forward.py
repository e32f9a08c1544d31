"""Forward every received request downstream, unchanged, plus one cost span per finished job.

    Intake.offer(body) ----------------------------------------+
    job_closed -> cost span -> batch (512 spans or 1 s) --------+-> bounded queue -> senders
      -> OTLP export (gRPC or HTTP) -> sent
                                     | retryable: jittered backoff, until max_elapsed_time
                                     | else, or past the deadline: dropped, counted, warned

The queue holds `queue_size` requests. Intake asks `has_room()` before it accepts a
request, so a full queue refuses upstream with a retryable status (the client retries)
instead of dropping. The last tenth of the queue is kept for cost-span batches, which
have nobody to refuse. What is given up later (the retry deadline passed, a
non-retryable answer, shutdown) is counted in `costproc_forward_dropped_total{reason}`,
in requests, and logged rate-limited with advice.

Cost spans go into the job's own trace, as children of its job root. They carry no job
ID and have a parent, so were they ever fed back into costproc (a pipeline that loops)
they would join their job as late spans. They are sent on a resource with
`service.name: costproc` under the instrumentation scope `costproc`; a pipeline whose
output can reach costproc again must drop that scope on the way (for example a
collector filter processor on `instrumentation_scope.name == "costproc"`). Their
attribute names (`costproc.cost.*`, `costproc.usage.*`) differ from the usage attributes
costproc reads, so they never count as measured usage.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import logging
import random
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
import grpc
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from prometheus_client import CollectorRegistry, Counter, Gauge

from costproc import __version__
from costproc.config.model import ForwardConfig, RetryConfig
from costproc.errors import StartupError
from costproc.model import AttemptResult, Cost, JobResult, Labels
from costproc.security import client_ssl_context, pem

log = logging.getLogger(__name__)

SCOPE = "costproc"  # instrumentation scope and service.name of cost spans
COST_SPAN_NAME = "costproc.job.cost"
MAX_BATCH = 512  # cost spans per request, as the SDKs batch
COST_FLUSH_INTERVAL = 1.0  # seconds a cost span waits at most for its batch to fill
SENDERS = 4  # requests in flight at once; each retries on its own
EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
DROP_REASONS = ("retry_deadline", "non_retryable", "shutdown", "queue_full")
WARN_INTERVAL = 10.0  # seconds between two warnings of one kind
_DRAIN_POLL = 0.01
_GZIP_LEVEL = 6  # zlib's default; 9 costs several times the CPU for a few percent
_SAMPLED = 0x01
_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
_RETRYABLE_GRPC = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_ADVICE = {
    "retry_deadline": "the downstream kept failing for longer than "
    "exporters.forward.retry_on_failure.max_elapsed_time; check it, or raise that",
    "non_retryable": "the downstream refused the request for good; check "
    "exporters.forward endpoint, headers and the downstream's logs",
    "shutdown": "costproc stopped before the queue drained; check the downstream",
    "queue_full": "cost spans outpaced the downstream; raise exporters.forward.queue_size",
}


@dataclass(frozen=True, slots=True)
class Result:
    """What one export attempt came to."""

    ok: bool
    retryable: bool = False
    retry_after: float | None = None  # the server's hint (RetryInfo, Retry-After), seconds
    rejected_spans: int = 0  # OTLP partial success
    detail: str = ""


class Transport(Protocol):
    """Sends one OTLP request body downstream; called from the event loop."""

    async def open(self) -> None:
        """Set up the channel or session; raises OSError when TLS material is unreadable."""

    async def send(self, body: bytes) -> Result:
        """One export attempt; network and protocol failures come back as a Result."""

    async def close(self) -> None:
        """Release the channel or session."""


class GrpcTransport:
    """OTLP/gRPC export of raw bytes through a generic unary call."""

    def __init__(self, config: ForwardConfig):
        self.config = config
        self._channel: Any = None
        self._export: Any = None

    async def open(self) -> None:
        """Open the channel (TLS unless `tls.insecure`); it connects on first use."""
        cfg = self.config
        compression = grpc.Compression.Gzip if cfg.compression == "gzip" else None
        # gRPC's own reconnect backoff grows to 120 s; held to ours, a downstream that
        # comes back is reached by the next retry rather than minutes later.
        options = [
            ("grpc.initial_reconnect_backoff_ms", max(1, int(cfg.retry.initial_interval * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(1, int(cfg.retry.max_interval * 1000))),
        ]
        if cfg.tls.insecure:
            self._channel = grpc.aio.insecure_channel(cfg.endpoint, options, compression)
        else:
            credentials = grpc.ssl_channel_credentials(
                pem(cfg.tls.ca_file), pem(cfg.tls.key_file), pem(cfg.tls.cert_file)
            )
            self._channel = grpc.aio.secure_channel(cfg.endpoint, credentials, options, compression)
        # No serializers: the body goes out as the bytes it came in as.
        self._export = self._channel.unary_unary(EXPORT_METHOD)

    async def send(self, body: bytes) -> Result:
        """Export once with the configured per-attempt timeout and headers as metadata."""
        try:
            response = await self._export(
                body, timeout=self.config.timeout, metadata=self.config.headers
            )
        except grpc.aio.AioRpcError as exc:
            return grpc_failure(exc.code(), exc.details(), exc.trailing_metadata())
        rejected, message = partial_success(response)
        return Result(True, rejected_spans=rejected, detail=message)

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close()


def grpc_failure(code: grpc.StatusCode, details: str | None, trailers: Any) -> Result:
    """Classify a failed gRPC export as the OTLP specification says."""
    delay = retry_info_delay(trailers)
    retryable = code in _RETRYABLE_GRPC or (
        # Without RetryInfo the server says "do not retry": its quota will not come back.
        code == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None
    )
    return Result(False, retryable, delay, detail=f"{code.name}: {details or ''}")


def retry_info_delay(trailers: Any) -> float | None:
    """The RetryInfo delay in a status's trailing metadata, in seconds, if any."""
    for key, value in trailers or ():
        try:
            if key == "google.rpc.retryinfo-bin":
                return _seconds(error_details_pb2.RetryInfo.FromString(value))
            if key == "grpc-status-details-bin":
                for detail in status_pb2.Status.FromString(value).details:
                    if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                        info = error_details_pb2.RetryInfo()
                        detail.Unpack(info)
                        return _seconds(info)
        except (ProtobufDecodeError, TypeError):
            continue
    return None


def _seconds(info: Any) -> float:
    return max(0.0, float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9))


def partial_success(response: bytes) -> tuple[int, str]:
    """Rejected span count and message of an ExportTraceServiceResponse body."""
    try:
        parsed = ExportTraceServiceResponse.FromString(response)
    except ProtobufDecodeError:
        return 0, ""
    return int(parsed.partial_success.rejected_spans), str(parsed.partial_success.error_message)


class HttpTransport:
    """OTLP/HTTP protobuf export through one aiohttp session."""

    def __init__(self, config: ForwardConfig):
        self.config = config
        self.url = traces_url(config.endpoint)
        self._gzip = config.compression == "gzip"
        # The body's type and encoding are ours to say (configured header names are lowercase).
        self._headers = {
            k: v for k, v in config.headers if k not in ("content-type", "content-encoding")
        }
        self._headers["Content-Type"] = "application/x-protobuf"
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Open the session; https uses `tls` (CA, client certificate) when not insecure."""
        context = client_ssl_context(self.config.tls) if self.url.startswith("https:") else None
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context if context is not None else True),
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
        )

    async def send(self, body: bytes) -> Result:
        """POST once; 429, 502, 503, 504 and connection failures are retryable."""
        assert self._session is not None, "open() first"
        # zlib releases the GIL: compressing off the loop keeps intake responsive.
        data = await asyncio.to_thread(gzip.compress, body, _GZIP_LEVEL) if self._gzip else body
        try:
            async with self._session.post(self.url, data=data, headers=self._headers) as response:
                payload = await response.read()
                retry_after = response.headers.get("Retry-After")
                protobuf = response.content_type == "application/x-protobuf"
                status = response.status
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            return Result(False, True, detail=f"{type(exc).__name__}: {exc}")
        except aiohttp.ClientError as exc:
            return Result(False, False, detail=f"{type(exc).__name__}: {exc}")
        if 200 <= status < 300:
            rejected, message = partial_success(payload) if protobuf else (0, "")
            return Result(True, rejected_spans=rejected, detail=message)
        text = payload[:200].decode("utf-8", "replace")
        return Result(
            False,
            status in _RETRYABLE_HTTP,
            retry_after_seconds(retry_after),
            detail=f"HTTP {status}: {text}",
        )

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for an endpoint, with `/v1/traces` appended once."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A `Retry-After` header (seconds or an HTTP date) in seconds from now, or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def backoff(retry: RetryConfig, retries: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max_interval, initial_interval x 2^retries)]."""
    ceiling = min(retry.max_interval, retry.initial_interval * 2.0 ** min(retries, 64))
    return rng.uniform(0.0, ceiling)


def cost_span(job: JobResult, currency: str, span_id: bytes) -> Span:
    """The `costproc.job.cost` span: a child of the job root in the deciding attempt's trace."""
    return Span(
        trace_id=job.trace_id,
        span_id=span_id,
        parent_span_id=job.root_span_id,
        name=COST_SPAN_NAME,
        kind=Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=job.start_ns,
        end_time_unix_nano=job.end_ns,
        attributes=[KeyValue(key=k, value=_any(v)) for k, v in cost_attributes(job, currency)],
        flags=_SAMPLED,
    )


def cost_attributes(job: JobResult, currency: str) -> list[tuple[str, str | int | float]]:
    """The cost span's attributes: job, outcome, cost by component, usage, price table."""
    cost = job.cost
    components = [
        # A component called "total" would repeat the key of the total; the total wins.
        (f"costproc.cost.{name}", float(usd))
        for name, usd in sorted(cost.by_component.items())
        if name != "total"
    ]
    return [
        ("costproc.job.id", job.job_id),
        ("costproc.job.type", job.labels.job_type),
        ("costproc.tenant", job.labels.tenant),
        ("costproc.job.outcome", job.outcome),
        ("costproc.job.attempts", job.attempts),
        # float(): an empty sum is int 0, and each attribute should keep one type.
        ("costproc.cost.total", float(cost.total)),
        *components,
        ("costproc.usage.cpu_seconds", float(cost.cpu_seconds)),
        ("costproc.usage.memory_gb_seconds", float(cost.memory_gb_seconds)),
        ("costproc.usage.gpu_seconds", float(cost.gpu_seconds)),
        ("costproc.usage.egress_bytes", float(cost.egress_bytes)),
        ("costproc.price_table.version", job.table_version),
        ("costproc.currency", currency),
    ]


def _any(value: str | int | float) -> AnyValue:
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    return AnyValue(double_value=value)


def cost_request(spans: list[Span]) -> bytes:
    """One ExportTraceServiceRequest body holding cost spans, under costproc's own resource."""
    service = KeyValue(key="service.name", value=AnyValue(string_value=SCOPE))
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[service]),
                scope_spans=[
                    ScopeSpans(
                        scope=InstrumentationScope(name=SCOPE, version=__version__), spans=spans
                    )
                ],
            )
        ]
    )
    return bytes(request.SerializeToString())


class _Warner:
    """Logs a warning of each kind at most once per WARN_INTERVAL, with how many were held."""

    def __init__(self) -> None:
        self._next: dict[str, float] = {}
        self._held: Tally[str] = Tally()

    def warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next.get(kind, 0.0):
            self._held[kind] += 1
            return
        self._next[kind] = now + WARN_INTERVAL
        held = self._held.pop(kind, 0)
        suffix = f" ({held} similar warnings held back)" if held else ""
        log.warning(message + suffix, *args)


class _Metrics:
    """The forwarder's self-metrics."""

    def __init__(self, reg: CollectorRegistry, capacity: int, length: Callable[[], float]):
        requests = Counter(
            "costproc_forward_requests_total",
            "Export attempts downstream, by result: sent, or failed (retried or not).",
            ("result",),
            registry=reg,
        )
        self.sent, self.failed = requests.labels("sent"), requests.labels("failed")
        self.retries = Counter(
            "costproc_forward_retries_total", "Failed export attempts retried.", registry=reg
        )
        dropped = Counter(
            "costproc_forward_dropped_total",
            "Requests given up on, by reason: retry_deadline, non_retryable, shutdown, queue_full.",
            ("reason",),
            registry=reg,
        )
        # Bound up front so a healthy forwarder shows zeros, not missing series.
        self.dropped = {reason: dropped.labels(reason) for reason in DROP_REASONS}
        self.rejected = Counter(
            "costproc_forward_spans_rejected_total",
            "Spans the downstream rejected in an accepted request (OTLP partial success).",
            registry=reg,
        )
        self.cost_spans = Counter(
            "costproc_cost_spans_total", "Cost spans made, one per finished job.", registry=reg
        )
        Gauge(
            "costproc_forward_queue_length", "Requests waiting to be sent.", registry=reg
        ).set_function(length)
        Gauge(
            "costproc_forward_queue_capacity", "Requests the forward queue holds.", registry=reg
        ).set(capacity)


@dataclass(eq=False, slots=True)
class _Entry:
    """One queued request body; compared by identity."""

    body: bytes
    what: str  # what it holds, for warnings


class Forwarder:
    """The `RawForwarder` and `CostSink` that passes everything on to a downstream OTLP endpoint.

    Everything runs on the event loop; `has_room`, `offer` and the CostSink methods
    never block or await.
    """

    def __init__(
        self,
        config: ForwardConfig,
        registry: CollectorRegistry,
        currency: str,
        rng: random.Random | None = None,
    ):
        self.config = config
        self.currency = currency
        self._rng = rng if rng is not None else random.Random()
        self._transport: Transport = (
            GrpcTransport(config) if config.protocol == "grpc" else HttpTransport(config)
        )
        self._queue: deque[_Entry] = deque()
        self._inflight: set[_Entry] = set()
        # Received requests stop here; the rest of the queue is for cost-span batches.
        reserve = config.queue_size // 10 if config.cost_spans else 0
        self._intake_limit = config.queue_size - reserve
        self._batch: list[Span] = []
        # A due batch found the queue full: it takes the next free slot, before intake.
        self._batch_waiting = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._draining = False  # stop() has begun: the last batch goes out over capacity
        self._stopped = False
        self._warner = _Warner()
        self._m = _Metrics(registry, config.queue_size, lambda: len(self._queue))

    # -- RawForwarder ----------------------------------------------------------

    def has_room(self) -> bool:
        """True while the queue can take another received request."""
        return len(self._queue) < self._intake_limit and not self._batch_waiting

    def offer(self, body: bytes) -> None:
        """Queue a received request body as it is; call only after `has_room()`."""
        self._enqueue(_Entry(body, "request"))

    # -- CostSink --------------------------------------------------------------

    def attempt_closed(self, attempt: AttemptResult) -> None:
        """No-op: cost spans are made per finished job."""

    def job_closed(self, job: JobResult) -> None:
        """Batch one `costproc.job.cost` span for the job (when `cost_spans` is on)."""
        if not self.config.cost_spans:
            return
        span_id = self._rng.randrange(1, 1 << 64).to_bytes(8, "big")
        if len(self._batch) >= MAX_BATCH:  # still waiting for room and full: give it up
            what = f"request of {len(self._batch)} cost spans"
            self._give_up("queue_full", 1, what, "the forward queue is full")
            self._batch, self._batch_waiting = [], False
        self._batch.append(cost_span(job, self.currency, span_id))
        self._m.cost_spans.inc()
        if len(self._batch) >= MAX_BATCH or self._draining:
            self._flush_batch()

    def late_spans(self, labels: Labels, cost: Cost, count: int) -> None:
        """No-op: late spans do not change a finished job, so its cost span stands."""

    def jobs_evicted(self, reason: str, count: int) -> None:
        """No-op: evicted jobs still finish, and get their cost span then."""

    def jobs_inflight(self, count: int) -> None:
        """No-op: nothing to forward."""

    # -- running ---------------------------------------------------------------

    async def start(self) -> None:
        """Open the downstream channel and start the senders and the batch flusher."""
        try:
            await self._transport.open()
        except OSError as exc:
            raise StartupError(f"cannot set up exporters.forward: {exc}") from exc
        self._tasks = [asyncio.create_task(self._send_forever()) for _ in range(SENDERS)]
        self._tasks.append(asyncio.create_task(self._flush_forever()))
        log.info("forwarding over %s to %s", self.config.protocol, self.config.endpoint)

    async def stop(self, timeout: float) -> None:
        """Send what is queued within `timeout`; count the rest as dropped (`shutdown`)."""
        if self._draining:
            return
        self._draining = True
        self._flush_batch()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._queue or self._inflight) and self._tasks and loop.time() < deadline:
            await asyncio.sleep(_DRAIN_POLL)
        self._stopped = True
        left = len(self._queue) + len(self._inflight)
        self._queue.clear()
        self._inflight.clear()
        if left:
            self._give_up("shutdown", left, "requests", f"not sent within {timeout:g}s")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._transport.close()

    def _enqueue(self, entry: _Entry) -> None:
        if self._stopped:
            self._give_up("shutdown", 1, entry.what, "the forwarder is stopped")
            return
        self._queue.append(entry)
        self._wake.set()

    def _flush_batch(self) -> None:
        if not self._batch:
            return
        if len(self._queue) >= self.config.queue_size and not self._draining:
            self._batch_waiting = True
            return
        spans, self._batch, self._batch_waiting = self._batch, [], False
        self._enqueue(_Entry(cost_request(spans), f"request of {len(spans)} cost spans"))

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(COST_FLUSH_INTERVAL)
            self._flush_batch()

    async def _send_forever(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            entry = self._queue.popleft()
            if self._batch_waiting:
                self._flush_batch()
            self._inflight.add(entry)
            await self._deliver(entry)
            self._inflight.discard(entry)

    async def _deliver(self, entry: _Entry) -> None:
        """Export one request, retrying retryable failures until the retry deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.retry.max_elapsed_time
        retries = 0
        while True:
            result = await self._attempt(entry.body)
            if result.ok:
                self._delivered(result)
                return
            self._m.failed.inc()
            if not result.retryable:
                self._give_up("non_retryable", 1, entry.what, result.detail)
                return
            delay = result.retry_after
            if delay is None:
                delay = backoff(self.config.retry, retries, self._rng)
            if loop.time() + delay > deadline:
                self._give_up("retry_deadline", 1, entry.what, result.detail)
                return
            self._m.retries.inc()
            retries += 1
            await asyncio.sleep(delay)

    async def _attempt(self, body: bytes) -> Result:
        try:
            return await self._transport.send(body)
        except Exception as exc:  # a sender that dies would stop forwarding for good
            log.exception("forward: unexpected error exporting to %s", self.config.endpoint)
            return Result(False, False, detail=f"unexpected {type(exc).__name__}: {exc}")

    def _delivered(self, result: Result) -> None:
        self._m.sent.inc()
        if result.rejected_spans > 0:
            self._m.rejected.inc(result.rejected_spans)
            self._warner.warn(
                "rejected",
                "forward: %s rejected %d spans of a request: %s",
                self.config.endpoint,
                result.rejected_spans,
                result.detail,
            )

    def _give_up(self, reason: str, count: int, what: str, detail: str) -> None:
        self._m.dropped[reason].inc(count)
        self._warner.warn(
            reason,
            "forward: dropped %d %s for %s (%s: %s); %s",
            count,
            what,
            self.config.endpoint,
            reason,
            detail,
            _ADVICE[reason],
        )
