"""The benchmark's own parts work (a tiny run); its figures are in bench/RESULTS.md, not here."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from bench.run import spawn_ceiling, wait_port
from tests.load import free_port

ROOT = Path(__file__).resolve().parent.parent


async def test_the_load_generator_measures_the_ceiling() -> None:
    port = free_port()
    ceiling = spawn_ceiling(port)
    try:
        await wait_port(port)
        for mode in ("rate", "saturate"):
            command = [
                sys.executable,
                "-m",
                "bench.load",
                "--target",
                f"ws://127.0.0.1:{port}/ws",
                "--users",
                "5",
                "--tabs",
                "3",
                "--duration",
                "0.5",
                "--mode",
                mode,
                "--rate",
                "100",
            ]
            done = await asyncio.to_thread(
                subprocess.run, command, cwd=ROOT, capture_output=True, text=True, check=True
            )
            result = json.loads(done.stdout)
            assert result["tabs"] == 15 and result["accepted"] > 0, result
            assert result["unanswered"] == 0, result
            # Every accepted switch reached all three tabs of its user: a latency exists.
            assert result["p50_ms"] == result["p50_ms"] and result["p50_ms"] >= 0, result
    finally:
        ceiling.kill()
        ceiling.wait()
