"""OTLP/gRPC trace receiver on `grpc.aio`.

    Export(bytes) -> Decoder.decode -> intake counts -> deliver(spans) -> response

The request stays raw bytes until our own decoder parses it once; a request that is not
an ExportTraceServiceRequest gets INVALID_ARGUMENT, a request with bad spans gets
`partial_success` naming the reasons, and the good spans are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from costproc.errors import DecodeError
from costproc.model import IntakeSink, SpanRecord
from costproc.receive.decode import Decoder

log = logging.getLogger(__name__)

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
_EMPTY_RESPONSE = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()


class GrpcReceiver:
    """Serves TraceService/Export and hands decoded spans to `deliver`."""

    def __init__(
        self,
        endpoint: str,
        max_message_bytes: int,
        decoder: Decoder,
        intake: IntakeSink,
        deliver: Callable[[list[SpanRecord]], None],
    ):
        self.endpoint = endpoint
        self.decoder = decoder
        self.intake = intake
        self.deliver = deliver
        self.port = 0
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
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
        try:
            self.port = self._server.add_insecure_port(self.endpoint)
        except RuntimeError as exc:  # grpcio reports a taken or bad address this way
            raise OSError(str(exc)) from exc
        if self.port == 0:
            raise OSError(f"cannot listen for OTLP/gRPC on {self.endpoint}")
        await self._server.start()
        log.info("OTLP/gRPC receiver listening on %s (port %d)", self.endpoint, self.port)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls; calls in progress get `grace` seconds to finish."""
        await self._server.stop(grace)

    async def export(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """TraceService/Export on raw bytes."""
        try:
            decoded = self.decoder.decode(body)
        except DecodeError as exc:
            context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            context.set_details(str(exc))
            return b""
        self.intake.spans_received(decoded.received)
        for reason, count in decoded.rejected.items():
            self.intake.spans_rejected(reason, count)
        if decoded.spans:
            self.deliver(decoded.spans)
        if not decoded.rejected:
            return _EMPTY_RESPONSE
        response = trace_service_pb2.ExportTraceServiceResponse()
        response.partial_success.rejected_spans = sum(decoded.rejected.values())
        response.partial_success.error_message = decoded.rejection_message()
        return response.SerializeToString()
