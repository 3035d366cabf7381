"""Guards: behaviours that planted bugs slipped past, each pinned by a test that can catch them.

* a control message that wakes the sender must never make it send the same frame again;
* every JPEG a viewer receives has the size its last metadata announced (a resize in push mode,
  a ``max_bytes`` that shrinks the picture);
* the command listens on 127.0.0.1 unless told otherwise (checked on the socket itself);
* a viewer that stops reading never freezes a healthy one (the longest gap between the healthy
  viewer's frames is measured, not only their count).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from typing import Any

import cv2
import numpy as np
from conftest import TIMEOUT, stop_process, wait_until
from helpers import Counter, Publisher, RawViewer, read_line, running
from websocket import create_connection

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


# -- (a) never the same frame twice, even when control messages wake the sender -----------------


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


# -- (b) every JPEG matches the metadata before it ---------------------------------------------


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


# -- (c) the command's default listen address --------------------------------------------------


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on ``port``, read from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A: TCP_LISTEN
                found.add(address)
    return found


def test_the_command_listens_on_loopback_only_by_default() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "camstream", "--source", "test", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = read_line(process.stdout)
        assert line, "the command printed no start-up line"
        match = re.search(r"ws://[^ ]+:(\d+)/", line)
        assert match, line
        port = int(match.group(1))
        assert wait_until(lambda: bool(_listening_addresses(port)))
        # 0100007F is 127.0.0.1 in /proc's little-endian hex; 0.0.0.0 would be 00000000.
        assert _listening_addresses(port) == {"0100007F"}, _listening_addresses(port)
    finally:
        stop_process(process)


# -- (d) a stalled viewer never freezes a healthy one -----------------------------------------


def test_a_stalled_viewer_never_freezes_a_healthy_one(streamer_factory) -> None:
    # Noise at 1920x1080 (~1.3 MB a JPEG) is more than the socket buffers take: a send to the
    # stalled viewer blocks until the send timeout, as a bug that shared a lock would show.
    images = [noise(1920, 1080, i) for i in range(3)]
    streamer = streamer_factory("push", fps=15, send_timeout=2)
    publisher = Publisher(streamer, images, fps=15)
    healthy = Counter(streamer.url + "?max_bytes=0")
    with running(publisher, healthy):
        assert healthy.ready.wait(TIMEOUT) and healthy.error is None, healthy.error
        stalled = RawViewer(streamer.port, rcvbuf=16384)  # handshake, then never reads
        try:
            t0 = time.monotonic()
            assert wait_until(lambda: time.monotonic() >= t0 + 3.0, timeout=TIMEOUT)
            t1 = time.monotonic()
        finally:
            stalled.close()
    arrivals = [t for t in healthy.arrivals if t0 <= t <= t1]
    assert len(arrivals) >= 3 * 15 * 0.8, len(arrivals)
    longest = max(b - a for a, b in zip(arrivals, arrivals[1:]))
    # One frame period is 67 ms; a healthy viewer held behind the stalled one's send would show
    # a gap of the send timeout (2 s). Half a second leaves room for a busy machine.
    assert longest < 0.5 * max(1.0, TIMEOUT / 5), f"longest gap {longest:.3f} s"
