"""costproc's exceptions.

CostprocError
├── ConfigError   a config file is unreadable or invalid; lists every problem
└── DecodeError   an OTLP request body cannot be decoded at all
"""

from __future__ import annotations


class CostprocError(Exception):
    """Base of every error costproc raises on purpose."""


class ConfigError(CostprocError):
    """The configuration is invalid; `problems` holds one "key.path: reason" per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


class StartupError(CostprocError):
    """The service could not start: an endpoint is taken or cannot be bound."""


class DecodeError(CostprocError):
    """An OTLP request body could not be decoded."""
