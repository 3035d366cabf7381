"""A pushed JPEG whose header is whole but whose pixels cannot be decoded: stored (it is one
whole JPEG file) and passed through to viewers that take the source's JPEGs as they are; skipped
by viewers that need pixels (no 1011, the stream goes on with the next frame); answered 503 by a
``/snapshot.jpg`` that needs pixels. Nothing is logged as an error.
"""

from __future__ import annotations

import logging
import struct

import cv2
import numpy as np
from conftest import TIMEOUT
from helpers import get, next_binary, next_text
from websockets.sync.client import connect


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
