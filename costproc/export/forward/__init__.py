"""Forward every received request downstream, unchanged, plus one cost span per finished job.

    offer(body) | job_closed -> cost span -> batch -> bounded queue -> senders -> OTLP export

`forwarder` holds the queue, the senders and their retry policy; `transport` sends one
request over gRPC or HTTP and classifies the answer; `cost_spans` makes the
`costproc.job.cost` spans and the requests that carry them.
"""

from costproc.export.forward.cost_spans import COST_SPAN_NAME, MAX_BATCH, SCOPE
from costproc.export.forward.forwarder import SENDERS, Forwarder, backoff
from costproc.export.forward.transport import grpc_failure, retry_after_seconds, traces_url

__all__ = [
    "COST_SPAN_NAME",
    "MAX_BATCH",
    "SCOPE",
    "SENDERS",
    "Forwarder",
    "backoff",
    "grpc_failure",
    "retry_after_seconds",
    "traces_url",
]
