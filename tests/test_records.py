"""Cost records: one JSON line per finished job, to stdout or a size-rotated file."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import RunningService
from otlp import BASE_NS, S, body
from prometheus_client import CollectorRegistry

from costproc.config.model import Config, CostRecordsConfig
from costproc.export.records import CostRecordWriter, rfc3339
from costproc.model import Cost, JobResult, Labels

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
T0 = 1_767_229_200_000_000_000  # 2026-01-01T01:00:00Z
MIB = 1024 * 1024


def trace(n: int) -> bytes:
    return n.to_bytes(16, "big")


ORDER = JobResult(
    "order-1",
    Labels("order", "acme", "checkout"),
    "success",
    1,
    Cost(
        {"cpu": 0.25, "memory": 0.125, "egress": 0.5},
        cpu_seconds=1.5,
        memory_gb_seconds=3.0,
        egress_by_class={"same_zone": 1e6, "internet": 2e6},
    ),
    1.2,
    trace(1),
    root_span_id=b"\x00" * 7 + b"\x01",
    table_version="2026-01",
    trace_ids=(trace(1),),
    start_ns=T0 + 123_456_789,
    end_ns=T0 + 1_323_456_789,
)
ORDER_LINE = (
    '{"job_id":"order-1","job_type":"order","tenant":"acme","service":"checkout",'
    '"outcome":"success","attempts":1,"start":"2026-01-01T01:00:00.123456Z",'
    '"end":"2026-01-01T01:00:01.323456Z","duration_seconds":1.2,'
    '"cost":{"total":0.875,"cpu":0.25,"egress":0.5,"memory":0.125},'
    '"usage":{"cpu_seconds":1.5,"memory_gb_seconds":3.0,"gpu_seconds":0.0,'
    '"egress_bytes":3000000.0,"egress_bytes_by_class":{"internet":2000000.0,"same_zone":1000000.0}},'
    '"currency":"USD","price_table_version":"2026-01",'
    '"trace_ids":["00000000000000000000000000000001"]}'
)
CHAT = JobResult(
    "chat-7",
    Labels("chat", "globex", "inference"),
    "failure",
    3,
    Cost({"gpu": 0.5, "llm_tokens": 0.25}, gpu_seconds=2.0),
    90.0,
    trace(0xAB),
    table_version="2026-02",
    trace_ids=(trace(0xA), trace(0xB), trace(0xAB)),
    start_ns=T0,
    end_ns=T0 + 90_000_000_000,
)
CHAT_LINE = (
    '{"job_id":"chat-7","job_type":"chat","tenant":"globex","service":"inference",'
    '"outcome":"failure","attempts":3,"start":"2026-01-01T01:00:00.000000Z",'
    '"end":"2026-01-01T01:01:30.000000Z","duration_seconds":90.0,'
    '"cost":{"total":0.75,"gpu":0.5,"llm_tokens":0.25},'
    '"usage":{"cpu_seconds":0.0,"memory_gb_seconds":0.0,"gpu_seconds":2.0,'
    '"egress_bytes":0.0,"egress_bytes_by_class":{}},'
    '"currency":"USD","price_table_version":"2026-02",'
    '"trace_ids":["0000000000000000000000000000000a","0000000000000000000000000000000b",'
    '"000000000000000000000000000000ab"]}'
)


def writer(path: Path | str, **kw: Any) -> CostRecordWriter:
    return CostRecordWriter(CostRecordsConfig(path=str(path), **kw), "USD", CollectorRegistry())


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_exact_lines_for_known_jobs(tmp_path: Path) -> None:
    out = tmp_path / "costs.jsonl"
    records = writer(out)
    records.job_closed(ORDER)
    records.job_closed(CHAT)
    records.close()
    assert lines(out) == [ORDER_LINE, CHAT_LINE]


def test_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    records = writer("stdout")
    records.job_closed(ORDER)
    records.close()
    assert capsys.readouterr().out == ORDER_LINE + "\n"


def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "costs.jsonl"
    out.write_text(ORDER_LINE + "\n")
    records = writer(out)
    records.job_closed(CHAT)
    records.close()
    assert lines(out) == [ORDER_LINE, CHAT_LINE]


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "1970-01-01T00:00:00.000000Z"),
        (BASE_NS, "2026-01-01T00:00:00.000000Z"),
        (BASE_NS + 999_999_999, "2026-01-01T00:00:00.999999Z"),
    ],
)
def test_rfc3339(ns: int, text: str) -> None:
    assert rfc3339(ns) == text


def job(n: int) -> JobResult:
    return JobResult(
        f"job-{n:03d}",
        Labels("t", "acme", "svc"),
        "success",
        1,
        Cost({"cpu": 0.5}),
        1.0,
        trace(n),
        start_ns=T0,
        end_ns=T0 + 10**9,
    )


@pytest.mark.parametrize("backups", [0, 1, 3])
def test_rotation_keeps_max_backups(tmp_path: Path, backups: int) -> None:
    out = tmp_path / "costs.jsonl"
    # Size the files to hold two lines each, whatever one line takes.
    probe = writer(tmp_path / "probe.jsonl")
    probe.job_closed(job(0))
    probe.close()
    size = (tmp_path / "probe.jsonl").stat().st_size
    records = writer(out, max_size_mib=2.5 * size / MIB, max_backups=backups)
    for n in range(20):
        records.job_closed(job(n))
    records.close()
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("costs"))
    assert files == ["costs.jsonl"] + [f"costs.jsonl.{i}" for i in range(1, backups + 1)]
    # Two lines fit in a file; reading the oldest backup first gives the newest jobs in order.
    kept = [
        json.loads(line)["job_id"]
        for name in [f"costs.jsonl.{i}" for i in range(backups, 0, -1)] + ["costs.jsonl"]
        for line in lines(tmp_path / name)
    ]
    assert kept == [f"job-{n:03d}" for n in range(20 - len(kept), 20)]
    assert len(kept) == 2 * (backups + 1)
    for name in files:
        assert (tmp_path / name).stat().st_size <= 2.5 * size


def test_lines_wait_for_the_flush_timer_or_close(tmp_path: Path) -> None:
    out = tmp_path / "costs.jsonl"
    out.touch()
    records = CostRecordWriter(
        CostRecordsConfig(path=str(out)), "USD", CollectorRegistry(), flush_interval=0.05
    )

    async def run() -> None:
        records.job_closed(ORDER)
        assert lines(out) == []  # buffered: one write per interval, not one per job
        for _ in range(100):
            await asyncio.sleep(0.01)
            if lines(out):
                break
        assert lines(out) == [ORDER_LINE]
        records.job_closed(CHAT)
        records.close()  # writes what is buffered at once
        assert lines(out) == [ORDER_LINE, CHAT_LINE]

    asyncio.run(run())


def test_write_failure_is_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    registry = CollectorRegistry()
    records = CostRecordWriter(CostRecordsConfig(path=str(folder / "c.jsonl")), "USD", registry)
    folder.rmdir()
    with caplog.at_level(logging.WARNING):
        records.job_closed(ORDER)
    assert registry.get_sample_value("costproc_cost_records_dropped_total") == 1
    assert "lost 1 records" in caplog.text
    folder.mkdir()  # the path comes back: writing resumes
    records.job_closed(CHAT)
    records.close()
    assert lines(folder / "c.jsonl") == [CHAT_LINE]
    assert registry.get_sample_value("costproc_cost_records_written_total") == 1


def test_service_writes_a_record_per_finished_job(
    tmp_path: Path,
    make_config: Callable[[Mapping[str, Any]], Config],
    start_service: Callable[..., RunningService],
) -> None:
    out = tmp_path / "costs.jsonl"
    running = start_service(make_config({"exporters": {"cost_records": {"path": str(out)}}}))
    checkout = {"service.name": "checkout"}
    attrs = {"job.id": "order-9", "job.type": "order", "tenant": "acme"}
    root = S(9, 1, None, 0, 1000, attrs, "server", resource=checkout)
    child = S(9, 2, 1, 100, 400, {"http.request.body.size": 5000}, "client", resource=checkout)
    with grpc.insecure_channel(running.grpc_target) as channel:
        channel.unary_unary(EXPORT)(body([root, child]), timeout=5)
    running.wait_for_total("costproc_jobs_total", 1)
    for _ in range(300):
        if out.exists() and lines(out):
            break
        time.sleep(0.01)
    [record] = [json.loads(line) for line in lines(out)]
    assert record["job_id"] == "order-9"
    assert (record["job_type"], record["tenant"], record["service"]) == (
        "order",
        "acme",
        "checkout",
    )
    assert (record["outcome"], record["attempts"]) == ("success", 1)
    assert record["trace_ids"] == [(9).to_bytes(16, "big").hex()]
    assert record["start"] == "2026-01-01T00:00:00.000000Z"
    assert record["end"] == "2026-01-01T00:00:01.000000Z"
    assert record["duration_seconds"] == 1.0
    assert record["cost"]["total"] == pytest.approx(running.total("costproc_job_cost_usd_sum"))
    assert record["usage"]["egress_bytes_by_class"] == {"internet": 5000}
    assert record["usage"]["cpu_seconds"] == pytest.approx(
        running.total("costproc_job_cpu_seconds_sum")
    )
    assert record["price_table_version"] == "2026-01"
