"""A hub as a real process (`python -m server serve` on its own port), and polling helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from server.settings import Settings

__all__ = ["HubProcess", "free_port", "hub_process", "wait_until"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class HubProcess:
    """`python -m server serve` on its own port, its output in a log file."""

    def __init__(
        self, settings: Settings, log: Path, port: int | None = None, args: Sequence[str] = ()
    ) -> None:
        self.settings = settings
        self.args = tuple(args)  # more flags for `hub serve`
        self.port = port or free_port()
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.settings.to_environ()}
        env["HUB_PORT"] = str(self.port)
        env["HUB_HOST"] = "127.0.0.1"
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "server", "serve", *self.args],
                env=env,
                stdout=out,
                stderr=out,
            )

    async def start(self, within: float = 20) -> HubProcess:
        """Start the process and wait until /healthz answers."""
        self.process = self._spawn()
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(base_url=self.url) as http:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"hub exited with {self.process.returncode}: {self.log}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz")).status_code == 200:
                        return self
                if time.monotonic() > deadline:
                    raise TimeoutError("hub did not become healthy")
                await asyncio.sleep(0.05)

    async def health(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.url) as http:
            body: dict[str, Any] = (await http.get("/healthz")).json()
            return body

    async def settled_health(self, within: float = 2.5) -> dict[str, Any]:
        """/healthz once no connection is checked out, or after ``within`` seconds: a unit
        of work (a heartbeat, a periodic look) may run at any instant; a leaked connection
        stays checked out."""
        deadline = time.monotonic() + within
        while True:
            health = await self.health()
            if health["connections_checked_out"] == 0 or time.monotonic() > deadline:
                return health
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        """kill -9: no shutdown of any kind."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    async def terminate(self, within: float = 30) -> int:
        """SIGTERM, then wait for the graceful shutdown; return the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + within
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.process.kill()
                raise TimeoutError("hub did not stop after SIGTERM")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.asynccontextmanager
async def hub_process(settings: Settings, log: Path) -> AsyncIterator[HubProcess]:
    hub = await HubProcess(settings, log).start()
    try:
        yield hub
    finally:
        hub.stop()


async def wait_until(predicate: Callable[[], bool], within: float, what: str) -> float:
    """Poll ``predicate`` until it holds; return how long that took (TimeoutError after)."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise TimeoutError(f"not within {within} s: {what}")
        await asyncio.sleep(0.005)
