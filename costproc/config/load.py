"""Read a YAML config into a typed `Config`, naming every problem by its key path.

Loading never stops at the first problem: a `Reader` walks the whole document, records
each bad or unknown key as "path.to.key: what is wrong", and `load_config` raises one
`ConfigError` listing them all, so an operator fixes a file in one pass.

This module holds the top of the schema and the receivers; each other section reads in
its own module (rollup, usage, pricing, exporters, budgets, security).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from costproc.config.budgets import read_budgets
from costproc.config.exporters import read_cost_records, read_forward, read_prometheus
from costproc.config.model import Config, GrpcReceiverConfig, HealthConfig, HttpReceiverConfig
from costproc.config.pricing import read_pricing
from costproc.config.reader import Loader, Reader, expand_env, join
from costproc.config.rollup import read_rollup
from costproc.config.security import read_auth, read_tls_server
from costproc.config.usage import read_usage
from costproc.errors import ConfigError


def default_config_path() -> Path:
    """The bundled default config, `config/costproc.yaml`, as shipped inside the package."""
    # costproc/defaults/costproc.yaml links to config/costproc.yaml in the source tree;
    # building a wheel copies the file, so installed and editable copies read the same.
    return Path(__file__).resolve().parents[1] / "defaults" / "costproc.yaml"


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate a config file (the bundled default when `path` is None)."""
    file = Path(path) if path is not None else default_config_path()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror}"]) from exc
    return parse_config(text)


def parse_config(text: str) -> Config:
    """Validate YAML text into a Config; raise ConfigError naming every problem."""
    problems: list[str] = []
    try:
        doc = yaml.load(text, Loader=Loader)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"]) from exc
    doc = expand_env(doc, "", problems)
    reader = Reader(problems)
    config = _config(reader, doc)
    if problems:
        raise ConfigError(problems)
    return config


def _config(r: Reader, doc: Any) -> Config:
    root = r.section(
        doc,
        "",
        {"receivers", "rollup", "usage", "pricing", "exporters", "extensions", "budgets"},
    )
    receivers = r.section(root.get("receivers"), "receivers", {"otlp"})
    # As in the Collector, a protocol runs when it is listed (an empty entry takes the
    # defaults); a config that does not mention receivers at all runs both.
    otlp_node = receivers.get("otlp") if "receivers" in root else {"grpc": {}, "http": {}}
    otlp = r.section(otlp_node, "receivers.otlp", {"grpc", "http"})
    if "receivers" in root and not otlp:
        r.bad("receivers.otlp", "must list at least one protocol: grpc and/or http")
    exporters = r.section(
        root.get("exporters"), "exporters", {"prometheus", "forward", "cost_records"}
    )
    extensions = r.section(root.get("extensions"), "extensions", {"health_check"})
    return Config(
        grpc=_grpc(r, otlp["grpc"], "receivers.otlp.grpc") if "grpc" in otlp else None,
        http=_http(r, otlp["http"], "receivers.otlp.http") if "http" in otlp else None,
        rollup=read_rollup(r, root.get("rollup"), "rollup"),
        usage=read_usage(r, root.get("usage"), "usage"),
        pricing=read_pricing(r, root.get("pricing"), "pricing"),
        prometheus=read_prometheus(r, exporters.get("prometheus"), "exporters.prometheus"),
        forward=(
            read_forward(r, exporters["forward"], "exporters.forward")
            if exporters.get("forward") is not None
            else None
        ),
        cost_records=(
            read_cost_records(r, exporters["cost_records"], "exporters.cost_records")
            if "cost_records" in exporters
            else None
        ),
        budgets=read_budgets(r, root.get("budgets"), "budgets"),
        health=_health(r, extensions.get("health_check"), "extensions.health_check"),
    )


def _health(r: Reader, node: Any, path: str) -> HealthConfig:
    sec = r.section(node, path, {"endpoint"})
    return HealthConfig(endpoint=r.get(sec, path, "endpoint", r.endpoint, HealthConfig().endpoint))


def _grpc(r: Reader, node: Any, path: str) -> GrpcReceiverConfig:
    d = GrpcReceiverConfig()
    sec = r.section(node, path, {"endpoint", "max_recv_msg_size_mib", "tls", "auth"})
    return GrpcReceiverConfig(
        endpoint=r.get(sec, path, "endpoint", r.endpoint, d.endpoint),
        max_recv_msg_size_mib=r.get(
            sec, path, "max_recv_msg_size_mib", r.number(above=0), d.max_recv_msg_size_mib
        ),
        tls=read_tls_server(r, sec.get("tls"), join(path, "tls")),
        bearer_token=read_auth(r, sec.get("auth"), join(path, "auth")),
    )


def _http(r: Reader, node: Any, path: str) -> HttpReceiverConfig:
    d = HttpReceiverConfig()
    sec = r.section(node, path, {"endpoint", "max_request_body_size_mib", "tls", "auth"})
    return HttpReceiverConfig(
        endpoint=r.get(sec, path, "endpoint", r.endpoint, d.endpoint),
        max_request_body_size_mib=r.get(
            sec,
            path,
            "max_request_body_size_mib",
            r.number(above=0),
            d.max_request_body_size_mib,
        ),
        tls=read_tls_server(r, sec.get("tls"), join(path, "tls")),
        bearer_token=read_auth(r, sec.get("auth"), join(path, "auth")),
    )
