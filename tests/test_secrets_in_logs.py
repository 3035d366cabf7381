"""Secrets in a source URL stay out of what camstream shows: a relay's source URL carries the
upstream's token (and may carry a user's password); its log lines, ``stats()`` and
``/stats.json`` name the source with those replaced by ``***``.

(A refused client's token is never logged either: see test_refusal_logs.py.)
"""

from __future__ import annotations

import json
import logging

from helpers import get

from camstream.capture.sources import describe_source


def test_source_urls_are_described_without_their_secrets() -> None:
    described = describe_source("http://user:pw@origin:8765/stream.mjpg?token=SECRET&fps=5")
    assert "SECRET" not in described and "pw" not in described, described
    assert described == "url http://***@origin:8765/stream.mjpg?token=***&fps=***"


def test_a_relay_does_not_show_the_upstreams_token(streamer_factory, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="camstream")
    origin = streamer_factory("test", width=64, height=48, token="ORIGIN-SECRET")
    relay = streamer_factory(f"http://127.0.0.1:{origin.port}/stream.mjpg?token=ORIGIN-SECRET")
    stats = get(relay.port, "/stats.json")
    assert stats.status == 200
    assert b"ORIGIN-SECRET" not in stats.body
    assert "token=***" in json.loads(stats.body)["camera"]["source"]
    lines = [r.getMessage() for r in caplog.records]
    assert any("stream.mjpg?token=***" in line for line in lines), lines  # it was named
    assert not [line for line in lines if "ORIGIN-SECRET" in line]
