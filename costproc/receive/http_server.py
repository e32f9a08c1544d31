"""OTLP/HTTP trace receiver on aiohttp's low-level server.

    POST /v1/traces -> bearer token -> media type, coding -> refusal? -> body (capped, inflated)
        -> JSON to protobuf -> refusal? -> Intake.take -> ExportTraceServiceResponse

The twin of the gRPC receiver: the same `Intake` decodes, counts and rolls up, so both
protocols agree span for span. Statuses are the ones OTLP/HTTP and the Collector use:
200 (with `partial_success` when spans were rejected), 400 undecodable, 401 no or wrong
token, 404, 405, 413 over `max_request_body_size_mib` before or after decompression,
415 unsupported media type or coding, 503 with Retry-After while refusing. Responses
and `google.rpc.Status` error bodies are encoded as the request was; nothing a request
carries (attribute values, tokens) is logged.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from costproc.config.model import HttpReceiverConfig
from costproc.errors import DecodeError
from costproc.export.http import parse_endpoint
from costproc.receive import otlp_json
from costproc.receive.decode import Decoded
from costproc.receive.intake import RETRY_AFTER_SECONDS, Intake
from costproc.security import bearer_ok, server_ssl_context

log = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
# aiohttp reads a shutdown timeout of 0 as "no limit"; stop(0) means "do not wait".
_MIN_GRACE_SECONDS = 0.05
_GZIP_LEVEL = 6  # responses are small; level 9 buys nothing there


@dataclass(frozen=True, slots=True)
class Encoding:
    """One OTLP/HTTP body encoding: how requests become protobuf, how replies are written."""

    media_type: str
    to_protobuf: Callable[[bytes], bytes]
    encode: Callable[[Message], bytes]


def _as_json(message: Message) -> bytes:
    # The mapping's lowerCamelCase keys; 64-bit integers as strings, as the mapping has it.
    return json_format.MessageToJson(message, indent=None).encode()


PROTOBUF = Encoding("application/x-protobuf", lambda body: body, lambda m: m.SerializeToString())
JSON = Encoding("application/json", otlp_json.to_protobuf, _as_json)
ENCODINGS = {PROTOBUF.media_type: PROTOBUF, JSON.media_type: JSON}
_ACCEPTED = trace_service_pb2.ExportTraceServiceResponse()
_GZIP, _DEFLATE = 16 + zlib.MAX_WBITS, zlib.MAX_WBITS  # zlib's wbits for each framing
_CODINGS = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": _DEFLATE}


class Refused(Exception):
    """A request answered with an error status; `code` is the google.rpc.Code of its body."""

    def __init__(
        self, status: int, code: int, message: str, headers: Mapping[str, str] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class HttpReceiver:
    """Serves POST /v1/traces and hands request bodies to an `Intake`."""

    def __init__(self, config: HttpReceiverConfig, intake: Intake):
        self.config = config
        self.intake = intake
        self.port = 0
        self.limit = config.max_request_body_bytes
        self._runner: web.ServerRunner | None = None

    async def start(self) -> None:
        """Bind and start serving; `port` holds the bound port afterwards."""
        try:
            host, port = parse_endpoint(self.config.endpoint)
        except ValueError as exc:
            raise OSError(str(exc)) from exc
        tls = self.config.tls
        ssl_context = server_ssl_context(tls) if tls is not None else None
        # Access logging off: a log line per request is noise, and headers carry tokens.
        # Decompression is ours, to cap the inflated size; aiohttp's has no cap.
        server = web.Server(self.handle, access_log=None, auto_decompress=False)
        runner = web.ServerRunner(server)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        scheme = "https" if tls is not None else "http"
        log.info("OTLP/HTTP receiver listening on %s (%s, port %d)", host, scheme, self.port)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests; requests in progress get `grace` seconds to finish."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()
        server = runner.server
        if server is not None:
            server.pre_shutdown()
            await server.shutdown(max(grace, _MIN_GRACE_SECONDS))
        await runner.cleanup()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Every request: export, or the error status that says why not."""
        encoding = ENCODINGS.get(request.content_type)
        try:
            return await self.export(request)
        except Refused as refused:
            log.debug("OTLP/HTTP request refused: %d %s", refused.status, refused.message)
            return _error(request, encoding, refused)

    async def export(self, request: web.BaseRequest) -> web.Response:
        """POST /v1/traces, in the order: route, auth, media type, admission, body."""
        if request.path != TRACES_PATH:
            raise Refused(404, code_pb2.NOT_FOUND, f"not found; traces go to POST {TRACES_PATH}")
        if request.method != "POST":
            raise Refused(405, code_pb2.UNIMPLEMENTED, "method not allowed", {"Allow": "POST"})
        self._authenticate(request)
        encoding = ENCODINGS.get(request.content_type)
        if encoding is None:
            supported = ", ".join(ENCODINGS)
            raise Refused(
                415, code_pb2.INVALID_ARGUMENT, f"Content-Type must be one of {supported}"
            )
        coding = _coding(request)
        # Refuse before reading: a client told to come back later need not send its body.
        self._admit()
        wire = await self._read(request)
        try:
            body = encoding.to_protobuf(_inflate(wire, coding, self.limit))
            # Checked again with no await before take(): what is admitted fits (see intake).
            self._admit()
            decoded = self.intake.take(body)
        except DecodeError as exc:
            raise Refused(400, code_pb2.INVALID_ARGUMENT, str(exc)) from None
        return _reply(request, encoding, _response(decoded))

    def _authenticate(self, request: web.BaseRequest) -> None:
        token = self.config.bearer_token
        if token is not None and not bearer_ok(request.headers.get("Authorization"), token):
            raise Refused(
                401,
                code_pb2.UNAUTHENTICATED,
                "missing or wrong bearer token",
                {"WWW-Authenticate": "Bearer"},
            )

    def _admit(self) -> None:
        reason = self.intake.refusal()
        if reason is not None:
            raise Refused(
                503,
                code_pb2.UNAVAILABLE,
                f"costproc is at capacity ({reason}); retry later",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )

    async def _read(self, request: web.BaseRequest) -> bytes:
        """The body as sent, at most `limit` bytes, with or without Content-Length."""
        length = request.content_length
        if length is not None and length > self.limit:
            raise _too_large(self.limit)
        await _continue(request)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > self.limit:
                raise _too_large(self.limit)
            chunks.append(chunk)
        return b"".join(chunks)


def _coding(request: web.BaseRequest) -> int | None:
    """zlib's wbits for the request's Content-Encoding; None for identity; 415 otherwise."""
    name = request.headers.get("Content-Encoding", "").strip().lower()
    if name in ("", "identity"):
        return None
    if name not in _CODINGS:
        raise Refused(
            415, code_pb2.INVALID_ARGUMENT, "Content-Encoding must be gzip, deflate or identity"
        )
    return _CODINGS[name]


async def _continue(request: web.BaseRequest) -> None:
    """Answer `Expect: 100-continue` once the request has passed every check but its body."""
    if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


def _inflate(data: bytes, wbits: int | None, limit: int) -> bytes:
    """The decompressed body, never more than `limit` bytes of it: a small bomb gets 413."""
    if wbits is None:
        return data
    out: list[bytes] = []
    size = 0
    while data:  # a gzip body may hold several members, one after another
        inflater = zlib.decompressobj(wbits)
        try:
            chunk = inflater.decompress(data, limit - size + 1)
        except zlib.error:
            raise Refused(400, code_pb2.INVALID_ARGUMENT, "compressed body is corrupt") from None
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, "decompressed ")
        if not inflater.eof:
            raise Refused(400, code_pb2.INVALID_ARGUMENT, "compressed body is truncated")
        out.append(chunk)
        data = inflater.unused_data
        if data and wbits == _DEFLATE:
            raise Refused(400, code_pb2.INVALID_ARGUMENT, "data after the deflate stream")
    return b"".join(out)


def _too_large(limit: int, what: str = "") -> Refused:
    return Refused(
        413,
        code_pb2.RESOURCE_EXHAUSTED,
        f"{what}body is over max_request_body_size_mib ({limit} bytes)",
    )


def _response(decoded: Decoded) -> trace_service_pb2.ExportTraceServiceResponse:
    if not decoded.rejected:
        return _ACCEPTED
    response = trace_service_pb2.ExportTraceServiceResponse()
    response.partial_success.rejected_spans = sum(decoded.rejected.values())
    response.partial_success.error_message = decoded.rejection_message()
    return response


def _reply(
    request: web.BaseRequest,
    encoding: Encoding,
    message: Message,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """`message` in the request's encoding, gzipped when the client accepts that."""
    body = encoding.encode(message)
    out = dict(headers or {})
    if body and accepts_gzip(request.headers.get("Accept-Encoding")):
        body = gzip.compress(body, _GZIP_LEVEL, mtime=0)
        out["Content-Encoding"] = "gzip"
    return web.Response(status=status, body=body, content_type=encoding.media_type, headers=out)


def _error(request: web.BaseRequest, encoding: Encoding | None, refused: Refused) -> web.Response:
    """A google.rpc.Status in the request's encoding; plain text when it has none we speak."""
    if encoding is None:
        return web.Response(
            status=refused.status, text=refused.message + "\n", headers=refused.headers
        )
    status = status_pb2.Status(code=refused.code, message=refused.message)
    if refused.code == code_pb2.UNAVAILABLE:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromSeconds(RETRY_AFTER_SECONDS)
        status.details.add().Pack(retry)
    return _reply(request, encoding, status, refused.status, refused.headers)


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding value allows gzip (named, or `*`, with q > 0)."""
    if not accept_encoding:
        return False
    wildcard = False
    for item in accept_encoding.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if name in ("gzip", "x-gzip"):
            return _quality(params) > 0
        if name == "*":
            wildcard = _quality(params) > 0
    return wildcard


def _quality(params: str) -> float:
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                return float(value.strip())
            except ValueError:
                return 0.0
    return 1.0
