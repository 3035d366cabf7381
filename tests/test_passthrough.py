"""JPEG passthrough: the source's own JPEG files reach native viewers untouched.

Real JPEGs (``cv2.imencode``) go in with ``publish_jpeg``; real clients (``websockets``,
``websocket-client``, a raw-socket MJPEG reader) read them back and compare hashes, while the
server's counters show how many decodes and encodes were spent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from typing import Any, Iterator

import cv2
import numpy as np
import pytest
import websocket  # websocket-client
from conftest import TIMEOUT, wait_until
from helpers import MjpegReader, decode_jpeg, get
from websockets.sync.client import connect

from camstream import Streamer
from camstream.delivery.encoder import encode_jpeg


def webcam_like_jpeg(index: int, size: tuple[int, int] = (640, 480), quality: int = 85) -> bytes:
    """A JPEG such as a webcam makes: a smooth scene, some texture, a frame number."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = (x * 255 // width + index * 7) % 256
    image[..., 1] = (y * 255 // height) % 256
    image[..., 2] = ((x + y + index * 11) // 4) % 256
    noise = np.random.default_rng(index).integers(0, 24, image.shape, dtype=np.uint8)
    image = cv2.add(image, noise)
    cv2.putText(image, f"frame {index}", (20, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 2,
                (255, 255, 255), 3)
    return encode_jpeg(image, quality)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Viewer:
    """A ``websockets`` client that keeps the last metadata and reads frames one by one."""

    def __init__(self, streamer: Streamer, query: str = "") -> None:
        self._connection = connect(streamer.url + query, open_timeout=TIMEOUT)
        self.ws = self._connection.__enter__()
        self.metadata: dict[str, Any] = {}
        self.texts: list[dict[str, Any]] = []

    def next_frame(self) -> bytes:
        while True:
            message = self.ws.recv(timeout=TIMEOUT)
            if isinstance(message, bytes):
                return message
            parsed = json.loads(message)
            self.texts.append(parsed)
            if parsed["type"] == "metadata":
                self.metadata = parsed

    def next_text(self, kind: str) -> dict[str, Any]:
        while True:
            message = self.ws.recv(timeout=TIMEOUT)
            if isinstance(message, str) and (parsed := json.loads(message))["type"] == kind:
                if kind == "metadata":
                    self.metadata = parsed
                return parsed

    def close(self) -> None:
        self._connection.__exit__(None, None, None)

    def __enter__(self) -> Viewer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def publishing(streamer: Streamer, frames: list[bytes]) -> Iterator[None]:
    """Publish ``frames`` round and round at about 30 fps until the block ends."""
    stop = threading.Event()

    def run() -> None:
        i = 0
        while not stop.wait(1 / 30):
            streamer.publish_jpeg(frames[i % len(frames)])
            i += 1

    thread = threading.Thread(target=run, name="test-publisher")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(TIMEOUT)
    assert not thread.is_alive()


def push_streamer(streamer_factory, **kwargs: Any) -> Streamer:
    return streamer_factory("push", fps=30, **kwargs)


def test_native_viewers_get_the_published_bytes_with_no_decode_and_no_encode(
    streamer_factory,
) -> None:
    streamer = push_streamer(streamer_factory)
    sources = [webcam_like_jpeg(i) for i in range(12)]
    with (
        Viewer(streamer) as viewer,
        Viewer(streamer, "?max_bytes=4000000") as roomy,
        MjpegReader(streamer.port) as mjpeg,
    ):
        other = websocket.create_connection(streamer.url, timeout=TIMEOUT)
        try:
            assert json.loads(other.recv())["type"] == "metadata"
            assert wait_until(lambda: streamer.client_count == 3)
            for jpeg in sources:
                streamer.publish_jpeg(jpeg)
                assert digest(viewer.next_frame()) == digest(jpeg)
                assert digest(roomy.next_frame()) == digest(jpeg)
                assert digest(mjpeg.next_part()[1]) == digest(jpeg)
                while isinstance(got := other.recv(), str):  # metadata, once the size is known
                    assert json.loads(got)["type"] == "metadata"
                assert digest(got) == digest(jpeg)
        finally:
            other.close()
        for meta in (viewer.metadata, roomy.metadata):
            assert (meta["width"], meta["height"], meta["format"]) == (640, 480, "MJPEG")
            assert meta["quality"] is None
        stats = streamer.stats()
    assert (stats["encodes"], stats["decodes"]) == (0, 0)
    assert (stats["encodes_per_s"], stats["decodes_per_s"]) == (0, 0)
    assert stats["frames_captured"] == len(sources)


def test_a_smaller_viewer_costs_one_decode_and_one_encode_per_frame_while_it_stays(
    streamer_factory,
) -> None:
    streamer = push_streamer(streamer_factory)
    with Viewer(streamer) as native:
        assert wait_until(lambda: streamer.client_count == 1)
        for i in range(3):
            streamer.publish_jpeg(jpeg := webcam_like_jpeg(i))
            assert native.next_frame() == jpeg
        assert (streamer.camera.decodes, streamer.stats()["encodes"]) == (0, 0)

        with Viewer(streamer, "?width=320") as small, Viewer(streamer, "?width=320") as small2:
            # Each starts with the frame that is there when it joins, frame 2.
            assert decode_jpeg(small.next_frame()).shape == decode_jpeg(small2.next_frame()).shape
            for i in range(3, 9):
                streamer.publish_jpeg(jpeg := webcam_like_jpeg(i))
                assert native.next_frame() == jpeg
                assert decode_jpeg(small.next_frame()).shape == (240, 320, 3)
                assert decode_jpeg(small2.next_frame()).shape == (240, 320, 3)
            assert small.metadata["width"] == 320 and small.metadata["quality"] == 80
            assert native.metadata["quality"] is None
        # One decode and one encode per frame (2 to 8), however many small viewers.
        assert (streamer.camera.decodes, streamer.stats()["encodes"]) == (7, 7)

        assert wait_until(lambda: streamer.client_count == 1)
        for i in range(9, 14):
            streamer.publish_jpeg(jpeg := webcam_like_jpeg(i))
            assert native.next_frame() == jpeg
        assert (streamer.camera.decodes, streamer.stats()["encodes"]) == (7, 7)


def test_a_byte_limit_the_frame_breaks_gets_reencoded_frames_under_it(streamer_factory) -> None:
    streamer = push_streamer(streamer_factory)
    big = webcam_like_jpeg(1, (1280, 720), quality=95)
    small = webcam_like_jpeg(2, (1280, 720), quality=30)
    limit = 40_000
    assert len(small) < limit < len(big)
    with Viewer(streamer, f"?max_bytes={limit}") as viewer:
        assert wait_until(lambda: streamer.client_count == 1)
        for _ in range(3):
            streamer.publish_jpeg(big)
            frame = viewer.next_frame()
            assert len(frame) <= limit and frame != big
            decode_jpeg(frame)  # a whole JPEG that decodes
            assert viewer.metadata["quality"] == 80 and viewer.metadata["max_bytes"] == limit
        # A frame that fits goes through untouched, and the metadata says so.
        streamer.publish_jpeg(small)
        assert viewer.next_frame() == small
        assert viewer.metadata["quality"] is None
        streamer.publish_jpeg(big)
        assert len(viewer.next_frame()) <= limit
        assert viewer.metadata["quality"] == 80
    assert streamer.camera.decodes == 4


def test_quality_chosen_by_the_client_reencodes_and_null_goes_back_to_the_source(
    streamer_factory,
) -> None:
    streamer = push_streamer(streamer_factory)
    streamer.publish_jpeg(webcam_like_jpeg(0))
    with Viewer(streamer) as viewer:
        assert viewer.next_text("metadata")["quality"] is None
        viewer.next_frame()
        viewer.ws.send(json.dumps({"type": "config", "quality": 40}))
        assert viewer.next_text("metadata")["quality"] == 40
        streamer.publish_jpeg(jpeg := webcam_like_jpeg(1))
        frame = viewer.next_frame()
        assert frame != jpeg and len(frame) < len(jpeg)
        assert viewer.metadata["quality"] == 40
        viewer.ws.send(json.dumps({"type": "config", "quality": None}))
        assert viewer.next_text("metadata")["quality"] is None
        streamer.publish_jpeg(jpeg := webcam_like_jpeg(2))
        assert viewer.next_frame() == jpeg


def test_snapshots_of_jpeg_frames_at_the_source_quality_and_at_another(streamer_factory) -> None:
    streamer = push_streamer(streamer_factory)
    jpeg = webcam_like_jpeg(3)
    streamer.publish_jpeg(jpeg)
    assert get(streamer.port, "/snapshot.jpg").body == jpeg
    assert streamer.camera.decodes == 0
    other = get(streamer.port, "/snapshot.jpg?quality=30")
    assert other.status == 200 and other.body != jpeg and len(other.body) < len(jpeg)
    assert decode_jpeg(other.body).shape == (480, 640, 3)
    with Viewer(streamer) as viewer:
        viewer.ws.send(json.dumps({"type": "snapshot", "quality": 50}))
        reply = viewer.next_text("snapshot")
        data = viewer.next_frame()
        assert reply["quality"] == 50 and reply["bytes"] == len(data)
        assert (reply["width"], reply["height"]) == (640, 480)
        assert data != jpeg and decode_jpeg(data).shape == (480, 640, 3)
    assert streamer.camera.decodes == 1  # one decode served both snapshots


@pytest.mark.parametrize(
    "broken",
    [b"", b"\xff\xd8\xff", b"not a jpeg at all", "cut"],
    ids=["empty", "soi-only", "text", "truncated"],
)
def test_corrupt_files_are_dropped_and_counted_in_stats(streamer_factory, broken) -> None:
    streamer = push_streamer(streamer_factory)
    good = webcam_like_jpeg(4)
    data = good[: len(good) // 2] if broken == "cut" else broken
    with Viewer(streamer) as viewer:
        assert wait_until(lambda: streamer.client_count == 1)
        assert streamer.publish_jpeg(data) is None
        streamer.publish_jpeg(good)
        assert viewer.next_frame() == good  # the broken one never went out
    stats = streamer.stats()
    assert stats["frames_dropped_corrupt"] == 1 and stats["frames_captured"] == 1


def test_stats_show_decodes_and_encodes_per_second(streamer_factory) -> None:
    streamer = push_streamer(streamer_factory)
    sources = [webcam_like_jpeg(i) for i in range(5)]
    with Viewer(streamer) as native, Viewer(streamer, "?width=320") as small:
        with publishing(streamer, sources):
            for _ in range(45):  # 1.5 s of frames at 30 fps
                native.next_frame()
                small.next_frame()
            stats = streamer.stats()
    assert 15 <= stats["decodes_per_s"] <= 35, stats["decodes_per_s"]
    assert 15 <= stats["encodes_per_s"] <= 35, stats["encodes_per_s"]
    assert stats["decodes"] == stats["encodes"] >= 40


def test_the_default_byte_limit_passes_small_frames_and_reencodes_big_ones(
    streamer_factory,
) -> None:
    """A client that says nothing gets frames Godot's default WebSocketPeer can take."""
    streamer = push_streamer(streamer_factory)
    big = webcam_like_jpeg(1, (1280, 720), quality=95)
    small = webcam_like_jpeg(2)
    assert len(small) <= 65535 < len(big)
    with Viewer(streamer) as viewer:
        assert wait_until(lambda: streamer.client_count == 1)
        streamer.publish_jpeg(small)
        assert viewer.next_frame() == small
        assert viewer.metadata["quality"] is None and viewer.metadata["max_bytes"] == 65535
        streamer.publish_jpeg(big)
        frame = viewer.next_frame()
        assert len(frame) <= 65535 and decode_jpeg(frame).shape[:2] == (720, 1280)
        assert viewer.metadata["quality"] == 80  # re-encoded: the metadata says at what
    assert streamer.stats()["encodes_refused"] == 0
