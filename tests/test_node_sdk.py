"""Interop: the OpenTelemetry Node.js SDK exports over OTLP/HTTP JSON and gRPC, Prometheus scrapes.

tests/node/emit.mjs replays the workload below through the real Node SDK and exporters, so
costproc sees what Node services send (SPEC §8): chunked JSON bodies without
Content-Length, hex ids, `intValue` as a JSON number, roots without `parentSpanId`, `flags`
on every span, and whole numbers, a measured `costproc.cpu.seconds: 2` among them, always
as `intValue`. Every span has explicit start and end times, so each expected figure is
computed by hand from the bundled price table.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningService
from node_setup import NODE_DIR, node_env, prepare_node
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from costproc.config.model import Config

T0 = (1_767_229_200, 0)  # 2026-01-01T01:00:00Z as (seconds, nanos), in the "2026-01" table
EMIT_TIMEOUT_S = 60.0

# Bundled config: checkout holds 2 cores and 4 GB and serves 8 jobs at once.
CPU_SHARE = 2 / 8  # cores per job
MEM_SHARE = 4 / 8  # GB per job
CPU_PER_CORE_SECOND = 0.031611 / 3600
MEM_PER_GB_SECOND = 0.004237 / 3600
INTERNET_PER_BYTE = 0.09 / 1e9
GPT4O_INPUT, GPT4O_OUTPUT = 2.50 / 1e6, 10.00 / 1e6


def span(
    ref: str,
    name: str,
    start_ms: int,
    end_ms: int,
    parent: str | None = None,
    kind: str = "INTERNAL",
    attributes: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """One span of the workload as emit.mjs reads it; times in ms after T0."""
    return {
        "ref": ref,
        "name": name,
        "kind": kind,
        "start_ms": start_ms,
        "end_ms": end_ms,
        "parent": parent,
        "attributes": dict(attributes or {}),
        "error": error,
    }


def job_root(
    ref: str,
    name: str,
    end_ms: int,
    job: str | int,
    tenant: str,
    attributes: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """A SERVER span from T0 that starts a trace and carries its job's ID and labels."""
    labels = {"job.id": job, "job.type": ref, "tenant": tenant, **(attributes or {})}
    return span(ref, name, 0, end_ms, kind="SERVER", attributes=labels, error=error)


# Parents before children. Each job root's ref is its job type.
SPANS: list[dict[str, Any]] = [
    # order: a SERVER response body and an explicit upload are internet egress, the cache
    # write same-zone; the upload outlives the request, so busy time runs to 1200 ms.
    job_root(
        "order", "POST /orders", 1000, "order-1001", "acme", {"http.response.body.size": 500_000}
    ),
    span("validate", "validate", 100, 400, "order"),
    span("load", "load customer", 200, 300, "validate"),
    span(
        "upload",
        "upload receipt",
        500,
        1200,
        "order",
        "CLIENT",
        {
            "costproc.egress.bytes": 1_500_000,
            "http.request.body.size": 9_999,  # the explicit attribute wins
            "server.address": "cdn.example.com",
        },
    ),
    span(
        "cache",
        "cache write",
        950,
        1000,
        "order",
        "CLIENT",
        {"costproc.egress.bytes": 1_000_000, "server.address": "redis.svc.cluster.local"},
    ),
    # chat: LLM tokens priced by model.
    job_root("chat", "POST /chat", 2000, "chat-77", "acme"),
    span(
        "llm",
        "chat gpt-4o",
        100,
        1600,
        "chat",
        "CLIENT",
        {
            "gen_ai.request.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": 1200,
            "gen_ai.usage.output_tokens": 300,
        },
    ),
    # report: a measured whole number of core-seconds, which Node can only send as
    # intValue, and measured GB-seconds as a double. A span measured for one kind is not
    # estimated for it, on its own or inside its parent, but is for the other kinds.
    job_root("report", "GET /report", 1000, "report-5", "initech"),
    span("render", "render", 200, 700, "report", attributes={"costproc.cpu.seconds": 2}),
    span(
        "compress", "compress", 700, 900, "report", attributes={"costproc.memory.gb_seconds": 0.75}
    ),
    # payment: ERROR status on the job root.
    job_root("payment", "POST /pay", 500, "pay-9", "globex", error="card declined"),
    span("charge", "charge", 100, 200, "payment"),
    # refund: an int job ID and its decimal string are one job.
    job_root("refund", "POST /refund", 300, 4242, "globex"),
    span("ledger", "refund ledger", 50, 250, "refund", attributes={"job.id": "4242"}),
]
WORKLOAD: dict[str, Any] = {"t0": list(T0), "spans": SPANS}

JOBS = ("order", "chat", "report", "payment", "refund")
TENANT = {
    "order": "acme",
    "chat": "acme",
    "report": "initech",
    "payment": "globex",
    "refund": "globex",
}
OUTCOME = {job: "failure" if job == "payment" else "success" for job in JOBS}
# Each job's spans cover it from its first start to its last end (its duration); for each
# usage kind, its busy time is that less what its spans measured for the kind cover.
DURATION = {"order": 1.2, "chat": 2.0, "report": 1.0, "payment": 0.5, "refund": 0.3}
CPU_BUSY = {**DURATION, "report": 1.0 - 0.5}  # render, 200-700 ms, is measured for cpu
MEM_BUSY = {**DURATION, "report": 1.0 - 0.2}  # compress, 700-900 ms, for memory
MEASURED_CPU = {"report": 2.0}
MEASURED_MEM = {"report": 0.75}
CPU_CORE_SECONDS = {j: CPU_BUSY[j] * CPU_SHARE + MEASURED_CPU.get(j, 0.0) for j in JOBS}
MEM_GB_SECONDS = {j: MEM_BUSY[j] * MEM_SHARE + MEASURED_MEM.get(j, 0.0) for j in JOBS}
INTERNET_BYTES = 500_000 + 1_500_000
SAME_ZONE_BYTES = 1_000_000
LLM_USD = 1200 * GPT4O_INPUT + 300 * GPT4O_OUTPUT
SPANS_SENT = len(SPANS)

CPU_USD = {job: CPU_CORE_SECONDS[job] * CPU_PER_CORE_SECOND for job in JOBS}
MEM_USD = {job: MEM_GB_SECONDS[job] * MEM_PER_GB_SECOND for job in JOBS}
JOB_USD = {job: CPU_USD[job] + MEM_USD[job] for job in JOBS}
JOB_USD["order"] += INTERNET_BYTES * INTERNET_PER_BYTE
JOB_USD["chat"] += LLM_USD


@dataclass(frozen=True)
class Emitted:
    """What emit.mjs reported: each job root's trace ID, and how many spans it exported."""

    trace_ids: dict[str, str]
    spans_exported: int


def emit(node: str, protocol: str, url: str, processor: str, workdir: Path) -> Emitted:
    """Run emit.mjs on WORKLOAD; fail the test with its stderr when it does not exit 0."""
    workload = workdir / "workload.json"
    workload.write_text(json.dumps(WORKLOAD), encoding="utf-8")
    command = [node, "emit.mjs", "--protocol", protocol, "--url", url, "--processor", processor]
    try:
        done = subprocess.run(
            [*command, str(workload)],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=EMIT_TIMEOUT_S,
            env=node_env(),
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"emit.mjs did not finish within {EMIT_TIMEOUT_S:.0f}s")
    if done.returncode != 0:
        pytest.fail(f"emit.mjs exited {done.returncode}:\n{done.stderr}")
    report = json.loads(done.stdout)
    return Emitted(report["trace_ids"], report["spans_exported"])


@pytest.fixture(scope="module")
def node() -> str:
    return prepare_node()


# (protocol, span processor): one request per batch, or one per span with each child's
# request sent before its parent's.
CASES = [("http-json", "batch"), ("http-json", "simple"), ("grpc", "batch")]


@pytest.fixture(scope="module", params=CASES, ids=["-".join(case) for case in CASES])
def case(request: pytest.FixtureRequest) -> tuple[str, str]:
    value: tuple[str, str] = request.param
    return value


@pytest.fixture(scope="module")
def running(
    make_config: Callable[[Mapping[str, Any]], Config],
    start_service: Callable[..., RunningService],
    case: tuple[str, str],
) -> RunningService:
    return start_service(make_config({}))


@pytest.fixture(scope="module")
def emitted(
    node: str,
    running: RunningService,
    case: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Emitted:
    protocol, processor = case
    url = running.http_url if protocol == "http-json" else f"http://{running.grpc_target}"
    sent = emit(node, protocol, url, processor, tmp_path_factory.mktemp("node"))
    running.wait_for_total("costproc_jobs_total", len(JOBS))
    return sent


def labels(job: str, **more: str) -> dict[str, str]:
    return {"job_type": job, "tenant": TENANT[job], "service": "checkout", **more}


def test_jobs_by_outcome(running: RunningService, emitted: Emitted) -> None:
    assert emitted.spans_exported == SPANS_SENT
    jobs = {
        (s.labels["job_type"], s.labels["tenant"], s.labels["outcome"]): s.value
        for s in running.samples()
        if s.name == "costproc_jobs_total"
    }
    assert jobs == {(job, TENANT[job], OUTCOME[job]): 1.0 for job in JOBS}
    assert running.total("costproc_job_attempts_total") == len(JOBS)
    assert running.total("costproc_jobs_inflight") == 0
    assert running.total("costproc_spans_received_total") == SPANS_SENT
    assert running.total("costproc_spans_rejected_total") == 0
    assert running.total("costproc_spans_late_total") == 0


@pytest.mark.parametrize("job", JOBS)
def test_usage_and_cost_per_job(running: RunningService, emitted: Emitted, job: str) -> None:
    by_outcome = labels(job, outcome=OUTCOME[job])
    assert running.total("costproc_job_cost_usd_count", **by_outcome) == 1
    cost = running.total("costproc_job_cost_usd_sum", **by_outcome)
    assert cost == pytest.approx(JOB_USD[job], rel=1e-9)
    cpu = running.total("costproc_job_cpu_seconds_sum", **labels(job))
    assert cpu == pytest.approx(CPU_CORE_SECONDS[job], rel=1e-9)
    memory = running.total("costproc_job_memory_gb_seconds_sum", **labels(job))
    assert memory == pytest.approx(MEM_GB_SECONDS[job], rel=1e-9)
    duration = running.total("costproc_job_duration_seconds_sum", **by_outcome)
    assert duration == pytest.approx(DURATION[job], rel=1e-9)


def test_cost_by_component(running: RunningService, emitted: Emitted) -> None:
    components = {
        s.labels["component"] for s in running.samples() if s.name == "costproc_cost_usd_total"
    }
    assert components == {"cpu", "memory", "egress", "llm_tokens"}
    for component, want in {
        "cpu": sum(CPU_USD.values()),
        "memory": sum(MEM_USD.values()),
        "egress": INTERNET_BYTES * INTERNET_PER_BYTE,
        "llm_tokens": LLM_USD,
    }.items():
        got = running.total("costproc_cost_usd_total", component=component)
        assert got == pytest.approx(want, rel=1e-9), component
    assert running.total("costproc_cost_usd_total", component="cpu", job_type="report") == (
        pytest.approx(CPU_USD["report"], rel=1e-9)
    )
    assert running.total("costproc_cost_usd_total") == pytest.approx(
        sum(JOB_USD.values()), rel=1e-9
    )


def test_egress_by_class(running: RunningService, emitted: Emitted) -> None:
    egress = {
        (s.labels["job_type"], s.labels["class"]): s.value
        for s in running.samples()
        if s.name == "costproc_egress_bytes_total"
    }
    assert egress == {
        ("order", "internet"): INTERNET_BYTES,
        ("order", "same_zone"): SAME_ZONE_BYTES,
    }
    assert running.total("costproc_job_egress_bytes_sum") == INTERNET_BYTES + SAME_ZONE_BYTES


def test_failed_attempt_cost(running: RunningService, emitted: Emitted) -> None:
    failed = [s for s in running.samples() if s.name == "costproc_failed_attempt_cost_usd_total"]
    assert [s.labels for s in failed] == [labels("payment")]
    assert failed[0].value == pytest.approx(JOB_USD["payment"], rel=1e-9)


def test_exemplars_carry_node_trace_ids(running: RunningService, emitted: Emitted) -> None:
    # Hex ids in JSON decoded as base64 would give different, still well-formed, trace IDs.
    text = running.scrape(accept="application/openmetrics-text")
    exemplars = {
        s.labels["job_type"]: s.exemplar.labels["trace_id"]
        for family in parse_om(text)
        for s in family.samples
        if s.name == "costproc_job_cost_usd_bucket" and s.exemplar is not None
    }
    assert exemplars == emitted.trace_ids


@dataclass(frozen=True)
class Recorded:
    """One request as an OTLP/HTTP endpoint received it."""

    headers: dict[str, str]
    body: dict[str, Any]


class Recorder(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP JSON exports and keeps their headers and decoded bodies."""

    protocol_version = "HTTP/1.1"
    received: list[Recorded]

    def do_POST(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        chunked = headers.get("transfer-encoding") == "chunked"
        raw = self._read_chunked() if chunked else self.rfile.read(int(headers["content-length"]))
        self.received.append(Recorded(headers, json.loads(raw)))
        reply = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def _read_chunked(self) -> bytes:
        body = b""
        while size := int(self.rfile.readline().split(b";")[0], 16):
            body += self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return body

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[Recorded]]]:
    received: list[Recorded] = []
    handler = type("Handler", (Recorder,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1/traces", received
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_http_json_wire_format(
    node: str, recorder: tuple[str, list[Recorded]], tmp_path: Path
) -> None:
    """What the Node exporter puts on the wire: the shapes the tests above rely on."""
    url, received = recorder
    emit(node, "http-json", url, "batch", tmp_path)
    assert received
    for request in received:
        assert request.headers["content-type"] == "application/json"
        assert request.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in request.headers
        assert "content-encoding" not in request.headers
    spans = {
        s["name"]: s
        for r in received
        for rs in r.body["resourceSpans"]
        for ss in rs["scopeSpans"]
        for s in ss["spans"]
    }
    assert len(spans) == SPANS_SENT
    for ref in ("POST /orders", "GET /report"):
        assert "parentSpanId" not in spans[ref]
    for s in spans.values():
        assert re.fullmatch("[0-9a-f]{32}", s["traceId"])
        assert re.fullmatch("[0-9a-f]{16}", s["spanId"])
        assert "flags" in s
        assert isinstance(s["startTimeUnixNano"], str) and isinstance(s["kind"], int)
    attrs = {a["key"]: a["value"] for a in spans["render"]["attributes"]}
    assert attrs["costproc.cpu.seconds"] == {"intValue": 2}
    attrs = {a["key"]: a["value"] for a in spans["compress"]["attributes"]}
    assert attrs["costproc.memory.gb_seconds"] == {"doubleValue": 0.75}
