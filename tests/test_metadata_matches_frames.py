"""What a viewer is told matches what it gets:

* every JPEG has the size the last ``metadata`` before it announced (a resize in push mode, a
  ``max_bytes`` that shrinks the picture);
* with ``frame_info``, a ``frame`` message comes before every JPEG, with its seq (strictly
  increasing: control messages that wake the sender never make it send a frame again) and the
  quality it was really encoded at.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import cv2
import numpy as np
from conftest import TIMEOUT, wait_until
from helpers import Publisher, next_binary, next_text, running
from websocket import create_connection
from websockets.sync.client import connect

# -- helpers -----------------------------------------------------------------------------------


class CheckedReceiver:
    """Reads a websocket-client connection and checks every JPEG against the last metadata.

    ``messages`` keeps every JSON message in order; ``jpegs`` the (metadata, width, height) of
    every binary message. Any JPEG whose decoded size differs from what the metadata before it
    announced is recorded in ``mismatches``.
    """

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.metadata: dict | None = None
        self.messages: list[dict] = []
        self.frame_seqs: list[int] = []
        self.binaries = 0
        self.mismatches: list[str] = []
        self.unannounced = 0  # binary messages with frame_info on but no frame message before

    def receive_until(self, predicate: Any, timeout: float = TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        pending_info = False
        while time.monotonic() < deadline:
            self.ws.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                opcode, data = self.ws.recv_data()
            except Exception:  # timeout: the predicate decides
                break
            if opcode == 1:
                message = json.loads(data)
                self.messages.append(message)
                if message.get("type") == "metadata":
                    self.metadata = message
                elif message.get("type") == "frame":
                    self.frame_seqs.append(message["seq"])
                    pending_info = True
            elif opcode == 2:
                self.binaries += 1
                if self.metadata is not None and self.metadata.get("frame_info"):
                    if not pending_info:
                        self.unannounced += 1
                    pending_info = False
                image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
                assert image is not None, "a binary message that is not a JPEG"
                if self.metadata is None:
                    self.mismatches.append("a JPEG before any metadata")
                elif (image.shape[1], image.shape[0]) != (
                    self.metadata["width"], self.metadata["height"]
                ):
                    self.mismatches.append(
                        f"JPEG {image.shape[1]}x{image.shape[0]} after metadata "
                        f"{self.metadata['width']}x{self.metadata['height']}"
                    )
            if predicate():
                return True
        return predicate()


def noise(width: int, height: int, seed: int) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image.flags.writeable = False
    return image


# -- never the same frame twice, even when control messages wake the sender ---------------------


def test_control_messages_never_make_the_sender_repeat_a_frame(streamer_factory) -> None:
    streamer = streamer_factory("push", fps=30)
    images = [noise(320, 240, i) for i in range(3)]
    ws = create_connection(f"{streamer.url}?frame_info=true", timeout=TIMEOUT)
    receiver = CheckedReceiver(ws)
    stop_chatter = threading.Event()

    def chatter() -> None:  # pings and config messages while frames flow and while they pause
        i = 0
        while not stop_chatter.is_set():
            kind = i % 3
            if kind == 0:
                ws.send(json.dumps({"type": "ping", "t": i}))
            elif kind == 1:
                ws.send(json.dumps({"type": "config", "frame_info": True}))
            else:
                ws.send(json.dumps({"type": "config", "fps": 30}))
            i += 1
            stop_chatter.wait(0.05)  # the pace of the chatter: about 20 messages a second

    talker = threading.Thread(target=chatter, name="test-chatter", daemon=True)
    try:
        assert receiver.receive_until(lambda: receiver.metadata is not None)
        talker.start()
        for _burst in range(3):
            publisher = Publisher(streamer, images, fps=30)
            with running(publisher):
                target = receiver.binaries + 10
                assert receiver.receive_until(lambda t=target: receiver.binaries >= t)
            # Publishing paused: only control messages wake the sender now.
            seen = len(receiver.messages)
            assert receiver.receive_until(lambda s=seen: len(receiver.messages) >= s + 8)
    finally:
        stop_chatter.set()
        if talker.is_alive():
            talker.join(TIMEOUT)
        ws.close()
    assert not talker.is_alive()
    seqs = receiver.frame_seqs
    assert len(seqs) >= 30, seqs
    repeats = [(a, b) for a, b in zip(seqs, seqs[1:]) if b <= a]
    assert not repeats, f"frame seq not strictly increasing: {repeats[:5]}"
    assert receiver.unannounced == 0
    assert receiver.binaries == len(seqs)
    assert not receiver.mismatches, receiver.mismatches[:3]


# -- every JPEG matches the metadata before it -------------------------------------------------


def test_a_resize_in_push_mode_is_announced_before_the_first_bigger_jpeg(streamer_factory) -> None:
    streamer = streamer_factory("push", fps=30)
    # A byte limit no frame here reaches: sizes change only because the source's size does.
    ws = create_connection(f"{streamer.url}?max_bytes=4000000", timeout=TIMEOUT)
    receiver = CheckedReceiver(ws)
    try:
        for width, height in ((320, 240), (480, 360), (160, 120)):
            publisher = Publisher(streamer, [noise(width, height, width)], fps=30)
            with running(publisher):
                assert receiver.receive_until(
                    lambda w=width: receiver.metadata is not None
                    and receiver.metadata["width"] == w
                    and receiver.binaries > 0
                )
                target = receiver.binaries + 5
                assert receiver.receive_until(lambda t=target: receiver.binaries >= t)
    finally:
        ws.close()
    assert not receiver.mismatches, receiver.mismatches[:3]
    widths = [m["width"] for m in receiver.messages if m.get("type") == "metadata"]
    assert {320, 480, 160} <= set(widths), widths


def test_a_max_bytes_that_shrinks_the_picture_is_announced(streamer_factory) -> None:
    streamer = streamer_factory("push", fps=30)
    ws = create_connection(streamer.url, timeout=TIMEOUT)
    receiver = CheckedReceiver(ws)
    # Noise does not compress: 640x480 cannot fit 5000 bytes at any quality without shrinking.
    publisher = Publisher(streamer, [noise(640, 480, 1), noise(640, 480, 2)], fps=30)
    try:
        with running(publisher):
            assert receiver.receive_until(lambda: receiver.binaries >= 3)
            ws.send(json.dumps({"type": "config", "max_bytes": 5000}))
            assert receiver.receive_until(
                lambda: receiver.metadata is not None
                and receiver.metadata.get("max_bytes") == 5000
                and receiver.metadata["width"] < 640
            ), receiver.metadata
            target = receiver.binaries + 10
            assert receiver.receive_until(lambda: receiver.binaries >= target)
    finally:
        ws.close()
    assert not receiver.mismatches, receiver.mismatches[:3]


# -- the quality each JPEG got ------------------------------------------------------------------


def test_frame_info_says_the_quality_each_jpeg_got(streamer_factory) -> None:
    streamer = streamer_factory("push")
    image = noise(320, 240, 3)
    with connect(f"{streamer.url}?frame_info=true&max_bytes=20000", open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        qualities: list[int] = []

        def one_more() -> bool:
            streamer.publish(image)
            info = next_text(ws, "frame")
            assert len(next_binary(ws)) <= 20000
            qualities.append(info["quality"])
            return len(qualities) >= 3

        assert wait_until(one_more, timeout=TIMEOUT, interval=0.05)
    assert all(isinstance(q, int) and q < 80 for q in qualities), qualities
