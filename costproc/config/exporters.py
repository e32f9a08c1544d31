"""The `exporters` sections: the Prometheus endpoint, forwarding, and cost records."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from costproc.config.model import CostRecordsConfig, ForwardConfig, PrometheusConfig, RetryConfig
from costproc.config.reader import ENDPOINT, Reader, join
from costproc.config.security import read_tls_client, read_tls_server


def read_prometheus(r: Reader, node: Any, path: str) -> PrometheusConfig:
    """`exporters.prometheus`: the scrape endpoint, label cap and buckets."""
    d = PrometheusConfig()
    known = {"endpoint", "max_label_values", "buckets", "tls"}
    sec = r.section(node, path, known)
    bpath = join(path, "buckets")
    buckets = r.section(sec.get("buckets"), bpath, {"cost", "duration", "usage", "egress_bytes"})
    return PrometheusConfig(
        endpoint=r.get(sec, path, "endpoint", r.endpoint, d.endpoint),
        max_label_values=r.get(sec, path, "max_label_values", r.integer(1), d.max_label_values),
        cost_buckets=r.get(buckets, bpath, "cost", r.buckets, d.cost_buckets),
        duration_buckets=r.get(buckets, bpath, "duration", r.buckets, d.duration_buckets),
        usage_buckets=r.get(buckets, bpath, "usage", r.buckets, d.usage_buckets),
        egress_buckets=r.get(buckets, bpath, "egress_bytes", r.buckets, d.egress_buckets),
        tls=read_tls_server(r, sec.get("tls"), join(path, "tls")),
    )


def read_forward(r: Reader, node: Any, path: str) -> ForwardConfig:
    """`exporters.forward`: where and how requests are sent downstream."""
    known = {
        "endpoint",
        "protocol",
        "tls",
        "headers",
        "compression",
        "timeout",
        "queue_size",
        "retry_on_failure",
        "cost_spans",
    }
    sec = r.section(node, path, known)
    protocol = r.get(sec, path, "protocol", r.text, "grpc")
    if protocol not in ("grpc", "http"):
        r.bad(join(path, "protocol"), f"must be grpc or http, got {protocol!r}")
    endpoint = r.text(sec.get("endpoint"), join(path, "endpoint"))
    if protocol == "http" and endpoint and not endpoint.startswith(("http://", "https://")):
        r.bad(join(path, "endpoint"), f"must be an http:// or https:// URL, got {endpoint!r}")
    if protocol == "grpc" and endpoint and not ENDPOINT.match(endpoint):
        r.bad(join(path, "endpoint"), f"must be host:port for grpc, got {endpoint!r}")
    compression = r.get(sec, path, "compression", r.text, "gzip")
    if compression not in ("gzip", "none"):
        r.bad(join(path, "compression"), f"must be gzip or none, got {compression!r}")
    headers_node = sec.get("headers") or {}
    if not isinstance(headers_node, Mapping):
        r.bad(join(path, "headers"), "must be a mapping of header name to value")
        headers_node = {}
    d = ForwardConfig(endpoint="")
    rpath = join(path, "retry_on_failure")
    retry = r.section(
        sec.get("retry_on_failure"),
        rpath,
        {"initial_interval", "max_interval", "max_elapsed_time"},
    )
    return ForwardConfig(
        endpoint=endpoint,
        protocol=protocol,
        tls=read_tls_client(r, sec.get("tls"), join(path, "tls")),
        headers=tuple(
            (str(k).lower(), r.text(v, join(join(path, "headers"), str(k))))
            for k, v in headers_node.items()
        ),
        compression=compression,
        timeout=r.get(sec, path, "timeout", r.duration, d.timeout),
        queue_size=r.get(sec, path, "queue_size", r.integer(1), d.queue_size),
        retry=RetryConfig(
            initial_interval=r.get(
                retry, rpath, "initial_interval", r.duration, d.retry.initial_interval
            ),
            max_interval=r.get(retry, rpath, "max_interval", r.duration, d.retry.max_interval),
            max_elapsed_time=r.get(
                retry, rpath, "max_elapsed_time", r.duration, d.retry.max_elapsed_time
            ),
        ),
        cost_spans=r.get(sec, path, "cost_spans", r.flag, d.cost_spans),
    )


def read_cost_records(r: Reader, node: Any, path: str) -> CostRecordsConfig:
    """`exporters.cost_records`: stdout or a size-rotated file."""
    d = CostRecordsConfig()
    sec = r.section(node, path, {"path", "max_size_mib", "max_backups"})
    target = r.get(sec, path, "path", r.text, d.path)
    if target != "stdout" and not os.path.isdir(os.path.dirname(os.path.abspath(target))):
        r.bad(join(path, "path"), f"directory of {target!r} does not exist")
    return CostRecordsConfig(
        path=target,
        max_size_mib=r.get(sec, path, "max_size_mib", r.number(above=0), d.max_size_mib),
        max_backups=r.get(sec, path, "max_backups", r.integer(0), d.max_backups),
    )
