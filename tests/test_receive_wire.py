"""The map-view wire classes read stock OTLP bytes exactly as the stock classes do."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from costproc.receive import wire

# Wire message name -> the stock message it reads.
STOCK: dict[str, Descriptor] = {
    "ExportRequest": ExportTraceServiceRequest.DESCRIPTOR,
    "ResourceSpans": ResourceSpans.DESCRIPTOR,
    "Resource": Resource.DESCRIPTOR,
    "ScopeSpans": ScopeSpans.DESCRIPTOR,
    "Span": Span.DESCRIPTOR,
    "Status": Status.DESCRIPTOR,
}

DECLARED = {
    "ExportRequest": {"resource_spans"},
    "ResourceSpans": {"resource", "scope_spans"},
    "Resource": {"attributes"},
    "ScopeSpans": {"spans"},
    "Span": {
        "trace_id",
        "span_id",
        "parent_span_id",
        "name",
        "kind",
        "start_time_unix_nano",
        "end_time_unix_nano",
        "attributes",
        "status",
        "flags",
    },
    "Status": {"message", "code"},
}


def wire_messages() -> dict[str, Descriptor]:
    """Every wire message reachable from ExportRequest, by short name, map entries aside."""
    found: dict[str, Descriptor] = {}
    pending = [descriptor_pool.Default().FindMessageTypeByName("costproc.wire.v1.ExportRequest")]
    while pending:
        desc = pending.pop()
        found[desc.name] = desc
        for field in desc.fields:
            sub = field.message_type
            if sub is None or sub.file is not desc.file or sub.GetOptions().map_entry:
                continue
            if sub.name not in found:
                pending.append(sub)
    return found


def test_declares_exactly_the_fields_costproc_reads() -> None:
    messages = wire_messages()
    assert set(messages) == set(STOCK)
    assert {name: {f.name for f in d.fields} for name, d in messages.items()} == DECLARED


def assert_map_matches_key_value(field: FieldDescriptor, stock: FieldDescriptor) -> None:
    assert stock.is_repeated and stock.message_type is KeyValue.DESCRIPTOR
    assert field.message_type is not None
    entry = field.message_type.fields_by_name
    kv = KeyValue.DESCRIPTOR.fields_by_name
    assert entry["key"].number == kv["key"].number
    assert entry["key"].type == kv["key"].type == FieldDescriptor.TYPE_STRING
    assert entry["value"].number == kv["value"].number
    assert entry["value"].message_type is kv["value"].message_type is AnyValue.DESCRIPTOR


@pytest.mark.parametrize("message", sorted(STOCK))
def test_field_numbers_and_types_agree_with_stock(message: str) -> None:
    for field in wire_messages()[message].fields:
        stock = STOCK[message].fields_by_name[field.name]
        assert field.number == stock.number, field.full_name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            assert_map_matches_key_value(field, stock)
            continue
        assert field.is_repeated == stock.is_repeated, field.full_name
        if stock.type == FieldDescriptor.TYPE_ENUM:
            # Same varint on the wire; int32 keeps values the enum does not name.
            assert field.type == FieldDescriptor.TYPE_INT32, field.full_name
        elif stock.type == FieldDescriptor.TYPE_MESSAGE:
            assert field.message_type is not None
            assert STOCK[field.message_type.name] is stock.message_type, field.full_name
        else:
            assert field.type == stock.type, field.full_name


def kv(key: str, value: AnyValue | None = None) -> KeyValue:
    return KeyValue(key=key, value=value) if value is not None else KeyValue(key=key)


ALL_TYPES = [
    kv("s", AnyValue(string_value="checkout")),
    kv("b", AnyValue(bool_value=True)),
    kv("i", AnyValue(int_value=-(2**63))),
    kv("d", AnyValue(double_value=2.5)),
    kv("a", AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=1)]))),
    kv("m", AnyValue(kvlist_value=KeyValueList(values=[kv("x", AnyValue(string_value="y"))]))),
    kv("y", AnyValue(bytes_value=b"\x00\xff")),
    kv("empty", AnyValue()),
    kv("novalue"),
    kv("dup", AnyValue(int_value=1)),
    kv("dup", AnyValue(string_value="last")),
]


def make_span(n: int, **overrides: object) -> Span:
    fields: dict[str, object] = {
        "trace_id": bytes([n]) * 16,
        "span_id": bytes([n + 1]) * 8,
        "parent_span_id": bytes([n + 2]) * 8,
        "name": f"op-{n}",
        "kind": Span.SPAN_KIND_SERVER,
        "start_time_unix_nano": 1_750_000_000_000_000_000 + n,
        "end_time_unix_nano": 2**64 - 1 - n,
        "attributes": ALL_TYPES,
        "status": Status(code=Status.STATUS_CODE_ERROR, message="boom"),
        "flags": 0x301,
        # Fields the wire classes skip as unknown.
        "trace_state": "k=v",
        "dropped_attributes_count": 3,
        "events": [Span.Event(time_unix_nano=5, name="e", attributes=ALL_TYPES)],
        "links": [Span.Link(trace_id=b"\x09" * 16, span_id=b"\x08" * 8, attributes=ALL_TYPES)],
        "dropped_links_count": 1,
    }
    fields.update(overrides)
    return Span(**fields)  # type: ignore[arg-type]


def make_request() -> ExportTraceServiceRequest:
    scope = InstrumentationScope(name="lib", version="1", attributes=ALL_TYPES)
    first = ResourceSpans(
        resource=Resource(attributes=ALL_TYPES, dropped_attributes_count=2),
        scope_spans=[
            ScopeSpans(scope=scope, spans=[make_span(1), make_span(2, kind=42)], schema_url="u"),
            ScopeSpans(spans=[make_span(3, parent_span_id=b"", status=None, attributes=[])]),
        ],
        schema_url="https://opentelemetry.io/schemas/1.26.0",
    )
    second = ResourceSpans(
        resource=Resource(attributes=[kv("service.name", AnyValue(string_value="api"))]),
        scope_spans=[ScopeSpans(spans=[make_span(4, kind=Span.SPAN_KIND_CLIENT, flags=0)])],
    )
    no_resource = ResourceSpans(scope_spans=[ScopeSpans(spans=[make_span(5)])])
    return ExportTraceServiceRequest(resource_spans=[first, second, no_resource])


def last_wins(attributes: list[KeyValue]) -> dict[str, AnyValue]:
    return {a.key: a.value for a in attributes}


SCALARS = [
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "start_time_unix_nano",
    "end_time_unix_nano",
    "flags",
]


def test_parses_stock_bytes_to_the_same_values() -> None:
    stock = make_request()
    parsed = wire.parse_request(stock.SerializeToString())
    assert len(parsed.resource_spans) == len(stock.resource_spans)
    for got_rs, want_rs in zip(parsed.resource_spans, stock.resource_spans, strict=True):
        assert dict(got_rs.resource.attributes) == last_wins(list(want_rs.resource.attributes))
        got_spans = [s for ss in got_rs.scope_spans for s in ss.spans]
        want_spans = [s for ss in want_rs.scope_spans for s in ss.spans]
        assert len(got_spans) == len(want_spans)
        for got, want in zip(got_spans, want_spans, strict=True):
            assert {f: getattr(got, f) for f in SCALARS} == {f: getattr(want, f) for f in SCALARS}
            assert (got.status.code, got.status.message) == (want.status.code, want.status.message)
            assert dict(got.attributes) == last_wins(list(want.attributes))


def test_map_semantics_on_the_hot_path() -> None:
    data = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[make_span(1)])])]
    ).SerializeToString()
    attrs = wire.parse_request(data).resource_spans[0].scope_spans[0].spans[0].attributes
    assert wire.string_value(attrs.get("dup")) == "last"
    assert isinstance(attrs.get("s"), AnyValue)
    assert attrs.get("novalue") == AnyValue()
    assert attrs.get("missing") is None
    assert "missing" not in attrs


def test_key_value_with_extra_fields_is_left_out_of_the_map() -> None:
    odd = KeyValue(key="k", key_strindex=7, value=AnyValue(int_value=1))
    data = Span(attributes=[odd, kv("n", AnyValue(int_value=2))]).SerializeToString()
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[Span.FromString(data)])])]
    )
    span = wire.parse_request(request.SerializeToString()).resource_spans[0].scope_spans[0]
    assert dict(span.spans[0].attributes) == {"n": AnyValue(int_value=2)}


def test_empty_bytes_are_an_empty_request() -> None:
    assert len(wire.parse_request(b"").resource_spans) == 0


def invalid_utf8_name() -> bytes:
    span = b"\x2a\x01\xff"  # Span.name (5) = b"\xff"
    scope_spans = b"\x12" + bytes([len(span)]) + span
    resource_spans = b"\x12" + bytes([len(scope_spans)]) + scope_spans
    return b"\x0a" + bytes([len(resource_spans)]) + resource_spans


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(make_request().SerializeToString()[:-1], id="truncated-by-one"),
        pytest.param(make_request().SerializeToString()[:100], id="truncated-mid"),
        pytest.param(b"\x0a\x05abc", id="length-past-end"),
        pytest.param(b"\xff\xff\xff\xff", id="garbage"),
        pytest.param(b"\x0f", id="invalid-wire-type"),
        pytest.param(invalid_utf8_name(), id="invalid-utf8"),
    ],
)
def test_bad_bytes_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        wire.parse_request(data)


@pytest.mark.parametrize(
    ("value", "as_string", "as_text"),
    [
        pytest.param(None, None, None, id="absent"),
        pytest.param(AnyValue(), None, None, id="empty"),
        pytest.param(AnyValue(string_value="job-7"), "job-7", "job-7", id="string"),
        pytest.param(AnyValue(string_value=""), None, "", id="empty-string"),
        pytest.param(AnyValue(int_value=42), "42", "42", id="int"),
        pytest.param(AnyValue(int_value=-3), "-3", "-3", id="negative-int"),
        pytest.param(AnyValue(double_value=1.5), None, "1.5", id="double"),
        pytest.param(AnyValue(double_value=0.0), None, "0.0", id="zero-double"),
        pytest.param(AnyValue(bool_value=True), None, "true", id="bool"),
        pytest.param(AnyValue(bool_value=False), None, "false", id="bool-false"),
        pytest.param(AnyValue(bytes_value=b"x"), None, None, id="bytes"),
        pytest.param(AnyValue(array_value=ArrayValue()), None, None, id="array"),
        pytest.param(AnyValue(string_value_strindex=3), None, None, id="strindex"),
    ],
)
def test_value_helpers(value: AnyValue | None, as_string: str | None, as_text: str | None) -> None:
    assert wire.string_value(value) == as_string
    assert wire.text_value(value) == as_text
