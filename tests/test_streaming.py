"""Streamer end to end: real servers on port 0, real `websockets` and `websocket-client` clients."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import websocket  # websocket-client
from conftest import TIMEOUT, wait_until
from helpers import decode_jpeg, receive_for
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from camstream import CloseCode, Streamer

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def test_metadata_first_then_whole_jpegs(streamer_factory) -> None:
    streamer = streamer_factory("test", width=640, height=480, fps=30)
    assert streamer.url == f"ws://127.0.0.1:{streamer.port}/"
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        first = json.loads(ws.recv(timeout=TIMEOUT))
        assert first["type"] == "metadata"
        assert {k: first[k] for k in ("width", "height", "fps", "format", "protocol", "quality")} \
            == {"width": 640, "height": 480, "fps": 30, "format": "MJPEG", "protocol": 1,
                "quality": 80}
        assert ISO_UTC.match(first["timestamp"]), first["timestamp"]
        for _ in range(5):
            image = decode_jpeg(ws.recv(timeout=TIMEOUT))
            assert image.shape == (480, 640, 3)


def test_many_clients_of_both_libraries_share_one_encode_per_frame(streamer_factory) -> None:
    streamer = streamer_factory("test", width=320, height=240, fps=30)
    counts: dict[str, int] = {}
    errors: list[BaseException] = []
    go = threading.Event()

    def websockets_viewer(name: str) -> None:
        try:
            with connect(streamer.url, open_timeout=TIMEOUT) as ws:
                assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "metadata"
                go.wait(TIMEOUT)
                _, frames = receive_for(ws, 2.0)
                for data in frames[:3]:
                    decode_jpeg(data)
                counts[name] = len(frames)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def websocket_client_viewer(name: str) -> None:
        try:
            ws = websocket.create_connection(streamer.url, timeout=TIMEOUT)
            try:
                assert json.loads(ws.recv())["type"] == "metadata"
                go.wait(TIMEOUT)
                n, deadline = 0, time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    opcode, data = ws.recv_data()
                    if opcode == websocket.ABNF.OPCODE_BINARY:
                        n += 1
                counts[name] = n
            finally:
                ws.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=websockets_viewer, args=(f"ws{i}",)) for i in range(5)]
    threads += [threading.Thread(target=websocket_client_viewer, args=(f"wc{i}",))
                for i in range(5)]
    for t in threads:
        t.start()
    captured_before = streamer.stats()["frames_captured"]
    encoded_before = streamer.stats()["frames_encoded"]
    go.set()
    for t in threads:
        t.join(TIMEOUT * 3)
        assert not t.is_alive(), f"{t.name} did not finish"
    assert not errors, errors
    assert len(counts) == 10
    assert min(counts.values()) >= 45, counts  # ~60 frames in 2 s at 30 fps
    stats = streamer.stats()
    captured = stats["frames_captured"] - captured_before
    encoded = stats["frames_encoded"] - encoded_before
    assert encoded <= captured + 1, (encoded, captured)  # one encode per frame, not per client


def test_each_client_on_its_own_rate(streamer_factory) -> None:
    streamer = streamer_factory("test", width=320, height=240, fps=30)
    results: dict[str, list[bytes]] = {}
    metadata: dict[str, dict] = {}
    stats_while_connected: dict[str, dict] = {}

    def viewer(name: str, url: str) -> None:
        with connect(url, open_timeout=TIMEOUT) as ws:
            metadata[name] = json.loads(ws.recv(timeout=TIMEOUT))
            ws.recv(timeout=TIMEOUT)  # the first frame starts the clock
            results[name] = receive_for(ws, 3.0)[1]
            stats_while_connected[name] = streamer.stats()

    threads = [
        threading.Thread(target=viewer, args=("slow", streamer.url + "?fps=5")),
        threading.Thread(target=viewer, args=("fast", streamer.url)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 3)
        assert not t.is_alive(), f"{t.name} did not finish"
    assert metadata["slow"]["fps"] == 5 and metadata["fast"]["fps"] == 30
    assert 13 <= len(results["slow"]) <= 17, len(results["slow"])  # 5 fps for 3 s
    assert len(results["fast"]) >= 80, len(results["fast"])  # 30 fps for 3 s
    slow_client = next(c for c in stats_while_connected["slow"]["clients"] if c["fps"] == 5)
    assert slow_client["frames_skipped"] >= 60  # ~5 of every 6 camera frames, on purpose


def test_config_message_changes_rate_and_is_answered_with_metadata(streamer_factory) -> None:
    streamer = streamer_factory("test", fps=30)
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        assert json.loads(ws.recv(timeout=TIMEOUT))["fps"] == 30
        ws.send(json.dumps({"type": "config", "fps": 10}))
        deadline = time.monotonic() + TIMEOUT
        while True:
            message = ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
            if isinstance(message, str):
                break
        reply = json.loads(message)
        assert reply["type"] == "metadata" and reply["fps"] == 10
        _, frames = receive_for(ws, 2.0)
        assert 15 <= len(frames) <= 23, len(frames)


def test_never_the_same_frame_twice_and_no_backlog(streamer_factory) -> None:
    streamer = streamer_factory("test", width=1280, height=720, quality=95, fps=30)
    with connect(streamer.url + "?frame_info=true", open_timeout=TIMEOUT, max_queue=4) as ws:
        texts, frames = receive_for(ws, 1.5)
        infos = [t for t in texts if t["type"] == "frame"]
        seqs = [i["seq"] for i in infos]
        assert len(seqs) >= 30 and seqs == sorted(set(seqs))
        assert len(infos) - len(frames) in (0, 1)  # the window may end between the two
        # a client that stops reading for a while then resumes gets the newest frame, not a queue
        stalled_at = time.time()
        time.sleep(2.0)  # the stall under test: this client deliberately reads nothing
        texts, _ = receive_for(ws, 1.0)
        late = [t for t in texts if t["type"] == "frame"]
        assert late, "no frames after the stall"
        # the server skipped frames instead of queueing them, and the stream is fresh again
        assert max(t["skipped"] for t in late) >= 20, [t["skipped"] for t in late]
        assert late[-1]["captured_at"] > stalled_at + 2.5
        seqs = [t["seq"] for t in late]
        assert seqs == sorted(set(seqs))


def test_video_file_source(streamer_factory, video_file: Path) -> None:
    streamer = streamer_factory(str(video_file))
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        meta = json.loads(ws.recv(timeout=TIMEOUT))
        assert (meta["width"], meta["height"], meta["fps"]) == (160, 120, 10)
        _, frames = receive_for(ws, 2.5)
        assert len(frames) >= 20  # the 20-frame file loops at 10 fps
        assert decode_jpeg(frames[0]).shape == (120, 160, 3)


def test_push_mode(streamer_factory) -> None:
    streamer = streamer_factory("push", fps=30)
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        json.loads(ws.recv(timeout=TIMEOUT))
        image = np.zeros((90, 120, 3), np.uint8)
        image[:, :60] = (0, 0, 255)
        streamer.publish(image)
        frame = None
        while frame is None:
            message = ws.recv(timeout=TIMEOUT)
            if isinstance(message, bytes):
                frame = decode_jpeg(message)
            else:
                assert json.loads(message)["width"] == 120  # metadata for the real size
        assert frame.shape == (90, 120, 3)
        assert frame[45, 10, 2] > 200 and frame[45, 100, 2] < 50  # red half, dark half


def test_stop_closes_viewers_with_1001_and_joins_everything(streamer_factory) -> None:
    streamer = streamer_factory("test")
    with contextlib.ExitStack() as stack:
        viewers = [stack.enter_context(connect(streamer.url, open_timeout=TIMEOUT))
                   for _ in range(3)]
        for ws in viewers:
            json.loads(ws.recv(timeout=TIMEOUT))
        started = time.monotonic()
        streamer.stop()
        for ws in viewers:
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    ws.recv(timeout=TIMEOUT)
            assert info.value.rcvd is not None and info.value.rcvd.code == CloseCode.GOING_AWAY
        assert time.monotonic() - started < 1.0
    assert streamer.camera.state.value == "stopped"
    streamer.stop()  # idempotent


def test_serve_forever_returns_after_stop_from_another_thread() -> None:
    streamer = Streamer("test", port=0)
    runner = threading.Thread(target=streamer.serve_forever, name="camstream-test-runner")
    runner.start()
    try:
        assert wait_until(lambda: streamer.is_serving)
        with connect(streamer.url, open_timeout=TIMEOUT) as ws:
            assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "metadata"
    finally:
        streamer.stop()
        runner.join(TIMEOUT)
    assert not runner.is_alive()


def test_stats_counts_per_client(streamer_factory) -> None:
    streamer = streamer_factory("test", fps=30)
    with connect(streamer.url + "?fps=10&width=320", open_timeout=TIMEOUT) as ws:
        receive_for(ws, 1.0)
        stats = streamer.stats()
    assert stats["client_count"] == 1
    (client,) = stats["clients"]
    assert client["fps"] == 10 and client["width"] == 320
    assert 7 <= client["frames_sent"] <= 13 and client["bytes_sent"] > 0
    assert stats["camera"]["state"] == "streaming" and stats["frames_captured"] >= 25
    assert any(v["width"] == 320 for v in stats["variants"])


def test_port_in_use_is_a_clear_error(streamer_factory) -> None:
    from camstream import ServerError

    first = streamer_factory("test")
    second = Streamer("test", port=first.port)
    with pytest.raises(ServerError, match=str(first.port)):
        second.start()
    assert second.camera.state.value == "stopped"  # the camera it opened was released


def test_missing_camera_is_a_clear_error() -> None:
    from camstream import SourceError

    with pytest.raises(SourceError, match="test pattern"):
        Streamer(9, port=0).start()
