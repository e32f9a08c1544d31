"""Build OTLP requests for tests with the stock opentelemetry-proto classes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

BASE_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
MS = 1_000_000

KIND = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}


def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    return AnyValue(string_value=str(value))


def key_values(attrs: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in attrs.items()]


def trace_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def span_id(n: int) -> bytes:
    return n.to_bytes(8, "big")


@dataclass
class S:
    """A span in test shorthand: ids are small ints, times are ms after BASE_NS."""

    trace: int
    span: int
    parent: int | None
    start_ms: float
    end_ms: float
    attrs: dict[str, Any] = field(default_factory=dict)
    kind: str = "internal"
    error: bool = False
    flags: int = 0
    resource: dict[str, Any] = field(default_factory=lambda: {"service.name": "svc"})

    def to_proto(self) -> Span:
        return Span(
            trace_id=trace_id(self.trace),
            span_id=span_id(self.span),
            parent_span_id=span_id(self.parent) if self.parent is not None else b"",
            name=f"span-{self.span}",
            kind=KIND[self.kind],  # type: ignore[arg-type]
            start_time_unix_nano=BASE_NS + int(self.start_ms * MS),
            end_time_unix_nano=BASE_NS + int(self.end_ms * MS),
            attributes=key_values(self.attrs),
            status=Status(
                code=Status.STATUS_CODE_ERROR if self.error else Status.STATUS_CODE_UNSET
            ),
            flags=self.flags,
        )


def request(spans: list[S]) -> ExportTraceServiceRequest:
    """One request, spans grouped by resource as SDKs do (order within kept)."""
    groups: dict[tuple[tuple[str, Any], ...], list[S]] = {}
    for s in spans:
        groups.setdefault(tuple(sorted(s.resource.items())), []).append(s)
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=key_values(dict(key))),
                scope_spans=[ScopeSpans(spans=[s.to_proto() for s in group])],
            )
            for key, group in groups.items()
        ]
    )


def body(spans: list[S]) -> bytes:
    return request(spans).SerializeToString()
