"""The transport ceiling: an OTLP trace gRPC server that answers without parsing.

Every Export call gets the serialized empty ExportTraceServiceResponse (zero bytes)
back; the request bytes are never deserialized. What this server sustains is the most
any Python gRPC receiver on the same machine can.

Usage: python canned_server.py --port PORT   (stops on SIGTERM or SIGINT)
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
EMPTY_RESPONSE = b""  # ExportTraceServiceResponse() serializes to no bytes


async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    """Accept the raw request and return the canned response."""
    return EMPTY_RESPONSE


def handler() -> grpc.GenericRpcHandler:
    """Export as a raw-bytes unary method: no (de)serializers on either side."""
    method = grpc.unary_unary_rpc_method_handler(
        export, request_deserializer=None, response_serializer=None
    )
    return grpc.method_handlers_generic_handler(SERVICE, {"Export": method})


async def serve(port: int) -> None:
    """Serve on loopback until a termination signal arrives."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


def main() -> None:
    """Parse the port and serve."""
    parser = argparse.ArgumentParser(description="OTLP trace server that never parses")
    parser.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
