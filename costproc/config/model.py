"""Typed configuration. Every field's default is the one documented in README.md."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Histogram bucket defaults: cost spans a tenth of a cent-thousandth to tens of dollars.
DEFAULT_COST_BUCKETS: tuple[float, ...] = (
    1e-6,
    5e-6,
    1e-5,
    5e-5,
    1e-4,
    5e-4,
    1e-3,
    5e-3,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
)
DEFAULT_DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
)
DEFAULT_USAGE_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    60.0,
    300.0,
    3600.0,
)
DEFAULT_EGRESS_BUCKETS: tuple[float, ...] = (
    1e3,
    1e4,
    1e5,
    1e6,
    1e7,
    1e8,
    1e9,
    1e10,
)


@dataclass(frozen=True, slots=True)
class Match:
    """A condition on one attribute: equality with `equals`, else a full regex match."""

    key: str
    equals: str | None = None
    regex: re.Pattern[str] | None = None

    def test(self, value: str | None) -> bool:
        if value is None:
            return False
        if self.regex is not None:
            return self.regex.fullmatch(value) is not None
        return value == self.equals


MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class TLSServerConfig:
    """A server's certificate; with `client_ca_file`, clients must present one (mTLS)."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class TLSClientConfig:
    """How a client checks its server (`ca_file`), and its own certificate for mTLS."""

    insecure: bool = False  # plaintext; else TLS verified against ca_file or system roots
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class GrpcReceiverConfig:
    endpoint: str = "0.0.0.0:4317"
    max_recv_msg_size_mib: float = 16.0
    tls: TLSServerConfig | None = None
    bearer_token: str | None = None  # clients must send `authorization: Bearer <token>`

    @property
    def max_recv_msg_bytes(self) -> int:
        return int(self.max_recv_msg_size_mib * MIB)


@dataclass(frozen=True, slots=True)
class HttpReceiverConfig:
    endpoint: str = "0.0.0.0:4318"
    max_request_body_size_mib: float = 16.0
    tls: TLSServerConfig | None = None
    bearer_token: str | None = None

    @property
    def max_request_body_bytes(self) -> int:
        return int(self.max_request_body_size_mib * MIB)


@dataclass(frozen=True, slots=True)
class RollupConfig:
    job_id_attributes: tuple[str, ...] = ("job.id",)
    job_type_attribute: str = "job.type"
    tenant_attribute: str = "tenant"
    outcome_attribute: str = "job.outcome"
    untagged_traces: str = "attribute"  # attribute | drop
    completion_wait: float = 2.0
    max_wait: float = 300.0
    retry_window: float = 0.0
    late_span_window: float = 60.0
    max_inflight_traces: int = 100_000
    max_inflight_spans: int = 2_000_000
    # Requests are refused with a retryable status while open state is above this
    # fraction of either cap, so the caps are a last resort rather than the rule.
    backpressure_watermark: float = 0.9
    local_roots: bool = False
    tick_interval: float = 0.25


@dataclass(frozen=True, slots=True)
class Allocation:
    cpu_cores: float | None = None
    memory_gb: float | None = None
    gpus: float | None = None
    concurrency: float | None = None


@dataclass(frozen=True, slots=True)
class EgressRule:
    match: tuple[Match, ...]
    egress_class: str


@dataclass(frozen=True, slots=True)
class UsageConfig:
    cpu_seconds_attribute: str = "costproc.cpu.seconds"
    memory_gb_seconds_attribute: str = "costproc.memory.gb_seconds"
    gpu_seconds_attribute: str = "costproc.gpu.seconds"
    egress_bytes_attribute: str = "costproc.egress.bytes"
    egress_class_attribute: str = "costproc.egress.class"
    cpu_allocated_attribute: str = "costproc.cpu.allocated"
    memory_allocated_attribute: str = "costproc.memory.allocated_gb"
    gpu_allocated_attribute: str = "costproc.gpu.allocated"
    concurrency_attribute: str = "costproc.concurrency"
    defaults: Allocation = Allocation(0.0, 0.0, 0.0, 1.0)
    services: dict[str, Allocation] = field(default_factory=dict)
    egress_default_class: str = "internet"
    egress_rules: tuple[EgressRule, ...] = ()


@dataclass(frozen=True, slots=True)
class MeteredRule:
    """Price something counted on a span: quantity x unit_price, added to `component`."""

    name: str
    component: str
    match: tuple[Match, ...]
    quantity_attribute: str | None  # None: 1 per matching span
    unit_price: float


@dataclass(frozen=True, slots=True)
class ResourcePrices:
    """Per-unit prices of resource time; None where an override leaves a price alone."""

    cpu_core_second: float | None = None
    memory_gb_second: float | None = None
    gpu_second: float | None = None


@dataclass(frozen=True, slots=True)
class Override:
    """Prices for resources whose attributes all match (region, instance type, spot)."""

    match: tuple[Match, ...]
    prices: ResourcePrices
    multiplier: float = 1.0


@dataclass(frozen=True, slots=True)
class PriceTable:
    version: str
    effective_from_ns: int
    prices: ResourcePrices
    egress_per_gb: dict[str, float]
    metered: tuple[MeteredRule, ...] = ()
    overrides: tuple[Override, ...] = ()


@dataclass(frozen=True, slots=True)
class PricingConfig:
    currency: str = "USD"
    tables: tuple[PriceTable, ...] = ()


@dataclass(frozen=True, slots=True)
class PrometheusConfig:
    endpoint: str = "0.0.0.0:9464"
    max_label_values: int = 100
    cost_buckets: tuple[float, ...] = DEFAULT_COST_BUCKETS
    duration_buckets: tuple[float, ...] = DEFAULT_DURATION_BUCKETS
    usage_buckets: tuple[float, ...] = DEFAULT_USAGE_BUCKETS
    egress_buckets: tuple[float, ...] = DEFAULT_EGRESS_BUCKETS

    tls: TLSServerConfig | None = None


@dataclass(frozen=True, slots=True)
class RetryConfig:
    initial_interval: float = 1.0
    max_interval: float = 30.0
    max_elapsed_time: float = 300.0  # then the batch is dropped and counted


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    """Pass every received request on, unchanged, plus one cost span per finished job."""

    endpoint: str  # host:port for grpc; http(s)://host:port for http (/v1/traces appended)
    protocol: str = "grpc"  # grpc | http
    tls: TLSClientConfig = TLSClientConfig()
    headers: tuple[tuple[str, str], ...] = ()
    compression: str = "gzip"  # gzip | none
    timeout: float = 10.0
    queue_size: int = 1000  # requests; refused upstream (backpressure) when full
    retry: RetryConfig = RetryConfig()
    cost_spans: bool = True


@dataclass(frozen=True, slots=True)
class CostRecordsConfig:
    """Every finished job as one JSON line, to stdout or a size-rotated file."""

    path: str = "stdout"
    max_size_mib: float = 100.0
    max_backups: int = 5

    @property
    def max_size_bytes(self) -> int:
        return max(1, int(self.max_size_mib * MIB))


@dataclass(frozen=True, slots=True)
class HealthConfig:
    endpoint: str = "0.0.0.0:13133"


@dataclass(frozen=True, slots=True)
class SpendBudget:
    """Spend allowed per period, for everything or one tenant and/or job type."""

    name: str
    amount: float  # in pricing.currency
    period: float  # seconds
    tenant: str | None = None
    job_type: str | None = None


@dataclass(frozen=True, slots=True)
class JobCostBudget:
    """Expected cost per successful job of one job type; a page at `page_factor` x."""

    job_type: str
    amount: float
    page_factor: float = 3.0
    min_jobs_per_second: float = 0.01  # below this, too few jobs to judge


@dataclass(frozen=True, slots=True)
class BudgetsConfig:
    spend: tuple[SpendBudget, ...] = ()
    cost_per_successful_job: tuple[JobCostBudget, ...] = ()
    retry_ratio_threshold: float = 0.2  # ticket when attempts / jobs - 1 exceeds this
    failed_spend_share_threshold: float = 0.1  # ticket when failed-attempt spend share exceeds
    runbook_url: str = "https://github.com/costproc/costproc/blob/main/docs/runbook.md"


@dataclass(frozen=True, slots=True)
class Config:
    # A receiver protocol runs when configured; with no `receivers` key, both do.
    grpc: GrpcReceiverConfig | None = GrpcReceiverConfig()
    http: HttpReceiverConfig | None = HttpReceiverConfig()
    rollup: RollupConfig = RollupConfig()
    usage: UsageConfig = UsageConfig()
    pricing: PricingConfig = PricingConfig()
    prometheus: PrometheusConfig = PrometheusConfig()
    forward: ForwardConfig | None = None
    cost_records: CostRecordsConfig | None = None
    health: HealthConfig = HealthConfig()
    budgets: BudgetsConfig = BudgetsConfig()
