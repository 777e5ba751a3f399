"""Packaging: the wheel builds, and an installed hub (not a source checkout) serves everything;
the host client's own wheel installs alone in a fresh virtualenv and calls a real hub.

The wheel is built from this checkout and unpacked into a directory of its own, which is put
first on the path of a process started elsewhere: the hub it runs is the installed one, its
migrations and its copy of client/ included.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx

from tests.conftest import make_settings, reported_port, serve

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_hub_and_an_installed_hub_serves_the_client(
    tmp_path: Path,
) -> None:
    """pip wheel builds it, with the console script, migrations and client; unpacked and run
    from another directory, `python -m server` is that copy: --version answers, serve makes
    the schema and serves the demo page and navigation.js byte for byte."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("platform_hub-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)
    for expected in (
        "server/_client/navigation.js",
        "server/_client/index.html",
        "server/storage/migrations/script.py.mako",
        "server/storage/migrations/versions/0002_holds.py",
        "platform_hub_client/bodies.py",  # the bodies the hub decodes with, from host-client/
        "platform_hub_client/py.typed",
    ):
        assert expected in names, expected
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "hub = server.__main__:main" in (site / entry_points).read_text()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "HUB_DATABASE_URL": f"sqlite+aiosqlite:///{elsewhere / 'hub.db'}",
    }
    where = subprocess.run(
        [sys.executable, "-c", "import server; print(server.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip() == str(site / "server" / "__init__.py"), where
    version = subprocess.run(
        [sys.executable, "-m", "server", "--version"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert re.fullmatch(r"hub \d+\.\d+\.\d+\S*", version.stdout.strip()), version

    process = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--port", "0"],
        cwd=elsewhere,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = reported_port(process)
        base = f"http://127.0.0.1:{port}"
        script = httpx.get(base + "/client/navigation.js", timeout=5)
        assert script.status_code == 200
        assert script.content == (ROOT / "client" / "navigation.js").read_bytes()
        page = httpx.get(base + "/", timeout=5)
        assert page.status_code == 200 and b"navigation.js" in page.content
        assert httpx.get(base + "/healthz", timeout=5).json()["status"] == "ok"
    finally:
        process.terminate()
        process.communicate(timeout=20)


# What the host client's wheel must not bring into a host app's environment.
SERVER_ONLY = {"starlette", "sqlalchemy", "uvicorn", "asyncpg", "alembic", "aiosqlite"}
CALLS = """
import asyncio, sys
from platform_hub_client import AsyncHostClient, HostApiError, HostClient, PlatformMirrored
url, key = sys.argv[1:3]
with HostClient(url, key) as hub:
    hub.upsert_user("wheel")
    hub.mirror_platforms("wheel", [PlatformMirrored(
        name="Photos", kind="pixelfed", instance_url="https://pixelfed.social", username="w")])
    state = hub.state("wheel").state
    try:
        hub.state("nobody")
    except HostApiError as error:
        refused = error.code
async def read():
    async with AsyncHostClient(url, key) as hub:
        return (await hub.platforms("wheel")).state
assert asyncio.run(read()) == state
print(state.version, [p.name for p in state.platforms], refused)
"""


async def test_the_host_clients_wheel_installs_alone_and_calls_the_hub(tmp_path: Path) -> None:
    """host-client/ builds a wheel holding platform_hub_client and its py.typed; installed in
    a fresh virtualenv it brings httpx and msgspec, none of the hub's server dependencies,
    and its sync and async clients call a running hub (about the package, so SQLite only)."""
    python = await asyncio.to_thread(_install_the_client_alone, tmp_path)
    async with serve(make_settings(tmp_path, api_key="wheel-key")) as hub:
        process = await asyncio.create_subprocess_exec(
            python, "-c", CALLS, hub.url, "wheel-key", cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert out.decode().split("\n")[0] == "1 ['Photos'] unknown_user"


def _install_the_client_alone(tmp_path: Path) -> str:
    """Build host-client's wheel, check what it holds, install it in a fresh virtualenv and
    check what that brought; return the virtualenv's python."""

    def run(*command: str) -> str:
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, (command, done.stderr)
        return done.stdout

    # Built from a copy: setuptools writes build/ and *.egg-info into the folder it builds.
    source = shutil.copytree(ROOT / "host-client", tmp_path / "host-client")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source))
    (wheel,) = tmp_path.glob("platform_hub_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = {n for n in archive.namelist() if not n.startswith("platform_hub_client-")}
    assert packaged == {
        f"platform_hub_client/{name}"
        for name in ("__init__.py", "bodies.py", "calls.py", "clients.py", "errors.py", "py.typed")
    }
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    python = str(venv / "bin" / "python")
    run(python, "-m", "pip", "install", "-q", str(wheel))
    names = {line.split("==")[0].lower() for line in run(python, "-m", "pip", "freeze").split()}
    assert {"platform-hub-client", "httpx", "msgspec"} <= names, names
    assert not names & SERVER_ONLY, names & SERVER_ONLY
    return python
