"""The `usage` section: where resource use is read from, allocations, egress classes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from costproc.config.model import Allocation, EgressRule, UsageConfig
from costproc.config.reader import Reader, join

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


def read_usage(r: Reader, node: Any, path: str) -> UsageConfig:
    """The `usage` section: attribute names, allocations, egress classes."""
    d = UsageConfig()
    sec = r.section(node, path, {"attributes", "defaults", "services", "egress"})
    attrs_path = join(path, "attributes")
    attrs = r.section(sec.get("attributes"), attrs_path, _USAGE_ATTRIBUTE_FIELDS)
    names = {
        f: r.get(attrs, attrs_path, f, r.text, getattr(d, f + "_attribute"))
        for f in _USAGE_ATTRIBUTE_FIELDS
    }
    base = _allocation(r, sec.get("defaults"), join(path, "defaults"))
    defaults = Allocation(
        cpu_cores=base.cpu_cores if base.cpu_cores is not None else 0.0,
        memory_gb=base.memory_gb if base.memory_gb is not None else 0.0,
        gpus=base.gpus if base.gpus is not None else 0.0,
        concurrency=base.concurrency if base.concurrency is not None else 1.0,
    )
    services_node = sec.get("services") or {}
    services: dict[str, Allocation] = {}
    if not isinstance(services_node, Mapping):
        r.bad(join(path, "services"), "must be a mapping of service.name to allocation")
    else:
        for name, alloc in services_node.items():
            services[str(name)] = _allocation(r, alloc, join(join(path, "services"), str(name)))
    egress_path = join(path, "egress")
    egress = r.section(sec.get("egress"), egress_path, {"default_class", "rules"})
    return UsageConfig(
        **{f + "_attribute": v for f, v in names.items()},
        defaults=defaults,
        services=services,
        egress_default_class=r.get(
            egress, egress_path, "default_class", r.text, d.egress_default_class
        ),
        egress_rules=_egress_rules(r, egress.get("rules"), join(egress_path, "rules")),
    )


def _allocation(r: Reader, node: Any, path: str) -> Allocation:
    sec = r.section(node, path, {"cpu_cores", "memory_gb", "gpus", "concurrency"})
    nonneg = r.number(minimum=0)
    return Allocation(
        cpu_cores=r.get(sec, path, "cpu_cores", nonneg, None),
        memory_gb=r.get(sec, path, "memory_gb", nonneg, None),
        gpus=r.get(sec, path, "gpus", nonneg, None),
        concurrency=r.get(sec, path, "concurrency", r.number(above=0), None),
    )


def _egress_rules(r: Reader, node: Any, path: str) -> tuple[EgressRule, ...]:
    rules = []
    for i, item in enumerate(r.items(node, path, "a list of {match, class}")):
        sub = join(path, i)
        sec = r.section(item, sub, {"match", "class"})
        rules.append(
            EgressRule(
                match=r.matches(sec.get("match"), join(sub, "match")),
                egress_class=r.text(sec.get("class"), join(sub, "class")),
            )
        )
    return tuple(rules)
