"""A WebSocket viewer's session (camstream.delivery.session), without sockets.

A real ``ClientSession`` on a real ``Connection`` and ``Link``; the link writes into a
``MemoryWire`` (a socketpair-free writer that keeps the bytes, and takes at most ``room`` bytes
from a non-blocking write), and the test parses those bytes as the client would: message by
message, with the transport's own framing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import TIMEOUT, wait_until
from helpers import decode_jpeg
from test_link_writes import split_messages

from camstream.capture.camera import CameraThread
from camstream.capture.frame import Frame
from camstream.delivery.encoder import EncodeCache
from camstream.delivery.fanout import FanOutRound
from camstream.delivery.session import ClientSession, ClientSettings
from camstream.ws import Connection, Headers, Limits, Link, Request

IMAGE = np.full((120, 160, 3), 90, np.uint8)


class MemoryWire:
    """Stands in for the connection's socket: keeps every byte written, in order."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.room: int | None = None  # bytes a non-blocking write may take (None: all)
        self.nonblocking_writes = 0
        self.changed = threading.Condition()

    def sendall(self, data: bytes | memoryview) -> None:
        with self.changed:
            self.data += data
            self.changed.notify_all()

    def send(self, data: bytes | memoryview, flags: int = 0) -> int:
        with self.changed:
            n = len(data) if self.room is None else min(self.room, len(data))
            if n == 0:
                raise BlockingIOError("no room")
            if self.room is not None:
                self.room -= n
            self.data += memoryview(data)[:n]
            self.nonblocking_writes += 1
            self.changed.notify_all()
            return n

    def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0) -> int:
        return self.send(b"".join(buffers), flags)

    def fileno(self) -> int:
        raise OSError("a wire in memory has no descriptor")  # unsent bytes: unknown

    def messages(self) -> list[tuple[int, bytes]]:
        """The whole messages written so far, as (opcode, payload)."""
        with self.changed:
            data = bytes(self.data)
        return split_messages(data)[0]

    def wait_for(self, count: int) -> list[tuple[int, bytes]]:
        """The first ``count`` messages, waiting (TIMEOUT-bounded) for them."""
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.messages()) >= count, TIMEOUT), (
                count, self.messages()
            )
        return self.messages()[:count]


def text(message: tuple[int, bytes]) -> dict[str, Any]:
    opcode, payload = message
    assert opcode == 0x1, message
    parsed: dict[str, Any] = json.loads(payload)
    return parsed


@pytest.fixture
def camera() -> Iterator[CameraThread]:
    camera = CameraThread("push", fps=30).start()
    yield camera
    camera.stop()


@pytest.fixture
def wire() -> MemoryWire:
    return MemoryWire()


@pytest.fixture
def make_session(camera: CameraThread, wire: MemoryWire) -> Iterator[Any]:
    sessions: list[ClientSession] = []

    def make(**settings: Any) -> ClientSession:
        link = Link(wire, time.monotonic())  # type: ignore[arg-type]
        link.deadline = None
        request = Request("GET", "/", {}, Headers(), ("127.0.0.1", 40000))
        connection = Connection(link, request, None, 1, Limits())
        session = ClientSession(
            connection, camera, EncodeCache(), ClientSettings(**{"fps": 30.0, **settings}),
            stall_timeout=TIMEOUT,
        )
        sessions.append(session)
        return session.start()

    yield make
    for session in sessions:
        session.stop(TIMEOUT)
        assert not session._thread.is_alive()


def offer_until_fast(session: ClientSession, camera: CameraThread, wire: MemoryWire) -> Frame:
    """Publish frames and offer each to the session as the fan-out would, until the fan-out
    sends one (the session's own thread may take a frame first: it looks on its own timer)."""
    for _ in range(20):
        before = len(wire.messages())
        frame = camera.publish(IMAGE, copy=False)
        if session.offer(frame, FanOutRound()):
            return frame
        wire.wait_for(before + 1)  # its own thread sent it
    raise AssertionError("the fan-out never found the session idle")


def test_metadata_first_then_replies_and_snapshots_in_the_order_asked(
    make_session, camera, wire
) -> None:
    frame = camera.publish(IMAGE, copy=False)
    session = make_session(fps=0.5)  # a slow viewer: frames do not come between the replies
    first, shown = wire.wait_for(2)[:2]  # the metadata, then the newest frame at once
    assert text(first)["type"] == "metadata" and text(first)["width"] == 160
    assert shown[0] == 0x2
    session.handle_text('{"type": "ping", "t": 1}')
    session.handle_text('{"type": "snapshot", "quality": 50}')
    session.handle_text('{"type": "ping", "t": "two"}')
    messages = wire.wait_for(6)
    got = [text(m) if m[0] == 0x1 else m[1] for m in messages[2:6]]
    pong1, snapshot, jpeg, pong2 = got
    assert pong1["type"] == "pong" and pong1["t"] == 1 and pong1["server_time"] > 0
    assert snapshot["type"] == "snapshot" and snapshot["seq"] == frame.seq
    assert snapshot["quality"] == 50 and snapshot["bytes"] == len(jpeg)
    assert isinstance(jpeg, bytes) and jpeg.startswith(b"\xff\xd8")
    assert pong2 == {**pong2, "type": "pong", "t": "two"}


def test_a_snapshot_without_a_frame_is_an_error(make_session, camera, wire) -> None:
    camera.stop()  # no frame will come: the first-frame wait ends at once
    session = make_session()
    session.handle_text('{"type": "snapshot"}')
    messages = wire.wait_for(2)
    assert text(messages[1]) == {"type": "error", "message": "no frame to snapshot yet"}


def test_the_fanout_sends_frame_info_and_the_jpeg_in_one_write(make_session, camera, wire) -> None:
    session = make_session(frame_info=True)
    assert text(wire.wait_for(1)[0])["type"] == "metadata"
    writes, count = wire.nonblocking_writes, len(wire.messages())
    frame = offer_until_fast(session, camera, wire)
    assert wire.nonblocking_writes == writes + 1  # one write, two messages
    messages = wire.messages()
    info, (opcode, jpeg) = text(messages[-2]), messages[-1]
    assert len(messages) >= count + 2 and opcode == 0x2
    assert info["type"] == "frame" and info["seq"] == frame.seq and info["bytes"] == len(jpeg)
    assert session.stats.fast_frames >= 1


def test_a_settings_change_is_announced_by_the_thread_before_the_next_frame(
    make_session, camera, wire
) -> None:
    session = make_session()
    wire.wait_for(1)
    offer_until_fast(session, camera, wire)
    session.update(width=80)
    frame = camera.publish(IMAGE, copy=False)
    assert not session.offer(frame, FanOutRound())  # metadata first: the thread's

    def announced_then_sent() -> bool:
        kinds = [text(m)["type"] + str(text(m).get("width")) if m[0] == 0x1 else "jpeg"
                 for m in wire.messages()]
        return "metadata80" in kinds and "jpeg" in kinds[kinds.index("metadata80"):]

    assert wait_until(announced_then_sent)
    offer_until_fast(session, camera, wire)  # the fast path serves the new size from then on
    opcode, jpeg = wire.messages()[-1]
    assert opcode == 0x2 and decode_jpeg(jpeg).shape[1] == 80


def test_a_rest_the_fanout_left_goes_out_before_the_next_message(
    make_session, camera, wire
) -> None:
    session = make_session()
    wire.wait_for(1)
    wire.room = 100  # the kernel takes 100 bytes of the next non-blocking write
    offer_until_fast(session, camera, wire)
    count = len(wire.messages())  # whole messages before the one begun
    assert session.stats.fast_partial == 1
    session.handle_text('{"type": "ping", "t": 7}')  # the sender writes the rest, then this
    messages = wire.wait_for(count + 2)
    (opcode, jpeg), pong = messages[count], text(messages[count + 1])
    assert opcode == 0x2 and jpeg.startswith(b"\xff\xd8") and jpeg.endswith(b"\xff\xd9")
    assert pong["type"] == "pong" and pong["t"] == 7
    assert session.connection.pending == 0
