"""TLS, mutual TLS and bearer tokens on OTLP/gRPC and /metrics; label sanitizing; quiet logs.

Every service here is real and on loopback: the OpenTelemetry SDK's gRPC exporter or a raw
gRPC client sends, urllib scrapes over HTTPS. Certificates come from a throwaway CA.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from certs import Pki, make_pki
from conftest import RunningService, merge
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from otlp import BASE_NS, S, body
from prometheus_client.parser import text_string_to_metric_families

from costproc.cli import main
from costproc.config.load import default_config_path
from costproc.config.model import Config
from costproc.errors import StartupError
from costproc.receive.decode import MAX_LABEL_CHARS, _label
from costproc.service import Service

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TOKEN = "tok-4f9c2a7e1b"
CHECKOUT = {"service.name": "checkout"}  # bundled config: 2 cores, 4 GB, concurrency 8
JOB_USD = (0.031611 / 3600 * 2 / 8 + 0.004237 / 3600 * 4 / 8) * 1.0  # one 1 s checkout job
SECOND = 1_000_000_000

MakeConfig = Callable[[Mapping[str, Any]], Config]
StartService = Callable[..., RunningService]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates from a CA the service does not trust."""
    return make_pki(tmp_path_factory.mktemp("stranger"))


def tls_section(pki: Pki, mutual: bool) -> dict[str, str]:
    section = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    if mutual:
        section["client_ca_file"] = str(pki.ca_cert)
    return section


def secured(pki: Pki, mutual: bool) -> dict[str, Any]:
    """A config overlay: TLS (or mTLS) on both the gRPC receiver and /metrics."""
    tls = tls_section(pki, mutual)
    return {
        "receivers": {"otlp": {"grpc": {"tls": tls}}},
        "exporters": {"prometheus": {"tls": tls}},
    }


# -- clients ---------------------------------------------------------------------------


def channel_credentials(ca: Pki, client: Pki | None = None) -> grpc.ChannelCredentials:
    """Trust `ca`'s server certificates; present `client`'s certificate when given."""
    if client is None:
        return grpc.ssl_channel_credentials(ca.ca_cert.read_bytes())
    return grpc.ssl_channel_credentials(
        ca.ca_cert.read_bytes(), client.client_key.read_bytes(), client.client_cert.read_bytes()
    )


def raw_export(
    target: str,
    payload: bytes,
    credentials: grpc.ChannelCredentials | None = None,
    metadata: Sequence[tuple[str, str]] = (),
) -> grpc.StatusCode:
    """Send one Export call with a raw client; the status it ended with."""
    channel = (
        grpc.insecure_channel(target)
        if credentials is None
        else grpc.secure_channel(target, credentials)
    )
    with channel:
        try:
            channel.unary_unary(EXPORT)(payload, timeout=10, metadata=tuple(metadata))
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            return code
    return grpc.StatusCode.OK


def sdk_spans(job_ids: Sequence[str], **attributes: str) -> Sequence[ReadableSpan]:
    """One 1 s checkout SERVER span per job, each its own trace, from the real SDK."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(CHECKOUT))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("costproc.test")
    for job_id in job_ids:
        span = tracer.start_span(
            "handle",
            kind=SpanKind.SERVER,
            attributes={"job.id": job_id, **attributes},
            start_time=BASE_NS,
        )
        span.end(end_time=BASE_NS + SECOND)
    provider.shutdown()
    return memory.get_finished_spans()


def sdk_export(endpoint: str, spans: Sequence[ReadableSpan], **options: Any) -> SpanExportResult:
    """Export through the SDK's own OTLP/gRPC exporter."""
    exporter = OTLPSpanExporter(endpoint=endpoint, timeout=10, **options)
    try:
        return exporter.export(spans)
    finally:
        exporter.shutdown()


def checkout_job(trace: int, job_id: str, **attributes: Any) -> bytes:
    return body(
        [S(trace, 1, None, 0, 1000, {"job.id": job_id, **attributes}, "server", resource=CHECKOUT)]
    )


class Scraper:
    """Reads a TLS metrics endpoint with one client context."""

    def __init__(self, running: RunningService, context: ssl.SSLContext) -> None:
        self.url = f"https://127.0.0.1:{running.service.metrics_server.port}/metrics"
        self.context = context

    def text(self) -> str:
        with urllib.request.urlopen(self.url, context=self.context, timeout=5) as response:
            return str(response.read().decode())

    def total(self, name: str) -> float:
        families = text_string_to_metric_families(self.text())
        return sum(s.value for f in families for s in f.samples if s.name == name)

    def wait_for_total(self, name: str, want: float, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while (got := self.total(name)) < want:
            if time.monotonic() > deadline:
                pytest.fail(f"{name} stayed at {got}, wanted {want} within {timeout}s")
            time.sleep(0.02)


def client_context(pki: Pki, client: Pki | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca_cert)
    if client is not None:
        context.load_cert_chain(client.client_cert, client.client_key)
    return context


# Whatever a refused connection surfaces as in urllib: reset, EOF, alert, bad status.
REFUSED = (OSError, http.client.HTTPException)


# -- gRPC over TLS ---------------------------------------------------------------------


def test_sdk_exporter_over_tls_is_accepted_and_priced(
    pki: Pki, make_config: MakeConfig, start_service: StartService
) -> None:
    running = start_service(make_config(secured(pki, mutual=False)))
    spans = sdk_spans(["tls-1", "tls-2"])

    result = sdk_export(
        f"https://{running.grpc_target}", spans, credentials=channel_credentials(pki)
    )

    assert result == SpanExportResult.SUCCESS
    scraper = Scraper(running, client_context(pki))
    scraper.wait_for_total("costproc_jobs_total", 2)
    assert scraper.total("costproc_jobs_total") == 2
    assert scraper.total("costproc_cost_usd_total") == pytest.approx(2 * JOB_USD, rel=1e-9)


@pytest.mark.parametrize(
    ("client", "want"),
    [
        pytest.param("ca", grpc.StatusCode.OK, id="tls"),
        pytest.param("plaintext", grpc.StatusCode.UNAVAILABLE, id="plaintext-refused"),
        pytest.param("untrusted-ca", grpc.StatusCode.UNAVAILABLE, id="server-not-trusted"),
    ],
)
def test_raw_client_over_tls(
    client: str,
    want: grpc.StatusCode,
    pki: Pki,
    stranger: Pki,
    make_config: MakeConfig,
    start_service: StartService,
) -> None:
    running = start_service(make_config(secured(pki, mutual=False)))
    credentials = {
        "ca": channel_credentials(pki),
        "plaintext": None,
        "untrusted-ca": channel_credentials(stranger),
    }[client]

    assert raw_export(running.grpc_target, checkout_job(1, "raw"), credentials) == want


@pytest.mark.parametrize(
    ("client", "want"),
    [
        pytest.param("no-cert", grpc.StatusCode.UNAVAILABLE, id="no-client-cert"),
        pytest.param("stranger", grpc.StatusCode.UNAVAILABLE, id="cert-from-another-ca"),
        pytest.param("plaintext", grpc.StatusCode.UNAVAILABLE, id="plaintext"),
        pytest.param("trusted", grpc.StatusCode.OK, id="trusted-cert"),
    ],
)
def test_mtls_grpc_needs_a_trusted_client_cert(
    client: str,
    want: grpc.StatusCode,
    pki: Pki,
    stranger: Pki,
    make_config: MakeConfig,
    start_service: StartService,
) -> None:
    running = start_service(make_config(secured(pki, mutual=True)))
    credentials = {
        "no-cert": channel_credentials(pki),
        "stranger": channel_credentials(pki, stranger),
        "plaintext": None,
        "trusted": channel_credentials(pki, pki),
    }[client]

    assert raw_export(running.grpc_target, checkout_job(1, "m"), credentials) == want
    scraper = Scraper(running, client_context(pki, pki))
    if want == grpc.StatusCode.OK:
        scraper.wait_for_total("costproc_jobs_total", 1)
    assert scraper.total("costproc_spans_received_total") == (
        1 if want == grpc.StatusCode.OK else 0
    )


def test_sdk_exporter_with_client_cert_over_mtls(
    pki: Pki, make_config: MakeConfig, start_service: StartService
) -> None:
    running = start_service(make_config(secured(pki, mutual=True)))

    result = sdk_export(
        f"https://{running.grpc_target}",
        sdk_spans(["mtls-1"]),
        credentials=channel_credentials(pki, pki),
    )

    assert result == SpanExportResult.SUCCESS
    Scraper(running, client_context(pki, pki)).wait_for_total("costproc_jobs_total", 1)


# -- bearer token ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((), id="missing"),
        pytest.param((("authorization", "Bearer wrong-token"),), id="wrong"),
        pytest.param((("authorization", f"Bearer {TOKEN}x"),), id="token-plus-one"),
        pytest.param((("authorization", f"Bearer {TOKEN[:-1]}"),), id="token-prefix"),
        pytest.param((("authorization", f"Basic {TOKEN}"),), id="other-scheme"),
        pytest.param((("authorization", TOKEN),), id="no-scheme"),
        pytest.param((("x-api-key", TOKEN),), id="other-header"),
    ],
)
def test_call_without_the_token_is_unauthenticated_and_not_decoded(
    metadata: tuple[tuple[str, str], ...],
    make_config: MakeConfig,
    start_service: StartService,
) -> None:
    running = start_service(
        make_config({"receivers": {"otlp": {"grpc": {"auth": {"bearer_token": TOKEN}}}}})
    )

    code = raw_export(running.grpc_target, checkout_job(1, "nope"), metadata=metadata)

    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert running.total("costproc_spans_received_total") == 0


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_raw_client_with_the_token_is_accepted(
    scheme: str, make_config: MakeConfig, start_service: StartService
) -> None:
    running = start_service(
        make_config({"receivers": {"otlp": {"grpc": {"auth": {"bearer_token": TOKEN}}}}})
    )
    metadata = (("authorization", f"{scheme} {TOKEN}"),)

    assert raw_export(running.grpc_target, checkout_job(1, "ok"), metadata=metadata) == (
        grpc.StatusCode.OK
    )
    running.wait_for_total("costproc_jobs_total", 1)


def test_sdk_exporter_with_the_token_counts_exactly(
    make_config: MakeConfig, start_service: StartService
) -> None:
    running = start_service(
        make_config({"receivers": {"otlp": {"grpc": {"auth": {"bearer_token": TOKEN}}}}})
    )
    headers = {"authorization": f"Bearer {TOKEN}"}
    endpoint = f"http://{running.grpc_target}"

    refused = sdk_export(endpoint, sdk_spans(["refused"]))
    accepted = sdk_export(endpoint, sdk_spans(["a", "b", "c"]), headers=headers)

    assert (refused, accepted) == (SpanExportResult.FAILURE, SpanExportResult.SUCCESS)
    running.wait_for_total("costproc_jobs_total", 3)
    # Intake counts a span before the call returns, so the refused one would show here.
    assert running.total("costproc_spans_received_total") == 3
    assert running.total("costproc_jobs_total") == 3


def test_token_and_mtls_together(
    pki: Pki, make_config: MakeConfig, start_service: StartService
) -> None:
    overlay = merge(
        secured(pki, mutual=True),
        {"receivers": {"otlp": {"grpc": {"auth": {"bearer_token": TOKEN}}}}},
    )
    running = start_service(make_config(overlay))
    credentials = channel_credentials(pki, pki)
    payload = checkout_job(1, "both")
    good = (("authorization", f"Bearer {TOKEN}"),)

    assert raw_export(running.grpc_target, payload, credentials) == grpc.StatusCode.UNAUTHENTICATED
    assert raw_export(running.grpc_target, payload, credentials, good) == grpc.StatusCode.OK


# -- /metrics over HTTPS ---------------------------------------------------------------


def test_metrics_over_https(pki: Pki, make_config: MakeConfig, start_service: StartService) -> None:
    running = start_service(make_config(secured(pki, mutual=False)))

    text = Scraper(running, client_context(pki)).text()

    assert "costproc_price_table_info" in text


def test_metrics_https_survives_bad_and_stalled_clients(
    pki: Pki, stranger: Pki, make_config: MakeConfig, start_service: StartService
) -> None:
    running = start_service(make_config(secured(pki, mutual=False)))
    scraper = Scraper(running, client_context(pki))
    port = running.service.metrics_server.port

    with pytest.raises(REFUSED):  # plain HTTP to the TLS port
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).close()
    with pytest.raises(urllib.error.URLError) as distrusted:  # a client that does not trust us
        Scraper(running, client_context(stranger)).text()
    assert isinstance(distrusted.value.reason, ssl.SSLCertVerificationError)
    # A client that connects and never says hello must not hold up the next scrape.
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        assert "costproc_price_table_info" in scraper.text()
    assert "costproc_price_table_info" in scraper.text()


@pytest.mark.parametrize(
    ("client", "served"),
    [
        pytest.param("no-cert", False, id="no-client-cert"),
        pytest.param("stranger", False, id="cert-from-another-ca"),
        pytest.param("trusted", True, id="trusted-cert"),
    ],
)
def test_metrics_mtls_needs_a_trusted_client_cert(
    client: str,
    served: bool,
    pki: Pki,
    stranger: Pki,
    make_config: MakeConfig,
    start_service: StartService,
) -> None:
    running = start_service(make_config(secured(pki, mutual=True)))
    context = {
        "no-cert": client_context(pki),
        "stranger": client_context(pki, stranger),
        "trusted": client_context(pki, pki),
    }[client]

    if served:
        assert "costproc_price_table_info" in Scraper(running, context).text()
    else:
        with pytest.raises(REFUSED):
            Scraper(running, context).text()
    # Whatever the last client did, the endpoint still serves a trusted one.
    assert "costproc_price_table_info" in Scraper(running, client_context(pki, pki)).text()


def test_health_stays_plain_http_with_tls_metrics(
    pki: Pki, make_config: MakeConfig, start_service: StartService
) -> None:
    running = start_service(make_config(secured(pki, mutual=True)))
    url = f"http://127.0.0.1:{running.service.health_server.port}/health"

    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200


# -- start-up and config ---------------------------------------------------------------


@pytest.mark.parametrize(
    "section",
    ["receivers.otlp.grpc.tls", "exporters.prometheus.tls"],
)
def test_unusable_certificate_is_a_named_startup_error(
    section: str, tmp_path: Path, pki: Pki, make_config: MakeConfig
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n", encoding="utf-8")
    tls = {"cert_file": str(garbage), "key_file": str(pki.server_key)}
    overlay: dict[str, Any] = tls
    for key in reversed(section.split(".")):
        overlay = {key: overlay}
    config = make_config(overlay)

    async def start() -> None:
        # grpc.aio binds its server to the loop it is created on: build it there.
        service = Service(config)
        try:
            await service.start()
        finally:
            await service.stop()

    with pytest.raises(StartupError, match=f"{section.split('.')[0]}.*TLS certificate, key"):
        asyncio.run(start())


@pytest.mark.parametrize(
    "key_path",
    [
        "receivers.otlp.grpc.tls.cert_file",
        "receivers.otlp.grpc.tls.client_ca_file",
        "exporters.prometheus.tls.key_file",
    ],
)
def test_check_config_names_an_unreadable_certificate_by_key_path(
    key_path: str, tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    tls: dict[str, Any] = tls_section(pki, mutual=True)
    *section, key = key_path.split(".")
    tls[key] = str(tmp_path / "missing.pem")
    overlay: dict[str, Any] = tls
    for part in reversed(section):
        overlay = {part: overlay}
    bundled = yaml.safe_load(default_config_path().read_text(encoding="utf-8"))
    file = tmp_path / "costproc.yaml"
    file.write_text(yaml.safe_dump(merge(bundled, overlay)), encoding="utf-8")

    assert main(["check-config", str(file)]) == 1

    problems = [line.strip() for line in capsys.readouterr().err.splitlines()[1:]]
    assert problems == [f"{key_path}: cannot read file {str(tmp_path / 'missing.pem')!r}"]


# -- label values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "label"),
    [
        pytest.param("checkout", "checkout", id="plain"),
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("   ", None, id="spaces-only"),
        pytest.param("\t\r\n \x0b\x0c", None, id="whitespace-only"),
        pytest.param("  batch  ", "batch", id="surrounding-spaces"),
        pytest.param("batch\n", "batch", id="trailing-newline"),
        pytest.param('acme\nevil="1"', 'acme_evil="1"', id="inner-newline"),
        pytest.param("a\r\nb", "a__b", id="crlf"),
        pytest.param("a\tb", "a_b", id="tab"),
        pytest.param("a\x00b", "a_b", id="nul"),
        pytest.param("\x1b[31mred\x1b[0m", "_[31mred_[0m", id="ansi-escape"),
        pytest.param("del\x7f", "del_", id="del"),
        pytest.param("c1\x85x", "c1_x", id="c1-control"),
        pytest.param("a\u2028b\u2029c", "a_b_c", id="line-separators"),
        pytest.param("lone\ud800", "lone_", id="lone-surrogate"),
        pytest.param("x" * 10_000, "x" * MAX_LABEL_CHARS, id="long"),
        pytest.param("\n" + "y" * 500, "y" * (MAX_LABEL_CHARS - 1), id="long-and-dirty"),
        pytest.param("Zürich-東京", "Zürich-東京", id="unicode-kept"),
        pytest.param("👩\u200d💻 team", "👩\u200d💻 team", id="emoji-zwj-kept"),
        pytest.param("a\u00a0b", "a\u00a0b", id="inner-nbsp-kept"),
        pytest.param("_", "_", id="underscore"),
    ],
)
def test_label_values_are_cut_and_sanitized(value: str | None, label: str | None) -> None:
    assert _label(value) == label


def test_labels_from_attributes_are_sanitized_end_to_end(
    make_config: MakeConfig, start_service: StartService
) -> None:
    running = start_service(make_config({}))
    attrs = {"job.id": "dirty-1", "job.type": " nightly\nreport ", "tenant": "acme\x1b[2J"}
    resource = {"service.name": "checkout\r\n"}
    payload = body([S(1, 1, None, 0, 1000, attrs, "server", resource=resource)])

    assert raw_export(running.grpc_target, payload) == grpc.StatusCode.OK

    running.wait_for_total("costproc_jobs_total", 1)
    (job,) = [s for s in running.samples() if s.name == "costproc_jobs_total"]
    assert job.labels == {
        "job_type": "nightly_report",
        "tenant": "acme_[2J",
        "service": "checkout",
        "outcome": "success",
    }


# -- logs ------------------------------------------------------------------------------


def test_nothing_secret_reaches_the_logs(
    caplog: pytest.LogCaptureFixture, make_config: MakeConfig, start_service: StartService
) -> None:
    caplog.set_level(logging.DEBUG)
    running = start_service(
        make_config({"receivers": {"otlp": {"grpc": {"auth": {"bearer_token": TOKEN}}}}})
    )
    job_id, tenant, wrong = "job-id-secret-8d1e", "tenant-secret-3a7b", "wrong-token-secret-55c0"
    secrets = (job_id, tenant, wrong, TOKEN, "usage-secret-91f4")
    good = (("authorization", f"Bearer {TOKEN}"),)
    refused = checkout_job(1, job_id, tenant=tenant)
    accepted = body(
        [
            S(
                2,
                1,
                None,
                0,
                1000,
                {"job.id": job_id, "tenant": tenant},
                "server",
                resource=CHECKOUT,
            ),
            # Rejected for its usage value, which must not be quoted in any reason.
            S(3, 1, None, 0, 1000, {"job.id": job_id, "costproc.cpu.seconds": "usage-secret-91f4"}),
        ]
    )

    assert raw_export(
        running.grpc_target, refused, metadata=(("authorization", f"Bearer {wrong}"),)
    ) == (grpc.StatusCode.UNAUTHENTICATED)
    assert raw_export(running.grpc_target, b"\x0a\x7f" + job_id.encode(), metadata=good) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert raw_export(running.grpc_target, accepted, metadata=good) == grpc.StatusCode.OK
    running.wait_for_total("costproc_jobs_total", 1)

    assert "missing or wrong bearer token" in caplog.text  # the refusal itself is logged
    for secret in secrets:
        assert secret not in caplog.text
        for record in caplog.records:
            assert secret not in str(record.args), record.msg
