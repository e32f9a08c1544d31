"""costproc: cost per job from OpenTelemetry traces, exported to Prometheus.

receive (OTLP) -> roll up (spans to jobs) -> price (usage x price tables) -> export (Prometheus)
"""

from costproc.config import Config, load_config
from costproc.errors import ConfigError, CostprocError, DecodeError

__all__ = ["Config", "ConfigError", "CostprocError", "DecodeError", "load_config"]
__version__ = "0.1.0"
