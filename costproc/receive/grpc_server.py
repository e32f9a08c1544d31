"""OTLP/gRPC trace receiver on `grpc.aio`.

    Export(bytes) -> Decoder.decode -> intake counts -> deliver(spans) -> response

The request stays raw bytes until our own decoder parses it once; a request that is not
an ExportTraceServiceRequest gets INVALID_ARGUMENT, a request with bad spans gets
`partial_success` naming the reasons, and the good spans are kept. With `tls` the port
speaks only TLS (mTLS with `client_ca_file`); with `bearer_token` an interceptor answers
UNAUTHENTICATED to any call without the token, before its body is looked at.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from costproc.config.model import GrpcReceiverConfig, TLSServerConfig
from costproc.errors import DecodeError
from costproc.receive.intake import RETRY_AFTER_SECONDS, Intake
from costproc.security import bearer_ok, pem, server_ssl_context

log = logging.getLogger(__name__)

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
_EMPTY_RESPONSE = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()


class GrpcReceiver:
    """Serves TraceService/Export and hands request bodies to an `Intake`."""

    def __init__(self, config: GrpcReceiverConfig, intake: Intake):
        self.config = config
        self.intake = intake
        self.port = 0
        interceptors = [BearerAuth(config.bearer_token)] if config.bearer_token else []
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", config.max_recv_msg_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Export": grpc.unary_unary_rpc_method_handler(
                    self.export, request_deserializer=None, response_serializer=None
                )
            },
        )
        self._server.add_generic_rpc_handlers((handler,))

    async def start(self) -> None:
        """Bind and start serving; `port` holds the bound port afterwards."""
        endpoint, tls = self.config.endpoint, self.config.tls
        try:
            if tls is None:
                self.port = self._server.add_insecure_port(endpoint)
            else:
                self.port = self._server.add_secure_port(endpoint, _credentials(tls))
        except RuntimeError as exc:  # grpcio reports a taken or bad address this way
            raise OSError(str(exc)) from exc
        if self.port == 0:
            raise OSError(f"cannot listen for OTLP/gRPC on {endpoint}")
        await self._server.start()
        log.info(
            "OTLP/gRPC receiver listening on %s (port %d, %s%s)",
            endpoint,
            self.port,
            "plaintext" if tls is None else "mTLS" if tls.client_ca_file else "TLS",
            ", bearer token required" if self.config.bearer_token else "",
        )

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls; calls in progress get `grace` seconds to finish."""
        await self._server.stop(grace)

    async def export(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """TraceService/Export on raw bytes."""
        refusal = self.intake.refusal()
        if refusal is not None:
            _refuse(context, refusal)
            return b""
        try:
            decoded = self.intake.take(body)
        except DecodeError as exc:
            context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            context.set_details(str(exc))
            return b""
        if not decoded.rejected:
            return _EMPTY_RESPONSE
        response = trace_service_pb2.ExportTraceServiceResponse()
        response.partial_success.rejected_spans = sum(decoded.rejected.values())
        response.partial_success.error_message = decoded.rejection_message()
        return response.SerializeToString()


# grpc ships no type stubs, so its base class is Any to mypy; the server insists on it.
class BearerAuth(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Answers UNAUTHENTICATED to every call without `authorization: Bearer <token>`."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        details: Any,
    ) -> Any:
        """The method's own handler when the call carries the token, else one that refuses."""
        handler = await continuation(details)
        if handler is None or bearer_ok(_authorization(details.invocation_metadata), self._token):
            return handler
        # Neither the value sent nor the token: a log line must not help guess either.
        log.debug("refused a call to %s: missing or wrong bearer token", details.method)
        refuse = _REFUSING[(handler.request_streaming, handler.response_streaming)]
        return refuse(_unauthenticated)


# A refusing handler must have the shape of the method it stands in for.
_REFUSING: dict[tuple[bool, bool], Callable[..., Any]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


async def _unauthenticated(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")


def _authorization(metadata: Any) -> str | None:
    """The first `authorization` value of a call's metadata (gRPC lowercases keys)."""
    for key, value in metadata or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


def _credentials(tls: TLSServerConfig) -> Any:
    """Server credentials; with a client CA, a client without a certificate it signed fails."""
    # grpcio reports an unusable certificate or key only as a failure to bind; loading
    # them into an ssl context first names the real problem.
    try:
        server_ssl_context(tls)
    except OSError as exc:
        raise OSError(f"cannot load its TLS certificate, key or client CA: {exc}") from exc
    client_ca = pem(tls.client_ca_file)
    return grpc.ssl_server_credentials(
        [(pem(tls.key_file), pem(tls.cert_file))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _refuse(context: grpc.aio.ServicerContext, reason: str) -> None:
    """UNAVAILABLE with RetryInfo, which OTLP exporters honour as "retry after"."""
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromSeconds(RETRY_AFTER_SECONDS)
    message = f"costproc is at capacity ({reason}); retry later"
    status = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message=message)
    status.details.add().Pack(retry)
    context.set_trailing_metadata(
        (
            ("grpc-status-details-bin", status.SerializeToString()),
            ("google.rpc.retryinfo-bin", retry.SerializeToString()),
        )
    )
    context.set_code(grpc.StatusCode.UNAVAILABLE)
    context.set_details(message)
