"""Streamer end to end: real servers on port 0, real `websockets` and `websocket-client` clients."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import websocket  # websocket-client
from conftest import SLACK, TIMEOUT, wait_until, write_video
from helpers import decode_jpeg, next_binaries, next_binary, next_text
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
    """Ten clients each read 30 frames; the camera's frames are encoded once each, however many
    clients, and each client gets most of them (the slowest one's 30 of all captured meanwhile)."""
    wanted = 30
    streamer = streamer_factory("test", width=320, height=240, fps=30)
    counts: dict[str, int] = {}
    errors: list[BaseException] = []
    go = threading.Event()

    def websockets_viewer(name: str) -> None:
        try:
            with connect(streamer.url, open_timeout=TIMEOUT) as ws:
                assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "metadata"
                assert go.wait(TIMEOUT), "the test did not say go"
                frames = next_binaries(ws, wanted)
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
                assert go.wait(TIMEOUT), "the test did not say go"
                n, deadline = 0, time.monotonic() + TIMEOUT
                while n < wanted:
                    assert time.monotonic() < deadline, f"{n} frames within {TIMEOUT} s"
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
    assert counts == {name: wanted for name in counts} and len(counts) == 10, counts
    stats = streamer.stats()
    captured = stats["frames_captured"] - captured_before
    encoded = stats["frames_encoded"] - encoded_before
    assert encoded <= captured + 1, (encoded, captured)  # one encode per frame, not per client
    assert wanted >= 0.75 * captured - 2, captured  # the slowest missed few (was 45 of ~60)


def test_each_client_on_its_own_rate(streamer_factory) -> None:
    """While the full-rate client reads 45 frames, the 5 fps one gets a sixth as many: never
    more than 5 fps allows (the rest skipped on purpose), and the fast one is not held back
    (it gets nearly every frame the camera captured meanwhile)."""
    streamer = streamer_factory("test", width=320, height=240, fps=30)
    slow_arrivals: list[float] = []
    metadata: dict[str, dict] = {}
    errors: list[BaseException] = []
    done = threading.Event()  # set once the fast one has its 45 frames
    slow_stats: list[dict] = []

    def slow_viewer() -> None:
        try:
            with connect(streamer.url + "?fps=5", open_timeout=TIMEOUT) as ws:
                metadata["slow"] = json.loads(ws.recv(timeout=TIMEOUT))
                next_binary(ws)
                while not done.is_set():
                    try:
                        next_binary(ws, 0.05)
                    except TimeoutError:
                        continue
                    slow_arrivals.append(time.monotonic())
                slow_stats.append(streamer.stats())  # while still connected
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    slow = threading.Thread(target=slow_viewer, name="test-slow-viewer")
    slow.start()
    try:
        with connect(streamer.url, open_timeout=TIMEOUT) as ws:
            metadata["fast"] = json.loads(ws.recv(timeout=TIMEOUT))
            next_binary(ws)
            assert wait_until(lambda: len(slow_arrivals) >= 1 or bool(errors)), errors
            captured, t0 = streamer.stats()["frames_captured"], time.monotonic()
            next_binaries(ws, 45)
            t1 = time.monotonic()
            captured = streamer.stats()["frames_captured"] - captured
    finally:
        done.set()
        slow.join(TIMEOUT)
    assert not slow.is_alive() and not errors, errors
    assert metadata["slow"]["fps"] == 5 and metadata["fast"]["fps"] == 30
    got = sum(1 for t in slow_arrivals if t0 <= t <= t1)
    assert got <= 5 * (t1 - t0) + 2, (got, t1 - t0)  # 5 fps, never more
    assert got >= 5 * (t1 - t0) / SLACK - 2, (got, t1 - t0)
    assert 45 >= 0.8 * captured - 2, captured  # the fast one was not held to 5 fps
    slow_client = next(c for c in slow_stats[0]["clients"] if c["fps"] == 5)
    # ~5 of every 6 camera frames skipped, on purpose
    assert slow_client["frames_skipped"] >= 2 * slow_client["frames_sent"], slow_client


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
        next_binary(ws)  # the first frame at the new rate starts the clock
        started = time.monotonic()
        next_binaries(ws, 10)
        elapsed = time.monotonic() - started
    # 10 fps (1 s for 10 frames), not the camera's 30 (0.33 s); slower only on a busy machine
    assert 0.8 <= elapsed <= 10 / 7 * SLACK, elapsed


def frames_with_info(
    ws: object, enough: Callable[[list[dict], list[bytes]], bool]
) -> tuple[list[dict], list[bytes]]:
    """``frame`` messages and JPEGs (``frame_info`` on) until ``enough`` says so after a JPEG;
    fails after TIMEOUT."""
    infos: list[dict] = []
    frames: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    while not (frames and enough(infos, frames)):
        message = ws.recv(timeout=max(deadline - time.monotonic(), 0.001))  # type: ignore[attr-defined]
        if isinstance(message, bytes):
            frames.append(message)
        elif (parsed := json.loads(message))["type"] == "frame":
            infos.append(parsed)
    return infos, frames


def test_never_the_same_frame_twice_and_no_backlog(streamer_factory) -> None:
    streamer = streamer_factory("test", width=1280, height=720, quality=95, fps=30)
    with connect(streamer.url + "?frame_info=true", open_timeout=TIMEOUT, max_queue=4) as ws:
        infos, frames = frames_with_info(ws, lambda infos, frames: len(frames) >= 30)
        seqs = [i["seq"] for i in infos]
        assert seqs == sorted(set(seqs))
        assert len(infos) == len(frames)  # a frame message right before each JPEG
        # a client that stops reading for a while then resumes gets the newest frame, not a queue
        time.sleep(2.0)  # the stall under test: this client deliberately reads nothing
        resumed_at = time.time()
        late, _ = frames_with_info(ws, lambda infos, frames: infos[-1]["captured_at"] > resumed_at)
        # the server skipped frames instead of queueing them: after what the socket buffers
        # held when the stall began, the next frame is one captured as the client came back
        # (a queue would go on with frames from the stall's first second)
        jump = next((t for t in late if t["skipped"] >= 20), None)
        assert jump is not None, [t["skipped"] for t in late]
        assert jump["captured_at"] > resumed_at - 1.0, (jump, resumed_at)
        seqs = [t["seq"] for t in late]
        assert seqs == sorted(set(seqs))


def test_video_file_source(streamer_factory, tmp_path: Path) -> None:
    video_file = write_video(tmp_path / "clip.avi", frames=10, fps=30)
    streamer = streamer_factory(str(video_file))
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        meta = json.loads(ws.recv(timeout=TIMEOUT))
        assert (meta["width"], meta["height"], meta["fps"]) == (160, 120, 30)
        frames = next_binaries(ws, 15)  # more than the 10-frame file holds: it loops
        assert decode_jpeg(frames[0]).shape == (120, 160, 3)
        assert streamer.stats()["frames_captured"] >= 15


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
        assert time.monotonic() - started < 1.0 * SLACK
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
        next_text(ws, "metadata")
        next_binaries(ws, 10)
        stats = streamer.stats()
    assert stats["client_count"] == 1
    (client,) = stats["clients"]
    assert client["fps"] == 10 and client["width"] == 320
    # the 10 read (the last may be uncounted yet), at most a couple more in flight
    assert 9 <= client["frames_sent"] <= 13 and client["bytes_sent"] > 0
    assert stats["camera"]["state"] == "streaming" and stats["frames_captured"] >= 25 / SLACK
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
