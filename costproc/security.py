"""TLS and bearer-token checks shared by the receivers and the metrics endpoint."""

from __future__ import annotations

import hmac
import ssl
from pathlib import Path

from costproc.config.model import TLSClientConfig, TLSServerConfig

BEARER = "bearer "


def server_ssl_context(tls: TLSServerConfig) -> ssl.SSLContext:
    """A TLS 1.2+ server context; with a client CA, clients must present a certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        context.load_verify_locations(cafile=tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_ssl_context(tls: TLSClientConfig) -> ssl.SSLContext | None:
    """A verifying client context, or None for plaintext (`insecure: true`)."""
    if tls.insecure:
        return None
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def pem(path: str | None) -> bytes | None:
    """A PEM file's bytes (gRPC credentials take bytes, not paths)."""
    return Path(path).read_bytes() if path else None


def bearer_ok(authorization: str | None, token: str) -> bool:
    """True when an `Authorization` value is `Bearer <token>`; compared in constant time."""
    if not authorization or authorization[: len(BEARER)].lower() != BEARER:
        return False
    return hmac.compare_digest(authorization[len(BEARER) :].strip().encode(), token.encode())
