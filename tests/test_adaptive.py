"""Adaptive delivery (issue 18) end to end: real servers, real viewers, real shaped links.

The first part runs on loopback: the ``adapt`` setting (query, ``config``, MJPEG), the adaptive
fields every ``metadata`` carries, ``stats()``, and a fast viewer that never leaves the top rung.

The second part puts viewers behind real slow links (``tests/netns.py``: a network namespace, a
veth pair and ``tc tbf`` on the server's side per viewer), each a real WebSocket client
(websocket-client) or a raw-socket MJPEG reader in its own process inside its namespace, which
logs every message it receives. The tests assert behaviour, not figures (those are in
``benchmarks/adaptive.py``): every frame whole and in order, a ``metadata`` announcing each new
size before its first frame, rung changes in the right direction, a fast viewer's bytes the
camera's own, encodes bounded by the rungs in use, adaptation off unchanged.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import TIMEOUT, wait_until
from helpers import MjpegReader, get, next_text, receive_for
from netns import Lane, SlowLinks, shaped_links
from test_link_estimate import JpegPublisher
from websockets.sync.client import connect

from camstream import Streamer
from camstream.capture.testpattern import TestPattern
from camstream.client import Client
from camstream.delivery.ladder import build_ladder
from camstream.delivery.variant import Variant
from camstream.ws.tcpinfo import TCP_INFO_SUPPORTED

ADAPT_FIELDS = ("adapt", "rung", "rungs", "link_kbps", "rtt_ms", "adapt_reason")
linux_only = pytest.mark.skipif(not TCP_INFO_SUPPORTED, reason="TCP_INFO is Linux's")


def webcam_jpegs(width: int, height: int, quality: int, count: int = 12) -> list[bytes]:
    """JPEGs of the moving test card with a little sensor noise (webcam-like sizes)."""
    pattern = TestPattern(width, height)
    noise = np.random.default_rng(7).integers(0, 13, (height, width, 3), dtype=np.uint8)
    return [
        cv2.imencode(".jpg", cv2.add(pattern.render(i, 30), noise),
                     [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def jpegs_720p() -> list[bytes]:
    return webcam_jpegs(1280, 720, 89)  # ~120 KB each: 8 Mbit/s carries a fifth of them


@pytest.fixture(scope="module")
def jpegs_360p() -> list[bytes]:
    return webcam_jpegs(640, 360, 85)  # ~25 KB each: 20 Mbit/s carries all of them


@contextlib.contextmanager
def serving(host: str, jpegs: list[bytes], **options: Any) -> Iterator[Streamer]:
    """A ``Streamer("push")`` on ``host`` fed ``jpegs`` in turn at 30 fps; all stopped after."""
    streamer = Streamer("push", host=host, port=0, fps=30, max_bytes=0, **options)
    streamer.start()
    publisher = JpegPublisher(streamer, jpegs)
    publisher.start()
    try:
        yield streamer
    finally:
        publisher.stop.set()
        publisher.join(TIMEOUT)
        streamer.stop()


# Loopback: the setting, the fields, the fast path


def test_metadata_always_carries_the_adaptive_fields(jpegs_360p: list[bytes]) -> None:
    with serving("127.0.0.1", jpegs_360p) as streamer:
        with connect(streamer.url, open_timeout=TIMEOUT) as ws:
            first = next_text(ws, "metadata")
            assert {k: first[k] for k in ("adapt", "rung", "adapt_reason")} == {
                "adapt": True, "rung": 0, "adapt_reason": None}
            assert set(ADAPT_FIELDS) <= first.keys() and first["rungs"] >= 1
            ws.send(json.dumps({"type": "config", "adapt": False}))
            off = next_text(ws, "metadata")
            assert (off["adapt"], off["rung"], off["rungs"], off["link_kbps"]) == (
                False, 0, 1, None)
            ws.send(json.dumps({"type": "config", "adapt": True}))
            assert next_text(ws, "metadata")["adapt"] is True
        with connect(streamer.url + "?adapt=off", open_timeout=TIMEOUT) as ws:
            assert next_text(ws, "metadata")["adapt"] is False
        with connect(streamer.url + "?adapt=maybe", open_timeout=TIMEOUT) as ws:
            assert next_text(ws, "metadata")["adapt"] is True  # the default stays
            error = next_text(ws, "error")
            assert "adapt" in error["message"] and "true or false" in error["message"]
        response = get(streamer.port, "/stream.mjpg?adapt=maybe")
        assert response.status == 400 and b"adapt" in response.body
        # The Python client: its adapt option, the state in its metadata.
        for adapt, expected in ((None, True), (False, False), (True, True)):
            with Client(streamer.url, adapt=adapt, timeout=TIMEOUT) as client:
                frame = next(iter(client))
                assert frame.metadata["adapt"] is expected and frame.metadata["rung"] == 0


@linux_only
def test_a_fast_viewer_stays_on_the_top_rung_untouched(jpegs_720p: list[bytes]) -> None:
    """On loopback nothing queues: the top rung all along, the camera's own bytes, no encode
    and no decode; ``stats()`` shows the viewer's rung and its link (looked at now and then)."""
    published = set(jpegs_720p)
    with serving("127.0.0.1", jpegs_720p) as streamer:
        mjpeg = MjpegReader(streamer.port)
        parts: list[bytes] = []
        reading = threading.Thread(
            target=lambda: parts.extend(mjpeg.next_part()[1] for _ in range(45)),
            name="test-mjpeg-reader",
        )
        try:
            with connect(streamer.url, open_timeout=TIMEOUT, max_size=None) as ws:
                reading.start()
                texts, frames = receive_for(ws, 2.0)
                reading.join(3 * TIMEOUT)
                stats = streamer.stats()
        finally:
            mjpeg.close()
    assert len(frames) >= 30 and all(frame in published for frame in frames)
    assert len(parts) == 45 and all(part in published for part in parts)
    assert [t["rung"] for t in texts if t["type"] == "metadata"] == [0]  # nothing changed
    assert stats["encodes"] == 0 and stats["decodes"] == 0
    client = stats["clients"][0]
    assert (client["adapt"], client["rung"]) == (True, 0)
    assert client["link_kbps"] is not None and client["link_kbps"] > 50_000
    assert client["rtt_ms"] is not None and client["rtt_ms"] < 50
    stream = stats["http"]["mjpeg_streams"][0]
    assert (stream["adapt"], stream["rung"]) == (True, 0)


# Shaped links: the viewers


VIEWER = r"""
import json, ssl, sys, threading
import websocket

def sof(data):
    i = 2
    while i + 9 < len(data) and data[i] == 0xFF:
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            size = data[i + 5:i + 9]
            return int.from_bytes(size[2:], "big"), int.from_bytes(size[:2], "big")
        i += 2 + length
    return None, None

url = sys.argv[1]
ws = websocket.create_connection(url, timeout=30, sslopt={"cert_reqs": ssl.CERT_NONE})
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
ws.settimeout(0.2)
log = []
print("CONNECTED", flush=True)
while not stop.is_set():
    try:
        opcode, data = ws.recv_data()
    except websocket.WebSocketTimeoutException:
        continue
    except Exception:
        break
    if opcode == 1:
        message = json.loads(data)
        if message.get("type") in ("metadata", "frame"):
            log.append(["t", message])
    elif opcode == 2:
        w, h = sof(data)
        whole = data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
        log.append(["b", len(data), __import__("hashlib").sha1(data).hexdigest(), w, h, whole])
print(json.dumps(log), flush=True)
"""

MJPEG_VIEWER = r"""
import hashlib, json, socket, sys, threading
host, port, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.create_connection((host, port), timeout=30)
sock.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host)).encode())
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
reader = sock.makefile("rb")
print("CONNECTED", flush=True)
log = []
assert reader.readline().split()[1] == b"200"
while reader.readline() not in (b"\r\n", b""):
    pass
while not stop.is_set():
    boundary = reader.readline()
    if not boundary:
        break
    headers = {}
    while True:
        line = reader.readline()
        if line in (b"\r\n", b""):
            break
        key, _, value = line.decode().partition(":")
        headers[key.strip().lower()] = value.strip()
    data = reader.read(int(headers["content-length"]))
    reader.readline()
    whole = data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    log.append(["b", len(data), hashlib.sha1(data).hexdigest(), None, None, whole])
print(json.dumps(log), flush=True)
"""


class Viewer:
    """One viewer process (in a lane's namespace, or on the host); :meth:`finish` stops it
    and returns its log."""

    def __init__(self, lane: Lane | None, argv: list[str]) -> None:
        kwargs: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE,
                                  "text": True}
        self.lane = lane
        self.process = (
            lane.popen(argv, **kwargs) if lane is not None else subprocess.Popen(argv, **kwargs)
        )
        self.log: list[list[Any]] = []

    @classmethod
    def websocket(cls, lane: Lane | None, url: str) -> Viewer:
        return cls(lane, [sys.executable, "-c", VIEWER, url])

    @classmethod
    def mjpeg(cls, lane: Lane, host: str, port: int, target: str) -> Viewer:
        return cls(lane, [sys.executable, "-c", MJPEG_VIEWER, host, str(port), target])

    def wait_connected(self) -> None:
        assert self.process.stdout is not None
        line = read_line(self.process, 3 * TIMEOUT)
        assert line.startswith("CONNECTED"), line

    def finish(self) -> list[list[Any]]:
        out, _ = self.process.communicate("stop\n", timeout=3 * TIMEOUT)
        self.log = json.loads(out.strip().splitlines()[-1])
        return self.log

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=TIMEOUT)

    @property
    def binaries(self) -> list[list[Any]]:
        return [entry for entry in self.log if entry[0] == "b"]

    @property
    def metadata(self) -> list[dict[str, Any]]:
        return [e[1] for e in self.log if e[0] == "t" and e[1]["type"] == "metadata"]


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()),  # type: ignore[union-attr]
                              name="test-read-line")
    reader.start()
    reader.join(timeout)
    if not box:
        process.kill()
        reader.join(TIMEOUT)
        raise AssertionError("the viewer said nothing in time")
    return box[0]


@contextlib.contextmanager
def viewers_running(viewers: list[Viewer]) -> Iterator[list[Viewer]]:
    try:
        for viewer in viewers:
            viewer.wait_connected()
        yield viewers
    finally:
        for viewer in viewers:
            viewer.kill()


def check_stream(viewer: Viewer, *, frame_info: bool = True) -> list[tuple[int, int]]:
    """Every frame whole, in order, and the size of the ``metadata`` before it; returns the
    sizes of the frames in order."""
    announced: tuple[int, int] | None = None
    last_seq, sizes, pending_info = 0, [], None
    for kind, *rest in viewer.log:
        if kind == "t":
            message = rest[0]
            if message["type"] == "metadata":
                assert set(ADAPT_FIELDS) <= message.keys(), message
                announced = (message["width"], message["height"])
            else:
                pending_info = message
            continue
        _, _, width, height, whole = rest
        assert whole, "a frame was cut"
        assert (width, height) == announced, (width, height, announced)
        if frame_info:
            assert pending_info is not None and pending_info["bytes"] == rest[0]
            assert pending_info["seq"] > last_seq, (pending_info["seq"], last_seq)
            last_seq, pending_info = pending_info["seq"], None
        sizes.append((width, height))
    return sizes


def client_of(streamer: Streamer, address: str) -> dict[str, Any]:
    return next(c for c in streamer.stats()["clients"] if c["address"] == address)


def frames_to(streamer: Streamer, address: str) -> int:
    return next(
        (c["frames_sent"] for c in streamer.stats()["clients"] if c["address"] == address), 0
    )


def typical_width(sizes: list[tuple[int, int]]) -> int:
    """The width most of the last 30 frames had."""
    return collections.Counter(w for w, _ in sizes[-30:]).most_common(1)[0][0]


def sha(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


@pytest.fixture
def slow_links() -> Iterator[SlowLinks]:
    with shaped_links() as links:
        yield links


# Shaped links: the tests


@linux_only
def test_each_link_rate_gets_the_rung_it_carries(
    slow_links: SlowLinks, jpegs_720p: list[bytes]
) -> None:
    """1, 2, 4 and 8 Mbit/s (720p frames of ~120 KB at 30 fps need ~30): each viewer steps
    down at once, by its backlog or the link's rate, to a rung its link carries, the slower
    links to the smaller pictures; every frame whole, in order, announced; the rungs encoded
    once each. Next to them a viewer with adaptation off gets the camera's bytes as before
    (frames skipped), and an unshaped one the camera's bytes at full rate; an MJPEG viewer on a
    slow link adapts too."""
    host = slow_links.host_address
    rates = (1.0, 2.0, 4.0, 8.0)
    lanes = {rate: slow_links.lane(rate) for rate in rates}
    off_lane, mjpeg_lane = slow_links.lane(2.0), slow_links.lane(2.0)
    published = {sha(j) for j in jpegs_720p}
    with serving(host, jpegs_720p) as streamer:
        url = f"ws://{host}:{streamer.port}/?max_bytes=0&frame_info=1"
        adaptive = {rate: Viewer.websocket(lane, url) for rate, lane in lanes.items()}
        off = Viewer.websocket(off_lane, url + "&adapt=off")
        unshaped = Viewer.websocket(None, url)
        mjpeg = Viewer.mjpeg(mjpeg_lane, host, streamer.port, "/stream.mjpg")
        with viewers_running([*adaptive.values(), off, unshaped, mjpeg]):
            addresses = [lane.address for lane in lanes.values()]
            assert wait_until(
                lambda: all(frames_to(streamer, a) >= 90 for a in addresses), 4 * TIMEOUT
            ), streamer.stats()["clients"]
            stats = streamer.stats()
            for viewer in (*adaptive.values(), off, unshaped, mjpeg):
                viewer.finish()
            cache = streamer._camera_named(None).cache
            encoded = set(cache.encodes_by_variant)
    widths = []
    for rate, viewer in adaptive.items():
        sizes = check_stream(viewer)
        changes = [(m["rung"], m["adapt_reason"]) for m in viewer.metadata[1:]]
        assert changes and changes[0][0] > 0 and changes[0][1] in ("backlog", "link"), changes
        assert typical_width(sizes) < 1280, (rate, sizes[-30:])
        assert client_of_stats(stats, lanes[rate].address)["rung"] > 0
        widths.append(typical_width(sizes))
    assert widths == sorted(widths), widths  # the slower the link, the smaller the picture
    # Adaptation off: one metadata, the camera's own bytes, frames skipped as before.
    check_stream(off)
    assert [m["adapt"] for m in off.metadata] == [False]
    assert all(b[2] in published for b in off.binaries)
    assert client_of_stats(stats, off_lane.address)["frames_skipped"] > 0
    # Unshaped: the top rung all along, the camera's bytes untouched.
    check_stream(unshaped)
    assert [m["rung"] for m in unshaped.metadata] == [0]
    assert len(unshaped.binaries) >= 90 and all(b[2] in published for b in unshaped.binaries)
    # MJPEG on a slow link: whole parts, smaller than the camera's once adapted.
    assert mjpeg.binaries and all(b[5] for b in mjpeg.binaries)
    assert any(b[2] not in published for b in mjpeg.binaries)
    stream = stats["http"]["mjpeg_streams"][0]
    assert stream["adapt"] is True and stream["rung"] > 0 and stream["width"] is not None
    # Encodes: only rungs of the one ladder (at most 4 below the top), each once per frame.
    assert_encodes_bounded(stats, encoded, Variant(), 1280, 720)


def client_of_stats(stats: dict[str, Any], address: str) -> dict[str, Any]:
    return next(c for c in stats["clients"] if c["address"] == address)


def assert_encodes_bounded(
    stats: dict[str, Any], encoded: set[Variant], top: Variant, width: int, height: int
) -> None:
    ladder = build_ladder(top, width, height, default_quality=80)
    rungs = {(r.variant.width, r.variant.quality) for r in ladder.rungs[1:]}
    assert {(v.width, v.quality) for v in encoded} <= rungs, (encoded, rungs)
    assert len(encoded) <= 4
    assert stats["encodes"] <= len(encoded) * stats["frames_captured"]
    # Each frame decoded once (at the scale its rungs need), or twice when a larger rung first
    # asked for a frame decoded small (camstream.delivery.decodesize: then whole for a while).
    assert stats["decodes"] <= 1.25 * stats["frames_captured"]


@linux_only
def test_a_link_that_drops_and_clears_steps_down_and_back(
    slow_links: SlowLinks, jpegs_360p: list[bytes]
) -> None:
    """20 Mbit/s carries the top rung (640x360 at 30 fps); at 2 Mbit/s the viewer steps down
    at once (backlog or link), and once the link clears it climbs back, by probes, to the top.
    A viewer that asks for 5 fps on 4 Mbit/s keeps the full picture, untouched."""
    host = slow_links.host_address
    lane, slow_rate = slow_links.lane(20.0), slow_links.lane(4.0)
    published = {sha(j) for j in jpegs_360p}
    with serving(host, jpegs_360p) as streamer:
        url = f"ws://{host}:{streamer.port}/?max_bytes=0&frame_info=1"
        viewer = Viewer.websocket(lane, url)
        five = Viewer.websocket(slow_rate, url + "&fps=5")
        with viewers_running([viewer, five]):
            def rung() -> int:
                return int(client_of(streamer, lane.address)["rung"])

            assert wait_until(lambda: frames_to(streamer, lane.address) >= 30, 3 * TIMEOUT)
            assert wait_until(lambda: rung() == 0, 2 * TIMEOUT)
            lane.set_rate(2.0)
            assert wait_until(lambda: rung() > 0, TIMEOUT)
            dropped = frames_to(streamer, lane.address)
            assert wait_until(lambda: frames_to(streamer, lane.address) >= dropped + 30,
                              2 * TIMEOUT)
            lane.set_rate(20.0)
            assert wait_until(lambda: rung() == 0, 3 * TIMEOUT)
            viewer.finish()
            five.finish()
    sizes = check_stream(viewer)
    assert (640, 360) in sizes and any(w < 640 for w, _ in sizes)
    changes = [(m["rung"], m["adapt_reason"]) for m in viewer.metadata]
    down = next(i for i, (r, _) in enumerate(changes) if r > 0)
    assert changes[down][1] in ("backlog", "link"), changes
    assert changes[-1] == (0, "probe"), changes  # back on the top by probing up
    ups = [(a, b) for a, b in zip(changes, changes[1:]) if b[0] < a[0]]
    assert ups and all(reason == "probe" for (_, _), (_, reason) in ups), changes
    # 5 fps on 4 Mbit/s: the top rung, the camera's bytes, all along.
    check_stream(five)
    assert [m["rung"] for m in five.metadata] == [0]
    assert five.binaries and all(b[2] in published for b in five.binaries)


@linux_only
def test_twenty_viewers_on_four_rates_next_to_unshaped_ones(
    slow_links: SlowLinks, jpegs_720p: list[bytes]
) -> None:
    """Five viewers at each of 1, 2, 4 and 8 Mbit/s and three unshaped ones at once: each
    shaped one adapts, the unshaped ones get the camera's bytes untouched on the top rung, and
    the encodes stay within one per frame for each rung in use (at most four)."""
    host = slow_links.host_address
    lanes = [slow_links.lane(rate) for rate in (1.0, 2.0, 4.0, 8.0) for _ in range(5)]
    published = {sha(j) for j in jpegs_720p}
    with serving(host, jpegs_720p) as streamer:
        url = f"ws://{host}:{streamer.port}/?max_bytes=0&frame_info=1"
        shaped = [Viewer.websocket(lane, url) for lane in lanes]
        unshaped = [Viewer.websocket(None, url) for _ in range(3)]
        with viewers_running([*shaped, *unshaped]):
            addresses = [lane.address for lane in lanes]
            assert wait_until(
                lambda: all(frames_to(streamer, a) >= 60 for a in addresses), 6 * TIMEOUT
            ), streamer.stats()["clients"]
            stats = streamer.stats()
            for viewer in (*shaped, *unshaped):
                viewer.finish()
            encoded = set(streamer._camera_named(None).cache.encodes_by_variant)
    for viewer in shaped:
        sizes = check_stream(viewer)
        assert typical_width(sizes) < 1280
    for viewer in unshaped:
        check_stream(viewer)
        assert [m["rung"] for m in viewer.metadata] == [0]
        assert all(b[2] in published for b in viewer.binaries)
    assert_encodes_bounded(stats, encoded, Variant(), 1280, 720)


@linux_only
def test_a_wss_viewer_adapts_on_a_slow_link(
    slow_links: SlowLinks, jpegs_720p: list[bytes], tmp_path: Any
) -> None:
    """TLS: the link estimate reads the plain socket under it, and ciphertext the channel
    holds counts as unsent: a viewer at 2 Mbit/s steps down, every frame whole."""
    from test_transport_tls import self_signed_cert

    cert, key = self_signed_cert(tmp_path)
    host = slow_links.host_address
    lane = slow_links.lane(2.0)
    with serving(host, jpegs_720p, certfile=cert, keyfile=key) as streamer:
        viewer = Viewer.websocket(lane, f"wss://{host}:{streamer.port}/?max_bytes=0&frame_info=1")
        with viewers_running([viewer]):
            assert wait_until(lambda: frames_to(streamer, lane.address) >= 45, 3 * TIMEOUT)
            assert client_of(streamer, lane.address)["rung"] > 0
            viewer.finish()
    sizes = check_stream(viewer)
    assert typical_width(sizes) < 1280
