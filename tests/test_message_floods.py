"""Message floods are closed and a legitimate viewer keeps receiving meanwhile: clients pinging
as fast as they can (1008, a few log lines, not hundreds), and many connections sending big
messages (64 KB pings or configs: 1009) or many small ones (over a connection's byte budget:
1008; within each connection's budgets but over their address's: they wait, nobody is closed).

The attackers run in a process of their own (``tests/attackers.py``), from 127.0.0.2, ... The
viewer's rate is a benchmark figure (``benchmarks/attacks.py``: >= 27 fps); here it is only a
generous, TIMEOUT-scaled floor.
"""

from __future__ import annotations

import json
import logging
import select
import time

import pytest
from conftest import SLACK, TIMEOUT, stop_process
from helpers import attack
from websockets.sync.client import connect

pytestmark = pytest.mark.timeout(120)

VIEWER_FLOOR = 30 * 0.5 / SLACK  # fps: half the camera's rate at the default TIMEOUT


def _frames_per_second(url: str, seconds: float) -> float:
    """A legitimate viewer's received frame rate over ``seconds`` (after its first frame)."""
    with connect(url, open_timeout=TIMEOUT, max_size=None) as ws:
        first = None
        frames = 0
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            message = ws.recv(timeout=TIMEOUT)
            if isinstance(message, bytes):
                if first is None:
                    first, deadline = time.monotonic(), time.monotonic() + seconds
                else:
                    frames += 1
        assert first is not None
        return frames / (time.monotonic() - first)


def test_ping_flood_is_closed_and_a_viewer_keeps_its_rate(streamer_factory, caplog) -> None:
    """12 clients pinging as fast as they can (reconnecting when closed) during 3 s."""
    caplog.set_level(logging.INFO, logger="camstream")
    streamer = streamer_factory("test", fps=30, width=320, height=240)
    seconds = 3.0
    flood = attack("ping", str(streamer.port), str(seconds), "12")
    try:
        assert select.select([flood.stdout], [], [], TIMEOUT)[0], "the flood did not start"
        assert flood.stdout.readline().strip() == "flooding"
        fps = _frames_per_second(streamer.url, seconds - 1)
        out, _ = flood.communicate(timeout=TIMEOUT + 10)
    finally:
        stop_process(flood)
    counts = dict(item.split("=") for item in out.split())  # the last line: the counters
    print(f"viewer fps during a 12-client ping flood: {fps:.1f}; attackers: {out.strip()}")
    assert int(counts["closes_1008"]) >= 12
    assert int(counts["closes_1008"]) >= int(counts["connections"]) - 12  # all but the last
    assert fps >= VIEWER_FLOOR, fps
    # Hundreds of flood closes a second cost a few log lines (rate-limited), not hundreds: a
    # burst of 10, then about one a second.
    floods = [r for r in caplog.records if "messages/s" in r.getMessage()]
    assert 1 <= len(floods) <= 10 + seconds + 5, len(floods)


@pytest.mark.parametrize(
    ("kind", "connections", "addresses", "size", "codes", "seconds"),
    [
        # The attack: a 64 KB ``t``, echoed back; each is closed at its first message.
        ("pings", 96, 3, 64_000, {"1009"}, 1.5),
        ("config", 32, 3, 64_000, {"1009"}, 1.5),  # 5,000 unknown keys a message
        # Under the size cap: 76 KB/s a connection, over its byte budget after about 1 s.
        ("pings", 12, 12, 4_000, {"1008"}, 2.0),
        # Under each connection's budgets; their address's (shared) runs out after about 2 s,
        # and then they wait their turn: none is closed.
        ("pings", 96, 3, 700, set(), 3.0),
    ],
    ids=["pings-64k", "config-64k", "pings-4k", "pings-fit"],
)
def test_big_message_floods_are_closed_and_a_viewer_keeps_receiving(
    streamer_factory, kind: str, connections: int, addresses: int, size: int, codes: set[str],
    seconds: float,
) -> None:
    """19 messages a second a connection, each reconnecting when closed, from 127.0.0.2..."""
    streamer = streamer_factory("test", fps=30, width=320, height=240)
    flood = attack("messages", kind, str(streamer.port), str(seconds + 1), str(connections),
                   str(addresses), "19", str(size))
    try:
        assert select.select([flood.stdout], [], [], TIMEOUT)[0], "the attack did not start"
        assert flood.stdout.readline().strip() == "STARTED"
        fps = _frames_per_second(streamer.url, seconds)
        out, _ = flood.communicate(timeout=TIMEOUT + 5)
    finally:
        stop_process(flood)
    result = json.loads(out.strip().splitlines()[-1])
    print(f"{kind} {size} B x {connections}: viewer {fps:.1f} fps, attackers {result}")
    assert set(result["closes"]) == codes, result
    assert result["sent"] > connections  # it did flood
    assert fps >= VIEWER_FLOOR, fps
