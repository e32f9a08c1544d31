"""Roll up: spans to attempts to jobs, with bounded in-flight state."""

from costproc.rollup.rollup import Rollup

__all__ = ["Rollup"]
