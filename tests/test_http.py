"""HTTP endpoints on the WebSocket port: viewer page, snapshot, MJPEG, stats, access rules.

Real servers on port 0, real clients: ``http.client``, ``cv2.VideoCapture`` (OpenCV's FFmpeg
backend reading MJPEG over HTTP), a raw-socket multipart reader, and ``websockets``.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from typing import Iterator

import cv2
import numpy as np
import pytest
from conftest import SLACK, TIMEOUT, wait_until
from helpers import MjpegReader, Response, decode_jpeg, get
from websockets.sync.client import connect

from camstream import Streamer
from camstream.delivery.snapshot import FIRST_FRAME_WAIT_S


@contextlib.contextmanager
def reading_in_background(reader: MjpegReader, frames: int) -> Iterator[list[bytes]]:
    """Read ``frames`` parts in a thread; the block's exit waits for it and re-raises errors."""
    got: list[bytes] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(frames):
                got.append(reader.next_part()[1])
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield got
    finally:
        thread.join(TIMEOUT * 3)
    assert not thread.is_alive(), "MJPEG reader did not finish"
    assert not errors, errors


# The viewer page


def test_viewer_page_is_self_contained(streamer_factory) -> None:
    streamer = streamer_factory("test", width=320, height=240)
    response = get(streamer.port, "/")
    assert response.status == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.body.decode("utf-8")
    assert "<canvas" in page and "createImageBitmap" in page and "camstreamStats" in page
    assert not re.search(r"https?://", page), "the page must not reference anything external"
    assert not re.search(r"""\b(src|href)\s*=\s*["'](?!data:)""", page), "no external resources"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["referrer-policy"] == "no-referrer"  # the URL may carry a token


def test_unknown_paths_are_404_and_ws_path_wants_an_upgrade(streamer_factory) -> None:
    streamer = streamer_factory("test", width=160, height=120)
    for path in ("/nope", "/favicon.ico", "/snapshot.png", "/static/viewer.html"):
        assert get(streamer.port, path).status == 404, path
    response = get(streamer.port, "/ws")
    assert response.status == 426 and response.headers["sec-websocket-version"] == "13"
    assert streamer.stats()["http"]["not_found"] == 4


# Snapshot


def test_snapshot_is_the_latest_frame_at_the_requested_size(streamer_factory) -> None:
    streamer = streamer_factory("test", width=640, height=480, fps=30)
    full = get(streamer.port, "/snapshot.jpg")
    assert full.status == 200 and full.headers["content-type"] == "image/jpeg"
    assert "no-store" in full.headers["cache-control"]
    assert decode_jpeg(full.body).shape == (480, 640, 3)
    small = get(streamer.port, "/snapshot.jpg?width=320&quality=40")
    assert decode_jpeg(small.body).shape == (240, 320, 3)
    boxed = get(streamer.port, "/snapshot.jpg?height=120")
    assert decode_jpeg(boxed.body).shape == (120, 160, 3)
    variants = {(v["width"], v["height"], v["quality"]) for v in streamer.stats()["variants"]}
    assert {(None, None, 80), (320, None, 40), (None, 120, 80)} <= variants


def test_snapshot_bad_parameters_are_400_with_the_reason(streamer_factory) -> None:
    streamer = streamer_factory("test", width=160, height=120)
    response = get(streamer.port, "/snapshot.jpg?quality=0")
    assert response.status == 400 and b"quality" in response.body
    response = get(streamer.port, "/stream.mjpg?fps=abc")
    assert response.status == 400 and b"fps" in response.body


def test_snapshot_without_a_frame_is_503_after_a_short_wait(streamer_factory) -> None:
    streamer = streamer_factory("push")  # nothing published: no frame, ever
    started = time.monotonic()
    response = get(streamer.port, "/snapshot.jpg")
    waited = time.monotonic() - started
    assert response.status == 503 and response.headers["retry-after"] == "1"
    assert 1.5 <= waited <= FIRST_FRAME_WAIT_S + 1.5 * SLACK, waited  # (it waits 2 s)
    # ... and a frame published while it waits is served at once
    result: list[Response] = []
    thread = threading.Thread(target=lambda: result.append(get(streamer.port, "/snapshot.jpg")))
    thread.start()
    assert wait_until(lambda: streamer.stats()["http"]["requests"] == 2)  # it is waiting now
    streamer.publish(np.full((90, 120, 3), 200, np.uint8))
    thread.join(TIMEOUT)
    assert not thread.is_alive(), "thread did not finish"
    assert result and result[0].status == 200 and decode_jpeg(result[0].body).shape == (90, 120, 3)


# MJPEG


def test_opencv_reads_the_mjpeg_stream(streamer_factory) -> None:
    streamer = streamer_factory("test", width=640, height=480, fps=30)
    capture = cv2.VideoCapture(
        f"http://127.0.0.1:{streamer.port}/stream.mjpg?width=320", cv2.CAP_FFMPEG
    )
    try:
        assert capture.isOpened(), "OpenCV (FFmpeg backend) could not open the MJPEG URL"
        ok, image = capture.read()
        assert ok and image.shape == (240, 320, 3)
        started, frames = time.monotonic(), 0
        while frames < 30:
            ok, image = capture.read()
            assert ok, f"read failed after {frames} frames"
            assert image.shape == (240, 320, 3)
            frames += 1
        fps = frames / (time.monotonic() - started)
    finally:
        capture.release()
    assert 15 / SLACK <= fps <= 40, fps  # the camera's 30 fps, as OpenCV sees it


def test_mjpeg_parts_are_whole_jpegs_at_the_requested_rate(streamer_factory) -> None:
    streamer = streamer_factory("test", width=320, height=240, fps=30)
    with MjpegReader(streamer.port, "/stream.mjpg?fps=10&quality=50&width=160") as reader:
        assert reader.status == 200
        assert reader.headers["content-type"].startswith("multipart/x-mixed-replace; boundary=")
        assert "no-store" in reader.headers["cache-control"]
        assert "content-length" not in reader.headers
        reader.next_part()  # the first frame starts the clock
        started = time.monotonic()
        parts = [reader.next_part() for _ in range(10)]
        elapsed = time.monotonic() - started
    for headers, body in parts:
        assert headers["content-type"] == "image/jpeg"
        assert int(headers["content-length"]) == len(body)
        assert decode_jpeg(body).shape == (120, 160, 3)
    # 10 fps (1 s for 10 parts), not the camera's 30 (0.33 s); slower only on a busy machine
    assert 0.8 <= elapsed <= 10 / 7 * SLACK, elapsed
    stream = streamer.stats()["http"]
    assert stream["mjpeg_frames_skipped"] > 0  # it took every third frame or so


def test_mjpeg_and_websocket_viewers_share_one_encode_per_frame(streamer_factory) -> None:
    streamer = streamer_factory("test", width=640, height=480, fps=30)
    before = streamer.stats()
    with (
        MjpegReader(streamer.port, "/stream.mjpg?width=320") as one,
        MjpegReader(streamer.port, "/stream.mjpg?width=320") as two,
        connect(streamer.url + "?width=320", open_timeout=TIMEOUT) as ws,
    ):
        assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "metadata"
        with reading_in_background(one, 30) as got_one, reading_in_background(two, 30) as got_two:
            ws_frames = sum(isinstance(ws.recv(timeout=TIMEOUT), bytes) for _ in range(30))
        assert len(got_one) == len(got_two) == 30 and ws_frames == 30
        after = streamer.stats()
    captured = after["frames_captured"] - before["frames_captured"]
    encoded = after["frames_encoded"] - before["frames_encoded"]
    assert captured >= 29  # (the first of the 30 frames may be the one there already)
    assert encoded <= captured + 1, (encoded, captured)  # one encode per frame, not per viewer
    assert [(v["width"], v["quality"]) for v in after["variants"]] == [(320, 80)]


def test_stats_json_counts_mjpeg_streams(streamer_factory) -> None:
    streamer = streamer_factory("test", width=160, height=120, fps=30)
    with MjpegReader(streamer.port, "/stream.mjpg?fps=15") as reader:
        for _ in range(3):
            reader.next_part()
        response = get(streamer.port, "/stats.json")
        assert response.status == 200 and response.headers["content-type"] == "application/json"
        stats = json.loads(response.body)
        http_stats = stats["http"]
        assert http_stats["mjpeg_active"] == 1 and http_stats["mjpeg_opened"] == 1
        (stream,) = http_stats["mjpeg_streams"]
        assert stream["fps"] == 15 and stream["frames_sent"] >= 2  # the 3rd may be uncounted yet
        assert stats["frames_captured"] >= 3 and stats["client_count"] == 0
    assert wait_until(lambda: streamer.stats()["http"]["mjpeg_active"] == 0), (
        "the stream did not end when its reader left"
    )
    assert streamer.stats()["http"]["mjpeg_frames_sent"] >= 3


# Access rules


@pytest.mark.parametrize("path", ["/snapshot.jpg", "/stream.mjpg", "/stats.json"])
def test_token_is_required_by_the_data_endpoints(streamer_factory, path: str) -> None:
    streamer = streamer_factory("test", width=160, height=120, token="s3cret")
    for target, headers in (
        (path, {}),
        (path + "?token=wrong", {}),
        (path, {"Authorization": "Bearer wrong"}),
    ):
        if path == "/stream.mjpg":
            with MjpegReader(streamer.port, target, headers=headers) as reader:
                status, answer = reader.status, reader.headers
        else:
            response = get(streamer.port, target, headers)
            status, answer = response.status, response.headers
        assert status == 401, (target, headers)
        assert answer["www-authenticate"].startswith("Bearer"), answer
    for target, headers in (
        (path + "?token=s3cret", {}),
        (path, {"Authorization": "Bearer s3cret"}),
    ):
        if path == "/stream.mjpg":
            with MjpegReader(streamer.port, target, headers=headers) as reader:
                assert reader.status == 200
                decode_jpeg(reader.next_part()[1])
        else:
            assert get(streamer.port, target, headers).status == 200, (target, headers)


def test_viewer_page_is_served_without_a_token(streamer_factory) -> None:
    """The page holds no data; the WebSocket it opens enforces the token (see webroutes)."""
    streamer = streamer_factory("test", width=160, height=120, token="s3cret")
    assert get(streamer.port, "/").status == 200
    assert get(streamer.port, "/?token=s3cret").status == 200


def test_foreign_origin_is_403(streamer_factory) -> None:
    streamer = streamer_factory(
        "test", width=160, height=120, allowed_origins=["http://good.example"]
    )
    assert get(streamer.port, "/snapshot.jpg", {"Origin": "http://evil.example"}).status == 403
    assert get(streamer.port, "/stats.json", {"Origin": "http://evil.example"}).status == 403
    assert get(streamer.port, "/snapshot.jpg", {"Origin": "http://good.example"}).status == 200
    assert get(streamer.port, "/snapshot.jpg").status == 200  # tools send no Origin
    assert streamer.stats()["http"]["refused"] == 2


def raw_response(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Send ``request`` on a raw socket and read until the server closes: (head, rest)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        data = b""
        for _ in range(10_000):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/", "text/html"), ("/snapshot.jpg", "image/jpeg"), ("/stats.json", "application/json"),
     ("/stream.mjpg", "multipart/x-mixed-replace; boundary=")],
)
def test_head_answers_the_headers_of_get_without_a_body(streamer_factory, path, content_type):
    streamer = streamer_factory("test", width=160, height=120)
    head, rest = raw_response(streamer.port, f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                              .encode())
    assert head.startswith(b"HTTP/1.1 200 ") and content_type.encode() in head
    assert rest == b""  # and the server closed the connection: a HEAD of the stream ends
    if path != "/stream.mjpg":
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert length > 0
    assert streamer.stats()["http"]["mjpeg_active"] == 0


@pytest.mark.parametrize(
    ("host_lines", "status"),
    [
        ("", 400),
        ("Host: \r\n", 400),
        ("Host: 127.0.0.1\r\nHost: 127.0.0.1\r\n", 400),
        ("Host: 127.0.0.1, evil.example\r\n", 400),
        ("Host: 127.0.0.1\r\n", 200),
    ],
    ids=["none", "empty", "two", "comma-joined", "one"],
)
def test_host_header_must_be_one_valid_value(streamer_factory, host_lines, status) -> None:
    streamer = streamer_factory("test", width=160, height=120)
    head, _ = raw_response(streamer.port, f"GET /stats.json HTTP/1.1\r\n{host_lines}\r\n"
                           .encode())
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head


def test_absolute_form_authority_is_checked_as_the_host(streamer_factory) -> None:
    streamer = streamer_factory("test", width=160, height=120)
    port = streamer.port
    good = f"GET http://127.0.0.1:{port}/stats.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    head, _ = raw_response(port, good.encode())
    assert head.startswith(b"HTTP/1.1 200 ")
    rebinding = f"GET http://evil.example:{port}/stats.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    head, body = raw_response(port, rebinding.encode())
    assert head.startswith(b"HTTP/1.1 403 ") and b"host not allowed" in body


@pytest.mark.parametrize("path", ["/snapshot.jpg", "/stats.json", "/stream.mjpg"])
def test_pages_of_other_sites_cannot_embed_frames(streamer_factory, path: str) -> None:
    """An <img> on another site sends no Origin, but Sec-Fetch-Site (issue #11 item 7)."""
    streamer = streamer_factory("test", width=160, height=120)
    for site in ("cross-site", "same-site"):
        refused = get(streamer.port, path, {"Sec-Fetch-Site": site})
        assert refused.status == 403 and b"cross-site request not allowed" in refused.body
    if path != "/stream.mjpg":
        for site in ("same-origin", "none"):  # the viewer page; a typed URL or a bookmark
            allowed = get(streamer.port, path, {"Sec-Fetch-Site": site})
            assert allowed.status == 200
            assert allowed.headers["cross-origin-resource-policy"] == "same-origin"


def test_allowed_origins_may_embed_frames(streamer_factory) -> None:
    streamer = streamer_factory("test", width=160, height=120,
                                allowed_origins=["http://dashboard.example"])
    response = get(streamer.port, "/snapshot.jpg", {"Sec-Fetch-Site": "cross-site"})
    assert response.status == 200
    assert response.headers["cross-origin-resource-policy"] == "cross-origin"


def test_max_clients_counts_mjpeg_streams(streamer_factory) -> None:
    streamer = streamer_factory("test", width=160, height=120, max_clients=1)
    with MjpegReader(streamer.port) as first:
        first.next_part()
        with MjpegReader(streamer.port) as second:
            assert second.status == 503
        assert streamer.stats()["http"]["mjpeg_full"] == 1
    assert wait_until(lambda: streamer.stats()["http"]["mjpeg_active"] == 0)
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        ws.recv(timeout=TIMEOUT)
        with MjpegReader(streamer.port) as refused:
            assert refused.status == 503


def test_websocket_viewer_is_refused_when_mjpeg_streams_fill_the_server(streamer_factory) -> None:
    from websockets.exceptions import ConnectionClosed

    streamer = streamer_factory("test", width=160, height=120, max_clients=1)
    with MjpegReader(streamer.port) as reader:
        reader.next_part()
        with connect(streamer.url, open_timeout=TIMEOUT) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(10):
                    ws.recv(timeout=TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013


# Slow readers and shutdown


def test_stalled_mjpeg_reader_is_shed_and_slows_no_one(streamer_factory) -> None:
    streamer = streamer_factory("test", width=640, height=480, fps=30, send_timeout=1)
    # A reader that never reads, with a tiny receive window, asking for big frames.
    stalled = MjpegReader(streamer.port, "/stream.mjpg?quality=100", rcvbuf=4096, read=False)
    try:
        assert wait_until(lambda: streamer.stats()["http"]["mjpeg_active"] == 1)
        with connect(streamer.url + "?width=320", open_timeout=TIMEOUT) as ws:
            ws.recv(timeout=TIMEOUT)  # metadata
            # Watch the viewer while the stalled stream fills its socket buffers, blocks, and
            # is dropped by the send watchdog one send_timeout later.
            started, frames = time.monotonic(), 0
            captured = streamer.stats()["frames_captured"]
            while (
                streamer.stats()["http"]["mjpeg_active"]
                and time.monotonic() - started < TIMEOUT * 2
            ):
                frames += isinstance(ws.recv(timeout=TIMEOUT), bytes)
            elapsed = time.monotonic() - started
            captured = streamer.stats()["frames_captured"] - captured
        assert streamer.stats()["http"]["mjpeg_active"] == 0, (
            "the stalled MJPEG reader was not dropped after send_timeout"
        )
        assert elapsed > 1.0  # it was blocked for a while: the viewer was watched meanwhile
        # The viewer kept the camera's rate: nearly every frame captured meanwhile (one held up
        # for the stalled reader's send_timeout of 1 s would have lost most of them).
        assert frames >= 0.8 * captured - 2, (frames, captured, elapsed)
    finally:
        stalled.close()


def test_stop_ends_mjpeg_streams_promptly() -> None:
    streamer = Streamer("test", port=0, width=160, height=120, fps=30).start()
    readers: list[MjpegReader] = []
    try:
        readers = [MjpegReader(streamer.port), MjpegReader(streamer.port, "/stream.mjpg?fps=1")]
        for reader in readers:
            reader.next_part()
        started = time.monotonic()
        streamer.stop()
        stop_took = time.monotonic() - started
        for reader in readers:
            with pytest.raises((EOFError, ConnectionError)):
                for _ in range(100):  # parts already in flight may still arrive; then EOF
                    reader.next_part()
    finally:
        streamer.stop()
        for reader in readers:
            reader.close()
    assert stop_took < 1.0 * SLACK, stop_took
    assert streamer.stats()["http"]["mjpeg_active"] == 0


def test_an_mjpeg_reader_that_half_closes_after_its_request_keeps_its_stream(
    streamer_factory,
) -> None:
    """``printf 'GET ...' | nc host port``: some readers shut down their sending side once the
    request is out, and go on reading. That is not a reader that left (the stream ends only
    when the connection is reset or a write fails)."""
    streamer = streamer_factory("test", width=160, height=120, fps=30)
    with socket.create_connection(("127.0.0.1", streamer.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /stream.mjpg?adapt=on HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while received.count(b"--camstream-frame") < 20:
            chunk = sock.recv(65536)
            assert chunk, f"the stream ended after {received.count(b'--camstream-frame')} parts"
            received += chunk
    assert received.startswith(b"HTTP/1.0 200") or received.startswith(b"HTTP/1.1 200")
