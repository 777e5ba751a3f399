"""The host API against its own OpenAPI document, by schemathesis, on a real hub process.

Schemathesis generates requests from ``GET /api/host/openapi.json`` (valid and invalid ones,
and sequences that follow the links between operations) and checks every answer: no 500,
answers that match the documented schemas and statuses, schema-valid requests accepted and
schema-violating ones refused. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from server.web.openapi import ENDPOINTS
from tests.conftest import MakeSettings
from tests.support.population import seed_demo_file
from tests.support.processes import HubProcess

KEY = "conformance-key"


async def test_the_host_api_conforms_to_its_openapi_document(
    make_on_each_engine: MakeSettings, tmp_path: Path
) -> None:
    """schemathesis run --checks all finds no failure (seeded, so a failure reproduces)."""
    settings = make_on_each_engine(
        api_key=KEY, log_level="warning", messages_per_second=10**6, message_burst=10**6
    )
    await seed_demo_file(settings)
    hub = await HubProcess(settings, tmp_path / "hub.log").start()
    try:
        run = subprocess.run(  # noqa: ASYNC221 (the hub is another process)
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"{hub.url}/api/host/openapi.json",
                "--header",
                f"Authorization: Bearer {KEY}",
                "--checks",
                "all",
                "--max-examples",
                "25",
                "--seed",
                "20261201",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        hub.stop()
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    operations = len(ENDPOINTS)  # every operation the document names was tested
    assert f"{operations}/{operations}" in run.stdout, report
    assert "Traceback" not in (tmp_path / "hub.log").read_text()
