"""OTLP trace export downstream over gRPC or HTTP, behind one `Transport` interface.

Each attempt comes back as a `Result`: sent (perhaps with an OTLP partial success), or
failed, retryable or not as the OTLP specification says, with the server's retry delay
hint (gRPC RetryInfo, HTTP Retry-After) when it gave one.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
import grpc
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from costproc.config.model import ForwardConfig
from costproc.security import client_ssl_context, pem

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_GZIP_LEVEL = 6  # zlib's default; 9 costs several times the CPU for a few percent
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


def transport_for(config: ForwardConfig) -> Transport:
    """The transport for `config.protocol`: gRPC, or else HTTP."""
    return GrpcTransport(config) if config.protocol == "grpc" else HttpTransport(config)


# -- gRPC ------------------------------------------------------------------------------


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


# -- HTTP ------------------------------------------------------------------------------


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
        return http_result(status, payload, protobuf, retry_after)

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()


def http_result(status: int, payload: bytes, protobuf: bool, retry_after: str | None) -> Result:
    """Classify an OTLP/HTTP answer: 2xx is sent, 429, 502, 503 and 504 are retryable."""
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
