"""The benchmark's own parts work (a tiny run); its figures are in bench/RESULTS.md, not here."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from bench.run import ceiling, idle_memory, load_command, peer

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("start", [ceiling, peer], ids=["ceiling", "peer"])
async def test_the_load_generator_measures_the_ceiling_and_the_peer(start: object) -> None:
    """Both protocols: every switch is answered and every accepted one reaches every tab."""
    async with start(5) as target:  # type: ignore[operator]
        for mode in ("rate", "saturate"):
            command = load_command(target, 5, 3, duration=0.5, mode=mode, rate=100, warmup=0)
            done = await asyncio.to_thread(
                subprocess.run, command, cwd=ROOT, capture_output=True, text=True, check=True
            )
            result = json.loads(done.stdout)
            assert result["tabs"] == 15 and result["accepted"] > 0, result
            assert result["unanswered"] == 0, result
            # Every accepted switch reached all three tabs of its user: a latency exists.
            assert result["p50_ms"] == result["p50_ms"] and result["p50_ms"] >= 0, result
        memory = await asyncio.to_thread(idle_memory, target, 12, 3)
        assert memory["idle_tabs"] == 12, memory
        assert memory["rss_kib_after"] > 0, memory
