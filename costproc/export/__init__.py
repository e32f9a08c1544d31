"""Export: job costs as Prometheus metrics, served over HTTP next to a health endpoint."""

from costproc.export.http import HealthServer, MetricsServer, parse_endpoint
from costproc.export.metrics import OTHER, CostMetrics

__all__ = ["OTHER", "CostMetrics", "HealthServer", "MetricsServer", "parse_endpoint"]
