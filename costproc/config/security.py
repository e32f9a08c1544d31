"""The `tls` and `auth` sections shared by the receivers and the exporters."""

from __future__ import annotations

from typing import Any

from costproc.config.model import TLSClientConfig, TLSServerConfig
from costproc.config.reader import Reader, join


def read_tls_server(r: Reader, node: Any, path: str) -> TLSServerConfig | None:
    """A listener's `tls`: certificate, key, optional client CA; None when absent."""
    if node is None:
        return None
    sec = r.section(node, path, {"cert_file", "key_file", "client_ca_file"})
    for key in ("cert_file", "key_file"):
        if key not in sec:
            r.bad(join(path, key), "is required for TLS")
    return TLSServerConfig(
        cert_file=r.get(sec, path, "cert_file", r.readable_file, ""),
        key_file=r.get(sec, path, "key_file", r.readable_file, ""),
        client_ca_file=r.get(sec, path, "client_ca_file", r.readable_file, None),
    )


def read_tls_client(r: Reader, node: Any, path: str) -> TLSClientConfig:
    """An outgoing connection's `tls`: CA, optional client certificate and key."""
    sec = r.section(node, path, {"insecure", "ca_file", "cert_file", "key_file"})
    cfg = TLSClientConfig(
        insecure=r.get(sec, path, "insecure", r.flag, False),
        ca_file=r.get(sec, path, "ca_file", r.readable_file, None),
        cert_file=r.get(sec, path, "cert_file", r.readable_file, None),
        key_file=r.get(sec, path, "key_file", r.readable_file, None),
    )
    if (cfg.cert_file is None) != (cfg.key_file is None):
        r.bad(path, "cert_file and key_file go together")
    return cfg


def read_auth(r: Reader, node: Any, path: str) -> str | None:
    """The bearer token a listener requires, or None when `auth` is absent."""
    if node is None:
        return None
    sec = r.section(node, path, {"bearer_token"})
    token = sec.get("bearer_token")
    if token is None:
        r.bad(join(path, "bearer_token"), "is required when auth is set")
        return None
    if not isinstance(token, str) or not token.strip():
        # Never echo the value: it is a secret even when mistyped.
        r.bad(join(path, "bearer_token"), "must be a non-empty string")
        return None
    return token
