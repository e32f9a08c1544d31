"""Decoding spans and resources into records (SPEC 2.1, 2.5, 2.6, 2.11, 3)."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from otlp import S, body

from costproc.config.load import parse_config
from costproc.model import SpanRecord
from costproc.price.book import PriceBook
from costproc.receive.decode import Decoder

CONFIG = parse_config(
    """
rollup:
  job_id_attributes: [job.id, messaging.message.id]
usage:
  defaults: {cpu_cores: 0.5, memory_gb: 1, concurrency: 2}
  services:
    api: {cpu_cores: 4, concurrency: 8}
pricing:
  tables:
    - version: a
      effective_from: 2026-01-01T00:00:00Z
      cpu_core_second: 1
      memory_gb_second: 1
      gpu_second: 1
      egress_per_gb: {internet: 1}
"""
)


def decode_one(attrs: dict[str, Any] | None = None, **span_kw: Any) -> SpanRecord:
    decoder = Decoder(CONFIG, PriceBook(CONFIG.pricing, "internet"))
    decoded = decoder.decode(
        body([S(1, 1, span_kw.pop("parent", None), 0, 10, attrs or {}, **span_kw)])
    )
    assert not decoded.rejected, decoded.rejected
    return decoded.spans[0]


@pytest.mark.parametrize(
    ("resource", "service", "instance"),
    [
        ({}, "unknown_service", "unknown_service"),
        ({"service.name": "api"}, "api", "api"),
        ({"service.name": "api", "host.name": "h1"}, "api", "api/h1"),
        ({"service.name": "api", "k8s.pod.name": "p1", "host.name": "h1"}, "api", "api/p1"),
        (
            {"service.name": "api", "service.instance.id": "i1", "k8s.pod.name": "p1"},
            "api",
            "api/i1",
        ),
    ],
    ids=["no-service", "service-only", "host", "pod-before-host", "instance-id-first"],
)
def test_instance_identity(resource: dict[str, Any], service: str, instance: str) -> None:
    record = decode_one(resource=resource)
    assert (record.resource.service, record.resource.instance) == (service, instance)


@pytest.mark.parametrize(
    ("resource", "allocation", "concurrency"),
    [
        ({"service.name": "other"}, (0.5, 1.0, 0.0), 2.0),  # global defaults
        ({"service.name": "api"}, (4.0, 1.0, 0.0), 8.0),  # per-service, rest global
        (
            {"service.name": "api", "costproc.cpu.allocated": 2, "costproc.concurrency": 4.0},
            (2.0, 1.0, 0.0),
            4.0,
        ),  # the resource wins; an int and a double alike
        ({"service.name": "x", "costproc.gpu.allocated": 1.0}, (0.5, 1.0, 1.0), 2.0),
    ],
    ids=["global", "per-service", "resource-wins", "gpu-from-resource"],
)
def test_allocation_resolution(
    resource: dict[str, Any], allocation: tuple[float, float, float], concurrency: float
) -> None:
    record = decode_one(resource=resource)
    assert record.resource.allocation == allocation
    assert record.resource.concurrency == concurrency


@pytest.mark.parametrize(
    ("attrs", "resource", "job_id"),
    [
        ({"job.id": "order-1"}, {}, "order-1"),
        ({"job.id": 42}, {}, "42"),  # integers become their decimal string
        ({"job.id": ""}, {}, None),  # empty is absent
        ({"job.id": "", "messaging.message.id": "m-9"}, {}, "m-9"),  # first non-empty key
        ({}, {"job.id": "from-resource"}, "from-resource"),
        ({"job.id": "span"}, {"job.id": "resource"}, "span"),  # the span before its resource
        ({"job.id": True}, {}, None),  # a bool is not an identifier
    ],
    ids=["string", "int", "empty", "second-key", "resource", "span-first", "bool"],
)
def test_job_id_lookup(attrs: dict[str, Any], resource: dict[str, Any], job_id: str | None) -> None:
    assert decode_one(attrs, resource={"service.name": "s", **resource}).job_id == job_id


@pytest.mark.parametrize(
    ("attrs", "outcome"),
    [
        ({"job.outcome": "success"}, "success"),
        ({"job.outcome": "FAILURE"}, "failure"),
        ({"job.outcome": "Failure"}, "failure"),
        ({"job.outcome": "retrying"}, None),  # other values are ignored
        ({}, None),
    ],
    ids=["success", "upper", "mixed-case", "other", "absent"],
)
def test_outcome_attribute(attrs: dict[str, Any], outcome: str | None) -> None:
    assert decode_one(attrs).outcome == outcome


@pytest.mark.parametrize(
    ("flags", "remote"),
    [(0, False), (0x100, False), (0x300, True), (0x301, True)],
    ids=["none", "has-is-remote-only", "remote", "remote-and-sampled"],
)
def test_remote_parent_flag(flags: int, remote: bool) -> None:
    assert decode_one(parent=7, flags=flags).remote_parent is remote


def test_all_zero_parent_id_means_no_parent() -> None:
    decoder = Decoder(CONFIG, PriceBook(CONFIG.pricing, "internet"))
    request = S(1, 1, None, 0, 10).to_proto()
    request.parent_span_id = bytes(8)
    raw = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[request])])]
    ).SerializeToString()
    assert decoder.decode(raw).spans[0].parent_id == b""


def test_labels_from_span_and_resource_kept_apart() -> None:
    record = decode_one(
        {"job.type": "checkout"},
        resource={"service.name": "s", "tenant": "acme", "job.type": "web"},
    )
    assert (record.job_type, record.tenant) == ("checkout", None)
    assert (record.resource.job_type, record.resource.tenant) == ("web", "acme")


@pytest.mark.parametrize(
    ("attrs", "measured"),
    [
        ({}, (None, None, None)),
        ({"costproc.cpu.seconds": 2}, (2.0, None, None)),
        ({"costproc.memory.gb_seconds": 0.5, "costproc.gpu.seconds": 1}, (None, 0.5, 1.0)),
        ({"costproc.cpu.seconds": 0}, (0.0, None, None)),  # zero is measured, not absent
    ],
    ids=["none", "cpu-int", "memory-and-gpu", "zero"],
)
def test_measured_usage(attrs: dict[str, Any], measured: tuple[float | None, ...]) -> None:
    assert decode_one(attrs).measured == measured
