"""HTTP endpoints: Prometheus scrapes `/metrics`, probes ask `/` or `/health`.

request -> daemon server thread -> respond(path, headers) -> Response -> socket

Each server runs a ThreadingHTTPServer in a daemon thread and formats on the
request's own thread, so the event loop never waits for a scraper or a probe. With
`tls`, the metrics endpoint speaks only HTTPS (mTLS with `client_ca_file`); the TLS
handshake also runs on the request's thread, so a client that stalls or fails it holds
up no one else. The health endpoint stays plain HTTP (see HealthServer).
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from costproc.config.model import HealthConfig, PrometheusConfig, TLSServerConfig
from costproc.security import server_ssl_context

log = logging.getLogger(__name__)

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_POLL_SECONDS = 0.1
# A client gets this long to finish a TLS handshake before its thread gives up on it.
_HANDSHAKE_SECONDS = 10.0


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
    # Shutdown must not wait on a stalled scraper's connection (up to its timeout).
    block_on_close = False

    def __init__(
        self, host: str, port: int, respond: _Respond, tls: ssl.SSLContext | None = None
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.respond = respond
        super().__init__((host, port), _Handler)
        if tls is not None:
            # Without the handshake on accept, the serving loop never waits on a client.
            self.socket = tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall on DNS.
        TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def finish_request(self, request: Any, client_address: Any) -> None:
        # On the request's thread; a failed handshake ends this connection only.
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(_HANDSHAKE_SECONDS)
            try:
                request.do_handshake()
            except OSError as exc:
                log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Handler errors are logged in do_GET; what reaches here is a connection dropped
        # or reset mid-request, not worth the traceback socketserver prints to stderr.
        log.debug("connection from %s failed", client_address[0], exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # A client that stops mid-request must not hold a thread for ever.
    timeout = 30.0

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        try:
            response = self.server.respond(path, self.headers)
        except Exception:
            log.exception("failed to serve %s", path)
            response = _Response(500, _TEXT, b"internal error\n")
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    # Scrapes and probes come every few seconds, so access lines are debug only. They name
    # the path alone: a query string, or the raw line of a malformed request, could carry
    # a credential.
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = urlsplit(self.path).path
        status = code.value if isinstance(code, HTTPStatus) else code
        log.debug("%s %s %s %s", self.address_string(), self.command, path, status)

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("%s sent a request that could not be served", self.address_string())


class _Endpoint:
    """One HTTP server on one endpoint, served from a daemon thread."""

    def __init__(
        self, name: str, endpoint: str, respond: _Respond, tls: TLSServerConfig | None = None
    ) -> None:
        self.host, self._configured_port = parse_endpoint(endpoint)
        self._name = name
        self._respond = respond
        self._tls = tls
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
        context = None
        if self._tls is not None:
            try:
                context = server_ssl_context(self._tls)
            except OSError as exc:
                raise OSError(f"cannot load its TLS certificate, key or client CA: {exc}") from exc
        server = _Server(self.host, self._configured_port, self._respond, context)
        thread = threading.Thread(
            target=server.serve_forever,
            # The loop notices shutdown() only between polls; keep shutdown prompt.
            kwargs={"poll_interval": _POLL_SECONDS},
            name=f"costproc-{self._name}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        scheme = "HTTP" if context is None else "HTTPS"
        log.info("serving %s on %s port %d (%s)", self._name, self.host, server.server_port, scheme)

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
        super().__init__("metrics", config.endpoint, self._metrics, config.tls)
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


# Plain HTTP on purpose: kubelet probes do not verify a server certificate and cannot
# present a client one, so TLS here would protect nothing and mTLS would fail every probe;
# the answer reveals only whether the process serves.
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
