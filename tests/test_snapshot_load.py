"""Snapshots are not an encode lever (issue 22 item 14): bursts of ``/snapshot.jpg`` requests at
distinct widths, quality 100 (and with a byte limit, which makes each a quality/size search),
leave a viewer at full rate. Every answer is a JPEG or a 503 with ``Retry-After`` and a reason.

The bursts come from ``benchmarks/snapshot_load.py burst`` in a process of its own (every
request of a burst in flight at once); ``python benchmarks/snapshot_load.py`` measures the same
against a server process and prints the figures (README, CHANGELOG).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SLACK, TIMEOUT
from helpers import Counter, running

ROOT = Path(__file__).resolve().parent.parent
BURSTS = 2  # the benchmark runs 3; two show the same here
REQUESTS = 300


def _bursts(port: int, max_bytes: int) -> dict:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "snapshot_load.py"), "burst", str(port),
         "--requests", str(REQUESTS), "--bursts", str(BURSTS), "--quality", "100",
         "--max-bytes", str(max_bytes), "--timeout", str(6 * TIMEOUT)],
        capture_output=True, text=True, timeout=30 * TIMEOUT, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("max_bytes", [0, 4096], ids=["quality-100", "max-bytes-4096"])
def test_snapshot_bursts_leave_the_viewer_at_full_rate(streamer_factory, max_bytes: int) -> None:
    streamer = streamer_factory(
        "test", width=640, height=480, fps=30, max_connections_per_address=0
    )
    viewer = Counter(streamer.url)
    with running(viewer):
        assert viewer.ready.wait(TIMEOUT) and viewer.error is None, viewer.error
        before = streamer.stats()
        t0 = time.monotonic()
        figures = _bursts(streamer.port, max_bytes)
        t1 = time.monotonic()
        after = streamer.stats()
        frames = viewer.frames_between(t0, t1)
        assert viewer.close_code is None and viewer.error is None
    fps = frames / (t1 - t0)
    arrivals = [t for t in viewer.arrivals if t0 <= t < t1]
    worst = min(viewer.frames_between(t, t + 1.0) for t in arrivals if t + 1.0 <= t1)
    gap = max(b - a for a, b in zip(arrivals, arrivals[1:]))
    print(f"snapshot bursts, max_bytes={max_bytes}: viewer {fps:.1f} fps over {t1 - t0:.1f} s, "
          f"worst 1-s window {worst} frames, longest gap {gap * 1000:.0f} ms; "
          f"{figures['statuses']} {figures['reasons']}")
    # Every request was answered: a JPEG, or 503 + Retry-After + why (never a reset).
    assert figures["answers"] == BURSTS * REQUESTS
    assert set(figures["statuses"]) <= {"200", "503"}, figures
    assert figures["all_503_have_retry_after"], figures
    assert all(reason.startswith("server busy") for reason in figures["reasons"]), figures
    assert int(figures["statuses"].get("200", 0)) > 0, figures  # snapshots are still made
    http_before, http_after = before["http"], after["http"]
    refused = sum(
        http_after[key] - http_before[key]
        for key in ("snapshots_refused_busy", "snapshots_refused_budget")
    )
    assert refused == int(figures["statuses"].get("503", 0))
    # The work is bounded: snapshot encodes stay within the encode budget (30 x 5 a second)...
    budget = 30 * (4 + 1)  # the default: fps x (max_variants + 1)
    encodes = after["encodes"] - before["encodes"]
    assert encodes <= (budget + 30) * (t1 - t0 + 1), (encodes, t1 - t0)
    # ...and the viewer keeps its rate. The benchmark measures 30 fps (worst 1-s window 30,
    # longest gap ~50 ms; before the bound ~26 fps, worst window 16-24, gaps up to 150 ms);
    # here, sharing a process and a busy machine, generous bounds: 24 fps, no gap of 0.25 s
    # (at the default TIMEOUT; SLACK widens them on a slower machine).
    assert fps >= 24 / SLACK, fps
    assert gap < 0.25 * SLACK, gap
