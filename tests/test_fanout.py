"""The fan-out fast path (camstream.delivery.fanout): what a viewer (WebSocket or MJPEG) receives
is what
its own thread would have sent, a partial non-blocking write is finished before anything else,
each viewer keeps its own rate.

Real servers on port 0, real clients (``websockets``, raw sockets); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import threading
import time
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import SLACK, TIMEOUT, wait_until
from helpers import (
    Counter,
    MjpegReader,
    Publisher,
    RawViewer,
    cpu_seconds,
    decode_jpeg,
    running,
)
from test_transport_tls import self_signed_cert
from websockets.sync.client import connect
from wsraw import build_frame

from camstream import Streamer
from camstream.capture.frame import Frame
from camstream.delivery.encoder import EncodeCache, EncodedFrame, Variant
from camstream.delivery.fanout import FanOut, FanOutRound, Retries, fan_out, offer_again
from camstream.delivery.mjpeg import MjpegStream
from camstream.delivery.session import ClientSession
from camstream.errors import ConnectionClosedError


class JpegPublisher(threading.Thread):
    """Hands the given JPEG files to ``publish_jpeg`` in turn at ``fps`` (once through)."""

    def __init__(self, streamer: Streamer, jpegs: list[bytes], fps: float) -> None:
        super().__init__(name="test-jpeg-publisher", daemon=True)
        self.streamer, self.jpegs, self.period = streamer, jpegs, 1.0 / fps
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic()
        for jpeg in self.jpegs:
            if self.stop.is_set():
                return
            assert self.streamer.publish_jpeg(jpeg) is not None
            deadline += self.period
            self.stop.wait(max(deadline - time.monotonic(), 0.0))


def sessions(streamer: Streamer) -> list[ClientSession]:
    return streamer._viewers.sessions()  # the per-viewer counters of the fast path


# How many published files a test sends (at 30 fps: 1.3 s), and how many of them each viewer must
# get at the least: most, on an idle machine; fewer (SLACK) on a busy one, never none.
PUBLISHED = 40
FLOOR = 0.6 * PUBLISHED / SLACK


def receive_until(ws: Any, last: bytes, timeout: float) -> tuple[list[dict], list[bytes]]:
    """Every message up to and including the binary one equal to ``last`` (the final file a
    publisher hands in: nothing replaces it, so it always arrives); fails after ``timeout``."""
    texts: list[dict] = []
    frames: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not frames or frames[-1] != last:
        message = ws.recv(timeout=max(deadline - time.monotonic(), 0.001))
        if isinstance(message, bytes):
            frames.append(message)
        else:
            texts.append(json.loads(message))
    return texts, frames


def receive_together(clients: list[Any], last: bytes) -> list[tuple[list[dict], list[bytes]]]:
    """``receive_until`` on every client at once (a client left unread for long would fill its
    queue and stall its own closing handshake)."""
    results: list[tuple[list[dict], list[bytes]] | BaseException] = [([], []) for _ in clients]
    timeout = PUBLISHED / 30 + TIMEOUT

    def read(i: int) -> None:
        try:
            results[i] = receive_until(clients[i], last, timeout)
        except BaseException as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=read, args=(i,), name=f"test-reader-{i}")
               for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + TIMEOUT)
        assert not thread.is_alive()
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, failed
    return results  # type: ignore[return-value]


def numbered_jpegs(count: int) -> list[bytes]:
    """``count`` distinct small JPEGs; frame i is a flat grey of level 2 * i + 20."""
    jpegs = []
    for i in range(count):
        image = np.full((120, 160, 3), 2 * i + 20, np.uint8)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        jpegs.append(data.tobytes())
    assert len(set(jpegs)) == count
    return jpegs


@pytest.mark.parametrize("fast", [True, False])
def test_a_viewer_gets_metadata_first_then_the_published_jpegs_in_order_none_twice(
    streamer_factory, fast: bool
) -> None:
    jpegs = numbered_jpegs(PUBLISHED)  # once through at 30 fps, no repeats
    index = {jpeg: i for i, jpeg in enumerate(jpegs)}
    streamer = streamer_factory("push", fps=30, fast_fanout=fast)
    with contextlib.ExitStack() as stack:
        clients = [
            stack.enter_context(connect(streamer.url, open_timeout=TIMEOUT)) for _ in range(3)
        ]
        for ws in clients:
            first = json.loads(ws.recv(timeout=TIMEOUT))  # sent before any frame exists
            assert first["type"] == "metadata", first
        publisher = JpegPublisher(streamer, jpegs, 30.0)
        with running(publisher):
            received = receive_together(clients, jpegs[-1])
        for texts, frames in received:
            assert texts == [] or all(t["type"] == "metadata" for t in texts), texts
            # Byte for byte the published files (passthrough), in order, never one twice.
            numbers = [index[frame] for frame in frames]
            assert numbers == sorted(set(numbers)), numbers
            assert len(numbers) >= FLOOR, len(numbers)
        fast_frames = [s.stats.fast_frames for s in sessions(streamer)]
        sent = [s.stats.frames_sent for s in sessions(streamer)]
        if fast:  # the fan-out served most frames (the first one waits for the metadata)
            assert all(f >= 0.8 * n for f, n in zip(fast_frames, sent)), (fast_frames, sent)
        else:
            assert fast_frames == [0, 0, 0]


def test_frame_info_viewers_take_the_fast_path_with_their_frame_message(streamer_factory) -> None:
    """A ``frame`` message right before each JPEG, carrying its seq and size, written by the
    fan-out together with the JPEG (one write) for most frames."""
    jpegs = numbered_jpegs(PUBLISHED)
    streamer = streamer_factory("push", fps=30)
    with connect(streamer.url + "?frame_info=1", open_timeout=TIMEOUT) as ws:
        assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "metadata"
        messages: list[Any] = []
        deadline = time.monotonic() + PUBLISHED / 30 + TIMEOUT
        with running(JpegPublisher(streamer, jpegs, 30.0)):
            while not messages or messages[-1] != jpegs[-1]:  # up to the last file published
                messages.append(ws.recv(timeout=max(deadline - time.monotonic(), 0.001)))
        (session,) = sessions(streamer)
        received = sum(isinstance(m, bytes) for m in messages)
        assert wait_until(lambda: session.stats.frames_sent >= received)  # counted after writing
        fast, sent = session.stats.fast_frames, session.stats.frames_sent
    pairs = 0
    for i, message in enumerate(messages):
        if isinstance(message, bytes):
            info = json.loads(messages[i - 1])  # the message right before every JPEG
            assert info["type"] == "frame" and info["bytes"] == len(message), info
            assert message == jpegs[info["seq"] - 1]  # its seq names this very JPEG
            pairs += 1
    assert pairs >= FLOOR and pairs == sent, (pairs, sent)  # read to the last: none in flight
    assert fast >= 0.8 * sent, (fast, sent)


def test_mixed_rates_keep_their_rate_on_the_fast_path(streamer_factory) -> None:
    """Over the time the full-rate viewer takes to get 30 frames, the 10 fps one gets about a
    third as many: never more than 10 fps allows, and the other is not held to its rate (it
    gets nearly every frame the camera captured meanwhile, however fast the camera ran)."""
    streamer = streamer_factory("test", width=320, height=240, fps=30)
    slow, fast = viewers = [Counter(streamer.url + "?fps=10"), Counter(streamer.url)]
    with running(*viewers):
        for viewer in viewers:
            assert viewer.ready.wait(TIMEOUT) and viewer.error is None, viewer.error
        captured = streamer.stats()["frames_captured"]
        start, t0 = len(fast.arrivals), time.monotonic()
        assert wait_until(lambda: len(fast.arrivals) >= start + 30)
        t1 = fast.arrivals[start + 29]
        captured = streamer.stats()["frames_captured"] - captured
        assert slow.error is None and fast.error is None, (slow.error, fast.error)
        served = [s.stats.fast_frames for s in sessions(streamer)]  # while both are connected
    assert len(served) == 2 and all(n > 0 for n in served), served
    got = {"slow": slow.frames_between(t0, t1), "fast": fast.frames_between(t0, t1)}
    assert got["slow"] <= 10 * (t1 - t0) + 2, (got, t1 - t0)  # its own rate, never above
    assert got["slow"] >= 10 * (t1 - t0) / SLACK - 2, (got, t1 - t0)
    assert got["fast"] >= 0.8 * captured - 2, (got, captured)  # not held to the slow rate


def test_a_partial_fast_send_is_finished_by_the_sender_before_anything_else(
    streamer_factory,
) -> None:
    """Large noise frames into a small receive window: fast sends end part-way; the rest goes
    out before the next message (a pong, a frame), so the stream still parses frame by frame."""
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(3)]
    jpegs = []
    for image in images:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        assert ok
        jpegs.append(data.tobytes())  # ~200 KB each
    streamer = streamer_factory("push", fps=20, max_bytes=None)
    viewer = RawViewer(streamer.port, rcvbuf=8192)  # a small window from the start
    publisher = JpegPublisher(streamer, jpegs * 200, 20.0)  # until stopped (30 s)
    frames: list[bytes] = []
    pongs: list[dict[str, Any]] = []
    try:
        with running(publisher):
            opcode, payload = viewer.read_message()
            assert opcode == 0x1 and json.loads(payload)["type"] == "metadata"
            # A small send buffer on the server's side too: no 200 KB message fits at once.
            session = sessions(streamer)[0]
            session.connection.link.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
            deadline = time.monotonic() + 3 * TIMEOUT
            t, next_ping = 0, 0.0
            # Until fast sends ended part-way, and frames and pongs came after them.
            while not (session.stats.fast_partial > 0 and len(frames) >= 10 and len(pongs) >= 5):
                assert time.monotonic() < deadline, (len(frames), len(pongs), session.stats)
                if time.monotonic() >= next_ping:  # text replies amid partial frames (10/s)
                    ping = json.dumps({"type": "ping", "t": t}).encode()
                    viewer.sock.sendall(build_frame(0x1, ping))
                    t, next_ping = t + 1, time.monotonic() + 0.1
                # Read slowly, a small piece at a time: the server's writes end part-way.
                opcode, n = viewer.read_header()
                payload = b""
                while len(payload) < n:
                    payload += viewer.read_exact(min(n - len(payload), 16384))
                    time.sleep(0.001)
                if opcode == 0x2:
                    frames.append(payload)
                else:
                    assert opcode == 0x1, opcode  # no other frame type, no garbage
                    parsed = json.loads(payload)
                    # (metadata again when the first frame gave the size, if it came first)
                    assert parsed["type"] in ("pong", "metadata"), parsed
                    if parsed["type"] == "pong":
                        pongs.append(parsed)
            partial, fast = session.stats.fast_partial, session.stats.fast_frames
    finally:
        viewer.close()
    assert frames and pongs
    for frame in frames:
        assert frame in jpegs  # whole and untouched
    assert fast > 0 and partial > 0, (fast, partial)
    assert wait_until(lambda: streamer.stats()["client_count"] == 0)


def test_a_fast_path_viewer_is_not_slowed_by_one_that_stopped_reading(streamer_factory) -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    send_timeout = 4.0
    streamer = streamer_factory("push", fps=30, max_bytes=None, send_timeout=send_timeout)
    stop = threading.Event()

    def publish() -> None:
        deadline = time.monotonic()
        while not stop.is_set():
            streamer.publish(image, copy=False)
            deadline += 1 / 30
            stop.wait(max(deadline - time.monotonic(), 0.0))

    publisher = threading.Thread(target=publish, name="test-publisher", daemon=True)
    publisher.start()
    try:
        stalled = RawViewer(streamer.port, rcvbuf=4096)  # handshake, then never reads
        try:
            with connect(streamer.url, open_timeout=TIMEOUT, max_size=2**22) as reader:
                assert json.loads(reader.recv(timeout=TIMEOUT))["type"] == "metadata"
                reader.recv(timeout=TIMEOUT)
                gaps = []
                last = time.monotonic()
                for _ in range(60):  # 2 s, half the stalled viewer's send_timeout
                    assert isinstance(reader.recv(timeout=TIMEOUT), bytes)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now
                # A fan-out that waited on the stalled viewer would hold this one for its whole
                # send_timeout (4 s) or pace it down; a busy test machine only delays a frame or
                # two. So: no gap near the send_timeout, and the full rate over the 2 s.
                assert max(gaps) < send_timeout / 8 * SLACK, sorted(gaps)[-5:]
                assert sum(gaps) < 60 / 30 * 1.25 * SLACK, sum(gaps)
        finally:
            stalled.close()
    finally:
        stop.set()
        publisher.join(TIMEOUT)
    assert not publisher.is_alive()


def streams(streamer: Streamer) -> list[MjpegStream]:
    return streamer._viewers.streams()  # the per-stream counters of the fast path


@pytest.mark.parametrize("fast", [True, False])
def test_mjpeg_viewers_get_the_published_jpegs_whole_in_order_none_twice(
    streamer_factory, fast: bool
) -> None:
    """MJPEG streams take the fan-out's path too: each part is the file as published, with its
    headers, in order; and a WebSocket viewer alongside is unaffected."""
    jpegs = numbered_jpegs(PUBLISHED)
    index = {jpeg: i for i, jpeg in enumerate(jpegs)}
    streamer = streamer_factory("push", fps=30, fast_fanout=fast)
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(MjpegReader(streamer.port)) for _ in range(3)]
        ws = stack.enter_context(connect(streamer.url, open_timeout=TIMEOUT))
        assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "metadata"
        assert all(r.status == 200 for r in readers)
        assert wait_until(lambda: len(streams(streamer)) == 3)
        publisher = JpegPublisher(streamer, jpegs, 30.0)
        parts: list[list[tuple[dict[str, str], bytes]]] = [[] for _ in readers]
        with running(publisher):
            # Each reader up to the last file published (and none after it: it would wait).
            while not all(got and got[-1][1] == jpegs[-1] for got in parts):
                for reader, got in zip(readers, parts):
                    if not got or got[-1][1] != jpegs[-1]:
                        got.append(reader.next_part())
            _, frames = receive_until(ws, jpegs[-1], TIMEOUT)
        assert frames and all(frame in index for frame in frames)
        counters = [(s.stats.fast_frames, s.stats.frames_sent) for s in streams(streamer)]
    for got in parts:
        numbers = [index[body] for _, body in got]  # byte for byte a published file
        assert numbers == sorted(set(numbers)), numbers
        assert len(numbers) >= FLOOR, len(numbers)
        for headers, body in got:
            assert headers["content-type"] == "image/jpeg"
            assert int(headers["content-length"]) == len(body)
            assert float(headers["x-timestamp"]) > 0
    if fast:
        assert all(f >= 0.8 * n for f, n in counters), counters
    else:
        assert all(f == 0 and n > 0 for f, n in counters), counters
    assert wait_until(lambda: streamer.stats()["client_count"] == 0)


def test_a_partial_fast_mjpeg_part_is_finished_before_the_next_one(streamer_factory) -> None:
    """Large noise frames into a small window: the fan-out's writes end part-way and the
    stream's own thread writes the rest, so every part still parses and is a whole JPEG."""
    rng = np.random.default_rng(4)
    jpegs = []
    for _ in range(3):
        image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        assert ok
        jpegs.append(data.tobytes())  # ~200 KB each
    streamer = streamer_factory("push", fps=20)
    with MjpegReader(streamer.port, rcvbuf=8192) as reader:
        assert reader.status == 200
        assert wait_until(lambda: len(streams(streamer)) == 1)
        stream = streams(streamer)[0]
        # A small send buffer on the server's side too: no 200 KB part fits at once.
        server_sock = stream._exchange._link.sock  # (the stream's socket has no public name)
        server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        publisher = JpegPublisher(streamer, jpegs * 200, 20.0)  # until stopped (30 s)
        bodies = []
        with running(publisher):
            deadline = time.monotonic() + 3 * TIMEOUT
            while not (len(bodies) >= 10 and stream.stats.fast_partial > 0):
                assert time.monotonic() < deadline, (len(bodies), stream.stats)
                bodies.append(reader.next_part()[1])
        partial, fast = stream.stats.fast_partial, stream.stats.fast_frames
    assert len(bodies) >= 10 and all(body in jpegs for body in bodies)
    assert fast > 0 and partial > 0, (fast, partial)
    assert wait_until(lambda: streamer.stats()["client_count"] == 0)


def test_an_mjpeg_reader_that_leaves_mid_part_leaves_the_server_serving(streamer_factory) -> None:
    """A reader that goes away while the fan-out's write is part-way: its place is freed, the
    server stops cleanly and other viewers keep their frames."""
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    streamer = streamer_factory("push", fps=30, send_timeout=2)
    publisher = Publisher(streamer, [image], 30.0)
    with running(publisher):
        for _ in range(5):
            reader = MjpegReader(streamer.port, rcvbuf=4096)
            assert reader.status == 200
            reader.next_part()
            reader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            reader.close()  # RST, most likely in the middle of a part
        assert wait_until(lambda: streamer.stats()["client_count"] == 0)
        with MjpegReader(streamer.port) as reader:
            bodies = [reader.next_part()[1] for _ in range(10)]
    assert all(body.startswith(b"\xff\xd8") and body.endswith(b"\xff\xd9") for body in bodies)


def test_the_fanout_encodes_only_the_default_and_the_most_used_variant() -> None:
    """Any other variant is left to its viewers' own threads (encoded there, in parallel):
    ``made`` neither encodes nor waits; once one thread made it, the fan-out takes it."""
    cache = EncodeCache(default_max_bytes=65535)
    default, popular, odd = Variant(max_bytes=65535), Variant(width=320), Variant(width=160)
    for variant in (default, popular, popular, odd):
        cache.assign(variant)
    image = np.full((480, 640, 3), 90, np.uint8)
    frame = Frame(1, image, 1.0, 1.0)
    round_ = FanOutRound()
    assert round_.encoded(cache, frame, odd) is None and cache.encodes == 0
    made = round_.encoded(cache, frame, popular)
    assert made is not None and made.width == 320 and cache.encodes == 1
    assert round_.encoded(cache, frame, default) is not None and cache.encodes == 2
    assert round_.encoded(cache, frame, default) is made or cache.encodes == 2  # asked once
    by_its_thread = cache.get(frame, odd)  # what the odd viewer's own thread does
    assert round_.encoded(cache, frame, odd) is by_its_thread and cache.encodes == 3


def test_a_viewer_of_its_own_size_is_served_after_the_others(streamer_factory) -> None:
    """One viewer asks for 160 wide, three take the default: the fan-out serves the three
    first; the small one's frame is encoded after them (the fan-out's second pass, or its own
    thread), every frame of it 160 wide."""
    streamer = streamer_factory("test", width=320, height=240, fps=30)
    plain = [Counter(streamer.url) for _ in range(3)]
    small = Counter(streamer.url + "?width=160", keep=True)
    with running(*plain, small):
        for viewer in (*plain, small):
            assert viewer.ready.wait(TIMEOUT) and viewer.error is None, viewer.error
        assert wait_until(lambda: len(sessions(streamer)) == 4)
        stats = [(s.settings.width, s.stats) for s in sessions(streamer)]  # live counters
        start = [len(v.arrivals) for v in plain]
        assert wait_until(lambda: all(len(v.arrivals) >= n + 30 for v, n in zip(plain, start)))
        # Served after the others, but served: about as many frames over the same time.
        assert len(small.arrivals) >= 30, len(small.arrivals)
        sent = {width: s.frames_sent for width, s in stats}
        assert sent[160] >= 0.8 * min(s.frames_sent for w, s in stats if w != 160) - 2, stats
    assert all(v.error is None for v in (*plain, small))
    assert all(decode_jpeg(f).shape[1] == 160 for f in small.frames)
    for width, s in stats:
        if width != 160:
            assert s.fast_frames >= 0.8 * s.frames_sent, s


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


def test_wss_viewers_take_the_fast_path_too(streamer_factory, cert: tuple[str, str]) -> None:
    """TLS viewers: the fan-out encrypts the message for each and writes the records without
    blocking; what arrives is the published files, in order, none twice."""
    jpegs = numbered_jpegs(PUBLISHED)
    index = {jpeg: i for i, jpeg in enumerate(jpegs)}
    streamer = streamer_factory("push", fps=30, certfile=cert[0], keyfile=cert[1])
    context = ssl.create_default_context(cafile=cert[0])
    url = f"wss://localhost:{streamer.port}/"
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(connect(url, ssl=context, open_timeout=TIMEOUT))
                   for _ in range(2)]
        for ws in clients:
            assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "metadata"
        with running(JpegPublisher(streamer, jpegs, 30.0)):
            received = [frames for _, frames in receive_together(clients, jpegs[-1])]
        counters = [(s.stats.fast_frames, s.stats.frames_sent) for s in sessions(streamer)]
    for frames in received:
        numbers = [index[frame] for frame in frames]
        assert numbers == sorted(set(numbers)) and len(numbers) >= FLOOR, numbers
    assert all(f >= 0.8 * n for f, n in counters), counters


class OfferedViewer:
    """A FastViewer that answers an offer as told and records the wakes."""

    def __init__(self, answer: bool | BaseException, held: float | None = None) -> None:
        self.answer, self.offers, self.wakes = answer, 0, 0
        self.held = held  # what held_until() says after a False

    def offer(self, frame: Frame, round_: FanOutRound) -> bool:
        self.offers += 1
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def wake(self) -> None:
        self.wakes += 1

    def held_until(self) -> float | None:
        return self.held


def test_fan_out_wakes_each_viewer_that_did_not_take_the_frame(caplog) -> None:
    """Unit, no sockets: a viewer that took the frame is left asleep; any other is woken (a
    closed one too: its thread sees it closed); a viewer that fails is logged, not fatal."""
    viewers = [
        OfferedViewer(True),
        OfferedViewer(False),
        OfferedViewer(ConnectionClosedError("gone")),
        OfferedViewer(RuntimeError("bug")),
        OfferedViewer(True),
    ]
    fan_out(Frame(1, np.zeros((8, 8, 3), np.uint8), 1.0, 1.0), viewers)
    assert [v.offers for v in viewers] == [1, 1, 1, 1, 1]
    assert [v.wakes for v in viewers] == [0, 1, 1, 1, 0]
    assert "fan-out to" in caplog.text and "RuntimeError: bug" in caplog.text


def test_fan_out_hands_a_held_viewer_to_its_retries_instead_of_waking_it() -> None:
    """Unit, no sockets: a viewer its controller held back goes to ``hold`` with the time it
    named, not woken; a viewer that is not held is woken; without ``hold`` both are woken."""
    frame = Frame(1, np.zeros((8, 8, 3), np.uint8), 1.0, 1.0)
    held, plain = OfferedViewer(False, held=12.5), OfferedViewer(False)
    holds: list[tuple[object, float]] = []
    fan_out(frame, [held, plain], None, lambda viewer, at: holds.append((viewer, at)))
    assert holds == [(held, 12.5)] and (held.wakes, plain.wakes) == (0, 1)
    fan_out(frame, [held, plain])
    assert (held.wakes, plain.wakes) == (1, 2)
    # The retry: sent, held again, or woken.
    sent = OfferedViewer(True)
    holds.clear()
    offer_again(frame, [sent, held, plain], lambda viewer, at: holds.append((viewer, at)))
    assert holds == [(held, 12.5)] and (sent.wakes, held.wakes, plain.wakes) == (0, 1, 3)


def test_retries_come_due_in_time_order_and_a_new_frame_clears_them() -> None:
    retries = Retries()
    assert retries.wait_s(0.0) is None and retries.due(100.0) == []
    first, second, third = OfferedViewer(False), OfferedViewer(False), OfferedViewer(False)
    retries.add(third, 3.0)
    retries.add(first, 1.0)
    retries.add(second, 1.0)
    assert retries.wait_s(0.25) == 0.75 and retries.wait_s(5.0) == 0.0
    assert retries.due(0.5) == []
    assert retries.due(1.0) == [first, second]
    assert retries.wait_s(2.0) == 1.0
    retries.clear()
    assert retries.wait_s(2.0) is None and retries.due(10.0) == []


class VanishingCamera:
    """What the fan-out reads of a camera: the newest frame (None once an on-demand camera
    went idle) and its rate."""

    fps = 30.0

    def __init__(self, frame: Frame | None) -> None:
        self.frame = frame

    def latest(self) -> Frame | None:
        return self.frame


def test_held_viewers_of_a_camera_gone_idle_do_not_spin_the_fanout() -> None:
    """A viewer held back (its retry pending) when the camera's newest frame goes away (an
    on-demand camera gone idle): the fan-out forgets the retry and sleeps, rather than
    looking again and again for a frame to offer."""
    camera = VanishingCamera(Frame(1, np.zeros((8, 8, 3), np.uint8), 1.0, time.monotonic()))
    held = OfferedViewer(False, held=time.monotonic() + 0.2)
    fanout = FanOut(camera, lambda: [held])  # type: ignore[arg-type]
    fanout.start()
    try:
        fanout.notify()
        assert wait_until(lambda: held.offers >= 1)
        camera.frame = None  # before the retry is due
        tid = fanout._thread.native_id
        used = cpu_seconds(os.getpid(), tid)
        assert not wait_until(lambda: cpu_seconds(os.getpid(), tid) - used > 0.15, 1.0)
        assert held.offers == 1 and held.wakes == 0
    finally:
        fanout.stop()
    assert not fanout._thread.is_alive()


def test_a_round_builds_each_kinds_wire_bytes_once_per_jpeg() -> None:
    """Unit, no sockets: the outputs' wire bytes (WebSocket message, MJPEG part) are made once
    per round and JPEG, whichever viewer asks first, and shared by the others."""
    built: list[str] = []

    def ws(encoded: EncodedFrame) -> bytes:
        built.append("ws")
        return b"ws" + encoded.data

    def mjpeg(encoded: EncodedFrame) -> bytes:
        built.append("mjpeg")
        return b"mjpeg" + encoded.data

    cache = EncodeCache()
    frame = Frame(1, np.full((48, 64, 3), 90, np.uint8), 1.0, 1.0)
    big, small = cache.get(frame, Variant()), cache.get(frame, Variant(width=32))
    round_ = FanOutRound()
    for _ in range(3):  # three viewers of each kind and size
        assert round_.wire(ws, big) == b"ws" + big.data
        assert round_.wire(mjpeg, big) == b"mjpeg" + big.data
        assert round_.wire(ws, small) == b"ws" + small.data
    assert round_.wire(ws, big) is round_.wire(ws, big)  # the same bytes, not a copy
    assert sorted(built) == ["mjpeg", "ws", "ws"]
    assert FanOutRound().wire(ws, big) == b"ws" + big.data and built.count("ws") == 3
