"""MJPEG files and HTTP MJPEG streams read with real OpenCV (FFmpeg) in raw mode.

The frames camstream stores must be the source's own JPEG files, byte for byte: for a file,
the file's packets (read back with a second raw-mode VideoCapture); for a relay of another
camstream's ``/stream.mjpg``, the bytes that camstream sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import websocket
from conftest import TIMEOUT, wait_until, write_video

from camstream import CameraState, CameraThread, Streamer


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_packets(path: Path) -> list[bytes]:
    """The file's own JPEG packets, read with FFmpeg in raw mode."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        assert capture.set(cv2.CAP_PROP_FORMAT, -1)
        packets = []
        while True:
            ok, packet = capture.read()
            if not ok:
                return packets
            packets.append(packet.tobytes())
    finally:
        capture.release()


class FrameLog:
    """Every frame a camera stores, from its frame listener (nothing skipped)."""

    def __init__(self, camera: CameraThread) -> None:
        self.frames: list = []
        self._lock = threading.Lock()
        camera.add_frame_listener(self._add)

    def _add(self, frame: object) -> None:
        with self._lock:
            self.frames.append(frame)

    def count(self) -> int:
        with self._lock:
            return len(self.frames)


def test_mjpeg_file_frames_are_the_files_own_jpegs(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", frames=12, size=(160, 120), fps=50)
    reference = file_packets(path)
    assert len(reference) == 12
    camera = CameraThread(str(path), loop=False)
    log = FrameLog(camera)
    with camera:
        assert camera.jpeg_passthrough and camera.pixel_format == "MJPG"
        assert camera.backend == "FFMPEG"
        assert wait_until(lambda: camera.state is CameraState.ENDED)
    assert [sha(f.jpeg) for f in log.frames] == [sha(p) for p in reference]
    assert not any(f.is_decoded for f in log.frames) and camera.decodes == 0


def test_file_that_must_be_scaled_or_is_not_mjpeg_is_decoded(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", frames=4, size=(160, 120), fps=50)
    with CameraThread(str(path), width=80) as camera:  # one side: keeps 4:3
        frame = camera.wait_for_frame(0, TIMEOUT)
        assert frame is not None and frame.jpeg is None
        assert (frame.width, frame.height) == (80, 60)
        assert not camera.jpeg_passthrough
    other = tmp_path / "clip-ffv1.avi"
    writer = cv2.VideoWriter(str(other), cv2.VideoWriter_fourcc(*"FFV1"), 20, (64, 48))
    assert writer.isOpened(), "OpenCV's FFmpeg cannot write FFV1 here"
    for i in range(3):
        writer.write(np.full((48, 64, 3), i * 40, np.uint8))
    writer.release()
    with CameraThread(str(other)) as camera:
        frame = camera.wait_for_frame(0, TIMEOUT)
        assert frame is not None and frame.jpeg is None and frame.image.shape == (48, 64, 3)
        assert camera.pixel_format.upper() == "FFV1" and not camera.jpeg_passthrough


class MjpegReader(threading.Thread):
    """Reads a camstream's /stream.mjpg over plain HTTP and keeps the hash of every part."""

    def __init__(self, port: int) -> None:
        super().__init__(name="camstream-test-mjpeg-reader", daemon=True)
        self.port = port
        self.hashes: set[str] = set()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            connection.request("GET", "/stream.mjpg")
            response = connection.getresponse()
            while not self.stop_event.is_set():
                length = None
                while True:  # part headers
                    line = response.fp.readline(1024)
                    if not line:
                        return
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                    if line == b"\r\n" and length is not None:
                        break
                self.hashes.add(sha(response.fp.read(length)))
        except (OSError, http.client.HTTPException) as exc:
            if not self.stop_event.is_set():
                self.error = exc
        finally:
            connection.close()


def publish_loop(origin: Streamer, stop: threading.Event) -> None:
    i = 0
    while not stop.wait(0.04):
        image = np.zeros((120, 160, 3), np.uint8)
        image[:, : (i * 7) % 160] = (30, 120, 200)
        cv2.putText(image, str(i), (10, 60), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        origin.publish(image)
        i += 1


@contextlib.contextmanager
def publishing_origin(streamer_factory: Any) -> Iterator[tuple[Streamer, MjpegReader]]:
    """A push-mode camstream fed by :func:`publish_loop`, and a reader of its /stream.mjpg.

    Yields once the reader has seen two parts; on exit the publisher, the origin and the reader
    are stopped and joined (checked), and the reader must not have failed.
    """
    origin = streamer_factory("push")
    stop = threading.Event()
    publisher = threading.Thread(target=publish_loop, args=(origin, stop),
                                 name="camstream-test-publisher")
    publisher.start()
    reader = MjpegReader(origin.port)
    reader.start()
    try:
        assert wait_until(lambda: len(reader.hashes) >= 2)
        yield origin, reader
    finally:
        stop.set()
        publisher.join(TIMEOUT)
        assert not publisher.is_alive(), "publisher did not finish"
        reader.stop_event.set()
        origin.stop()
        reader.join(TIMEOUT)
        assert not reader.is_alive(), "reader did not finish"
    assert reader.error is None, reader.error


def test_relay_of_camstream_stores_the_origins_jpegs_untouched(streamer_factory) -> None:
    with publishing_origin(streamer_factory) as (origin, reader):
        relay = CameraThread(f"http://127.0.0.1:{origin.port}/stream.mjpg")
        log = FrameLog(relay)
        with relay:
            assert relay.jpeg_passthrough and relay.pixel_format == "MJPG"
            assert wait_until(lambda: log.count() >= 15)
        relayed = [f for f in log.frames]
        # The reader may be a part or two behind the relay.
        wait_until(lambda: all(sha(f.jpeg) in reader.hashes for f in relayed))
    missing = [f.seq for f in relayed if sha(f.jpeg) not in reader.hashes]
    assert not missing, f"relayed frames that the origin never sent: {missing}"
    assert not any(f.is_decoded for f in relayed) and relay.decodes == 0


def test_relay_viewers_get_the_origins_bytes_untouched(streamer_factory) -> None:
    """origin camstream -> relay camstream -> WebSocket viewer: no decode, no encode on the way."""
    with publishing_origin(streamer_factory) as (origin, reader):
        relay = streamer_factory(f"http://127.0.0.1:{origin.port}/stream.mjpg")
        ws = websocket.create_connection(f"{relay.url}?max_bytes=0", timeout=TIMEOUT)
        try:
            received: list[bytes] = []
            while len(received) < 10:
                message = ws.recv()
                if isinstance(message, bytes):
                    received.append(message)
        finally:
            ws.close()
        stats = relay.stats()
        wait_until(lambda: all(sha(m) in reader.hashes for m in received))
    assert [sha(m) in reader.hashes for m in received] == [True] * len(received)
    assert stats["camera"]["jpeg_passthrough"] is True
    assert stats["encodes"] == 0 and stats["decodes"] == 0, stats


def test_relay_reports_upstream_loss_and_recovers_without_restart(streamer_factory) -> None:
    first = streamer_factory("test", width=160, height=120, fps=20)
    port = first.port
    relay = streamer_factory(f"http://127.0.0.1:{port}/stream.mjpg")
    ws = websocket.create_connection(relay.url, timeout=TIMEOUT)
    try:
        assert json.loads(ws.recv())["type"] == "metadata"

        def next_event(kind: str) -> dict:
            deadline = time.monotonic() + 2 * TIMEOUT
            while time.monotonic() < deadline:
                message = ws.recv()
                if isinstance(message, str) and json.loads(message)["type"] == kind:
                    return json.loads(message)
            raise AssertionError(f"no {kind} event")

        def next_frame() -> bytes:
            deadline = time.monotonic() + 2 * TIMEOUT
            while time.monotonic() < deadline:
                message = ws.recv()
                if isinstance(message, bytes):
                    return message
            raise AssertionError("no frame")

        assert next_frame()[:2] == b"\xff\xd8"
        first.stop()
        lost = next_event("camera_lost")
        assert lost["source"].startswith("url http://127.0.0.1") and lost["reason"]
        assert relay.stats()["camera"]["state"] == "lost"
        second = Streamer("test", port=port, width=160, height=120, fps=20).start()
        try:
            next_event("camera_restored")
            assert next_frame()[:2] == b"\xff\xd8"
            assert relay.stats()["camera"]["state"] == "streaming"
        finally:
            second.stop()
    finally:
        ws.close()
