"""OTLP/JSON to protobuf: hex ids, integers as strings or numbers, enums, unknown fields.

Every case goes through both of the converter's paths (the renaming hook and the walk
from the top) and must come out the same, or fail the same way.
"""

from __future__ import annotations

import base64
import copy
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from costproc.errors import DecodeError
from costproc.receive import otlp_json
from costproc.receive.otlp_json import to_protobuf

FIXTURE = Path(__file__).parent / "testdata" / "otlp" / "trace.json"
TRACE_HEX = "5b8efff798038103d269b633813fc60c"
SPAN_HEX = "eee19b7ec3c1b174"
SECRET = "s3cr3t-attribute-value"  # must never appear in an error message


def convert(document: Any) -> ExportTraceServiceRequest:
    """Both paths on one document; they must agree byte for byte."""
    body = json.dumps(document).encode()
    fast = to_protobuf(body)
    assert otlp_json._exact(body) == fast
    return ExportTraceServiceRequest.FromString(fast)


def one_span(span: dict[str, Any]) -> dict[str, Any]:
    """A request holding `span` alone."""
    return {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}


def only_span(document: Any) -> Span:
    request = convert(document)
    (span,) = [s for r in request.resource_spans for ss in r.scope_spans for s in ss.spans]
    return span


def span_with(**fields: Any) -> dict[str, Any]:
    return {"traceId": TRACE_HEX, "spanId": SPAN_HEX, **fields}


def attribute(value: dict[str, Any]) -> dict[str, Any]:
    return one_span(span_with(attributes=[{"key": "k", "value": value}]))


def attribute_value(value: dict[str, Any]) -> AnyValue:
    return only_span(attribute(value)).attributes[0].value


# -- the fixture: shaped like the OTLP specification's example ------------------------


def test_fixture_converts() -> None:
    request = convert(json.loads(FIXTURE.read_text(encoding="utf-8")))

    (resource_spans,) = request.resource_spans
    assert resource_spans.schema_url == "https://opentelemetry.io/schemas/1.26.0"
    assert resource_spans.resource.attributes[2].value.int_value == 4242
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == "checkout.tracing"
    receipt, order, chat, gpt = scope_spans.spans
    # Upper-case hex, as some senders write it, is hex too.
    assert order.trace_id == bytes.fromhex(TRACE_HEX)
    assert order.span_id == bytes.fromhex("eee19b7ec3c1b173")
    assert receipt.parent_span_id == order.span_id
    assert order.parent_span_id == b""  # empty string
    assert chat.parent_span_id == b""  # no key at all
    assert (order.kind, receipt.kind) == (Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT)
    assert (order.flags, receipt.flags) == (256, 257)
    assert order.start_time_unix_nano == 1_767_229_200_000_000_000  # from a string
    assert chat.end_time_unix_nano == 1_767_229_202_000_000_000  # from a number
    egress = {kv.key: kv.value for kv in receipt.attributes}["costproc.egress.bytes"]
    assert egress.int_value == 1_000_000  # from a string
    tokens = {kv.key: kv.value.int_value for kv in gpt.attributes}
    assert tokens["gen_ai.usage.input_tokens"] == 1200  # from a number
    assert tokens["gen_ai.usage.output_tokens"] == 300  # from a string
    (link,) = order.links
    assert link.trace_id == bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
    assert link.flags == 256
    assert order.status.code == 1
    assert receipt.events[0].time_unix_nano == 1_767_229_200_300_000_000


# -- every field survives: a fully populated request round-trips ---------------------


def populated() -> ExportTraceServiceRequest:
    """A request in which every field of every message type under it is set somewhere."""
    request = ExportTraceServiceRequest()
    _fill(request, variant=0, depth=0)
    return request


MAX_DEPTH = 9  # deep enough for an array and a kvlist inside an attribute value
ONEOF_FAN_OUT = 8  # list elements per oneof-holding type, so each member is set once


def _fill(message: Message, variant: int, depth: int) -> None:
    """Set every field; of each oneof, member number `variant` (wrapping around)."""
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.fields[variant % len(oneof.fields)] is not field:
            continue
        if field.message_type is None:
            value = _sample(field)
            if field.is_repeated:
                getattr(message, field.name).append(value)
            else:
                setattr(message, field.name, value)
        elif depth < MAX_DEPTH and field.is_repeated:
            children = getattr(message, field.name)
            for index in range(_fan_out(field.message_type)):
                _fill(children.add(), index, depth + 1)
        elif depth < MAX_DEPTH:
            _fill(getattr(message, field.name), variant, depth + 1)


def _fan_out(descriptor: Any) -> int:
    """Elements to add to a list of `descriptor`: one per variant where a oneof is near."""
    singular = [f.message_type for f in descriptor.fields if f.message_type and not f.is_repeated]
    if descriptor.oneofs or any(child.oneofs for child in singular):
        return ONEOF_FAN_OUT
    return 1


def _sample(field: Any) -> Any:
    if field.name == "trace_id":
        return bytes(range(1, 17))
    if field.name in ("span_id", "parent_span_id"):
        return bytes(range(1, 9))
    if field.enum_type is not None:
        return 2
    return {
        FieldDescriptor.TYPE_DOUBLE: -1.5,
        FieldDescriptor.TYPE_INT64: -(2**62),
        FieldDescriptor.TYPE_UINT64: 2**63 + 5,
        FieldDescriptor.TYPE_INT32: -7,
        FieldDescriptor.TYPE_FIXED64: 2**64 - 1,
        FieldDescriptor.TYPE_FIXED32: 2**32 - 1,
        FieldDescriptor.TYPE_BOOL: True,
        FieldDescriptor.TYPE_STRING: f"{field.name}-value",
        FieldDescriptor.TYPE_BYTES: b"\x00\xffbytes",
        FieldDescriptor.TYPE_UINT32: 4_000_000_000,
    }[field.type]


def _message_types(descriptor: Descriptor, seen: dict[str, Descriptor]) -> list[Descriptor]:
    if descriptor.full_name not in seen:
        seen[descriptor.full_name] = descriptor
        for field in descriptor.fields:
            if field.message_type is not None:
                _message_types(field.message_type, seen)
    return list(seen.values())


def _set_fields(message: Message, found: set[str]) -> set[str]:
    for field, value in message.ListFields():
        found.add(field.full_name)
        if field.message_type is not None:
            for child in value if field.is_repeated else [value]:
                _set_fields(child, found)
    return found


def test_populated_request_sets_every_field() -> None:
    every = {
        field.full_name
        for descriptor in _message_types(ExportTraceServiceRequest.DESCRIPTOR, {})
        for field in descriptor.fields
    }
    assert every - _set_fields(populated(), set()) == set()


def hexify(node: Any, parent: str = "") -> Any:
    """The protobuf JSON mapping's base64 span and link ids rewritten as OTLP's hex."""
    if isinstance(node, dict):
        return {
            key: base64.b64decode(value).hex()
            if parent in ("spans", "links") and key in ID_KEYS
            else hexify(value, key)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [hexify(item, parent) for item in node]
    return node


ID_KEYS = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}


def numbers_for_strings(node: Any) -> Any:
    """64-bit integers as JSON numbers, as the Node.js exporter writes them."""
    if isinstance(node, dict):
        return {k: numbers_for_strings(v) for k, v in node.items()}
    if isinstance(node, list):
        return [numbers_for_strings(v) for v in node]
    if isinstance(node, str) and node.lstrip("-").isdigit():
        return int(node)
    return node


ROUND_TRIPS: dict[str, Callable[[Message], Any]] = {
    "camel-case-enum-names": lambda m: json_format.MessageToDict(m),
    "camel-case-enum-numbers": lambda m: json_format.MessageToDict(m, use_integers_for_enums=True),
    "snake-case": lambda m: json_format.MessageToDict(m, preserving_proto_field_name=True),
    "integers-as-numbers": lambda m: numbers_for_strings(
        json_format.MessageToDict(m, use_integers_for_enums=True)
    ),
}


@pytest.mark.parametrize("render", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_every_field_round_trips(render: Callable[[Message], Any]) -> None:
    original = populated()
    assert convert(hexify(render(original))) == original


# -- values: table-driven -------------------------------------------------------------


SPAN_CASES: dict[str, tuple[dict[str, Any], Callable[[Span], Any], Any]] = {
    "upper-case-hex": (
        {"traceId": TRACE_HEX.upper(), "spanId": SPAN_HEX.upper()},
        lambda s: (s.trace_id.hex(), s.span_id.hex()),
        (TRACE_HEX, SPAN_HEX),
    ),
    "empty-parent": (span_with(parentSpanId=""), lambda s: s.parent_span_id, b""),
    "null-parent": (span_with(parentSpanId=None), lambda s: s.parent_span_id, b""),
    "short-id-kept-for-the-decoder-to-reject": (
        {"traceId": "abcd", "spanId": SPAN_HEX},
        lambda s: s.trace_id,
        b"\xab\xcd",
    ),
    "time-as-string": (
        span_with(startTimeUnixNano="1767229200000000001"),
        lambda s: s.start_time_unix_nano,
        1_767_229_200_000_000_001,
    ),
    "time-as-number": (
        span_with(endTimeUnixNano=1767229200000000001),
        lambda s: s.end_time_unix_nano,
        1_767_229_200_000_000_001,
    ),
    "time-as-whole-float": (
        span_with(endTimeUnixNano=1.5e9),
        lambda s: s.end_time_unix_nano,
        1_500_000_000,
    ),
    "kind-number": (span_with(kind=2), lambda s: s.kind, Span.SPAN_KIND_SERVER),
    "kind-name": (span_with(kind="SPAN_KIND_CONSUMER"), lambda s: s.kind, Span.SPAN_KIND_CONSUMER),
    "kind-number-as-string": (span_with(kind="3"), lambda s: s.kind, Span.SPAN_KIND_CLIENT),
    "kind-unknown-name-ignored": (span_with(kind="SPAN_KIND_LATER"), lambda s: s.kind, 0),
    "kind-unknown-number-kept": (span_with(kind=9), lambda s: s.kind, 9),
    "status-code-number": (span_with(status={"code": 2}), lambda s: s.status.code, 2),
    "status-code-name": (
        span_with(status={"code": "STATUS_CODE_ERROR", "message": "boom"}),
        lambda s: (s.status.code, s.status.message),
        (2, "boom"),
    ),
    "flags-number": (span_with(flags=769), lambda s: s.flags, 769),
    "flags-string": (span_with(flags="257"), lambda s: s.flags, 257),
    "snake-case-keys": (
        {
            "trace_id": TRACE_HEX,
            "span_id": SPAN_HEX,
            "parent_span_id": "0102030405060708",
            "start_time_unix_nano": "5",
            "dropped_attributes_count": 2,
        },
        lambda s: (s.parent_span_id.hex(), s.start_time_unix_nano, s.dropped_attributes_count),
        ("0102030405060708", 5, 2),
    ),
    "unknown-fields-ignored": (
        span_with(futureField={"traceId": "not hex at all", "nested": [1, {"x": None}]}, x=[]),
        lambda s: s.trace_id.hex(),
        TRACE_HEX,
    ),
    "known-key-in-the-wrong-message-ignored": (
        span_with(key="attribute key field", code=2, stringValue="any value field"),
        lambda s: (s.trace_id.hex(), s.status.code),
        (TRACE_HEX, 0),
    ),
    "link-ids-hex": (
        span_with(links=[{"traceId": TRACE_HEX, "spanId": SPAN_HEX, "flags": 256}]),
        lambda s: (s.links[0].trace_id.hex(), s.links[0].span_id.hex(), s.links[0].flags),
        (TRACE_HEX, SPAN_HEX, 256),
    ),
}


@pytest.mark.parametrize(("span", "read", "want"), SPAN_CASES.values(), ids=SPAN_CASES.keys())
def test_span_field(span: dict[str, Any], read: Callable[[Span], Any], want: Any) -> None:
    assert read(only_span(one_span(span))) == want


VALUE_CASES: dict[str, tuple[dict[str, Any], str | None, Any]] = {
    "int-number": ({"intValue": 42}, "int_value", 42),
    "int-string": ({"intValue": "42"}, "int_value", 42),
    "int-negative-string": ({"intValue": "-42"}, "int_value", -42),
    "int-max-int64-string": ({"intValue": str(2**63 - 1)}, "int_value", 2**63 - 1),
    "int-whole-float": ({"intValue": 2.0}, "int_value", 2),
    "int-snake-case": ({"int_value": "7"}, "int_value", 7),
    "double-number": ({"doubleValue": 0.5}, "double_value", 0.5),
    "double-integral-number": ({"doubleValue": 2}, "double_value", 2.0),
    "double-string": ({"doubleValue": "1.25e3"}, "double_value", 1250.0),
    "double-infinity": ({"doubleValue": "Infinity"}, "double_value", math.inf),
    "double-minus-infinity": ({"doubleValue": "-Infinity"}, "double_value", -math.inf),
    "string": ({"stringValue": "café"}, "string_value", "café"),
    "bool": ({"boolValue": True}, "bool_value", True),
    "bytes-base64": ({"bytesValue": "AP8="}, "bytes_value", b"\x00\xff"),
    "bytes-base64-unpadded": ({"bytesValue": "AP8"}, "bytes_value", b"\x00\xff"),
    "bytes-base64-url-safe": ({"bytesValue": "_-8="}, "bytes_value", b"\xff\xef"),
    "array": (
        {"arrayValue": {"values": [{"intValue": "1"}, {"stringValue": "a"}]}},
        "array_value",
        [1, "a"],
    ),
    "kvlist": (
        {"kvlistValue": {"values": [{"key": "n", "value": {"intValue": 3}}]}},
        "kvlist_value",
        {"n": 3},
    ),
    "empty-any-value": ({}, None, None),
}


def plain(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [plain(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: plain(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which) if which else None


@pytest.mark.parametrize(("value", "which", "want"), VALUE_CASES.values(), ids=VALUE_CASES.keys())
def test_attribute_value(value: dict[str, Any], which: str | None, want: Any) -> None:
    got = attribute_value(value)
    assert got.WhichOneof("value") == which
    assert plain(got) == want


def test_nan_double() -> None:
    assert math.isnan(attribute_value({"doubleValue": "NaN"}).double_value)


def test_empty_object_is_an_empty_request() -> None:
    assert to_protobuf(b"{}") == b""
    assert to_protobuf(b'{"resourceSpans": []}') == b""


def test_utf8_bom_and_whitespace() -> None:
    body = (
        b'\xef\xbb\xbf  {"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "\\u00e9"}]}]}]}\n'
    )
    request = ExportTraceServiceRequest.FromString(to_protobuf(body))
    assert request.resource_spans[0].scope_spans[0].spans[0].name == "é"


def test_no_key_means_two_things() -> None:
    # The fast path relies on it; a later proto that breaks it only costs speed, but say so.
    conflicts = [k for k, (_, c) in otlp_json._ANY_MESSAGE.items() if c is otlp_json._conflict]
    assert conflicts == []


# -- errors ---------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    """A request whose one attribute value is a kvlist nested `depth` deep."""
    head = '{"kvlistValue": {"values": [{"key": "k", "value": ' * depth
    value = head + f'{{"stringValue": "{SECRET}"}}' + "}]}}" * depth
    span = f'{{"traceId": "{TRACE_HEX}", "attributes": [{{"key": "k", "value": {value}}}]}}'
    return f'{{"resourceSpans": [{{"scopeSpans": [{{"spans": [{span}]}}]}}]}}'.encode()


ERRORS: dict[str, tuple[bytes | Any, str]] = {
    "not-json": (b"{resourceSpans", "not JSON"),
    "truncated-json": (b'{"resourceSpans": [', "not JSON"),
    "not-utf8": (b'{"resourceSpans": "\xff\xfe"}', "not JSON"),
    "top-level-array": ([], "request: must be a JSON object"),
    "top-level-string": (SECRET, "request: must be a JSON object"),
    "resource-spans-object": ({"resourceSpans": {}}, "resourceSpans: must be a JSON array"),
    "span-not-object": (
        {"resourceSpans": [{"scopeSpans": [{"spans": [SECRET]}]}]},
        "resourceSpans.scopeSpans.spans: must be a JSON object",
    ),
    "trace-id-not-hex": (
        one_span({"traceId": "zz" * 16, "spanId": SPAN_HEX}),
        "spans.traceId: is not hex",
    ),
    "trace-id-base64": (
        one_span({"traceId": "W47/95gDgQPSabYzgT/GDA==", "spanId": SPAN_HEX}),
        "spans.traceId: is not hex",
    ),
    "span-id-with-spaces": (
        one_span({"traceId": TRACE_HEX, "spanId": "ee e1 9b 7e c3 c1 b1 74"}),
        "spans.spanId: is not hex",
    ),
    "parent-id-odd-length": (
        one_span(span_with(parentSpanId="abc")),
        "spans.parentSpanId: is not hex",
    ),
    "link-span-id-not-hex": (
        one_span(span_with(links=[{"traceId": TRACE_HEX, "spanId": "x"}])),
        "links.spanId: is not hex",
    ),
    "trace-id-number": (one_span({"traceId": 5}), "spans.traceId: must be a hex string"),
    "int-value-fraction": (attribute({"intValue": 1.5}), "value.intValue: must be an integer"),
    "int-value-exponent": (attribute({"intValue": "1e3"}), "value.intValue: must be an integer"),
    "int-value-bool": (attribute({"intValue": True}), "value.intValue: must be an integer"),
    "int-value-text": (attribute({"intValue": SECRET}), "value.intValue: must be an integer"),
    "double-value-text": (
        attribute({"doubleValue": SECRET}),
        "value.doubleValue: must be a number",
    ),
    "bytes-not-base64": (attribute({"bytesValue": "!!"}), "value.bytesValue: is not base64"),
    "time-negative": (one_span(span_with(startTimeUnixNano="-1")), "wrong type or range"),
    "time-over-64-bits": (one_span(span_with(endTimeUnixNano=2**64)), "wrong type or range"),
    "name-number": (one_span(span_with(name=5)), "wrong type or range"),
    "string-value-number": (attribute({"stringValue": 5}), "wrong type or range"),
    "kind-object": (one_span(span_with(kind={})), "spans.kind: must be an enum number or name"),
    "attributes-object": (
        one_span(span_with(attributes={"key": "k"})),
        "spans.attributes: must be a JSON array",
    ),
    "nested-too-deeply": (nested(400), "nested too deeply"),
    "int-value-too-many-digits": (attribute({"intValue": "9" * 5000}), "must be an integer"),
}


@pytest.mark.parametrize(("document", "message"), ERRORS.values(), ids=ERRORS.keys())
def test_error(document: bytes | Any, message: str) -> None:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    for path in (to_protobuf, otlp_json._exact):
        with pytest.raises(DecodeError) as raised:
            path(body)
        assert message in str(raised.value), path
        assert SECRET not in str(raised.value)
        assert len(str(raised.value)) < 200


def test_error_never_quotes_the_document() -> None:
    document = one_span(
        span_with(
            attributes=[{"key": "api.key", "value": {"stringValue": SECRET}}],
            spanId=SECRET,
        )
    )
    with pytest.raises(DecodeError) as raised:
        to_protobuf(json.dumps(document).encode())
    assert SECRET not in str(raised.value)


# -- the converted bytes are what the decoder reads ------------------------------------


@pytest.fixture
def fixture_document() -> Iterator[dict[str, Any]]:
    yield json.loads(FIXTURE.read_text(encoding="utf-8"))


def test_ids_case_and_key_style_do_not_change_the_bytes(fixture_document: dict[str, Any]) -> None:
    lower = copy.deepcopy(fixture_document)
    for span in lower["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in span:
                span[key] = span[key].lower()
    assert convert(lower) == convert(fixture_document)
