"""Throughput of costproc over loopback gRPC or HTTP, against a server that never parses.

Builds realistic OTLP trace requests with the stock classes, serializes them up front,
starts each server as a subprocess, drives it with concurrent raw-bytes unary calls (or,
with `--protocol http`, POSTs of the same protobuf bodies to /v1/traces) and reports
spans/s, per-call latency and the server's memory. `--protocol both` drives costproc
over each protocol in one run. The canned ceiling speaks gRPC only. Linux only (memory
is read from /proc). See README.md in this directory.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TRACES_PATH = "/v1/traces"
HTTP_HEADERS = {"Content-Type": "application/x-protobuf"}
CALL_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
MAX_RUN_S = 600.0  # caps a --requests run whatever the server does
METRICS_SETTLE_S = 5.0  # the counter may trail the last response briefly
SPANS_METRIC = "costproc_spans_received_total"
# Loopback only: ignore any proxy the environment names, for HTTP and for gRPC alike.
NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]

# Every trace id in a template starts with this; each call swaps in its own index so
# that no two calls carry the same trace, as with a live fleet of SDKs.
MARKER = b"\xc0\x57\xb3\x4e\x9a\x11"

SERVER, CLIENT, INTERNAL = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_INTERNAL
LOCAL_PARENT, REMOTE_PARENT = 0x101, 0x301  # sampled, with "parent is remote" known
MS = 1_000_000

Attr = str | int | float
# service name -> number of instances that send spans
SERVICES = {"api-gateway": 2, "job-worker": 3, "model-proxy": 1}
JOB_TYPES = ["render", "transcode", "report", "embed"]
TENANTS = ["acme", "globex", "initech", "umbrella", "hooli"]
MODELS = ["gpt-4o-mini", "claude-3-5-haiku", "llama-3.1-70b"]


# ---------------------------------------------------------------- workload


def value(v: Attr) -> AnyValue:
    """An attribute value in its OTLP form."""
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    return AnyValue(double_value=v)


def attributes(attrs: dict[str, Attr]) -> list[KeyValue]:
    """Attributes in their OTLP form."""
    return [KeyValue(key=k, value=value(v)) for k, v in attrs.items()]


@dataclass
class JobBuilder:
    """Builds the spans of one job: (resource key, span) pairs with nested times."""

    rng: random.Random
    trace_id: bytes
    spans: list[tuple[str, Span]] = field(default_factory=list)

    def add(
        self,
        where: str,
        parent: bytes,
        name: str,
        kind: Span.SpanKind.ValueType,
        times: tuple[int, int],
        attrs: dict[str, Attr],
    ) -> bytes:
        """Append a span and return its id."""
        span_id = self.rng.randbytes(8)
        failed = kind == SERVER and bool(parent) and self.rng.random() < 0.03
        status = Status(code=Status.STATUS_CODE_ERROR, message="timeout") if failed else None
        self.spans.append(
            (
                where,
                Span(
                    trace_id=self.trace_id,
                    span_id=span_id,
                    parent_span_id=parent,
                    name=name,
                    kind=kind,
                    start_time_unix_nano=times[0],
                    end_time_unix_nano=times[1],
                    attributes=attributes(attrs),
                    status=status,
                    flags=REMOTE_PARENT if kind == SERVER else LOCAL_PARENT,
                ),
            )
        )
        return span_id

    def instance(self, service: str) -> str:
        """A resource key: one instance of the service."""
        return f"{service}/{self.rng.randrange(SERVICES[service])}"


def root_attrs(rng: random.Random) -> dict[str, Attr]:
    """The job root's attributes; a quarter of job ids arrive as integers."""
    job_id: Attr = rng.randrange(10**9) if rng.random() < 0.25 else f"job-{rng.randbytes(6).hex()}"
    return {
        "job.id": job_id,
        "job.type": rng.choice(JOB_TYPES),
        "tenant": rng.choice(TENANTS),
        "http.request.method": "POST",
        "http.route": "/v1/jobs",
        "http.response.status_code": 202,
    }


def add_call(job: JobBuilder, gateway: str, root: bytes, start: int, width: int, step: int) -> None:
    """A gateway CLIENT call, the worker SERVER span it causes and its INTERNAL work."""
    rng, body = job.rng, job.rng.randrange(200, 200_000)
    client = job.add(
        gateway,
        root,
        "POST",
        CLIENT,
        (start, start + width),
        {
            "http.request.method": "POST",
            "server.address": "job-worker",
            "server.port": 8080,
            "url.full": f"http://job-worker:8080/jobs/{step}",
            "http.response.status_code": 200,
            "http.response.body.size": body,
        },
    )
    worker = job.instance("job-worker")
    served = (start + width // 20, start + width - width // 20)
    server = job.add(
        worker,
        client,
        "POST /jobs/{step}",
        SERVER,
        served,
        {
            "http.request.method": "POST",
            "http.route": "/jobs/{step}",
            "http.response.status_code": 200,
            "http.response.body.size": body,
            "network.peer.address": f"10.0.{rng.randrange(4)}.{rng.randrange(2, 250)}",
            "user_agent.original": "python-httpx/0.28.1",
        },
    )
    add_internal(job, worker, server, served, step)


def add_internal(
    job: JobBuilder, where: str, parent: bytes, around: tuple[int, int], step: int
) -> None:
    """An INTERNAL span inside `around`."""
    margin = (around[1] - around[0]) // 10
    job.add(
        where,
        parent,
        f"step-{step}",
        INTERNAL,
        (around[0] + margin, around[1] - margin),
        {
            "code.function.name": f"worker.steps.run_{step}",
            "code.file.path": "/app/worker/steps.py",
            "step.index": step,
            "thread.name": f"worker-{job.rng.randrange(8)}",
            "work.items": job.rng.randrange(1, 500),
        },
    )


def add_model_call(job: JobBuilder, parent: bytes, start: int, width: int) -> None:
    """The metered span: one model call per job."""
    job.add(
        job.instance("model-proxy"),
        parent,
        "chat",
        CLIENT,
        (start, start + width),
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": job.rng.choice(MODELS),
            "gen_ai.usage.input_tokens": job.rng.randrange(50, 8000),
            "gen_ai.usage.output_tokens": job.rng.randrange(10, 2000),
            "server.address": "api.openai.com",
        },
    )


def add_db_call(job: JobBuilder, gateway: str, root: bytes, start: int, width: int) -> None:
    """The gateway recording the job in its database."""
    job.add(
        gateway,
        root,
        "INSERT jobs",
        CLIENT,
        (start, start + width),
        {
            "db.system.name": "postgresql",
            "db.namespace": "jobs",
            "db.operation.name": "INSERT",
            "db.collection.name": "jobs",
            "server.address": "pg-primary",
        },
    )


def build_job(rng: random.Random, now_ns: int, size: int) -> list[tuple[str, Span]]:
    """`size` spans (at least 6) of one job: a root, a db call, calls with work, a model call."""
    job = JobBuilder(rng, MARKER + rng.randbytes(10))
    gateway = job.instance("api-gateway")
    calls, extra = divmod(size - 3, 3)
    duration = rng.randrange(50, 2000) * MS
    t0 = now_ns - rng.randrange(500, 5000) * MS - duration
    root = job.add(gateway, b"", "POST /v1/jobs", SERVER, (t0, t0 + duration), root_attrs(rng))
    slot = duration // (calls + 2)
    add_db_call(job, gateway, root, t0 + slot // 4, slot // 2)
    for step in range(calls):
        add_call(job, gateway, root, t0 + (step + 1) * slot, slot - slot // 10, step)
    _, first_server = job.spans[3]  # the first call's worker SERVER span
    served = first_server.start_time_unix_nano
    add_model_call(job, first_server.span_id, served + slot // 8, slot // 2)
    for step in range(extra):
        add_internal(job, gateway, root, (t0, t0 + duration), calls + step)
    return job.spans


def job_sizes(rng: random.Random, total: int) -> list[int]:
    """Job sizes of ~13 spans (10-16) adding up to exactly `total`; the last takes the rest."""
    sizes: list[int] = []
    left = total
    while left > 25:  # leaves 10-25 spans for the last job
        sizes.append(rng.randrange(10, 17))
        left -= sizes[-1]
    return [*sizes, left]


def resource(key: str) -> Resource:
    """The resource of one service instance."""
    service, instance = key.split("/")
    return Resource(
        attributes=attributes(
            {
                "service.name": service,
                "service.instance.id": f"{service}-{instance}-5f7c9d",
                "service.version": "2.14.1",
                "host.name": f"node-{instance}",
                "telemetry.sdk.language": "python",
                "telemetry.sdk.name": "opentelemetry",
            }
        )
    )


def build_request(rng: random.Random, spans_per_request: int, now_ns: int) -> bytes:
    """One request: jobs' spans grouped by resource, each group in the order spans ended."""
    by_resource: dict[str, list[Span]] = {}
    for size in job_sizes(rng, spans_per_request):
        for where, span in build_job(rng, now_ns, size):
            by_resource.setdefault(where, []).append(span)
    keys = list(by_resource)
    rng.shuffle(keys)  # so children often precede their parents across groups too
    groups = [
        ResourceSpans(
            resource=resource(key),
            scope_spans=[
                ScopeSpans(
                    scope=InstrumentationScope(name=f"{key.split('/')[0]}.tracing", version="1"),
                    spans=sorted(by_resource[key], key=lambda s: s.end_time_unix_nano),
                )
            ],
        )
        for key in keys
    ]
    return ExportTraceServiceRequest(resource_spans=groups).SerializeToString()


@dataclass
class Workload:
    """Pre-serialized requests; call i gets template i % n with trace ids unique to i."""

    spans_per_request: int
    templates: list[list[bytes]]  # each template split at MARKER
    bytes_per_span: float

    def request(self, index: int) -> bytes:
        """The bytes of call `index`."""
        parts = self.templates[index % len(self.templates)]
        return index.to_bytes(len(MARKER), "big").join(parts)


def build_workload(count: int, spans_per_request: int, seed: int) -> Workload:
    """`count` distinct templates of `spans_per_request` spans each."""
    rng, now_ns = random.Random(seed), time.time_ns()
    templates, size = [], 0
    for _ in range(count):
        data = build_request(rng, spans_per_request, now_ns)
        if data.count(MARKER) != spans_per_request:
            raise RuntimeError("trace id marker collides with other bytes; change --seed")
        templates.append(data.split(MARKER))
        size += len(data)
    return Workload(spans_per_request, templates, size / (count * spans_per_request))


# ---------------------------------------------------------------- servers


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports nobody listens on right now (all held open while chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class ServerProcess:
    """A server subprocess: its stderr goes to a file, read back if it dies."""

    name: str
    proc: subprocess.Popen[bytes]
    stderr: TextIO

    def check_alive(self) -> None:
        """Raise with the child's stderr if it has exited."""
        if self.proc.poll() is None:
            return
        self.stderr.seek(0)
        tail = self.stderr.read()[-4000:]
        raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}:\n{tail}")

    def memory_mib(self) -> tuple[float | None, float | None]:
        """(peak RSS, current RSS) in MiB, from /proc."""
        fields: dict[str, float] = {}
        try:
            with open(f"/proc/{self.proc.pid}/status") as status:
                for line in status:
                    key, _, rest = line.partition(":")
                    if key in ("VmHWM", "VmRSS"):
                        fields[key] = int(rest.split()[0]) / 1024
        except OSError:
            pass
        return fields.get("VmHWM"), fields.get("VmRSS")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)


@contextmanager
def server_process(name: str, argv: list[str], workdir: Path) -> Iterator[ServerProcess]:
    """Run argv from the repository root for the duration of the block."""
    with open(workdir / f"{name}.stderr", "w+") as stderr:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)
        server = ServerProcess(name, proc, stderr)
        try:
            yield server
        finally:
            server.stop()


def wait_until(server: ServerProcess, ready: Callable[[], bool], what: str) -> None:
    """Poll `ready` until it holds; fail if the server dies or READY_TIMEOUT_S passes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        server.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name}: {what} not ready after {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.1)


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on the loopback port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def http_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET; status 0 when nothing answers."""
    try:
        with NO_PROXY_OPENER.open(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except (urllib.error.URLError, OSError):
        return 0, ""


COSTPROC_CONFIG = """\
receivers:
  otlp:
    grpc:
      endpoint: 127.0.0.1:{grpc}
    http:
      endpoint: 127.0.0.1:{http}
exporters:
  prometheus:
    endpoint: 127.0.0.1:{metrics}
extensions:
  health_check:
    endpoint: 127.0.0.1:{health}
usage:
  services:
    api-gateway: {{cpu_cores: 2, memory_gb: 4, concurrency: 16}}
    job-worker: {{cpu_cores: 4, memory_gb: 8, concurrency: 4}}
    model-proxy: {{cpu_cores: 1, memory_gb: 2, concurrency: 32}}
pricing:
  tables:
    - version: bench
      effective_from: 2000-01-01T00:00:00Z
      cpu_core_hour: 0.031611
      memory_gb_hour: 0.004237
      gpu_hour: 0.95
      egress_per_gb: {{internet: 0.09}}
      metered:
        - name: llm-input
          component: llm_tokens
          match: {{gen_ai.request.model: {{regex: '.+'}}}}
          quantity: gen_ai.usage.input_tokens
          unit_price: 0.0000025
        - name: llm-output
          component: llm_tokens
          match: {{gen_ai.request.model: {{regex: '.+'}}}}
          quantity: gen_ai.usage.output_tokens
          unit_price: 0.00001
"""


@dataclass
class Ports:
    """The loopback ports one server run uses."""

    grpc: int
    metrics: int
    health: int
    http: int

    @classmethod
    def pick(cls) -> Ports:
        """Four distinct free ports."""
        return cls(*free_ports(4))

    def receiver(self, protocol: str) -> int:
        """The port that takes traces over `protocol`."""
        return self.http if protocol == "http" else self.grpc


def costproc_argv(ports: Ports, workdir: Path) -> list[str]:
    """Write costproc's config and return the command that serves it."""
    config = workdir / "costproc.yaml"
    config.write_text(COSTPROC_CONFIG.format(**asdict(ports)))
    return [sys.executable, "-m", "costproc", "serve", "--config", str(config)]


def canned_argv(ports: Ports) -> list[str]:
    """The command that runs the canned server."""
    return [sys.executable, str(HERE / "canned_server.py"), "--port", str(ports.grpc)]


def spans_counted(ports: Ports, expected: int) -> int | None:
    """costproc's received-spans counter, once it reaches `expected` or settles."""
    deadline, seen = time.monotonic() + METRICS_SETTLE_S, None
    while True:
        status, text = http_get(f"http://127.0.0.1:{ports.metrics}/metrics")
        if status == 200:
            seen = sum(
                int(sample.value)
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == SPANS_METRIC
            )
        if seen == expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


# ---------------------------------------------------------------- load


@dataclass
class Phase:
    """What one phase of calls produced."""

    calls: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0


class CallFailed(Exception):
    """A call that did not succeed; its text is the error's name in the report."""


Call = Callable[[bytes], Awaitable[None]]


def grpc_call(channel: grpc.aio.Channel) -> Call:
    """Export over gRPC, raw bytes in and out."""
    export = channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)

    async def call(data: bytes) -> None:
        try:
            await export(data, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            raise CallFailed(error.code().name) from error

    return call


def http_call(session: aiohttp.ClientSession, url: str) -> Call:
    """POST the same protobuf bytes to /v1/traces; anything but 200 is an error."""
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)

    async def call(data: bytes) -> None:
        try:
            async with session.post(url, data=data, headers=HTTP_HEADERS, timeout=timeout) as r:
                await r.read()
                status = r.status
        except (TimeoutError, aiohttp.ClientError) as error:
            raise CallFailed(type(error).__name__) from error
        if status != 200:
            raise CallFailed(f"HTTP_{status}")

    return call


async def call_loop(
    call: Call, workload: Workload, indices: Iterator[int], deadline: float, phase: Phase
) -> None:
    """One in-flight call at a time until the indices or the time run out."""
    for index in indices:
        if time.perf_counter() >= deadline:
            return
        data = workload.request(index)
        started = time.perf_counter()
        try:
            await call(data)
        except CallFailed as error:
            phase.errors[str(error)] += 1
            continue
        phase.latencies.append(time.perf_counter() - started)
        phase.calls += 1


async def run_phase(
    call: Call, workload: Workload, indices: Iterator[int], seconds: float, concurrency: int
) -> Phase:
    """Drive `concurrency` call loops sharing one index sequence."""
    phase = Phase()
    started = time.perf_counter()
    deadline = started + seconds
    loops = [call_loop(call, workload, indices, deadline, phase) for _ in range(concurrency)]
    await asyncio.gather(*loops)
    phase.seconds = time.perf_counter() - started
    return phase


async def drive(
    port: int, protocol: str, workload: Workload, args: argparse.Namespace
) -> tuple[Phase, Phase]:
    """Warm up, then measure over `protocol`; returns (warmup, measured)."""
    if protocol == "http":
        # One pooled connection per call loop; trust_env off keeps proxies out of loopback.
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            url = f"http://127.0.0.1:{port}{TRACES_PATH}"
            return await run_phases(http_call(session, url), workload, args)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", CHANNEL_OPTIONS) as channel:
        return await run_phases(grpc_call(channel), workload, args)


async def run_phases(
    call: Call, workload: Workload, args: argparse.Namespace
) -> tuple[Phase, Phase]:
    """The warm-up phase, then the measured one, sharing one index sequence."""
    indices = itertools.count()
    warmup = await run_phase(call, workload, indices, args.warmup, args.concurrency)
    if args.requests is not None:
        bounded = itertools.islice(indices, args.requests)
        measured = await run_phase(call, workload, bounded, MAX_RUN_S, args.concurrency)
    else:
        measured = await run_phase(call, workload, indices, args.seconds, args.concurrency)
    return warmup, measured


# ---------------------------------------------------------------- report


def percentile_ms(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, in milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000


@dataclass
class Result:
    """One target's figures."""

    target: str
    protocol: str
    calls: int
    errors: dict[str, int]
    seconds: float
    spans_per_s: float
    calls_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    peak_rss_mib: float | None
    rss_after_mib: float | None
    spans_sent: int  # including warmup, as the server counts them
    spans_counted: int | None = None


def result(
    target: str,
    protocol: str,
    warmup: Phase,
    measured: Phase,
    server: ServerProcess,
    spans: int,
) -> Result:
    """Summarize a run; memory is read while the server still runs."""
    peak, after = server.memory_mib()
    seconds = measured.seconds or 1e-9
    return Result(
        target=target,
        protocol=protocol,
        calls=measured.calls,
        errors=dict(warmup.errors + measured.errors),
        seconds=round(measured.seconds, 3),
        spans_per_s=measured.calls * spans / seconds,
        calls_per_s=measured.calls / seconds,
        p50_ms=percentile_ms(measured.latencies, 0.50),
        p99_ms=percentile_ms(measured.latencies, 0.99),
        peak_rss_mib=peak,
        rss_after_mib=after,
        spans_sent=(warmup.calls + measured.calls) * spans,
    )


def run_target(
    target: str, protocol: str, workload: Workload, args: argparse.Namespace, workdir: Path
) -> Result:
    """Start the target's server, drive it over `protocol`, read memory and counters, stop it."""
    ports = Ports.pick()
    argv = canned_argv(ports) if target == "canned" else costproc_argv(ports, workdir)
    port = ports.receiver(protocol)
    with server_process(target, argv, workdir) as server:
        if target == "costproc":
            health = f"http://127.0.0.1:{ports.health}/"
            wait_until(server, lambda: http_get(health)[0] == 200, "health check")
        wait_until(server, lambda: accepts(port), f"{protocol} port")
        warmup, measured = asyncio.run(drive(port, protocol, workload, args))
        server.check_alive()
        spans = workload.spans_per_request
        outcome = result(target, protocol, warmup, measured, server, spans)
        if target == "costproc":
            outcome.spans_counted = spans_counted(ports, outcome.spans_sent)
    return outcome


def fmt(v: float | None, width: int, decimals: int) -> str:
    """A right-aligned number for the table; '-' when unknown."""
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.{decimals}f}"


def table(results: list[Result]) -> str:
    """The plain-text report table."""
    head = f"{'target':<9} {'proto':<5} {'calls':>7} {'errors':>6} {'spans/s':>10}"
    lines = [head + f" {'p50 ms':>7} {'p99 ms':>7} {'peak RSS MiB':>12} {'RSS after MiB':>13}"]
    for r in results:
        lines.append(
            f"{r.target:<9} {r.protocol:<5} {r.calls:>7} {sum(r.errors.values()):>6}"
            f" {r.spans_per_s:>10,.0f}"
            f" {fmt(r.p50_ms, 7, 2)} {fmt(r.p99_ms, 7, 2)}"
            f" {fmt(r.peak_rss_mib, 12, 1)} {fmt(r.rss_after_mib, 13, 1)}"
        )
    return "\n".join(lines)


def summary(results: list[Result]) -> dict[str, Any]:
    """Per costproc protocol: ratio to the (gRPC) ceiling and the counter check."""
    ceiling = next((r.spans_per_s for r in results if r.target == "canned"), None)
    out: dict[str, Any] = {}
    for r in results:
        if r.target != "costproc":
            continue
        check: dict[str, Any] = {"spans_counted": r.spans_counted, "spans_sent": r.spans_sent}
        check["count_ok"] = r.spans_counted == r.spans_sent
        if ceiling is not None:
            check["ratio"] = r.spans_per_s / ceiling if ceiling else None
        out.setdefault("costproc", {})[r.protocol] = check
    if "costproc" in out:
        out["count_ok"] = all(c["count_ok"] for c in out["costproc"].values())
    return out


def report(workload: Workload, results: list[Result], as_json: bool) -> str:
    """The whole report, as text or JSON."""
    extra = summary(results)
    if as_json:
        shape = {
            "spans_per_request": workload.spans_per_request,
            "templates": len(workload.templates),
            "bytes_per_span": round(workload.bytes_per_span, 1),
        }
        body = {"workload": shape, "results": [asdict(r) for r in results], **extra}
        return json.dumps(body, indent=2)
    lines = [
        f"workload: {workload.spans_per_request} spans/request, "
        f"{len(workload.templates)} templates, {workload.bytes_per_span:.0f} bytes/span",
        table(results),
    ]
    for r in results:
        if r.errors:
            lines.append(f"{r.target}/{r.protocol} errors: {dict(sorted(r.errors.items()))}")
    for protocol, check in extra.get("costproc", {}).items():
        if check.get("ratio") is not None:
            lines.append(f"costproc over {protocol} / canned gRPC: {check['ratio']:.3f}")
        verdict = "ok" if check["count_ok"] else "MISMATCH"
        lines.append(
            f"{SPANS_METRIC} over {protocol}: {check['spans_counted']}"
            f" (sent {check['spans_sent']}): {verdict}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description="costproc throughput over loopback gRPC or HTTP")
    p.add_argument("--target", choices=["both", "costproc", "canned"], default="both")
    p.add_argument(
        "--protocol",
        choices=["grpc", "http", "both"],
        default="grpc",
        help="how costproc is driven (default grpc); the canned ceiling is always gRPC",
    )
    span = p.add_mutually_exclusive_group()
    span.add_argument("--seconds", type=float, default=10.0, help="measured run (default 10)")
    span.add_argument("--requests", type=int, help="measured calls instead of --seconds")
    p.add_argument("--concurrency", type=int, default=8, help="calls in flight (default 8)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds (default 2)")
    p.add_argument("--spans-per-request", type=int, default=512, help="(default 512)")
    p.add_argument("--templates", type=int, default=8, help="distinct requests (default 8)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    requests = 1 if args.requests is None else args.requests
    if min(args.concurrency, args.templates, requests) < 1 or args.seconds <= 0:
        p.error("--seconds must be > 0; --requests, --concurrency, --templates >= 1")
    if args.spans_per_request < 20 or args.warmup < 0:
        p.error("--spans-per-request must be >= 20 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if costproc's span count disagrees."""
    args = parse_args(argv)
    protocols = ["grpc", "http"] if args.protocol == "both" else [args.protocol]
    runs = [("canned", "grpc")] if args.target in ("both", "canned") else []
    if args.target in ("both", "costproc"):
        runs += [("costproc", protocol) for protocol in protocols]
    with tempfile.TemporaryDirectory(prefix="costproc-bench-") as tmp:
        try:
            workload = build_workload(args.templates, args.spans_per_request, args.seed)
            results = [run_target(t, p, workload, args, Path(tmp)) for t, p in runs]
        except RuntimeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    print(report(workload, results, args.json))
    return 0 if summary(results).get("count_ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
