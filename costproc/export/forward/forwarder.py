"""The forwarder: a bounded queue of request bodies, drained by senders that retry.

    offer(body) / cost-span batch -> bounded queue -> senders -> Transport.send -> sent
                                     | retryable: jittered backoff, until max_elapsed_time
                                     | else, or past the deadline: dropped, counted, warned

The queue holds `queue_size` requests. Intake asks `has_room()` before it accepts a
request, so a full queue refuses upstream with a retryable status (the client retries)
instead of dropping. The last tenth of the queue is kept for cost-span batches, which
have nobody to refuse. What is given up later (the retry deadline passed, a
non-retryable answer, shutdown) is counted in `costproc_forward_dropped_total{reason}`,
in requests, and logged rate-limited with advice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import CollectorRegistry, Counter, Gauge

from costproc.config.model import ForwardConfig, RetryConfig
from costproc.errors import StartupError
from costproc.export.forward.cost_spans import (
    COST_FLUSH_INTERVAL,
    MAX_BATCH,
    cost_request,
    cost_span,
)
from costproc.export.forward.transport import Result, Transport, transport_for
from costproc.model import AttemptResult, Cost, JobResult, Labels

# Named for the package, as it was before the package was split: log lines keep their source.
log = logging.getLogger(__package__)

SENDERS = 4  # requests in flight at once; each retries on its own
DROP_REASONS = ("retry_deadline", "non_retryable", "shutdown", "queue_full")
WARN_INTERVAL = 10.0  # seconds between two warnings of one kind
_DRAIN_POLL = 0.01
_ADVICE = {
    "retry_deadline": "the downstream kept failing for longer than "
    "exporters.forward.retry_on_failure.max_elapsed_time; check it, or raise that",
    "non_retryable": "the downstream refused the request for good; check "
    "exporters.forward endpoint, headers and the downstream's logs",
    "shutdown": "costproc stopped before the queue drained; check the downstream",
    "queue_full": "cost spans outpaced the downstream; raise exporters.forward.queue_size",
}


def backoff(retry: RetryConfig, retries: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max_interval, initial_interval x 2^retries)]."""
    ceiling = min(retry.max_interval, retry.initial_interval * 2.0 ** min(retries, 64))
    return rng.uniform(0.0, ceiling)


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
        self._transport: Transport = transport_for(config)
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
