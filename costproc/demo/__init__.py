"""`costproc demo`: the service on a synthetic workload, with a live cost table.

Workload.batches -> OTLP/gRPC Export -> Service (roll up, price) -> DemoTable -> render

A seeded `Workload` (workload.py) generates checkout, inference and batch jobs (with
failures and retries in new traces) as stock OTLP spans; the runner (run.py) sends them
to the service's own receiver like an SDK would; `DemoTable` (table.py), a `CostSink`,
keeps what the rollup reports and renders one row per job type every second.
"""

from costproc.demo.run import run_demo

__all__ = ["run_demo"]
