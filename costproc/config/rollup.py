"""The `rollup` section: how spans group into jobs, and the limits on waiting for them."""

from __future__ import annotations

from typing import Any

from costproc.config.model import RollupConfig
from costproc.config.reader import Reader, join


def read_rollup(r: Reader, node: Any, path: str) -> RollupConfig:
    """The `rollup` section, with its cross-field limits checked."""
    d = RollupConfig()
    known = {f for f in RollupConfig.__dataclass_fields__}
    sec = r.section(node, path, known)
    untagged = r.get(sec, path, "untagged_traces", r.text, d.untagged_traces)
    if untagged not in ("attribute", "drop"):
        r.bad(join(path, "untagged_traces"), f"must be attribute or drop, got {untagged!r}")
    cfg = RollupConfig(
        job_id_attributes=r.get(sec, path, "job_id_attributes", r.strings, d.job_id_attributes),
        job_type_attribute=r.get(sec, path, "job_type_attribute", r.text, d.job_type_attribute),
        tenant_attribute=r.get(sec, path, "tenant_attribute", r.text, d.tenant_attribute),
        outcome_attribute=r.get(sec, path, "outcome_attribute", r.text, d.outcome_attribute),
        untagged_traces=untagged,
        completion_wait=r.get(sec, path, "completion_wait", r.duration, d.completion_wait),
        max_wait=r.get(sec, path, "max_wait", r.duration, d.max_wait),
        retry_window=r.get(sec, path, "retry_window", r.duration, d.retry_window),
        late_span_window=r.get(sec, path, "late_span_window", r.duration, d.late_span_window),
        max_inflight_traces=r.get(
            sec, path, "max_inflight_traces", r.integer(1), d.max_inflight_traces
        ),
        max_inflight_spans=r.get(
            sec, path, "max_inflight_spans", r.integer(1), d.max_inflight_spans
        ),
        local_roots=r.get(sec, path, "local_roots", r.flag, d.local_roots),
        tick_interval=r.get(sec, path, "tick_interval", r.duration, d.tick_interval),
        backpressure_watermark=r.get(
            sec, path, "backpressure_watermark", r.number(), d.backpressure_watermark
        ),
    )
    if cfg.max_wait < cfg.completion_wait:
        r.bad(join(path, "max_wait"), "must be >= completion_wait")
    if not 0 < cfg.backpressure_watermark <= 1:
        r.bad(join(path, "backpressure_watermark"), "must be in (0, 1]")
    if cfg.tick_interval <= 0:
        r.bad(join(path, "tick_interval"), "must be > 0")
    return cfg
