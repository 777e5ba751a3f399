"""The benchmark's targets: how each is started, and where its tabs connect.

- the hub: a `hub serve` process on SQLite, with its real durability setting;
- the ceilings, bare servers doing the hub's per-user fan-out with an in-memory version:
  Python's websockets (bench/ceiling.py) and Node's ws (bench/node/ws-ceiling.mjs);
- the peers a team would pick instead, one room per user: python-socketio (bench/peer.py)
  and Socket.IO 4 on Node (bench/node/socketio-peer.mjs), with its defaults and tuned as its
  docs recommend.

The Node targets run from bench/node, whose packages `npm ci` installs at the exact versions
its package-lock.json pins (``node_packages``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from server.settings import Settings
from tests.support.population import populate
from tests.support.processes import HubProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
NODE = ROOT / "bench" / "node"
SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"


@dataclass(frozen=True)
class Target:
    """A running target: where tabs connect, its process, and how tabs authenticate."""

    url: str
    pid: int
    tokens: str | None = None
    protocol: str = "hub"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def spawn(module: str, port: int) -> subprocess.Popen[bytes]:
    """Start a target module (bench.ceiling, bench.peer) listening on ``port``."""
    return subprocess.Popen([sys.executable, "-m", module, "--port", str(port)], cwd=ROOT)


@contextlib.asynccontextmanager
async def served(
    process: subprocess.Popen[bytes], port: int, path: str, protocol: str
) -> AsyncIterator[Target]:
    """Yield the Target of a started ``process`` once its ``port`` listens; kill it after."""
    try:
        await wait_port(port)
        yield Target(f"ws://127.0.0.1:{port}{path}", process.pid, protocol=protocol)
    finally:
        process.kill()
        process.wait()


@contextlib.asynccontextmanager
async def module_target(module: str, path: str, protocol: str) -> AsyncIterator[Target]:
    port = free_port()
    async with served(spawn(module, port), port, path, protocol) as target:
        yield target


def ceiling(users: int) -> contextlib.AbstractAsyncContextManager[Target]:
    return module_target("bench.ceiling", "/ws", "hub")


def peer(users: int) -> contextlib.AbstractAsyncContextManager[Target]:
    return module_target("bench.peer", SOCKETIO_PATH, "socketio")


@contextlib.asynccontextmanager
async def hub(users: int) -> AsyncIterator[Target]:
    with tempfile.TemporaryDirectory() as tmp:
        # The hub's real settings, rate limits included (the workload stays far under them:
        # about 2 switches per second per tab at most; the flood phase is what they are for).
        settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp}/hub.db", log_level="warning")
        population = await populate(settings, users)
        tokens = Path(tmp) / "tokens.json"
        tokens.write_text(json.dumps({str(u): t for u, t in population.tokens.items()}))
        process = await HubProcess(settings, Path(tmp) / "hub.log").start()
        try:
            assert process.process is not None
            yield Target(f"ws://127.0.0.1:{process.port}/ws", process.process.pid, str(tokens))
        finally:
            process.stop()


async def wait_port(port: int) -> None:
    for _ in range(200):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


async def settle(pid: int, limit_s: float = 300) -> None:
    """Wait until the target process is idle (under 5% of a core over half a second)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        await asyncio.sleep(0.5)
        if cpu_seconds(pid) - before < 0.025:
            return


def node_packages() -> dict[str, str]:
    """Install bench/node's packages (once per lock file) and return their versions, with
    Node's; raise if Node or npm is missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise RuntimeError("the Node targets need Node.js 20+ and npm")
    lock = NODE / "package-lock.json"
    stamp = NODE / "node_modules" / ".lock-installed"
    if not stamp.exists() or stamp.read_text() != lock.read_text():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE, check=True
        )
        stamp.write_text(lock.read_text())
    packages = json.loads(lock.read_text())["packages"]
    found = {"node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout}
    for name in ("socket.io", "ws", "bufferutil", "utf-8-validate"):
        entry = packages.get(f"node_modules/{name}")
        if entry is not None:
            found[name] = entry["version"]
    found["node"] = found["node"].strip().lstrip("v")
    return found


def spawn_node(
    script: str, port: int, flags: tuple[str, ...], env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Start a bench/node script listening on ``port``."""
    command = ["node", str(NODE / script), "--port", str(port), *flags]
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})


@contextlib.asynccontextmanager
async def node_target(
    script: str, path: str, protocol: str, *flags: str, env: Mapping[str, str] = {}
) -> AsyncIterator[Target]:
    await asyncio.to_thread(node_packages)
    port = free_port()
    async with served(spawn_node(script, port, flags, env), port, path, protocol) as target:
        yield target


# ws's optional native add-ons off, as a plain `npm install socket.io` leaves them.
_NO_ADDONS = {"WS_NO_BUFFER_UTIL": "1", "WS_NO_UTF_8_VALIDATE": "1"}


def node_ceiling(users: int) -> contextlib.AbstractAsyncContextManager[Target]:
    return node_target("ws-ceiling.mjs", "/ws", "hub")


def node_socketio(users: int) -> contextlib.AbstractAsyncContextManager[Target]:
    return node_target("socketio-peer.mjs", SOCKETIO_PATH, "socketio", env=_NO_ADDONS)


def node_socketio_tuned(users: int) -> contextlib.AbstractAsyncContextManager[Target]:
    return node_target("socketio-peer.mjs", SOCKETIO_PATH, "socketio", "--tuned")
