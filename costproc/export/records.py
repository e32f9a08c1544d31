"""Every finished job as one JSON line, for FinOps analysis and billing export.

    job_closed -> JSON line -> buffer -> at most FLUSH_INTERVAL later, or on close()
      -> stdout, or a file rotated by size (path, path.1 ... path.<max_backups>)

Lines are buffered and written in one go at least once a second, so the event loop does
one small write per second rather than one per job. A write that fails (disk full, a
closed pipe) loses the lines it held: they are counted in
`costproc_cost_records_dropped_total` and logged, never dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sys
import time
from datetime import UTC, datetime
from typing import BinaryIO

from prometheus_client import CollectorRegistry, Counter

from costproc.config.model import CostRecordsConfig
from costproc.model import AttemptResult, Cost, CostSink, JobResult, Labels

log = logging.getLogger(__name__)

STDOUT = "stdout"
FLUSH_INTERVAL = 1.0  # seconds a line waits at most before it is written
MAX_BUFFERED = 4096  # lines; a burst of closing jobs is written at once beyond this
WARN_INTERVAL = 10.0


def rfc3339(ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 UTC with microseconds."""
    seconds, rest = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest // 1000:06d}Z"


def _num(value: float) -> float | None:
    # Always a float (an empty sum is int 0), so each field keeps one JSON type; JSON has
    # no NaN or infinity, and null keeps the line parseable.
    return float(value) if math.isfinite(value) else None


def cost_record(job: JobResult, currency: str) -> dict[str, object]:
    """One finished job as the record's JSON object."""
    cost = job.cost
    # A component called "total" would overwrite the total; the total wins.
    components = {k: _num(v) for k, v in sorted(cost.by_component.items()) if k != "total"}
    return {
        "job_id": job.job_id,
        "job_type": job.labels.job_type,
        "tenant": job.labels.tenant,
        "service": job.labels.service,
        "outcome": job.outcome,
        "attempts": job.attempts,
        "start": rfc3339(job.start_ns),
        "end": rfc3339(job.end_ns),
        "duration_seconds": _num(job.duration_seconds),
        "cost": {"total": _num(cost.total), **components},
        "usage": {
            "cpu_seconds": _num(cost.cpu_seconds),
            "memory_gb_seconds": _num(cost.memory_gb_seconds),
            "gpu_seconds": _num(cost.gpu_seconds),
            "egress_bytes": _num(cost.egress_bytes),
            "egress_bytes_by_class": {k: _num(v) for k, v in sorted(cost.egress_by_class.items())},
        },
        "currency": currency,
        "price_table_version": job.table_version,
        "trace_ids": [t.hex() for t in job.trace_ids],
    }


class _RotatingFile:
    """An append-only file that moves to path.1 (and on, up to `backups`) at `max_bytes`.

    With no backups the file starts over empty, so it stays bounded either way.
    """

    def __init__(self, path: str, max_bytes: int, backups: int):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: BinaryIO | None = None
        self._size = 0

    def write(self, lines: list[bytes]) -> None:
        for line in lines:
            file = self._open()
            if self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
                file = self._open()
            file.write(line)
            self._size += len(line)
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()

    def discard(self) -> None:
        """Close after a failed write; whatever the buffer still held is already counted."""
        with contextlib.suppress(OSError):
            self.close()

    def _open(self) -> BinaryIO:
        if self._file is None:
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across writes
            self._size = self._file.tell()
        return self._file

    def _rotate(self) -> None:
        self.close()
        if self.backups == 0:
            os.remove(self.path)
            return
        for n in range(self.backups - 1, 0, -1):
            older = f"{self.path}.{n}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{n + 1}")
        os.replace(self.path, f"{self.path}.1")


class CostRecordWriter(CostSink):
    """The CostSink that writes every finished job as one JSON line.

    Called from the event loop. Without a running loop (a script, a test) every line is
    written at once instead of waiting for the flush timer.
    """

    def __init__(
        self,
        config: CostRecordsConfig,
        currency: str,
        registry: CollectorRegistry | None = None,
        flush_interval: float = FLUSH_INTERVAL,
    ):
        self.config = config
        self.currency = currency
        self.flush_interval = flush_interval
        self._file = (
            None
            if config.path == STDOUT
            else _RotatingFile(config.path, config.max_size_bytes, config.max_backups)
        )
        self._lines: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._next_warning = 0.0
        self._written = Counter(
            "costproc_cost_records_written_total", "Cost records written.", registry=registry
        )
        self._dropped = Counter(
            "costproc_cost_records_dropped_total",
            "Cost records lost because writing them failed.",
            registry=registry,
        )

    def attempt_closed(self, attempt: AttemptResult) -> None:
        """No-op: records are per finished job."""

    def job_closed(self, job: JobResult) -> None:
        """Buffer the job's record; it is written within `flush_interval`."""
        line = json.dumps(cost_record(job, self.currency), separators=(",", ":"))
        self._lines.append(line.encode() + b"\n")
        if len(self._lines) >= MAX_BUFFERED:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self.flush_interval, self.flush)

    def late_spans(self, labels: Labels, cost: Cost, count: int) -> None:
        """No-op: a record describes the job as it finished."""

    def jobs_evicted(self, reason: str, count: int) -> None:
        """No-op: evicted jobs still finish, and get their record then."""

    def jobs_inflight(self, count: int) -> None:
        """No-op: records are per finished job."""

    def flush(self) -> None:
        """Write every buffered line now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._lines = self._lines, []
        if not lines:
            return
        try:
            self._write(lines)
        except OSError as exc:
            # Some of these lines may have reached the file: a loss is over-counted, never missed.
            self._dropped.inc(len(lines))
            self._warn(len(lines), exc)
            if self._file is not None:
                self._file.discard()  # reopened on the next write, in case the path came back
            return
        self._written.inc(len(lines))

    def close(self) -> None:
        """Write what is buffered and close the file."""
        self.flush()
        if self._file is not None:
            self._file.discard()  # flushed above: nothing is left to lose

    def _write(self, lines: list[bytes]) -> None:
        if self._file is not None:
            self._file.write(lines)
            return
        # Looked up per write, so a replaced sys.stdout is honoured; json.dumps writes ASCII.
        sys.stdout.write(b"".join(lines).decode("ascii"))
        sys.stdout.flush()

    def _warn(self, count: int, exc: OSError) -> None:
        now = time.monotonic()
        if now < self._next_warning:
            return
        self._next_warning = now + WARN_INTERVAL
        log.warning(
            "cost records: lost %d records writing to %s (%s); check exporters.cost_records.path "
            "and its disk (costproc_cost_records_dropped_total counts every loss)",
            count,
            self.config.path,
            exc,
        )
