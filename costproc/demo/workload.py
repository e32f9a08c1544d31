"""The demo's synthetic workload: seeded jobs as the OTLP spans an SDK would export.

Workload.batches -> SpanBatch (spans grouped by Instance) -> export_request

Checkout, inference and batch jobs across tenants, with failures and retries in new
traces; spans come in the order they ended and are cut into export batches.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import (
    SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK,
    SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK,
    ResourceSpans,
    ScopeSpans,
    Span,
    Status,
)

EXPORT_INTERVAL = 1.0  # seconds between export rounds, like an SDK's schedule delay
MAX_BATCH_SPANS = 512  # the SDK's default max_export_batch_size

_MS = 1_000_000

AttrValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Instance:
    """One process that emits spans: a service and one of its instances."""

    service: str
    instance_id: str

    def resource(self) -> Resource:
        return Resource(
            attributes=_key_values(
                {"service.name": self.service, "service.instance.id": self.instance_id}
            )
        )


Placed = tuple[Instance, Span]  # a span and the instance that emitted it
SpanBatch = dict[Instance, list[Span]]  # one export request's spans, grouped by resource

_CHECKOUT = [Instance("checkout", f"checkout-{i}") for i in range(3)]
_PAYMENTS = [Instance("payments", f"payments-{i}") for i in range(2)]
_INFERENCE = [Instance("inference", f"inference-{i}") for i in range(2)]
_BATCH = [Instance("batch-worker", "batch-worker-0")]
_SCOPE = InstrumentationScope(name="costproc.demo", version="1")

_JOB_KINDS = ("checkout", "inference", "batch")
_JOB_WEIGHTS = (0.5, 0.3, 0.2)
_TENANTS = ("acme", "globex", "initech", "umbrella")
_TENANT_WEIGHTS = (0.45, 0.3, 0.15, 0.1)
_FAILURE_RATE = 0.07  # per attempt
_RETRY_RATE = 0.6  # of failed attempts, when attempts remain
_MAX_ATTEMPTS = 3
# Seconds from a failed attempt's end to its retry's end: longer than any job lasts, so
# the retry starts after the failure ended.
_RETRY_DELAY = (1.2, 2.5)
_SMS_SHARE = 0.35  # checkouts that text the customer through Twilio
_GPU_MEASURED_SHARE = 0.5  # GPU steps that report costproc.gpu.seconds themselves

_SERVER, _CLIENT = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT
_INTERNAL, _CONSUMER = Span.SPAN_KIND_INTERNAL, Span.SPAN_KIND_CONSUMER
_SAMPLED = 0x01  # W3C trace flags, in the low byte of a span's flags


@dataclass(frozen=True, slots=True)
class _Job:
    """Who a job is: enough to run it again as a retry in a new trace."""

    job_type: str
    job_id: str
    tenant: str
    attempt: int = 1

    def attrs(self) -> dict[str, AttrValue]:
        return {"job.id": self.job_id, "job.type": self.job_type, "tenant": self.tenant}


class _Trace:
    """Builds the spans of one trace, timed in ms from its start until `finish`."""

    def __init__(self, rng: random.Random):
        self._rng = rng
        self._trace_id = rng.randbytes(16)
        self._spans: list[Placed] = []
        self._where: dict[bytes, Instance] = {}

    def start(
        self,
        instance: Instance,
        name: str,
        kind: Span.SpanKind.ValueType,
        parent: Span | None,
        at_ms: float,
        attrs: Mapping[str, AttrValue] | None = None,
    ) -> Span:
        """A span that starts at `at_ms`; `end` it once its children are laid out."""
        flags = _SAMPLED | SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
        if parent is not None and self._where[parent.span_id] != instance:
            flags |= SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
        span = Span(
            trace_id=self._trace_id,
            span_id=self._rng.randbytes(8),
            parent_span_id=parent.span_id if parent is not None else b"",
            name=name,
            kind=kind,
            start_time_unix_nano=round(at_ms * _MS),
            attributes=_key_values(attrs or {}),
            flags=flags,
        )
        self._spans.append((instance, span))
        self._where[span.span_id] = instance
        return span

    def end(self, span: Span, at_ms: float, error: bool = False) -> float:
        """End `span` at `at_ms`, with ERROR status if `error`; returns `at_ms`."""
        span.end_time_unix_nano = round(at_ms * _MS)
        if error:
            span.status.code = Status.STATUS_CODE_ERROR
        return at_ms

    def leaf(
        self,
        instance: Instance,
        name: str,
        kind: Span.SpanKind.ValueType,
        parent: Span,
        at_ms: float,
        duration_ms: float,
        attrs: Mapping[str, AttrValue] | None = None,
    ) -> float:
        """A span without children; returns its end in ms."""
        return self.end(self.start(instance, name, kind, parent, at_ms, attrs), at_ms + duration_ms)

    def finish(self, end_ns: int) -> list[Placed]:
        """Move the trace to end at `end_ns`; its spans in the order they ended."""
        offset = end_ns - max(span.end_time_unix_nano for _, span in self._spans)
        for _, span in self._spans:
            span.start_time_unix_nano += offset
            span.end_time_unix_nano += offset
        return sorted(self._spans, key=_end_time)


class Workload:
    """A seeded synthetic workload: checkout, inference and batch jobs across tenants.

    About 7% of attempts fail (ERROR status, or `job.outcome: failure` on inference) and
    most failed ones are retried a couple of seconds later in a new trace with the same
    `job.id`. The same seed and the same calls give the same spans.
    """

    def __init__(self, seed: int, max_batch_spans: int = MAX_BATCH_SPANS):
        self.max_batch_spans = max_batch_spans
        self.started: Counter[str] = Counter()  # new jobs, by job type
        self.retried: Counter[str] = Counter()  # retry attempts, by job type
        self._rng = random.Random(seed)
        self._retries: list[tuple[int, int, _Job]] = []  # heap of (due ns, seq, job)
        self._seq = 0

    def batches(self, jobs: int, now_ns: int) -> list[SpanBatch]:
        """Run the retries due by `now_ns` and `jobs` new jobs that end in the last round.

        Spans come in the order they ended, as an SDK queues them (children before
        parents), cut into export batches and grouped by resource within each.
        """
        placed = self._due_retries(now_ns)
        for _ in range(jobs):
            placed += self._new_job(now_ns)
        placed.sort(key=_end_time)
        size = self.max_batch_spans
        return [_by_resource(placed[i : i + size]) for i in range(0, len(placed), size)]

    def _new_job(self, now_ns: int) -> list[Placed]:
        kind = self._rng.choices(_JOB_KINDS, _JOB_WEIGHTS)[0]
        if kind == "batch":
            items = [self._job("batch-item", "msg") for _ in range(self._rng.randint(3, 8))]
            return self._batch_trace(items, self._ends_at(now_ns))
        job = self._job(kind, "order" if kind == "checkout" else "req")
        return self._trace(job, self._ends_at(now_ns))

    def _job(self, job_type: str, id_prefix: str) -> _Job:
        self.started[job_type] += 1
        tenant = self._rng.choices(_TENANTS, _TENANT_WEIGHTS)[0]
        return _Job(job_type, f"{id_prefix}-{self._rng.getrandbits(40):010x}", tenant)

    def _due_retries(self, now_ns: int) -> list[Placed]:
        placed: list[Placed] = []
        redelivered: list[_Job] = []
        last_due = now_ns
        while self._retries and self._retries[0][0] <= now_ns:
            due, _, job = heapq.heappop(self._retries)
            self.retried[job.job_type] += 1
            if job.job_type == "batch-item":
                redelivered.append(job)
                last_due = due
            else:
                placed += self._trace(job, due)
        if redelivered:
            placed += self._batch_trace(redelivered, last_due)
        return placed

    def _fails(self, job: _Job, end_ns: int) -> bool:
        """Whether the attempt ending at `end_ns` fails; a failed one is sometimes retried."""
        if self._rng.random() >= _FAILURE_RATE:
            return False
        if job.attempt < _MAX_ATTEMPTS and self._rng.random() < _RETRY_RATE:
            due = end_ns + round(self._rng.uniform(*_RETRY_DELAY) * 1e9)
            heapq.heappush(self._retries, (due, self._seq, replace(job, attempt=job.attempt + 1)))
            self._seq += 1
        return True

    def _trace(self, job: _Job, end_ns: int) -> list[Placed]:
        trace = _Trace(self._rng)
        build = self._checkout if job.job_type == "checkout" else self._inference
        build(trace, job, self._fails(job, end_ns))
        return trace.finish(end_ns)

    def _batch_trace(self, items: list[_Job], end_ns: int) -> list[Placed]:
        self.started["batch"] += 1
        trace = _Trace(self._rng)
        self._batch(trace, items, end_ns)
        return trace.finish(end_ns)

    def _ends_at(self, now_ns: int) -> int:
        """When a new job ends: some time in the export round before `now_ns`."""
        return now_ns - self._rng.randrange(round(EXPORT_INTERVAL * 1e9))

    # Each builder lays out one job's spans; times are ms from the trace's start.

    def _checkout(self, t: _Trace, job: _Job, failed: bool) -> None:
        """HTTP checkout: validate, reserve stock, charge via payments, maybe text the buyer."""
        rng = self._rng
        shop = rng.choice(_CHECKOUT)
        attrs: dict[str, AttrValue] = {
            **job.attrs(),
            "http.request.method": "POST",
            "http.route": "/api/checkout",
            "http.response.status_code": 402 if failed else 200,
            "http.response.body.size": rng.randint(2_000, 40_000),
        }
        root = t.start(shop, "POST /api/checkout", _SERVER, None, 0.0, attrs)
        at = t.leaf(shop, "validate cart", _INTERNAL, root, 1.0, rng.uniform(4, 20))
        reserve = t.start(shop, "reserve stock", _INTERNAL, root, at + 1)
        db: dict[str, AttrValue] = {
            "db.system": "postgresql",
            "db.operation.name": "UPDATE",
            "server.address": "inventory-db.internal",
        }
        at = t.leaf(shop, "UPDATE stock", _CLIENT, reserve, at + 2, rng.uniform(3, 15), db)
        at = t.end(reserve, at + 1)
        at = self._charge(t, shop, root, at + 1, failed)
        if not failed and rng.random() < _SMS_SHARE:
            sms: dict[str, AttrValue] = {
                "http.request.method": "POST",
                "server.address": "api.twilio.com",
                "url.full": "https://api.twilio.com/2010-04-01/Accounts/AC0/Messages.json",
                "http.request.body.size": rng.randint(200, 400),
            }
            at = t.leaf(shop, "POST", _CLIENT, root, at + 1, rng.uniform(80, 250), sms)
        t.end(root, at + rng.uniform(1, 4), error=failed)

    def _charge(self, t: _Trace, shop: Instance, parent: Span, at: float, declined: bool) -> float:
        """The payments call: a CLIENT span on checkout, its SERVER span on payments."""
        rng = self._rng
        pay = rng.choice(_PAYMENTS)
        request: dict[str, AttrValue] = {
            "http.request.method": "POST",
            "server.address": "payments.payments.svc.cluster.local",
            "http.request.body.size": rng.randint(600, 2_000),
        }
        response: dict[str, AttrValue] = {
            "http.request.method": "POST",
            "http.route": "/v1/charges",
            "http.response.status_code": 402 if declined else 201,
            "http.response.body.size": rng.randint(300, 900),
            "costproc.egress.class": "same_zone",
        }
        call = t.start(shop, "POST", _CLIENT, parent, at, request)
        served = t.start(pay, "POST /v1/charges", _SERVER, call, at + 1, response)
        scored = t.leaf(pay, "score fraud", _INTERNAL, served, at + 2, rng.uniform(10, 60))
        answered = t.end(served, scored + rng.uniform(5, 20), error=declined)
        return t.end(call, answered + rng.uniform(0.5, 2))

    def _inference(self, t: _Trace, job: _Job, failed: bool) -> None:
        """An LLM answer: embed on the local GPU, call gpt-4o, rerank on the GPU."""
        rng = self._rng
        node = rng.choice(_INFERENCE)
        model = "gpt-4o" if rng.random() < 0.8 else "gpt-4o-mini"
        tokens_in, tokens_out = rng.randint(300, 4_000), rng.randint(40, 900)
        attrs: dict[str, AttrValue] = {
            **job.attrs(),
            "http.request.method": "POST",
            "http.route": "/v1/answer",
            "http.response.status_code": 200,
            "http.response.body.size": tokens_out * 4 + rng.randint(200, 800),
        }
        if failed:  # the model answered, but the guardrail refused the answer
            attrs["job.outcome"] = "failure"
        chat: dict[str, AttrValue] = {
            "server.address": "api.openai.com",
            "http.request.body.size": tokens_in * 4,
            "gen_ai.system": "openai",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": tokens_in,
            "gen_ai.usage.output_tokens": tokens_out,
        }
        root = t.start(node, "POST /v1/answer", _SERVER, None, 0.0, attrs)
        at = self._gpu_step(t, node, root, "embed query", 1.0, rng.uniform(8, 30))
        at = t.leaf(node, f"chat {model}", _CLIENT, root, at + 1, rng.uniform(150, 900), chat)
        at = self._gpu_step(t, node, root, "rerank passages", at + 1, rng.uniform(10, 40))
        t.end(root, at + rng.uniform(1, 5))

    def _gpu_step(
        self, t: _Trace, node: Instance, parent: Span, name: str, at: float, duration: float
    ) -> float:
        """A local GPU step; half of them measure their own GPU time."""
        attrs: dict[str, AttrValue] = {}
        if self._rng.random() < _GPU_MEASURED_SHARE:
            attrs["costproc.gpu.seconds"] = round(duration / 1e3 * self._rng.uniform(0.5, 0.95), 6)
        return t.leaf(node, name, _INTERNAL, parent, at, duration, attrs)

    def _batch(self, t: _Trace, items: list[_Job], end_ns: int) -> None:
        """A queue consumer (the trace's own job) processing one message job per item."""
        rng = self._rng
        worker = rng.choice(_BATCH)
        attrs: dict[str, AttrValue] = {
            "job.type": "batch",
            "tenant": "platform",
            "messaging.system": "aws_sqs",
            "messaging.operation.type": "process",
            "messaging.destination.name": "orders-export",
            "messaging.batch.message_count": len(items),
        }
        root = t.start(worker, "orders-export process", _CONSUMER, None, 0.0, attrs)
        at = rng.uniform(5, 20)  # poll and decode the batch
        for item in items:
            at = self._batch_item(t, worker, root, item, at, end_ns) + rng.uniform(0.5, 2)
        t.end(root, at + rng.uniform(3, 10))  # acknowledge the batch

    def _batch_item(
        self, t: _Trace, worker: Instance, parent: Span, item: _Job, at: float, end_ns: int
    ) -> float:
        """One message: maybe read a record, then write one to three to DynamoDB."""
        rng = self._rng
        failed = self._fails(item, end_ns)
        attrs = {**item.attrs(), "messaging.message.id": item.job_id}
        span = t.start(worker, "process message", _INTERNAL, parent, at, attrs)
        at += rng.uniform(1, 4)
        if rng.random() < 0.3:
            at = t.leaf(
                worker, "GetItem", _CLIENT, span, at, rng.uniform(3, 10), _dynamodb("GetItem")
            )
        for _ in range(1 if failed else rng.randint(1, 3)):
            put = _dynamodb("PutItem")
            at = t.leaf(worker, "PutItem", _CLIENT, span, at + 0.5, rng.uniform(4, 15), put)
        return t.end(span, at + rng.uniform(1, 3), error=failed)


def _dynamodb(operation: str) -> dict[str, AttrValue]:
    return {
        "db.system": "dynamodb",
        "db.operation.name": operation,
        "server.address": "dynamodb.us-east-1.amazonaws.com",
    }


def _end_time(placed: Placed) -> int:
    end: int = placed[1].end_time_unix_nano
    return end


def _by_resource(placed: Sequence[Placed]) -> SpanBatch:
    batch: SpanBatch = {}
    for instance, span in placed:
        batch.setdefault(instance, []).append(span)
    return batch


def _any_value(value: AttrValue) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=value)


def _key_values(attrs: Mapping[str, AttrValue]) -> list[KeyValue]:
    return [KeyValue(key=key, value=_any_value(value)) for key, value in attrs.items()]


def export_request(batch: SpanBatch) -> ExportTraceServiceRequest:
    """One OTLP export request: a ResourceSpans per instance, as SDKs send them."""
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=instance.resource(),
                scope_spans=[ScopeSpans(scope=_SCOPE, spans=spans)],
            )
            for instance, spans in batch.items()
        ]
    )
