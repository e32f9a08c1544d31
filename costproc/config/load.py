"""Read a YAML config into a typed `Config`, naming every problem by its key path.

Loading never stops at the first problem: a `_Reader` walks the whole document, records
each bad or unknown key as "path.to.key: what is wrong", and `load_config` raises one
`ConfigError` listing them all, so an operator fixes a file in one pass.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import yaml

from costproc.config.model import (
    Allocation,
    BudgetsConfig,
    Config,
    CostRecordsConfig,
    EgressRule,
    ForwardConfig,
    GrpcReceiverConfig,
    HealthConfig,
    HttpReceiverConfig,
    JobCostBudget,
    Match,
    MeteredRule,
    Override,
    PriceTable,
    PricingConfig,
    PrometheusConfig,
    ResourcePrices,
    RetryConfig,
    RollupConfig,
    SpendBudget,
    TLSClientConfig,
    TLSServerConfig,
    UsageConfig,
)
from costproc.errors import ConfigError

T = TypeVar("T")

_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_ENDPOINT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]*):(\d{1,5})$")

# Resource prices may be written per second or per hour; hourly ones are converted.
# Each key maps to (field, seconds per unit of the key).
_RESOURCE_PRICE_KEYS = {
    "cpu_core_second": ("cpu_core_second", 1),
    "cpu_core_hour": ("cpu_core_second", 3600),
    "memory_gb_second": ("memory_gb_second", 1),
    "memory_gb_hour": ("memory_gb_second", 3600),
    "gpu_second": ("gpu_second", 1),
    "gpu_hour": ("gpu_second", 3600),
}


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `2e-6` as a float, as YAML 1.2 does (1.1 wants `2.0e-6`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


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
        doc = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"]) from exc
    doc = _expand_env(doc, "", problems)
    reader = _Reader(problems)
    config = reader.config(doc)
    if problems:
        raise ConfigError(problems)
    return config


def _expand_env(node: Any, path: str, problems: list[str]) -> Any:
    """Expand `${env:VAR}` (and `${env:VAR:-default}`) in string values, keeping types.

    A value that is one reference alone is re-read as YAML, so `${env:PORT}` can be a
    number, as in the OpenTelemetry Collector.
    """
    if isinstance(node, Mapping):
        return {k: _expand_env(v, _join(path, str(k)), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, _join(path, i), problems) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${env:" not in node:
        return node

    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            if m.group(2) is not None:
                return m.group(2)
            problems.append(f"{path}: environment variable {m.group(1)} is not set")
            return ""
        return value

    expanded = _ENV_REF.sub(sub, node)
    if _ENV_REF.fullmatch(node):
        try:
            return yaml.load(expanded, Loader=_Loader)
        except yaml.YAMLError:
            return expanded
    return expanded


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class _Reader:
    """Walks the YAML tree; every accessor records problems instead of raising."""

    def __init__(self, problems: list[str]):
        self.problems = problems

    def bad(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    # -- generic accessors -------------------------------------------------

    def section(self, node: Any, path: str, known: set[str]) -> dict[str, Any]:
        if node is None:
            return {}
        if not isinstance(node, Mapping):
            self.bad(path or "<root>", f"must be a mapping, got {type(node).__name__}")
            return {}
        for key in node:
            if key not in known:
                self.bad(_join(path, str(key)), f"unknown key (known: {', '.join(sorted(known))})")
        return dict(node)

    def get(
        self,
        node: Mapping[str, Any],
        path: str,
        key: str,
        parse: Callable[[Any, str], T],
        default: T,
    ) -> T:
        if key not in node or node[key] is None:
            return default
        return parse(node[key], _join(path, key))

    def number(
        self, minimum: float | None = None, above: float | None = None
    ) -> Callable[[Any, str], float]:
        def parse(value: Any, path: str) -> float:
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                self.bad(path, f"must be a finite number, got {value!r}")
                return 0.0
            if minimum is not None and value < minimum:
                self.bad(path, f"must be >= {minimum}, got {value!r}")
            if above is not None and value <= above:
                self.bad(path, f"must be > {above}, got {value!r}")
            return float(value)

        return parse

    def integer(self, minimum: int) -> Callable[[Any, str], int]:
        def parse(value: Any, path: str) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.bad(path, f"must be an integer, got {value!r}")
                return minimum
            if value < minimum:
                self.bad(path, f"must be >= {minimum}, got {value!r}")
            return value

        return parse

    def text(self, value: Any, path: str) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
            self.bad(path, f"must be a non-empty string, got {value!r}")
            return ""
        return str(value)

    def flag(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            self.bad(path, f"must be true or false, got {value!r}")
            return False
        return value

    def duration(self, value: Any, path: str) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            m = _DURATION.match(str(value))
            if m is None:
                self.bad(path, f"must be a duration like 500ms, 2s, 5m, 1h or 30d, got {value!r}")
                return 0.0
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        if seconds < 0 or not math.isfinite(seconds):
            self.bad(path, f"must be a non-negative duration, got {value!r}")
        return seconds

    def endpoint(self, value: Any, path: str) -> str:
        text = self.text(value, path)
        m = _ENDPOINT.match(text)
        if text and (m is None or int(m.group(2)) > 65535):
            self.bad(path, f"must be host:port (port 0-65535), got {value!r}")
        return text

    def strings(self, value: Any, path: str) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.bad(path, f"must be a non-empty list of strings, got {value!r}")
            return ()
        return tuple(self.text(v, _join(path, i)) for i, v in enumerate(value))

    def buckets(self, value: Any, path: str) -> tuple[float, ...]:
        if not isinstance(value, list) or not value:
            self.bad(path, "must be a non-empty list of numbers")
            return (1.0,)
        parsed = tuple(self.number()(v, _join(path, i)) for i, v in enumerate(value))
        if any(b <= a for a, b in pairwise(parsed)):
            self.bad(path, "must be strictly increasing")
        return parsed

    def matches(self, value: Any, path: str) -> tuple[Match, ...]:
        """`{attr: value}` for equality, `{attr: {regex: "..."}}` for a full regex match."""
        if not isinstance(value, Mapping) or not value:
            self.bad(path, "must be a non-empty mapping of attribute to value or {regex: ...}")
            return ()
        out: list[Match] = []
        for key, want in value.items():
            sub = _join(path, str(key))
            if isinstance(want, Mapping):
                spec = self.section(want, sub, {"regex"})
                pattern = self.text(spec.get("regex"), _join(sub, "regex"))
                try:
                    out.append(Match(str(key), regex=re.compile(pattern)))
                except re.error as exc:
                    self.bad(_join(sub, "regex"), f"invalid regular expression: {exc}")
            elif want is None or isinstance(want, list):
                self.bad(sub, f"must be a value or {{regex: ...}}, got {want!r}")
            else:
                out.append(Match(str(key), equals=_scalar_text(want)))
        return tuple(out)

    def unique(self, values: Sequence[str | int], path: str, key: str) -> None:
        """Report each repeat of `key` among the items of the list at `path`, in order."""
        first: dict[str | int, int] = {}
        for i, value in enumerate(values):
            if value in ("", 0):
                continue  # missing or invalid, reported where it was read
            if value in first:
                self.bad(_join(_join(path, i), key), f"same as in {_join(path, first[value])}")
            first.setdefault(value, i)

    # -- sections ----------------------------------------------------------

    def config(self, doc: Any) -> Config:
        root = self.section(
            doc,
            "",
            {"receivers", "rollup", "usage", "pricing", "exporters", "extensions", "budgets"},
        )
        receivers = self.section(root.get("receivers"), "receivers", {"otlp"})
        # As in the Collector, a protocol runs when it is listed (an empty entry takes the
        # defaults); a config that does not mention receivers at all runs both.
        otlp_node = receivers.get("otlp") if "receivers" in root else {"grpc": {}, "http": {}}
        otlp = self.section(otlp_node, "receivers.otlp", {"grpc", "http"})
        if "receivers" in root and not otlp:
            self.bad("receivers.otlp", "must list at least one protocol: grpc and/or http")
        exporters = self.section(
            root.get("exporters"), "exporters", {"prometheus", "forward", "cost_records"}
        )
        extensions = self.section(root.get("extensions"), "extensions", {"health_check"})
        return Config(
            grpc=self.grpc(otlp["grpc"], "receivers.otlp.grpc") if "grpc" in otlp else None,
            http=self.http(otlp["http"], "receivers.otlp.http") if "http" in otlp else None,
            rollup=self.rollup(root.get("rollup"), "rollup"),
            usage=self.usage(root.get("usage"), "usage"),
            pricing=self.pricing(root.get("pricing"), "pricing"),
            prometheus=self.prometheus(exporters.get("prometheus"), "exporters.prometheus"),
            forward=(
                self.forward(exporters["forward"], "exporters.forward")
                if exporters.get("forward") is not None
                else None
            ),
            cost_records=(
                self.cost_records(exporters["cost_records"], "exporters.cost_records")
                if "cost_records" in exporters
                else None
            ),
            budgets=self.budgets(root.get("budgets"), "budgets"),
            health=HealthConfig(
                endpoint=self.get(
                    self.section(
                        extensions.get("health_check"), "extensions.health_check", {"endpoint"}
                    ),
                    "extensions.health_check",
                    "endpoint",
                    self.endpoint,
                    HealthConfig().endpoint,
                )
            ),
        )

    def grpc(self, node: Any, path: str) -> GrpcReceiverConfig:
        d = GrpcReceiverConfig()
        sec = self.section(node, path, {"endpoint", "max_recv_msg_size_mib", "tls", "auth"})
        return GrpcReceiverConfig(
            endpoint=self.get(sec, path, "endpoint", self.endpoint, d.endpoint),
            max_recv_msg_size_mib=self.get(
                sec, path, "max_recv_msg_size_mib", self.number(above=0), d.max_recv_msg_size_mib
            ),
            tls=self.tls_server(sec.get("tls"), _join(path, "tls")),
            bearer_token=self.auth(sec.get("auth"), _join(path, "auth")),
        )

    def http(self, node: Any, path: str) -> HttpReceiverConfig:
        d = HttpReceiverConfig()
        sec = self.section(node, path, {"endpoint", "max_request_body_size_mib", "tls", "auth"})
        return HttpReceiverConfig(
            endpoint=self.get(sec, path, "endpoint", self.endpoint, d.endpoint),
            max_request_body_size_mib=self.get(
                sec,
                path,
                "max_request_body_size_mib",
                self.number(above=0),
                d.max_request_body_size_mib,
            ),
            tls=self.tls_server(sec.get("tls"), _join(path, "tls")),
            bearer_token=self.auth(sec.get("auth"), _join(path, "auth")),
        )

    def readable_file(self, value: Any, path: str) -> str:
        """A path to a file that exists and can be read now, at start-up."""
        name = self.text(value, path)
        if name and not os.access(name, os.R_OK):
            self.bad(path, f"cannot read file {name!r}")
        return name

    def tls_server(self, node: Any, path: str) -> TLSServerConfig | None:
        if node is None:
            return None
        sec = self.section(node, path, {"cert_file", "key_file", "client_ca_file"})
        for key in ("cert_file", "key_file"):
            if key not in sec:
                self.bad(_join(path, key), "is required for TLS")
        return TLSServerConfig(
            cert_file=self.get(sec, path, "cert_file", self.readable_file, ""),
            key_file=self.get(sec, path, "key_file", self.readable_file, ""),
            client_ca_file=self.get(sec, path, "client_ca_file", self.readable_file, None),
        )

    def tls_client(self, node: Any, path: str) -> TLSClientConfig:
        sec = self.section(node, path, {"insecure", "ca_file", "cert_file", "key_file"})
        cfg = TLSClientConfig(
            insecure=self.get(sec, path, "insecure", self.flag, False),
            ca_file=self.get(sec, path, "ca_file", self.readable_file, None),
            cert_file=self.get(sec, path, "cert_file", self.readable_file, None),
            key_file=self.get(sec, path, "key_file", self.readable_file, None),
        )
        if (cfg.cert_file is None) != (cfg.key_file is None):
            self.bad(path, "cert_file and key_file go together")
        return cfg

    def auth(self, node: Any, path: str) -> str | None:
        if node is None:
            return None
        sec = self.section(node, path, {"bearer_token"})
        token = sec.get("bearer_token")
        if token is None:
            self.bad(_join(path, "bearer_token"), "is required when auth is set")
            return None
        if not isinstance(token, str) or not token.strip():
            # Never echo the value: it is a secret even when mistyped.
            self.bad(_join(path, "bearer_token"), "must be a non-empty string")
            return None
        return token

    def rollup(self, node: Any, path: str) -> RollupConfig:
        d = RollupConfig()
        known = {f for f in RollupConfig.__dataclass_fields__}
        sec = self.section(node, path, known)
        untagged = self.get(sec, path, "untagged_traces", self.text, d.untagged_traces)
        if untagged not in ("attribute", "drop"):
            self.bad(_join(path, "untagged_traces"), f"must be attribute or drop, got {untagged!r}")
        cfg = RollupConfig(
            job_id_attributes=self.get(
                sec, path, "job_id_attributes", self.strings, d.job_id_attributes
            ),
            job_type_attribute=self.get(
                sec, path, "job_type_attribute", self.text, d.job_type_attribute
            ),
            tenant_attribute=self.get(sec, path, "tenant_attribute", self.text, d.tenant_attribute),
            outcome_attribute=self.get(
                sec, path, "outcome_attribute", self.text, d.outcome_attribute
            ),
            untagged_traces=untagged,
            completion_wait=self.get(
                sec, path, "completion_wait", self.duration, d.completion_wait
            ),
            max_wait=self.get(sec, path, "max_wait", self.duration, d.max_wait),
            retry_window=self.get(sec, path, "retry_window", self.duration, d.retry_window),
            late_span_window=self.get(
                sec, path, "late_span_window", self.duration, d.late_span_window
            ),
            max_inflight_traces=self.get(
                sec, path, "max_inflight_traces", self.integer(1), d.max_inflight_traces
            ),
            max_inflight_spans=self.get(
                sec, path, "max_inflight_spans", self.integer(1), d.max_inflight_spans
            ),
            local_roots=self.get(sec, path, "local_roots", self.flag, d.local_roots),
            tick_interval=self.get(sec, path, "tick_interval", self.duration, d.tick_interval),
            backpressure_watermark=self.get(
                sec, path, "backpressure_watermark", self.number(), d.backpressure_watermark
            ),
        )
        if cfg.max_wait < cfg.completion_wait:
            self.bad(_join(path, "max_wait"), "must be >= completion_wait")
        if not 0 < cfg.backpressure_watermark <= 1:
            self.bad(_join(path, "backpressure_watermark"), "must be in (0, 1]")
        if cfg.tick_interval <= 0:
            self.bad(_join(path, "tick_interval"), "must be > 0")
        return cfg

    def allocation(self, node: Any, path: str) -> Allocation:
        sec = self.section(node, path, {"cpu_cores", "memory_gb", "gpus", "concurrency"})
        nonneg = self.number(minimum=0)
        return Allocation(
            cpu_cores=self.get(sec, path, "cpu_cores", nonneg, None),
            memory_gb=self.get(sec, path, "memory_gb", nonneg, None),
            gpus=self.get(sec, path, "gpus", nonneg, None),
            concurrency=self.get(sec, path, "concurrency", self.number(above=0), None),
        )

    def usage(self, node: Any, path: str) -> UsageConfig:
        d = UsageConfig()
        sec = self.section(node, path, {"attributes", "defaults", "services", "egress"})
        attrs_path = _join(path, "attributes")
        attrs = self.section(sec.get("attributes"), attrs_path, _USAGE_ATTRIBUTE_FIELDS)
        names = {
            f: self.get(attrs, attrs_path, f, self.text, getattr(d, f + "_attribute"))
            for f in _USAGE_ATTRIBUTE_FIELDS
        }
        base = self.allocation(sec.get("defaults"), _join(path, "defaults"))
        defaults = Allocation(
            cpu_cores=base.cpu_cores if base.cpu_cores is not None else 0.0,
            memory_gb=base.memory_gb if base.memory_gb is not None else 0.0,
            gpus=base.gpus if base.gpus is not None else 0.0,
            concurrency=base.concurrency if base.concurrency is not None else 1.0,
        )
        services_node = sec.get("services") or {}
        services: dict[str, Allocation] = {}
        if not isinstance(services_node, Mapping):
            self.bad(_join(path, "services"), "must be a mapping of service.name to allocation")
        else:
            for name, alloc in services_node.items():
                services[str(name)] = self.allocation(
                    alloc, _join(_join(path, "services"), str(name))
                )
        egress_path = _join(path, "egress")
        egress = self.section(sec.get("egress"), egress_path, {"default_class", "rules"})
        return UsageConfig(
            **{f + "_attribute": v for f, v in names.items()},
            defaults=defaults,
            services=services,
            egress_default_class=self.get(
                egress, egress_path, "default_class", self.text, d.egress_default_class
            ),
            egress_rules=self.egress_rules(egress.get("rules"), _join(egress_path, "rules")),
        )

    def egress_rules(self, node: Any, path: str) -> tuple[EgressRule, ...]:
        if node is None:
            return ()
        if not isinstance(node, list):
            self.bad(path, "must be a list of {match, class}")
            return ()
        rules = []
        for i, item in enumerate(node):
            sub = _join(path, i)
            sec = self.section(item, sub, {"match", "class"})
            rules.append(
                EgressRule(
                    match=self.matches(sec.get("match"), _join(sub, "match")),
                    egress_class=self.text(sec.get("class"), _join(sub, "class")),
                )
            )
        return tuple(rules)

    def pricing(self, node: Any, path: str) -> PricingConfig:
        sec = self.section(node, path, {"currency", "tables"})
        currency = self.get(sec, path, "currency", self.text, "USD")
        if currency and not _CURRENCY.match(currency):
            self.bad(
                _join(path, "currency"), f"must be an ISO 4217 code like USD, got {currency!r}"
            )
        tables_node = sec.get("tables")
        tables_path = _join(path, "tables")
        if not isinstance(tables_node, list) or not tables_node:
            self.bad(tables_path, "must be a non-empty list of price tables")
            return PricingConfig(currency=currency)
        tables = [self.table(t, _join(tables_path, i)) for i, t in enumerate(tables_node)]
        self.unique([t.version for t in tables], tables_path, "version")
        self.unique([t.effective_from_ns for t in tables], tables_path, "effective_from")
        return PricingConfig(
            currency=currency, tables=tuple(sorted(tables, key=lambda t: t.effective_from_ns))
        )

    def table(self, node: Any, path: str) -> PriceTable:
        known = {
            "version",
            "effective_from",
            "egress_per_gb",
            "metered",
            "overrides",
            *_RESOURCE_PRICE_KEYS,
        }
        sec = self.section(node, path, known)
        egress_path = _join(path, "egress_per_gb")
        egress_node = sec.get("egress_per_gb")
        egress: dict[str, float] = {}
        if not isinstance(egress_node, Mapping) or not egress_node:
            self.bad(egress_path, "must map each egress class to a price per GB (10^9 bytes)")
        else:
            for cls, price in egress_node.items():
                egress[str(cls)] = self.number(minimum=0)(price, _join(egress_path, str(cls)))
        prices = self.resource_prices(sec, path)
        for name in ("cpu_core_second", "memory_gb_second", "gpu_second"):
            if getattr(prices, name) is None:
                self.bad(_join(path, name), "missing price (give it per second or per hour)")
        return PriceTable(
            version=self.text(sec.get("version"), _join(path, "version")),
            effective_from_ns=self.timestamp(
                sec.get("effective_from"), _join(path, "effective_from")
            ),
            prices=prices,
            egress_per_gb=egress,
            metered=self.metered(sec.get("metered"), _join(path, "metered")),
            overrides=self.overrides(sec.get("overrides"), _join(path, "overrides")),
        )

    def resource_prices(self, sec: Mapping[str, Any], path: str) -> ResourcePrices:
        values: dict[str, float] = {}
        for key, (field_name, seconds) in _RESOURCE_PRICE_KEYS.items():
            if key not in sec:
                continue
            if field_name in values:
                self.bad(_join(path, key), f"{field_name} given twice (per second and per hour)")
            price = self.number(minimum=0)(sec[key], _join(path, key))
            values[field_name] = _per_second(price, seconds)
        return ResourcePrices(**values)

    def timestamp(self, value: Any, path: str) -> int:
        if isinstance(value, datetime):
            moment = value
        elif isinstance(value, date):
            # YAML reads an unquoted 2026-01-01 as a date; quoted, it is midnight UTC too.
            moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
        elif isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                self.bad(
                    path, f"must be an ISO 8601 UTC time like 2026-01-01T00:00:00Z, got {value!r}"
                )
                return 0
        else:
            self.bad(path, "must be an ISO 8601 UTC time like 2026-01-01T00:00:00Z")
            return 0
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000

    def metered(self, node: Any, path: str) -> tuple[MeteredRule, ...]:
        if node is None:
            return ()
        if not isinstance(node, list):
            self.bad(path, "must be a list of rules")
            return ()
        rules = []
        for i, item in enumerate(node):
            sub = _join(path, i)
            sec = self.section(item, sub, {"name", "component", "match", "quantity", "unit_price"})
            quantity = sec.get("quantity", 1)
            if isinstance(quantity, bool) or (quantity != 1 and not isinstance(quantity, str)):
                self.bad(
                    _join(sub, "quantity"),
                    f"must be 1 (per span) or an attribute name, got {quantity!r}",
                )
            name = self.text(sec.get("name"), _join(sub, "name"))
            component = self.get(sec, sub, "component", self.text, name)
            if component in _RESERVED_COMPONENTS:
                self.bad(
                    _join(sub, "component"),
                    f"{component!r} is reserved (cpu, memory, gpu, egress are priced "
                    "from usage; total is the sum)",
                )
            rules.append(
                MeteredRule(
                    name=name,
                    component=component,
                    match=self.matches(sec.get("match"), _join(sub, "match")),
                    quantity_attribute=quantity if isinstance(quantity, str) else None,
                    unit_price=self.number(minimum=0)(
                        sec.get("unit_price"), _join(sub, "unit_price")
                    ),
                )
            )
        self.unique([r.name for r in rules], path, "name")
        return tuple(rules)

    def overrides(self, node: Any, path: str) -> tuple[Override, ...]:
        if node is None:
            return ()
        if not isinstance(node, list):
            self.bad(path, "must be a list of overrides")
            return ()
        out = []
        for i, item in enumerate(node):
            sub = _join(path, i)
            sec = self.section(item, sub, {"match", "multiplier", *_RESOURCE_PRICE_KEYS})
            prices = self.resource_prices(sec, sub)
            multiplier = self.get(sec, sub, "multiplier", self.number(minimum=0), 1.0)
            if prices == ResourcePrices() and "multiplier" not in sec:
                self.bad(sub, "sets no price and no multiplier")
            out.append(
                Override(self.matches(sec.get("match"), _join(sub, "match")), prices, multiplier)
            )
        return tuple(out)

    def prometheus(self, node: Any, path: str) -> PrometheusConfig:
        d = PrometheusConfig()
        known = {"endpoint", "max_label_values", "buckets", "tls"}
        sec = self.section(node, path, known)
        bpath = _join(path, "buckets")
        buckets = self.section(
            sec.get("buckets"), bpath, {"cost", "duration", "usage", "egress_bytes"}
        )
        return PrometheusConfig(
            endpoint=self.get(sec, path, "endpoint", self.endpoint, d.endpoint),
            max_label_values=self.get(
                sec, path, "max_label_values", self.integer(1), d.max_label_values
            ),
            cost_buckets=self.get(buckets, bpath, "cost", self.buckets, d.cost_buckets),
            duration_buckets=self.get(buckets, bpath, "duration", self.buckets, d.duration_buckets),
            usage_buckets=self.get(buckets, bpath, "usage", self.buckets, d.usage_buckets),
            egress_buckets=self.get(buckets, bpath, "egress_bytes", self.buckets, d.egress_buckets),
            tls=self.tls_server(sec.get("tls"), _join(path, "tls")),
        )

    def forward(self, node: Any, path: str) -> ForwardConfig:
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
        sec = self.section(node, path, known)
        protocol = self.get(sec, path, "protocol", self.text, "grpc")
        if protocol not in ("grpc", "http"):
            self.bad(_join(path, "protocol"), f"must be grpc or http, got {protocol!r}")
        endpoint = self.text(sec.get("endpoint"), _join(path, "endpoint"))
        if protocol == "http" and endpoint and not endpoint.startswith(("http://", "https://")):
            self.bad(
                _join(path, "endpoint"), f"must be an http:// or https:// URL, got {endpoint!r}"
            )
        if protocol == "grpc" and endpoint and not _ENDPOINT.match(endpoint):
            self.bad(_join(path, "endpoint"), f"must be host:port for grpc, got {endpoint!r}")
        compression = self.get(sec, path, "compression", self.text, "gzip")
        if compression not in ("gzip", "none"):
            self.bad(_join(path, "compression"), f"must be gzip or none, got {compression!r}")
        headers_node = sec.get("headers") or {}
        if not isinstance(headers_node, Mapping):
            self.bad(_join(path, "headers"), "must be a mapping of header name to value")
            headers_node = {}
        d = ForwardConfig(endpoint="")
        rpath = _join(path, "retry_on_failure")
        retry = self.section(
            sec.get("retry_on_failure"),
            rpath,
            {"initial_interval", "max_interval", "max_elapsed_time"},
        )
        return ForwardConfig(
            endpoint=endpoint,
            protocol=protocol,
            tls=self.tls_client(sec.get("tls"), _join(path, "tls")),
            headers=tuple(
                (str(k).lower(), self.text(v, _join(_join(path, "headers"), str(k))))
                for k, v in headers_node.items()
            ),
            compression=compression,
            timeout=self.get(sec, path, "timeout", self.duration, d.timeout),
            queue_size=self.get(sec, path, "queue_size", self.integer(1), d.queue_size),
            retry=RetryConfig(
                initial_interval=self.get(
                    retry, rpath, "initial_interval", self.duration, d.retry.initial_interval
                ),
                max_interval=self.get(
                    retry, rpath, "max_interval", self.duration, d.retry.max_interval
                ),
                max_elapsed_time=self.get(
                    retry, rpath, "max_elapsed_time", self.duration, d.retry.max_elapsed_time
                ),
            ),
            cost_spans=self.get(sec, path, "cost_spans", self.flag, d.cost_spans),
        )

    def cost_records(self, node: Any, path: str) -> CostRecordsConfig:
        d = CostRecordsConfig()
        sec = self.section(node, path, {"path", "max_size_mib", "max_backups"})
        target = self.get(sec, path, "path", self.text, d.path)
        if target != "stdout" and not os.path.isdir(os.path.dirname(os.path.abspath(target))):
            self.bad(_join(path, "path"), f"directory of {target!r} does not exist")
        return CostRecordsConfig(
            path=target,
            max_size_mib=self.get(sec, path, "max_size_mib", self.number(above=0), d.max_size_mib),
            max_backups=self.get(sec, path, "max_backups", self.integer(0), d.max_backups),
        )

    def budgets(self, node: Any, path: str) -> BudgetsConfig:
        d = BudgetsConfig()
        known = {
            "spend",
            "cost_per_successful_job",
            "retry_ratio_threshold",
            "failed_spend_share_threshold",
            "runbook_url",
        }
        sec = self.section(node, path, known)
        spend = [
            self.spend_budget(item, _join(_join(path, "spend"), i))
            for i, item in enumerate(self.items(sec.get("spend"), _join(path, "spend")))
        ]
        names = [b.name for b in spend]
        for i, name in enumerate(names):
            if name in names[:i]:
                self.bad(_join(_join(path, "spend"), i), f"budget name {name!r} is used twice")
        per_job = [
            self.job_cost_budget(item, _join(_join(path, "cost_per_successful_job"), i))
            for i, item in enumerate(
                self.items(
                    sec.get("cost_per_successful_job"), _join(path, "cost_per_successful_job")
                )
            )
        ]
        return BudgetsConfig(
            spend=tuple(spend),
            cost_per_successful_job=tuple(per_job),
            retry_ratio_threshold=self.get(
                sec, path, "retry_ratio_threshold", self.number(above=0), d.retry_ratio_threshold
            ),
            failed_spend_share_threshold=self.get(
                sec,
                path,
                "failed_spend_share_threshold",
                self.number(above=0),
                d.failed_spend_share_threshold,
            ),
            runbook_url=self.get(sec, path, "runbook_url", self.text, d.runbook_url),
        )

    def items(self, node: Any, path: str) -> list[Any]:
        if node is None:
            return []
        if not isinstance(node, list):
            self.bad(path, "must be a list")
            return []
        return node

    def spend_budget(self, node: Any, path: str) -> SpendBudget:
        sec = self.section(node, path, {"name", "amount", "period", "tenant", "job_type"})
        tenant = self.get(sec, path, "tenant", self.text, None)
        job_type = self.get(sec, path, "job_type", self.text, None)
        default_name = "-".join(p for p in ("spend", tenant, job_type) if p)
        period = self.get(sec, path, "period", self.duration, 30 * 86400.0)
        if period <= 0:
            self.bad(_join(path, "period"), "must be > 0")
        if "amount" not in sec:
            self.bad(_join(path, "amount"), "is required")
        return SpendBudget(
            name=self.get(sec, path, "name", self.text, default_name),
            amount=self.get(sec, path, "amount", self.number(above=0), 1.0),
            period=period,
            tenant=tenant,
            job_type=job_type,
        )

    def job_cost_budget(self, node: Any, path: str) -> JobCostBudget:
        known = {"job_type", "amount", "page_factor", "min_jobs_per_second"}
        sec = self.section(node, path, known)
        for key in ("job_type", "amount"):
            if key not in sec:
                self.bad(_join(path, key), "is required")
        d = JobCostBudget(job_type="", amount=1.0)
        return JobCostBudget(
            job_type=self.get(sec, path, "job_type", self.text, ""),
            amount=self.get(sec, path, "amount", self.number(above=0), 1.0),
            page_factor=self.get(sec, path, "page_factor", self.number(above=1), d.page_factor),
            min_jobs_per_second=self.get(
                sec, path, "min_jobs_per_second", self.number(above=0), d.min_jobs_per_second
            ),
        )


_RESERVED_COMPONENTS = frozenset({"cpu", "memory", "gpu", "egress", "total"})

_USAGE_ATTRIBUTE_FIELDS = {
    "cpu_seconds",
    "memory_gb_seconds",
    "gpu_seconds",
    "egress_bytes",
    "egress_class",
    "cpu_allocated",
    "memory_allocated",
    "gpu_allocated",
    "concurrency",
}


def _per_second(price: float, seconds: int) -> float:
    # Divide the decimal the operator wrote, not its binary approximation, so that
    # cpu_core_hour: 0.036 is exactly 0.00001 per second (0.036 / 3600 in floats is not).
    return float(Decimal(repr(price)) / seconds)


def _scalar_text(value: Any) -> str:
    # YAML turns `true` and `2` into bool and int; attributes compare as text.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
