"""A real Prometheus scrapes a running costproc and evaluates the shipped recording rules.

waves of known jobs --OTLP/gRPC--> Service --/metrics--> prometheus (scrape and rules every
1 s, exemplar storage on) <-- /api/v1/query, /api/v1/query_exemplars -- assertions

Every wave sends the same jobs under new IDs, so every series grows by the same factor from
one wave to the next. Prometheus extrapolates each series' rate alike, and a ratio of
rates (cost per successful job, retry ratio, failed-attempt share) equals the ratio of the
hand-computed totals exactly; a lone rate (spend per second) depends on where the samples
fall, so it is compared with the same expression queried at the rule's own timestamp and
with bounds from the hand-computed spend.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from conftest import RunningService
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from otlp import S, request, trace_id

from costproc.config.load import parse_config

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "costproc-rules.yaml"
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SCRAPE_JOB = "costproc"
WAVES = 3
TIMEOUT = 30.0  # for each wait below
SETTLE = 12.0  # seconds of flat samples before the rules are read

# A price table with round numbers, so every figure is easy to check by hand.
CPU_PER_SECOND = 0.001
GPU_PER_SECOND = 0.01
EGRESS_PER_BYTE = 0.1 / 1e9
PER_TOKEN = 0.00001
SERVICE = "itest"

CONFIG = f"""
receivers:
  otlp:
    grpc: {{endpoint: "127.0.0.1:0"}}
rollup:
  completion_wait: 300ms
  tick_interval: 50ms
  retry_window: 0s
pricing:
  tables:
    - version: itest
      effective_from: 2025-01-01T00:00:00Z
      cpu_core_second: {CPU_PER_SECOND}
      memory_gb_second: 0.0
      gpu_second: {GPU_PER_SECOND}
      egress_per_gb: {{internet: 0.1}}
      metered:
        - name: model-input
          component: llm_tokens
          match: {{gen_ai.request.model: m1}}
          quantity: gen_ai.usage.input_tokens
          unit_price: {PER_TOKEN}
exporters:
  prometheus: {{endpoint: "127.0.0.1:0"}}
extensions:
  health_check: {{endpoint: "127.0.0.1:0"}}
"""


@dataclass(frozen=True)
class Attempt:
    """One trace of a job: its root, plus a child per kind of usage it reports."""

    cpu_seconds: float = 0.0
    gpu_seconds: float = 0.0
    egress_bytes: int = 0
    input_tokens: int = 0
    failed: bool = False

    @property
    def usd(self) -> float:
        return (
            self.cpu_seconds * CPU_PER_SECOND
            + self.gpu_seconds * GPU_PER_SECOND
            + self.egress_bytes * EGRESS_PER_BYTE
            + self.input_tokens * PER_TOKEN
        )


@dataclass(frozen=True)
class Job:
    name: str
    job_type: str
    tenant: str
    attempts: tuple[Attempt, ...]

    @property
    def labels(self) -> dict[str, str]:
        return {"job_type": self.job_type, "tenant": self.tenant, "service": SERVICE}

    @property
    def succeeded(self) -> bool:
        return any(not a.failed for a in self.attempts)

    @property
    def usd(self) -> float:
        return sum(a.usd for a in self.attempts)

    @property
    def failed_usd(self) -> float:
        return sum(a.usd for a in self.attempts if a.failed)


# One wave; a retry in a new trace joins its job because both attempts close together.
JOBS = (
    Job("order", "checkout", "acme", (Attempt(cpu_seconds=2.0, egress_bytes=1_000_000),)),
    Job(
        "order-retried",
        "checkout",
        "globex",
        (Attempt(cpu_seconds=1.0, failed=True), Attempt(cpu_seconds=1.0)),
    ),
    Job("chat", "inference", "globex", (Attempt(gpu_seconds=3.0, input_tokens=1000),)),
    Job("import", "batch", "acme", (Attempt(cpu_seconds=0.5, failed=True),)),
)
MOST_EXPENSIVE = max(JOBS, key=lambda job: job.usd)


def matching(labels: dict[str, str]) -> list[Job]:
    """The jobs a series with these labels counts (labels other than job ones ignored)."""
    return [j for j in JOBS if all(j.labels.get(k, v) == v for k, v in labels.items())]


# Hand figures for a set of jobs; None where PromQL has no value (a ratio whose numerator
# or denominator has no series, as no job there succeeded or no attempt failed).
def cost_per_successful_job(jobs: list[Job]) -> float | None:
    successes = sum(j.succeeded for j in jobs)
    return sum(j.usd for j in jobs) / successes if successes else None


def retry_ratio(jobs: list[Job]) -> float | None:
    return sum(len(j.attempts) for j in jobs) / len(jobs) - 1 if jobs else None


def failed_attempt_share(jobs: list[Job]) -> float | None:
    failed = sum(j.failed_usd for j in jobs)
    return failed / sum(j.usd for j in jobs) if failed else None


def wave_spans(wave: int) -> tuple[list[S], dict[str, list[str]]]:
    """The wave's spans, and the trace IDs (hex) of each job."""
    spans: list[S] = []
    traces: dict[str, list[str]] = {}
    for j, job in enumerate(JOBS):
        for a, attempt in enumerate(job.attempts):
            trace = wave * 1000 + j * 10 + a + 1
            traces.setdefault(job.name, []).append(trace_id(trace).hex())
            spans.extend(attempt_spans(trace, f"{job.name}-{wave}", job, attempt))
    return spans, traces


def attempt_spans(trace: int, job_id: str, job: Job, attempt: Attempt) -> list[S]:
    resource = {"service.name": SERVICE}
    attrs: dict[str, Any] = {"job.id": job_id, "job.type": job.job_type, "tenant": job.tenant}
    if attempt.cpu_seconds:
        attrs["costproc.cpu.seconds"] = attempt.cpu_seconds
    if attempt.gpu_seconds:
        attrs["costproc.gpu.seconds"] = attempt.gpu_seconds
    root = S(trace, 1, None, 0, 1000, attrs, "server", attempt.failed, resource=resource)
    children: list[S] = []
    if attempt.egress_bytes:
        egress = {"costproc.egress.bytes": attempt.egress_bytes}
        children.append(S(trace, 2, 1, 100, 400, egress, "client", resource=resource))
    if attempt.input_tokens:
        llm = {"gen_ai.request.model": "m1", "gen_ai.usage.input_tokens": attempt.input_tokens}
        children.append(S(trace, 3, 1, 400, 900, llm, "client", resource=resource))
    return [*children, root]  # children first, as SDKs export them


# ---------------------------------------------------------------- Prometheus


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Prometheus:
    """A prometheus server subprocess on loopback, and its HTTP API."""

    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": SCRAPE_JOB, "static_configs": [{"targets": [target]}]}],
        }
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_path = workdir / "prometheus.log"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
                "--enable-feature=exemplar-storage",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited with {self.process.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        pytest.fail(f"prometheus not ready within {TIMEOUT}s:\n{self.logs()}")

    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def api(self, path: str, **params: str | float) -> Any:
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant vector: [{"metric": labels, "value": [timestamp, "value"]}]."""
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("query", **params)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        result = self.query(expr, at)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, what: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus: {what} not within {TIMEOUT}s\n{self.logs()}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.log.close()


# ---------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Run:
    """What the module's run leaves for the assertions."""

    prometheus: Prometheus
    traces: dict[str, list[str]]
    started: float  # wall time before the first wave


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    """The prometheus binary; fails, never skips, if it or the shipped rules are missing."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "the prometheus server binary is not on PATH; this test runs a real one "
            "(Debian: apt-get install prometheus)"
        )
    if not RULES.is_file():
        pytest.fail(f"{RULES.relative_to(ROOT)} is missing: generate it with `costproc rules`")
    return binary


@pytest.fixture(scope="module")
def run(
    prometheus_binary: str,
    start_service: Callable[..., RunningService],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Run]:
    running = start_service(parse_config(CONFIG))
    target = f"127.0.0.1:{running.service.metrics_server.port}"
    prometheus = Prometheus(prometheus_binary, tmp_path_factory.mktemp("prometheus"), target)
    try:
        prometheus.wait_ready()
        started = time.time()
        traces = send_waves(running, prometheus)
        settle(prometheus)
        yield Run(prometheus, traces, started)
    finally:
        prometheus.stop()


def send_waves(running: RunningService, prometheus: Prometheus) -> dict[str, list[str]]:
    """Send each wave once Prometheus holds the previous one, so rates see every step."""
    traces: dict[str, list[str]] = {}
    with grpc.insecure_channel(running.grpc_target) as channel:
        export = channel.unary_unary(
            EXPORT, response_deserializer=ExportTraceServiceResponse.FromString
        )
        for wave in range(1, WAVES + 1):
            spans, wave_traces = wave_spans(wave)
            for name, ids in wave_traces.items():
                traces.setdefault(name, []).extend(ids)
            response = export(request(spans).SerializeToString(), timeout=10)
            assert not response.partial_success.rejected_spans
            jobs = wave * len(JOBS)
            running.wait_for_total("costproc_jobs_total", jobs, timeout=TIMEOUT)
            prometheus.wait_for(
                f"a scrape with {jobs} jobs",
                lambda jobs=jobs: prometheus.scalar("sum(costproc_jobs_total)") == jobs,
            )
    return traces


def settle(prometheus: Prometheus) -> None:
    """Wait until the rules have run over SETTLE seconds of final samples.

    A rate over a few seconds of samples moves by one scrape's share when a rule runs just
    before a scrape is stored; over SETTLE seconds more that share is a few percent.
    """
    final = time.time()

    def evaluated_since() -> bool:
        stamps = [
            float(sample["value"][0])
            for sample in prometheus.query("costproc:cost_per_successful_job_usd:ratio_rate1h")
        ]
        return bool(stamps) and min(stamps) > final + SETTLE

    prometheus.wait_for("rule evaluations over the final samples", evaluated_since)


def rule_labels(record: str) -> list[dict[str, str]]:
    """The extra labels of every rule in the shipped file that records `record`."""
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [
        {k: str(v) for k, v in (rule.get("labels") or {}).items()}
        for group in doc["groups"]
        for rule in group["rules"]
        if rule.get("record") == record
    ]


def selector(labels: dict[str, str]) -> str:
    return ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))


# ---------------------------------------------------------------- tests


def test_target_is_up(run: Run) -> None:
    up = run.prometheus.query(f'up{{job="{SCRAPE_JOB}"}} == 1')
    assert len(up) == 1, up


def test_cost_per_successful_job_from_counters(run: Run) -> None:
    got = run.prometheus.scalar(
        'sum(costproc_cost_usd_total) / sum(costproc_jobs_total{outcome="success"})'
    )
    assert got == pytest.approx(cost_per_successful_job(list(JOBS)), rel=1e-9)
    spend = run.prometheus.scalar("sum(costproc_cost_usd_total)")
    assert spend == pytest.approx(WAVES * sum(j.usd for j in JOBS), rel=1e-9)


Figure = Callable[[list[Job]], float | None]


@pytest.mark.parametrize(
    ("record", "figure"),
    [
        ("costproc:cost_per_successful_job_usd:ratio_rate1h", cost_per_successful_job),
        ("costproc:cost_per_successful_job_usd:ratio_rate5m", cost_per_successful_job),
        ("costproc:retry_ratio:rate1h", retry_ratio),
        ("costproc:failed_attempt_spend_share:ratio_rate1h", failed_attempt_share),
    ],
    ids=["cost-per-success-1h", "cost-per-success-5m", "retry-ratio", "failed-share"],
)
def test_ratio_rules_match_hand_figures(run: Run, record: str, figure: Figure) -> None:
    result = run.prometheus.query(record)
    assert result, f"{record} recorded nothing"
    grouping: set[str] = set()
    for sample in result:
        labels = {k: v for k, v in sample["metric"].items() if k != "__name__"}
        grouping |= labels.keys() & {"job_type", "tenant", "service"}
        want = figure(matching(labels))
        assert want is not None, f"{record}{labels}: no value expected"
        assert float(sample["value"][1]) == pytest.approx(want, rel=1e-6), f"{record}{labels}"
    # Every group that has a value is there: none lost to a wrong matcher or grouping.
    groups = {tuple(sorted((k, v) for k, v in j.labels.items() if k in grouping)) for j in JOBS}
    expected = {g for g in groups if figure(matching(dict(g))) is not None}
    recorded = {
        tuple(sorted((k, v) for k, v in s["metric"].items() if k in grouping)) for s in result
    }
    assert recorded == expected


def test_spend_rate_rules_match_the_same_query(run: Run) -> None:
    record = "costproc:spend_usd:rate5m"
    budgets = rule_labels(record)
    assert budgets, f"{RULES.name} records no {record}"
    for labels in budgets:
        result = run.prometheus.query(f"{record}{{{selector(labels)}}}")
        filters = {k: v for k, v in labels.items() if k in ("job_type", "tenant", "service")}
        spent = sum(j.usd for j in matching(filters))
        if not spent:  # a budget for jobs this workload does not run: a sum of nothing
            assert all(float(s["value"][1]) == 0 for s in result), labels
            continue
        (sample,) = result
        at, value = float(sample["value"][0]), float(sample["value"][1])
        same = run.prometheus.scalar(
            f"sum(rate(costproc_cost_usd_total{{{selector(filters)}}}[5m]))", at
        )
        assert value > 0, labels
        # The rule may have run just before the last scrape it could have seen was stored
        # (see settle): a few percent. A wrong window, filter or metric is off by a factor.
        assert value == pytest.approx(same, rel=0.15), labels
        # The waves after the first added (WAVES - 1) * spent within the 5-minute window;
        # extrapolation stretches that by less than half.
        per_second = (WAVES - 1) * spent / 300
        assert per_second < value < 1.5 * per_second, labels


def test_most_expensive_job_has_its_trace_as_exemplar(run: Run) -> None:
    job = MOST_EXPENSIVE
    data = run.prometheus.api(
        "query_exemplars",
        query=f'costproc_job_cost_usd_bucket{{job_type="{job.job_type}"}}',
        start=run.started - 60,
        end=time.time() + 60,
    )
    exemplars = [e for series in data for e in series["exemplars"]]
    assert exemplars, "no exemplar stored for the most expensive job type"
    for exemplar in exemplars:
        assert exemplar["labels"]["trace_id"] in run.traces[job.name]
        assert float(exemplar["value"]) == pytest.approx(job.usd, rel=1e-9)
