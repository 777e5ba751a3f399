"""deploy/: the operator kit, run for real. Debian's nginx with deploy/nginx/platform-hub.conf
(only its addresses substituted) in front of two `hub serve` processes on PostgreSQL: tabs
connect through it and land on both, switches through one process reach tabs on the other,
the client's address reaches the hub, and a rolling restart of both processes under load
loses nothing. deploy/systemd's unit is checked with `systemd-analyze verify`.

nginx and systemd-analyze come from scripts/ensure-deploy-tools (run by make test, as root
with apt-get, as on CI); without them the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from platform_hub_client import AsyncHostClient
from server.settings import Settings
from tests.support.history import check
from tests.support.load import Load, converge, record_facts
from tests.support.population import populate
from tests.support.postgres import fresh_database
from tests.support.processes import HubProcess, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
KEY = "deploy-key"


def tool(name: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    if found is None:
        reason = f"{name} is not installed (scripts/ensure-deploy-tools installs it)"
        if CI:
            pytest.fail(f"{reason}; under CI=true the deployment tests must run", pytrace=False)
        pytest.skip(reason)
    return found


def site_config(listen: int, upstreams: list[int]) -> str:
    """deploy/nginx/platform-hub.conf with the test's ports for the shipped addresses."""
    text = (ROOT / "deploy" / "nginx" / "platform-hub.conf").read_text()
    shipped = re.findall(r"server 127\.0\.0\.1:(\d+)", text)
    assert len(shipped) == len(upstreams), shipped
    for port, ours in zip(shipped, upstreams, strict=True):
        text = text.replace(f"127.0.0.1:{port} ", f"127.0.0.1:{ours} ", 1)
    text, listens = re.subn(r"listen 80;", f"listen 127.0.0.1:{listen};", text)
    assert listens == 1
    return text


def start_nginx(tmp_path: Path, upstreams: list[int]) -> tuple[subprocess.Popen[bytes], int]:
    """Check the configuration (nginx -t), then start nginx in the foreground with it; return
    the process and its port."""
    binary = tool("nginx")
    prefix = tmp_path / "nginx"
    (prefix / "logs").mkdir(parents=True)
    port = free_port()
    (prefix / "platform-hub.conf").write_text(site_config(port, upstreams))
    (prefix / "nginx.conf").write_text(
        f"""
        worker_processes 1;
        error_log {prefix}/logs/error.log warn;
        pid {prefix}/nginx.pid;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            client_body_temp_path {prefix}/body;
            proxy_temp_path {prefix}/proxy;
            fastcgi_temp_path {prefix}/fastcgi;
            uwsgi_temp_path {prefix}/uwsgi;
            scgi_temp_path {prefix}/scgi;
            include {prefix}/platform-hub.conf;
        }}
        """
    )
    command = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    return subprocess.Popen([*command, "-g", "daemon off;"]), port


@contextlib.asynccontextmanager
async def nginx(tmp_path: Path, upstreams: list[int]) -> AsyncIterator[int]:
    """Run nginx with the site config in front of ``upstreams``; yield its port."""
    process, port = await asyncio.to_thread(start_nginx, tmp_path, upstreams)
    try:
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{port}/livez")).status_code == 200:
                        break
                assert process.poll() is None, (tmp_path / "nginx/logs/error.log").read_text()
                assert time.monotonic() < deadline, "nginx did not answer"
                await asyncio.sleep(0.05)
        yield port
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 10)


async def test_nginx_in_front_of_two_processes_through_a_rolling_restart(tmp_path: Path) -> None:
    """Tabs through nginx land on both processes; a login's address is the client's, from
    X-Forwarded-For; switches run while each process in turn gets SIGTERM and comes back on
    its port (a rolling restart): every tab is back, none saw a handshake error, and the
    checked history of every switch through both processes is linearizable."""
    async with fresh_database() as url:
        settings = Settings(database_url=url, api_key=KEY, session_check_s=1.0, log_level="warning")
        population = await populate(settings, 20)
        hubs = [HubProcess(settings, tmp_path / f"hub{n}.log") for n in range(2)]
        load = Load(population, tabs_per_user=4)
        try:
            for hub in hubs:
                await hub.start()
            async with nginx(tmp_path, [hub.port for hub in hubs]) as port:
                proxy = f"http://127.0.0.1:{port}"
                async with AsyncHostClient(proxy, KEY) as host:
                    await host.upsert_user("walker", "walker-password")
                    async with httpx.AsyncClient(base_url=proxy) as http:
                        login = await http.post(
                            "/api/login",
                            json={"username": "walker", "password": "walker-password"},
                            headers={"X-Forwarded-For": "203.0.113.9"},
                        )
                    assert login.status_code == 200, login.text
                    (session,) = (await host.sessions("walker")).sessions
                assert session.ip == "203.0.113.9"

                await load.connect_all(port)
                spread = [(await hub.health())["tabs"] for hub in hubs]
                assert sum(spread) == len(load.tabs) and min(spread) > 0, spread
                before = await load.run(300)

                async def roll() -> None:
                    for hub in hubs:
                        assert await hub.terminate() in (0, -15)
                        await hub.start()
                        await wait_until(
                            lambda: all(t.connected.is_set() for t in load.tabs), 60, "back"
                        )

                during, _ = await asyncio.gather(load.run(600), roll())
                after = await load.run(300)
                await converge(load, settings, 10.0)
                await record_facts(load, settings)
        finally:
            await load.close()
            for hub in hubs:
                hub.stop()
    report = check(load.history)
    assert report.ok, "\n".join(report.violations[:20])
    assert [e for tab in load.tabs for e in tab.handshake_errors] == []
    restarted = sum(1 for tab in load.tabs if 1012 in tab.close_codes)
    assert restarted > 0  # the drain closed tabs with 1012; they came back through nginx
    print(
        f"\nnginx rolling restart: {report.summary()}; before {before}, during {during}, "
        f"after {after}; tabs closed with 1012 and back: {restarted}/{len(load.tabs)}"
    )
    for answers in (before, after):
        assert answers.get("switched", 0) > 0, answers


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    """deploy/systemd/platform-hub@.service passes `systemd-analyze verify` with no warning
    (unknown keys, bad values), with ExecStart pointed at this checkout's hub and the
    environment file at the example one; its stop timeout is above the drain's bound."""
    analyze = tool("systemd-analyze")
    unit = (ROOT / "deploy" / "systemd" / "platform-hub@.service").read_text()
    hub = shutil.which("hub") or str(Path(sys.executable).parent / "hub")
    local = unit.replace("/opt/platform-hub/venv/bin/hub", hub).replace(
        "/etc/platform-hub/hub.env", str(ROOT / "deploy" / "systemd" / "hub.env")
    )
    assert local != unit
    (tmp_path / "platform-hub@.service").write_text(local)
    verified = subprocess.run(
        [analyze, "verify", str(tmp_path / "platform-hub@8001.service")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    # A unit's user need not exist here; anything else said is a defect of the unit.
    said = [
        line
        for line in (verified.stdout + verified.stderr).splitlines()
        if line.strip() and "platform-hub" not in line.split("User=")[-1]
    ]
    assert verified.returncode == 0 and not said, verified.stdout + verified.stderr
    stop = re.search(r"^TimeoutStopSec=(\d+)s$", unit, re.M)
    assert stop is not None and int(stop.group(1)) > Settings().shutdown_timeout_s + 5
