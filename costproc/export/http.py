"""HTTP endpoints: Prometheus scrapes `/metrics`, probes ask `/` or `/health`.

request -> daemon server thread -> respond(path, headers) -> Response -> socket

Each server runs a ThreadingHTTPServer in a daemon thread and formats on the
request's own thread, so the event loop never waits for a scraper or a probe.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from costproc.config.model import HealthConfig, PrometheusConfig

log = logging.getLogger(__name__)

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_POLL_SECONDS = 0.1


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """Split `host:port`, `[ipv6]:port` or `:port` (all interfaces) into host and port."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"endpoint must be host:port, got {endpoint!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 endpoint needs brackets, [host]:port, got {endpoint!r}")
    return host or "0.0.0.0", int(port)


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


_NOT_FOUND = _Response(404, _TEXT, b"not found\n")
_Respond = Callable[[str, Message], _Response]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, respond: _Respond) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.respond = respond
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall on DNS.
        TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # A client that stops mid-request must not hold a thread for ever.
    timeout = 30.0

    def do_GET(self) -> None:
        try:
            response = self.server.respond(urlsplit(self.path).path, self.headers)
        except Exception:
            log.exception("failed to serve %s", self.path)
            response = _Response(500, _TEXT, b"internal error\n")
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        # Scrapes and probes come every few seconds; access lines would drown real logs.
        log.debug("%s " + format, self.address_string(), *args)


class _Endpoint:
    """One HTTP server on one endpoint, served from a daemon thread."""

    def __init__(self, name: str, endpoint: str, respond: _Respond) -> None:
        self.host, self._configured_port = parse_endpoint(endpoint)
        self._name = name
        self._respond = respond
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port, the real one when the endpoint asked for port 0."""
        if self._server is None:
            raise RuntimeError(f"the {self._name} server is not started")
        return self._server.server_port

    def start(self) -> None:
        """Bind the endpoint and serve from a daemon thread."""
        if self._server is not None:
            raise RuntimeError(f"the {self._name} server is already started")
        server = _Server(self.host, self._configured_port, self._respond)
        thread = threading.Thread(
            target=server.serve_forever,
            # The loop notices shutdown() only between polls; keep shutdown prompt.
            kwargs={"poll_interval": _POLL_SECONDS},
            name=f"costproc-{self._name}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        log.info("serving %s on %s port %d", self._name, self.host, server.server_port)

    def shutdown(self) -> None:
        """Stop serving and release the port; does nothing when not started."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()


class MetricsServer(_Endpoint):
    """Serves a registry on `/metrics`: OpenMetrics with exemplars when asked, else text."""

    def __init__(self, config: PrometheusConfig, registry: CollectorRegistry) -> None:
        super().__init__("metrics", config.endpoint, self._metrics)
        self._registry = registry

    def _metrics(self, path: str, headers: Message) -> _Response:
        if path != "/metrics":
            return _NOT_FOUND
        encode, content_type = choose_encoder(headers.get("Accept", ""))
        body = encode(self._registry)
        if gzip_accepted(headers.get("Accept-Encoding", "")):
            return _Response(
                200, content_type, gzip.compress(body), (("Content-Encoding", "gzip"),)
            )
        return _Response(200, content_type, body)


class HealthServer(_Endpoint):
    """Answers `/` and `/health`: 200 while `is_healthy()` holds, 503 otherwise."""

    def __init__(self, config: HealthConfig, is_healthy: Callable[[], bool]) -> None:
        super().__init__("health", config.endpoint, self._health)
        self._is_healthy = is_healthy

    def _health(self, path: str, headers: Message) -> _Response:
        if path not in ("/", "/health"):
            return _NOT_FOUND
        try:
            healthy = self._is_healthy()
        except Exception:
            # A check that cannot decide is a failed check, not a server error.
            log.exception("health check raised")
            healthy = False
        if healthy:
            return _Response(200, _JSON, json.dumps({"status": "ok"}).encode())
        return _Response(503, _JSON, json.dumps({"status": "unavailable"}).encode())
