"""Defects found by a review of the merged branches, each pinned by a test.

* a relay's source URL carries the upstream's token: logs and ``/stats.json`` must not show it;
* a malformed ``Origin`` header is refused, not a traceback;
* a pushed JPEG whose header is whole but whose pixels cannot be decoded is skipped by viewers
  that need pixels (no 1011), answered 503 by ``/snapshot.jpg``, and still passed through;
* the ``frame`` message says the quality each JPEG was really encoded at.
"""

from __future__ import annotations

import json
import logging
import struct

import cv2
import numpy as np
from conftest import TIMEOUT, wait_until
from helpers import get, next_binary, next_text
from websockets.sync.client import connect
from wsraw import RawClient

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
    assert not [r for r in caplog.records if "ORIGIN-SECRET" in r.getMessage()]


def test_a_malformed_origin_is_refused_not_a_traceback(streamer_factory, caplog) -> None:
    streamer = streamer_factory("test", width=64, height=48)
    caplog.set_level(logging.DEBUG, logger="camstream")
    with RawClient(streamer.port, timeout=TIMEOUT) as client:
        client.handshake("/", extra={"Origin": "http://[::1"})
        assert client.recv_close() == (1008, b"origin not allowed")
    status = get(streamer.port, "/snapshot.jpg", {"Origin": "http://[::1"}).status
    assert status == 403
    # Refusals are WARNINGs that name the origin (issue 22): never an error or a traceback.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def _undecodable_jpeg() -> bytes:
    """A whole JPEG file (SOI, frame header, scan, EOI) whose header claims 60000x60000."""
    ok, buffer = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    assert ok
    data = bytearray(buffer.tobytes())
    sof = data.index(b"\xff\xc0")
    struct.pack_into("!HH", data, sof + 5, 60000, 60000)
    return bytes(data)


def test_an_undecodable_pushed_jpeg_is_skipped_not_a_crash(streamer_factory, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="camstream")
    streamer = streamer_factory("push")
    bad = _undecodable_jpeg()
    _, good = cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))
    with connect(f"{streamer.url}?width=32", open_timeout=TIMEOUT) as small, \
            connect(f"{streamer.url}?max_bytes=0", open_timeout=TIMEOUT) as native:
        next_text(small, "metadata")
        next_text(native, "metadata")
        assert streamer.publish_jpeg(bad) is not None  # its header is whole: stored
        assert next_binary(native) == bad  # passed through untouched
        assert get(streamer.port, "/snapshot.jpg?width=32").status == 503
        streamer.publish_jpeg(good.tobytes())
        # The viewer that needs pixels skipped the bad frame and goes on with the next one.
        frame = next_binary(small)
        assert cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR).shape[1] == 32
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_frame_info_says_the_quality_each_jpeg_got(streamer_factory) -> None:
    rng = np.random.default_rng(3)
    streamer = streamer_factory("push")
    noise = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    with connect(f"{streamer.url}?frame_info=true&max_bytes=20000", open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        qualities: list[int] = []

        def one_more() -> bool:
            streamer.publish(noise)
            info = next_text(ws, "frame")
            assert len(next_binary(ws)) <= 20000
            qualities.append(info["quality"])
            return len(qualities) >= 3

        assert wait_until(one_more, timeout=TIMEOUT, interval=0.05)
    assert all(isinstance(q, int) and q < 80 for q in qualities), qualities
