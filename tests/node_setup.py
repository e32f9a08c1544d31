"""Node.js for the interop tests: find `node` and `npm`, install tests/node's packages once.

The packages are pinned by tests/node/package-lock.json and installed with `npm ci` only
when node_modules is missing or older than the lock file, so a warm run costs nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).parent / "node"
LOCK_FILE = NODE_DIR / "package-lock.json"
# npm writes this copy of the lock file after every successful install into node_modules.
INSTALLED_LOCK = NODE_DIR / "node_modules" / ".package-lock.json"
MIN_NODE = (18, 19)  # the pinned OpenTelemetry JS 2.x packages need ^18.19.0 || >=20.6.0
INSTALL_TIMEOUT_S = 300.0
HOW_TO_INSTALL = (
    "the Node.js SDK interop tests need Node.js >= 18.19 and npm on PATH "
    "(Debian 12: apt-get install -y nodejs npm)"
)


def require_tool(name: str) -> str:
    """The path of `name` on PATH; the test fails, naming what to install, when it is absent."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` not found: {HOW_TO_INSTALL}", pytrace=False)
    return path


def node_version(node: str) -> tuple[int, int]:
    """(major, minor) of `node --version`."""
    out = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    found = re.match(r"v(\d+)\.(\d+)", out.strip())
    if found is None:
        pytest.fail(f"cannot read the Node.js version from {out!r}", pytrace=False)
    return int(found[1]), int(found[2])


def needs_install() -> bool:
    """Whether node_modules is missing or older than the lock file."""
    return not INSTALLED_LOCK.exists() or INSTALLED_LOCK.stat().st_mtime < LOCK_FILE.stat().st_mtime


def install_packages(npm: str) -> None:
    """`npm ci` in tests/node, bounded by INSTALL_TIMEOUT_S; fail with npm's own words."""
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            env=node_env(),
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"npm ci in {NODE_DIR.name}/ took over {INSTALL_TIMEOUT_S:.0f}s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(
            f"npm ci in {NODE_DIR.name}/ exited {done.returncode}:\n{done.stderr[-4000:]}",
            pytrace=False,
        )


def node_env() -> dict[str, str]:
    """This process's environment without OTEL_* variables, which the Node SDK would obey."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


def prepare_node() -> str:
    """The path of a usable `node`, with tests/node's packages installed."""
    node = require_tool("node")
    npm = require_tool("npm")
    version = node_version(node)
    if version < MIN_NODE:
        found = ".".join(map(str, version))
        pytest.fail(f"Node.js {found} is too old: {HOW_TO_INSTALL}", pytrace=False)
    if needs_install():
        install_packages(npm)
    return node
