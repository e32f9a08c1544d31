"""The `costproc` command: check-config and serve, in-process and as a real process."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from costproc.cli import main

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "config" / "costproc.yaml"

BAD = """
receivers: {otlp: {grpc: {endpoint: "127.0.0.1:99999"}}}
rollup: {completion_wait: soon, compleiton_wait: 2s}
pricing:
  currency: usd
  tables:
    - version: "2026-01"
      effective_from: 2026-01-01T00:00:00Z
      memory_gb_hour: 0
      gpu_hour: 0
      egress_per_gb: {internet: -1}
"""
BAD_PATHS = (
    "receivers.otlp.grpc.endpoint",
    "rollup.completion_wait",
    "rollup.compleiton_wait",
    "pricing.currency",
    "pricing.tables[0].cpu_core_second",
    "pricing.tables[0].egress_per_gb.internet",
)
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    file = tmp_path / "bad.yaml"
    file.write_text(BAD, encoding="utf-8")
    return file


def reported_paths(output: str) -> set[str]:
    """The key paths of the problem lines in `output` ("  path: reason" or "  - path: reason")."""
    return set(re.findall(r"^\s+(?:- )?(\S+): ", output, flags=re.MULTILINE))


def run_module(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`python -m costproc ARGS` from the checkout, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "costproc", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- check-config -----------------------------------------------------------------------


def test_check_config_accepts_the_bundled_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(BUNDLED)]) == 0
    out, err = capsys.readouterr()
    assert "OK" in out
    assert "2026-01" in out  # names the price tables it read
    assert err == ""


def test_check_config_reports_every_problem(
    bad_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(bad_config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{len(BAD_PATHS)} problem(s)" in err
    assert reported_paths(err) == set(BAD_PATHS)


def test_check_config_names_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.yaml"
    assert main(["check-config", str(missing)]) == 1
    assert f"{missing}: cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("use_bad_file", "code"),
    [pytest.param(False, 0, id="bundled"), pytest.param(True, 1, id="bad")],
)
def test_check_config_as_a_process(bad_config: Path, use_bad_file: bool, code: int) -> None:
    result = run_module("check-config", str(bad_config if use_bad_file else BUNDLED))
    assert result.returncode == code, result.stderr
    if use_bad_file:
        assert reported_paths(result.stderr) == set(BAD_PATHS)
    else:
        assert "OK" in result.stdout


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["check-config"], id="no-file"),
        pytest.param(["launch"], id="unknown-command"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "usage: costproc" in capsys.readouterr().err


# -- serve ------------------------------------------------------------------------------


class _MustNotStart:
    """Stands in for Service: serving a bad config must stop before anything is built."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("serve built a Service from an invalid config")


def test_serve_with_a_bad_config_exits_1_before_binding(
    bad_config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("costproc.service.Service", _MustNotStart)
    assert main(["serve", "--config", str(bad_config)]) == 1
    assert reported_paths(capsys.readouterr().err) == set(BAD_PATHS)


def local_config(tmp_path: Path) -> Path:
    """The bundled config with every endpoint on 127.0.0.1 port 0."""
    text = BUNDLED.read_text(encoding="utf-8")
    for port in ("4317", "4318", "9464", "13133"):
        text, count = re.subn(rf"endpoint: 0\.0\.0\.0:{port}\b", "endpoint: 127.0.0.1:0", text)
        assert count == 1, f"the bundled config no longer has one endpoint on port {port}"
    file = tmp_path / "local.yaml"
    file.write_text(text, encoding="utf-8")
    return file


class Server:
    """A `costproc serve` process whose log lines are read on a thread, with deadlines."""

    def __init__(self, config: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "costproc", "serve", "--config", str(config)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.process.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for_port(self, name: str, timeout: float) -> int:
        """The port from the "serving NAME on HOST port N" log line."""
        pattern = re.compile(rf"serving {name} on \S+ port (\d+)")
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"costproc serve exited early:\n{''.join(self.log)}")
            self.log.append(line)
            if m := pattern.search(line):
                return int(m.group(1))
        pytest.fail(f"no '{name}' port logged within {timeout}s:\n{''.join(self.log)}")

    def stop(self) -> int:
        """SIGTERM, then the exit code; fails if the process does not exit in time."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"costproc serve still running {STOP_TIMEOUT}s after SIGTERM")

    def close(self) -> None:
        """Kill the process if it still runs, and release its pipe."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)
        self._reader.join(timeout=STOP_TIMEOUT)
        assert self.process.stderr is not None
        self.process.stderr.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(local_config(tmp_path))
    try:
        yield running
    finally:
        running.close()


def get_until_ok(url: str, timeout: float) -> str:
    """GET `url` until it answers 200 (a starting service may answer 503 first)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())
        except (urllib.error.URLError, ConnectionError) as exc:
            last = exc
        time.sleep(0.05)
    pytest.fail(f"{url} did not answer 200 within {timeout}s (last: {last})")


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM is a POSIX signal")
def test_serve_answers_health_and_exits_0_on_sigterm(server: Server) -> None:
    metrics_port = server.wait_for_port("metrics", START_TIMEOUT)
    health_port = server.wait_for_port("health", START_TIMEOUT)
    assert 0 not in (metrics_port, health_port)

    assert '"ok"' in get_until_ok(f"http://127.0.0.1:{health_port}/health", START_TIMEOUT)
    scrape = get_until_ok(f"http://127.0.0.1:{metrics_port}/metrics", START_TIMEOUT)
    assert 'costproc_price_table_info{currency="USD",version="2026-01"} 1.0' in scrape

    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < STOP_TIMEOUT


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM is a POSIX signal")
def test_serve_exits_0_on_sigterm_during_start_up(server: Server) -> None:
    # The first endpoint is bound; the others are not yet, nor is the service running.
    server.wait_for_port("metrics", START_TIMEOUT)
    assert server.stop() == 0
