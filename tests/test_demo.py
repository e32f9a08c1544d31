"""The demo: its workload, its table, and a short run against real servers on port 0."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from costproc.config import load_config
from costproc.config.model import Config
from costproc.demo import run_demo
from costproc.demo.run import DEMO_RETRY_WINDOW, PORT_HINT, demo_config
from costproc.demo.table import DemoTable, Row, format_usd, quantile
from costproc.demo.workload import SpanBatch, Workload, export_request
from costproc.model import FAILURE, SUCCESS, Cost, JobResult, Labels

JOB_TYPES = {"checkout", "inference", "batch", "batch-item"}
NOW_NS = 1_780_000_000_000_000_000
SECOND_NS = 1_000_000_000


def local_config(**endpoints: str) -> Config:
    """The bundled config with every endpoint on 127.0.0.1:0 unless given."""
    config = load_config()
    return replace(
        config,
        grpc=replace(config.grpc, endpoint=endpoints.get("grpc", "127.0.0.1:0")),
        http=replace(config.http, endpoint=endpoints.get("http", "127.0.0.1:0")),
        prometheus=replace(config.prometheus, endpoint=endpoints.get("prometheus", "127.0.0.1:0")),
        health=replace(config.health, endpoint=endpoints.get("health", "127.0.0.1:0")),
    )


def run_workload(seed: int, rounds: int = 8, jobs: int = 25) -> tuple[Workload, list[SpanBatch]]:
    workload = Workload(seed)
    batches: list[SpanBatch] = []
    for i in range(rounds):
        batches += workload.batches(jobs, NOW_NS + i * SECOND_NS)
    return workload, batches


def attr(span: Span, key: str) -> str | None:
    for kv in span.attributes:
        if kv.key == key:
            value = kv.value
            return str(getattr(value, value.WhichOneof("value")))
    return None


# -- workload --------------------------------------------------------------------------


def test_workload_is_deterministic_for_a_seed() -> None:
    first, first_batches = run_workload(seed=11)
    second, second_batches = run_workload(seed=11)
    _, other_batches = run_workload(seed=12)

    assert first.started == second.started
    assert first.retried == second.retried
    assert set(first.started) == JOB_TYPES
    # 200 new jobs drawn; redelivered batch items come in batch traces of their own.
    assert first.started["checkout"] + first.started["inference"] + first.started["batch"] >= 200
    serialize = [export_request(b).SerializeToString() for b in first_batches]
    assert serialize == [export_request(b).SerializeToString() for b in second_batches]
    assert serialize != [export_request(b).SerializeToString() for b in other_batches]


def test_workload_batches_like_an_sdk() -> None:
    workload, batches = run_workload(seed=5, rounds=4, jobs=60)

    sizes = [sum(len(spans) for spans in batch.values()) for batch in batches]
    assert max(sizes) <= workload.max_batch_spans
    assert any(size > 200 for size in sizes), "batches of a few hundred spans"
    child_first = 0
    for batch in batches:
        for spans in batch.values():
            seen: set[bytes] = set()
            for span in spans:
                child_first += bool(span.parent_span_id) and span.parent_span_id not in seen
                seen.add(span.span_id)
    assert child_first > 0, "children often come before their parents"


def test_workload_retries_failed_jobs_in_new_traces() -> None:
    workload, batches = run_workload(seed=7, rounds=10, jobs=40)

    traces_by_job: dict[str, set[bytes]] = {}
    roots: Counter[str] = Counter()
    for batch in batches:
        for instance, spans in batch.items():
            for span in spans:
                job_id = attr(span, "job.id")
                if job_id is not None:
                    traces_by_job.setdefault(job_id, set()).add(span.trace_id)
                if not span.parent_span_id:
                    roots[f"{instance.service}:{attr(span, 'job.type')}"] += 1
    assert sum(workload.retried.values()) > 0
    # Every retry is one more trace for the same job ID.
    extra_traces = sum(len(traces) - 1 for traces in traces_by_job.values())
    assert extra_traces == sum(workload.retried.values())
    assert set(roots) == {"checkout:checkout", "inference:inference", "batch-worker:batch"}


# -- table -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "$0"),
        (0.000412, "$0.000412"),
        (0.0083, "$0.00830"),
        (0.153, "$0.153"),
        (1234.5, "$1,234.50"),
        (2.1e-7, "$0.000000210"),
    ],
    ids=["zero", "sub-cent", "sms", "cents", "dollars", "tiny"],
)
def test_format_usd(value: float, text: str) -> None:
    assert format_usd(value) == text


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0], 0.95, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
        ([float(i) for i in range(1, 101)], 0.95, 95.0),
        ([float(i) for i in range(1, 101)], 0.5, 50.0),
    ],
    ids=["one", "even-median", "p95-of-100", "p50-of-100"],
)
def test_quantile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert quantile(values, q) == expected


def job(job_type: str, usd: float, outcome: str = SUCCESS, attempts: int = 1) -> JobResult:
    labels = Labels(job_type, "acme", "svc")
    return JobResult("j", labels, outcome, attempts, Cost({"cpu": usd}), 0.1, b"")


def test_table_rows() -> None:
    table = DemoTable(window=3)
    for result in [
        job("checkout", 9.0),  # falls out of the window of 3
        job("checkout", 1.0),
        job("checkout", 2.0, FAILURE, attempts=2),
        job("checkout", 3.0, attempts=2),
    ]:
        table.job_closed(result)

    [row] = table.rows()
    assert row == Row("checkout", 4, 2 / 3, 2.0, 3.0, 3.0, pytest.approx(2 / 3), 0.0)
    assert [line.split()[0] for line in table.render()] == ["job", "checkout", "all"]


def test_table_folds_job_types_beyond_its_rows() -> None:
    table = DemoTable(max_rows=3)
    for name in ["a", "b", "c", "d"]:
        table.job_closed(job(name, 1.0))

    assert [(row.job_type, row.jobs) for row in table.rows()] == [
        ("(other)", 2),
        ("a", 1),
        ("b", 1),
    ]


def test_demo_config_raises_a_zero_retry_window_only() -> None:
    config = load_config()
    assert config.rollup.retry_window == 0
    assert demo_config(config).rollup.retry_window == DEMO_RETRY_WINDOW
    kept = replace(config, rollup=replace(config.rollup, retry_window=10.0))
    assert demo_config(kept) is kept


# -- end to end ------------------------------------------------------------------------


def final_block(output: str) -> list[str]:
    blocks = output.split("costproc demo:")
    assert len(blocks) >= 3, "live tables, then the final one"
    assert "final" in blocks[-1].splitlines()[0]
    return blocks[-1].splitlines()


def table_rows(lines: list[str]) -> dict[str, list[str]]:
    start = next(i for i, line in enumerate(lines) if line.startswith("job type"))
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells
    return rows


def test_demo_runs_and_prices_every_job_type(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(local_config(), duration=4.0, rate=20.0, seed=7) == 0

    lines = final_block(capsys.readouterr().out)
    rows = table_rows(lines)
    assert set(rows) == JOB_TYPES | {"all"}
    for job_type in JOB_TYPES:
        cells = rows[job_type]
        assert int(cells[1]) > 0, cells
        assert cells[3].startswith("$") and cells[3] != "$0", cells  # p50
        assert cells[-1] != "$0", cells  # spend
    spans = next(line for line in lines if line.startswith("spans:"))
    counts = dict(part.strip().split(" ")[-2:] for part in spans.split(";")[0].split(","))
    assert int(counts["received"]) > 0
    assert counts["received"] == counts["sent"]
    assert counts["rejected"] == "0"
    assert "jobs in flight 0" in spans
    assert any(line.startswith("metrics: http://localhost:") for line in lines)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("endpoint", "key"),
    [
        ("grpc", "receivers.otlp.grpc.endpoint"),
        ("http", "receivers.otlp.http.endpoint"),
        ("prometheus", "exporters.prometheus.endpoint"),
        ("health", "extensions.health_check.endpoint"),
    ],
)
def test_demo_reports_a_taken_port(
    capsys: pytest.CaptureFixture[str], taken_port: int, endpoint: str, key: str
) -> None:
    config = local_config(**{endpoint: f"127.0.0.1:{taken_port}"})

    assert run_demo(config, duration=1.0, rate=5.0, seed=1) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    ours = [line for line in captured.err.splitlines() if line.startswith("costproc demo:")]
    assert len(ours) == 2, captured.err
    assert ours[0].startswith(f"costproc demo: cannot listen on 127.0.0.1:{taken_port} ({key}): ")
    assert ours[1] == f"costproc demo: {PORT_HINT}"
