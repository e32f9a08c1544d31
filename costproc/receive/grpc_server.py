"""OTLP/gRPC trace receiver on `grpc.aio`.

    Export(bytes) -> Decoder.decode -> intake counts -> deliver(spans) -> response

The request stays raw bytes until our own decoder parses it once; a request that is not
an ExportTraceServiceRequest gets INVALID_ARGUMENT, a request with bad spans gets
`partial_success` naming the reasons, and the good spans are kept.
"""

from __future__ import annotations

import logging

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from costproc.config.model import GrpcReceiverConfig
from costproc.errors import DecodeError
from costproc.receive.intake import RETRY_AFTER_SECONDS, Intake

log = logging.getLogger(__name__)

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
MIB = 1024 * 1024
_EMPTY_RESPONSE = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()


class GrpcReceiver:
    """Serves TraceService/Export and hands request bodies to an `Intake`."""

    def __init__(self, config: GrpcReceiverConfig, intake: Intake):
        self.config = config
        self.intake = intake
        self.port = 0
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", int(config.max_recv_msg_size_mib * MIB)),
                ("grpc.so_reuseport", 0),
            ]
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
        endpoint = self.config.endpoint
        try:
            self.port = self._server.add_insecure_port(endpoint)
        except RuntimeError as exc:  # grpcio reports a taken or bad address this way
            raise OSError(str(exc)) from exc
        if self.port == 0:
            raise OSError(f"cannot listen for OTLP/gRPC on {endpoint}")
        await self._server.start()
        log.info("OTLP/gRPC receiver listening on %s (port %d)", endpoint, self.port)

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
