"""Decode an OTLP trace request into `SpanRecord`s, once, at the edge.

    bytes -> wire.ExportRequest (C parse, attributes as a map) -> per resource: Resource
          -> per span: validate, read only the configured keys -> SpanRecord | rejection

Nothing downstream sees a protobuf object. A span that breaks a rule (SPEC 3,
"Validation") is rejected and counted by reason; the rest of its request is accepted.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError as ProtobufDecodeError

from costproc.config.model import Config, EgressRule
from costproc.errors import DecodeError
from costproc.model import (
    KIND_CLIENT,
    KIND_PRODUCER,
    KIND_SERVER,
    NOT_MEASURED,
    Resource,
    SpanRecord,
)
from costproc.price.book import InvalidQuantity, PriceBook, matches_all
from costproc.receive.wire import AnyValue, parse_request, string_value, text_value

STATUS_ERROR = 2
_REMOTE_PARENT = 0x300  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE | SPAN_FLAGS_CONTEXT_IS_REMOTE
MAX_LABEL_CHARS = 128  # label values from attributes are cut here
# Control characters, lone surrogates (JSON can carry them, UTF-8 cannot encode them) and
# line/paragraph separators. Format characters stay: ZWJ/ZWNJ belong to emoji and scripts.
_UNSAFE = frozenset({"Cc", "Cs", "Zl", "Zp"})
MAX_JOB_ID_CHARS = 256
_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)
_OUTCOMES = ("success", "failure")
Getter = Callable[[str], AnyValue | None]
_INSTANCE_KEYS = ("service.instance.id", "k8s.pod.name", "host.name")
_BODY_SIZE_BY_KIND = {
    KIND_SERVER: "http.response.body.size",
    KIND_CLIENT: "http.request.body.size",
    KIND_PRODUCER: "messaging.message.body.size",
}


class Rejected(Exception):
    """A span or resource breaks a validation rule; `reason` is the metric label."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Decoded:
    """What one request held: accepted spans, and rejected span counts by reason."""

    spans: list[SpanRecord] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def received(self) -> int:
        return len(self.spans) + sum(self.rejected.values())

    def rejection_message(self) -> str:
        reasons = ", ".join(f"{reason}={n}" for reason, n in sorted(self.rejected.items()))
        return f"rejected {sum(self.rejected.values())} span(s): {reasons}"


def _count(value: AnyValue | None, reason: str = "invalid_usage") -> float | None:
    """A counted attribute: None when absent, else a finite non-negative number."""
    if value is None:
        return None
    which = value.WhichOneof("value")
    if which == "int_value":
        number = float(value.int_value)
    elif which == "double_value":
        number = value.double_value
    else:
        raise Rejected(reason)
    if number < 0 or not math.isfinite(number):
        raise Rejected(reason)
    return number


def _first_string(attrs: Any, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = string_value(attrs.get(key))
        if value:
            return value
    return None


def _label(value: str | None) -> str | None:
    """A label value read from an attribute: short, printable, trimmed; None when empty."""
    if not value:
        return None
    # The hot path: a short printable value without surrounding spaces (`isprintable`
    # rules out every other whitespace) passes with one C scan and no copy.
    if (
        len(value) <= MAX_LABEL_CHARS
        and value.isprintable()
        and value[0] != " "
        and value[-1] != " "
    ):
        return value
    return _sanitized(value[:MAX_LABEL_CHARS])


def _sanitized(value: str) -> str | None:
    """Trim, then replace control characters and lone surrogates with `_`."""
    value = value.strip()
    if not value.isprintable():
        value = "".join("_" if unicodedata.category(c) in _UNSAFE else c for c in value)
    return value or None


class Decoder:
    """Turns request bytes into records using the configured keys and the price book."""

    def __init__(self, config: Config, book: PriceBook):
        self.config = config
        self.book = book
        usage = config.usage
        rollup = config.rollup
        self.job_id_keys = rollup.job_id_attributes
        self.job_type_key = rollup.job_type_attribute
        self.tenant_key = rollup.tenant_attribute
        self.outcome_key = rollup.outcome_attribute
        self.measured_keys = (
            usage.cpu_seconds_attribute,
            usage.memory_gb_seconds_attribute,
            usage.gpu_seconds_attribute,
        )
        self.egress_key = usage.egress_bytes_attribute
        self.override_keys = tuple(sorted(book.override_keys()))
        # A metered rule matches only spans that carry its first key: test those first.
        self._rule_keys = {
            t.version: tuple(dict.fromkeys(r.match[0].key for r in t.metered if r.match))
            for t in book.tables
        }
        self.egress_rules: tuple[EgressRule, ...] = usage.egress_rules

    def decode(self, body: bytes) -> Decoded:
        """Decode one ExportTraceServiceRequest; raises DecodeError if it is not one."""
        try:
            request = parse_request(body)
        except (ProtobufDecodeError, ValueError) as exc:
            raise DecodeError(
                f"request body is not an OTLP ExportTraceServiceRequest: {exc}"
            ) from exc
        out = Decoded()
        for resource_spans in request.resource_spans:
            self._decode_resource_spans(resource_spans, out)
        return out

    def _decode_resource_spans(self, resource_spans: Any, out: Decoded) -> None:
        try:
            resource = self._resource(resource_spans.resource.attributes)
        except Rejected as exc:
            out.rejected[exc.reason] += sum(len(s.spans) for s in resource_spans.scope_spans)
            return
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                try:
                    out.spans.append(self._span(span, resource))
                except Rejected as exc:
                    out.rejected[exc.reason] += 1

    def _resource(self, attrs: Any) -> Resource:
        usage = self.config.usage
        service = string_value(attrs.get("service.name")) or "unknown_service"
        instance_id = _first_string(attrs, _INSTANCE_KEYS)
        per_service = usage.services.get(service)
        defaults = usage.defaults

        def setting(key: str, name: str) -> float:
            value = _count(attrs.get(key), "invalid_allocation")
            if value is None and per_service is not None:
                value = getattr(per_service, name)
            return value if value is not None else float(getattr(defaults, name))

        concurrency = setting(usage.concurrency_attribute, "concurrency")
        if concurrency <= 0:
            raise Rejected("invalid_allocation")
        override_attrs = {}
        for key in self.override_keys:
            value = text_value(attrs.get(key))
            if value is not None:
                override_attrs[key] = value
        return Resource(
            service=_label(service) or "unknown_service",
            instance=f"{service}/{instance_id}" if instance_id else service,
            allocation=(
                setting(usage.cpu_allocated_attribute, "cpu_cores"),
                setting(usage.memory_allocated_attribute, "memory_gb"),
                setting(usage.gpu_allocated_attribute, "gpus"),
            ),
            concurrency=concurrency,
            job_id=_first_string(attrs, self.job_id_keys),
            job_type=_label(string_value(attrs.get(self.job_type_key))),
            tenant=_label(string_value(attrs.get(self.tenant_key))),
            override_attrs=override_attrs,
        )

    def _span(self, span: Any, resource: Resource) -> SpanRecord:
        # The hot path: one C map lookup per configured key, Python work only for
        # keys that are present. Most spans carry none of the usage keys.
        trace_id, span_id, parent_id = span.trace_id, span.span_id, span.parent_span_id
        if len(trace_id) != 16 or trace_id == _ZERO_TRACE_ID:
            raise Rejected("invalid_trace_id")
        if len(span_id) != 8 or span_id == _ZERO_SPAN_ID:
            raise Rejected("invalid_span_id")
        if parent_id == _ZERO_SPAN_ID:
            parent_id = b""
        elif parent_id and len(parent_id) != 8:
            raise Rejected("invalid_parent_span_id")
        start, end = span.start_time_unix_nano, span.end_time_unix_nano
        if end < start:
            raise Rejected("end_before_start")
        get = span.attributes.get
        kind = span.kind
        table = self.book.table_at(end)
        keys = self.measured_keys
        cpu, memory, gpu = get(keys[0]), get(keys[1]), get(keys[2])
        measured: tuple[float | None, float | None, float | None] = NOT_MEASURED
        if cpu is not None or memory is not None or gpu is not None:
            measured = (_count(cpu), _count(memory), _count(gpu))
        egress = get(self.egress_key)
        if egress is None and kind in _BODY_SIZE_BY_KIND:
            egress = get(_BODY_SIZE_BY_KIND[kind])
        egress_bytes = 0.0 if egress is None else (_count(egress) or 0.0)
        metered: tuple[tuple[str, float], ...] = ()
        for key in self._rule_keys[table.version]:
            if get(key) is not None:
                try:
                    metered = self.book.metered(table, _strings(get), _numbers(get))
                except InvalidQuantity as exc:
                    raise Rejected("invalid_usage") from exc
                break
        job_id = resource.job_id
        for key in self.job_id_keys:
            value = get(key)
            if value is not None and (text := string_value(value)):
                job_id = text[:MAX_JOB_ID_CHARS]
                break
        outcome = None
        if (value := get(self.outcome_key)) is not None and (text := string_value(value)):
            outcome = text.lower()
        value = get(self.job_type_key)
        job_type = None if value is None else _label(string_value(value))
        value = get(self.tenant_key)
        tenant = None if value is None else _label(string_value(value))
        # Positional: this runs once per span, and keyword passing costs measurably more.
        return SpanRecord(
            trace_id,
            span_id,
            parent_id,
            start,
            end,
            resource,
            table.version,
            kind,
            span.status.code == STATUS_ERROR,
            (span.flags & _REMOTE_PARENT) == _REMOTE_PARENT,
            job_id,
            job_type,
            tenant,
            outcome if outcome in _OUTCOMES else None,
            measured,
            egress_bytes,
            self._egress_class(get) if egress_bytes else "",
            metered,
        )

    def _egress_class(self, get: Getter) -> str:
        usage = self.config.usage
        explicit = get(usage.egress_class_attribute)
        if explicit is not None and (text := string_value(explicit)):
            return text
        if self.egress_rules:
            lookup = _strings(get)
            for rule in self.egress_rules:
                if matches_all(rule.match, lookup):
                    return rule.egress_class
        return usage.egress_default_class


def _strings(get: Getter) -> Callable[[str], str | None]:
    return lambda key: text_value(get(key))


def _numbers(get: Getter) -> Callable[[str], float | None]:
    def number(key: str) -> float | None:
        try:
            return _count(get(key))
        except Rejected as exc:
            raise InvalidQuantity(key) from exc

    return number
