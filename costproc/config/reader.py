"""The generic half of config loading: YAML in, validated values out, problems collected.

`Reader` accessors never raise: each records "path.to.key: what is wrong" and returns a
placeholder, so one pass over a document reports every problem. The section functions
in this package take a reader as `r` and describe the costproc schema with it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from itertools import pairwise
from typing import Any, TypeVar

import yaml

from costproc.config.model import Match

T = TypeVar("T")

_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
ENDPOINT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]*):(\d{1,5})$")


class Loader(yaml.SafeLoader):
    """SafeLoader that also reads `2e-6` as a float, as YAML 1.2 does (1.1 wants `2.0e-6`)."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def expand_env(node: Any, path: str, problems: list[str]) -> Any:
    """Expand `${env:VAR}` (and `${env:VAR:-default}`) in string values, keeping types.

    A value that is one reference alone is re-read as YAML, so `${env:PORT}` can be a
    number, as in the OpenTelemetry Collector.
    """
    if isinstance(node, Mapping):
        return {k: expand_env(v, join(path, str(k)), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, join(path, i), problems) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${env:" not in node:
        return node

    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            if m.group(2) is not None:
                return m.group(2)
            problems.append(f"{path}: environment variable {m.group(1)} is not set")
            return ""
        return value

    expanded = _ENV_REF.sub(sub, node)
    if _ENV_REF.fullmatch(node):
        try:
            return yaml.load(expanded, Loader=Loader)
        except yaml.YAMLError:
            return expanded
    return expanded


def join(path: str, key: str | int) -> str:
    """The key path of `key` under `path`: `a.b`, or `a[0]` for a list index."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Reader:
    """Walks the YAML tree; every accessor records problems instead of raising."""

    def __init__(self, problems: list[str]):
        self.problems = problems

    def bad(self, path: str, message: str) -> None:
        """Record a problem at `path`."""
        self.problems.append(f"{path}: {message}")

    def section(self, node: Any, path: str, known: set[str]) -> dict[str, Any]:
        """A mapping (empty when absent), reporting any key not in `known`."""
        if node is None:
            return {}
        if not isinstance(node, Mapping):
            self.bad(path or "<root>", f"must be a mapping, got {type(node).__name__}")
            return {}
        for key in node:
            if key not in known:
                self.bad(join(path, str(key)), f"unknown key (known: {', '.join(sorted(known))})")
        return dict(node)

    def get(
        self,
        node: Mapping[str, Any],
        path: str,
        key: str,
        parse: Callable[[Any, str], T],
        default: T,
    ) -> T:
        """`parse` the value at `key`, or `default` when it is absent or null."""
        if key not in node or node[key] is None:
            return default
        return parse(node[key], join(path, key))

    def number(
        self, minimum: float | None = None, above: float | None = None
    ) -> Callable[[Any, str], float]:
        """A parser for finite numbers, optionally `>= minimum` or `> above`."""

        def parse(value: Any, path: str) -> float:
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                self.bad(path, f"must be a finite number, got {value!r}")
                return 0.0
            if minimum is not None and value < minimum:
                self.bad(path, f"must be >= {minimum}, got {value!r}")
            if above is not None and value <= above:
                self.bad(path, f"must be > {above}, got {value!r}")
            return float(value)

        return parse

    def integer(self, minimum: int) -> Callable[[Any, str], int]:
        """A parser for integers `>= minimum`."""

        def parse(value: Any, path: str) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.bad(path, f"must be an integer, got {value!r}")
                return minimum
            if value < minimum:
                self.bad(path, f"must be >= {minimum}, got {value!r}")
            return value

        return parse

    def text(self, value: Any, path: str) -> str:
        """A non-empty string; YAML numbers are read as their text."""
        if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
            self.bad(path, f"must be a non-empty string, got {value!r}")
            return ""
        return str(value)

    def flag(self, value: Any, path: str) -> bool:
        """A YAML boolean."""
        if not isinstance(value, bool):
            self.bad(path, f"must be true or false, got {value!r}")
            return False
        return value

    def duration(self, value: Any, path: str) -> float:
        """Seconds, from a number or a string like 500ms, 2s, 5m, 1h or 30d."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            m = _DURATION.match(str(value))
            if m is None:
                self.bad(path, f"must be a duration like 500ms, 2s, 5m, 1h or 30d, got {value!r}")
                return 0.0
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        if seconds < 0 or not math.isfinite(seconds):
            self.bad(path, f"must be a non-negative duration, got {value!r}")
        return seconds

    def endpoint(self, value: Any, path: str) -> str:
        """A `host:port` listen address."""
        text = self.text(value, path)
        m = ENDPOINT.match(text)
        if text and (m is None or int(m.group(2)) > 65535):
            self.bad(path, f"must be host:port (port 0-65535), got {value!r}")
        return text

    def strings(self, value: Any, path: str) -> tuple[str, ...]:
        """A non-empty list of strings; a lone string is a list of one."""
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.bad(path, f"must be a non-empty list of strings, got {value!r}")
            return ()
        return tuple(self.text(v, join(path, i)) for i, v in enumerate(value))

    def buckets(self, value: Any, path: str) -> tuple[float, ...]:
        """Strictly increasing histogram bucket bounds."""
        if not isinstance(value, list) or not value:
            self.bad(path, "must be a non-empty list of numbers")
            return (1.0,)
        parsed = tuple(self.number()(v, join(path, i)) for i, v in enumerate(value))
        if any(b <= a for a, b in pairwise(parsed)):
            self.bad(path, "must be strictly increasing")
        return parsed

    def matches(self, value: Any, path: str) -> tuple[Match, ...]:
        """`{attr: value}` for equality, `{attr: {regex: "..."}}` for a full regex match."""
        if not isinstance(value, Mapping) or not value:
            self.bad(path, "must be a non-empty mapping of attribute to value or {regex: ...}")
            return ()
        out: list[Match] = []
        for key, want in value.items():
            sub = join(path, str(key))
            if isinstance(want, Mapping):
                spec = self.section(want, sub, {"regex"})
                pattern = self.text(spec.get("regex"), join(sub, "regex"))
                try:
                    out.append(Match(str(key), regex=re.compile(pattern)))
                except re.error as exc:
                    self.bad(join(sub, "regex"), f"invalid regular expression: {exc}")
            elif want is None or isinstance(want, list):
                self.bad(sub, f"must be a value or {{regex: ...}}, got {want!r}")
            else:
                out.append(Match(str(key), equals=_scalar_text(want)))
        return tuple(out)

    def unique(self, values: Sequence[str | int], path: str, key: str) -> None:
        """Report each repeat of `key` among the items of the list at `path`, in order."""
        first: dict[str | int, int] = {}
        for i, value in enumerate(values):
            if value in ("", 0):
                continue  # missing or invalid, reported where it was read
            if value in first:
                self.bad(join(join(path, i), key), f"same as in {join(path, first[value])}")
            first.setdefault(value, i)

    def items(self, node: Any, path: str, what: str = "a list") -> list[Any]:
        """The items of a list (none when absent); otherwise "must be <what>"."""
        if node is None:
            return []
        if not isinstance(node, list):
            self.bad(path, f"must be {what}")
            return []
        return node

    def readable_file(self, value: Any, path: str) -> str:
        """A path to a file that exists and can be read now, at start-up."""
        name = self.text(value, path)
        if name and not os.access(name, os.R_OK):
            self.bad(path, f"cannot read file {name!r}")
        return name

    def timestamp(self, value: Any, path: str) -> int:
        """An ISO 8601 time (UTC unless it says otherwise) in Unix nanoseconds."""
        if isinstance(value, datetime):
            moment = value
        elif isinstance(value, date):
            # YAML reads an unquoted 2026-01-01 as a date; quoted, it is midnight UTC too.
            moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
        elif isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                self.bad(
                    path, f"must be an ISO 8601 UTC time like 2026-01-01T00:00:00Z, got {value!r}"
                )
                return 0
        else:
            self.bad(path, "must be an ISO 8601 UTC time like 2026-01-01T00:00:00Z")
            return 0
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def _scalar_text(value: Any) -> str:
    # YAML turns `true` and `2` into bool and int; attributes compare as text.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
