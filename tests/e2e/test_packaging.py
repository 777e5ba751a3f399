"""Packaging: the wheel builds, and an installed hub (not a source checkout) serves everything.

The wheel is built from this checkout and unpacked into a directory of its own, which is put
first on the path of a process started elsewhere: the hub it runs is the installed one, its
migrations and its copy of client/ included.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx

from tests.conftest import reported_port

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
