"""CameraThread with real sources: the test pattern, video files written here, pushed frames."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import websocket
from conftest import SLACK, TIMEOUT, stop_process, wait_until, write_video
from helpers import frames_from, read_line

from camstream import CameraState, CameraThread, ConfigError, SourceError


def test_test_pattern_runs_at_requested_size_and_rate() -> None:
    with CameraThread("test", width=320, height=240, fps=25) as camera:
        frames = frames_from(camera, 26)
    assert {(f.width, f.height) for f in frames} == {(320, 240)}
    assert camera.width == 320 and camera.height == 240 and camera.fps == 25
    seqs = [f.seq for f in frames]
    assert seqs == sorted(set(seqs)), "each wait returns a newer frame"
    elapsed = frames[-1].captured_monotonic - frames[0].captured_monotonic
    rate = (frames[-1].seq - frames[0].seq) / elapsed
    assert 20 / SLACK <= rate <= 27, rate  # never faster than asked; slower only when busy
    # the picture moves: consecutive frames differ
    assert not np.array_equal(frames[0].image, frames[5].image)


def test_frames_are_read_only_and_timestamped() -> None:
    with CameraThread("test", fps=30) as camera:
        frame = frames_from(camera, 1)[0]
    assert not frame.image.flags.writeable
    assert abs(frame.captured_at - time.time()) < TIMEOUT
    assert frame.captured_monotonic <= time.monotonic()


def test_wait_for_frame_times_out_and_stop_wakes_waiters() -> None:
    camera = CameraThread("push").start()
    assert camera.wait_for_frame(0, 0.05) is None
    results: list = []
    waiter = threading.Thread(target=lambda: results.append(camera.wait_for_frame(0, 60)),
                              name="camstream-test-waiter")
    waiter.start()
    camera.stop()
    waiter.join(TIMEOUT)
    assert not waiter.is_alive() and results == [None]
    camera.stop()  # idempotent
    assert camera.state is CameraState.STOPPED


def test_push_mode_publish_copies_and_validates() -> None:
    with CameraThread("push") as camera:
        image = np.zeros((48, 64, 3), np.uint8)
        frame = camera.publish(image)
        image[:] = 255  # the caller keeps drawing into its buffer
        assert camera.latest() is frame and frame.image.max() == 0
        assert (camera.width, camera.height) == (64, 48)
        assert camera.wait_for_frame(0, TIMEOUT) is frame
        with pytest.raises(ConfigError):
            camera.publish(np.zeros((4, 4, 3), np.float32))
        with pytest.raises(ConfigError):
            camera.publish("not an image")  # type: ignore[arg-type]
    with CameraThread("test") as camera, pytest.raises(ConfigError, match="push"):
        camera.publish(np.zeros((48, 64, 3), np.uint8))


def test_video_file_plays_at_its_rate_and_loops(tmp_path: Path) -> None:
    path = write_video(tmp_path / "ten.avi", frames=10, size=(160, 120), fps=20)
    with CameraThread(str(path)) as camera:
        assert (camera.width, camera.height, camera.fps) == (160, 120, 20)
        frames = frames_from(camera, 25)  # more than the file has: it looped
    rate = (frames[-1].seq - frames[0].seq) / (
        frames[-1].captured_monotonic - frames[0].captured_monotonic)
    assert 14 / SLACK <= rate <= 22, rate
    assert camera.state is CameraState.STOPPED


def test_video_file_without_loop_ends(tmp_path: Path) -> None:
    path = write_video(tmp_path / "five.avi", frames=5, fps=50)
    with CameraThread(str(path), loop=False) as camera:
        frames = frames_from(camera, 5)
        assert wait_until(lambda: camera.state is CameraState.ENDED), camera.state
        assert camera.latest().seq == frames[-1].seq  # nothing after the last frame
        assert camera.wait_for_frame(frames[-1].seq, 0) is None


def test_video_file_scaled_to_requested_size(video_file: Path) -> None:
    with CameraThread(str(video_file), width=80, height=60) as camera:
        frame = frames_from(camera, 1)[0]
    assert (frame.width, frame.height) == (80, 60)


def test_missing_camera_error_names_source_and_suggests_test_pattern(capfd) -> None:
    with pytest.raises(SourceError) as info:
        CameraThread(7).start()
    message = str(info.value)
    assert "camera 7" in message and "test" in message
    assert info.value.source == 7
    captured = capfd.readouterr()
    assert "WARN" not in captured.err and "can't open" not in captured.err, captured.err


def test_missing_file_and_bad_arguments() -> None:
    with pytest.raises(SourceError, match="no such file"):
        CameraThread("/no/such/video.mp4").start()
    with pytest.raises(ConfigError):
        CameraThread("test", fps=0)
    with pytest.raises(ConfigError):
        CameraThread(3.5)  # type: ignore[arg-type]


def test_start_twice_is_an_error() -> None:
    with CameraThread("test") as camera, pytest.raises(RuntimeError):
        camera.start()


def test_source_that_vanishes_comes_back_without_restart(tmp_path: Path) -> None:
    """A file deleted mid-stream is a lost source; when it reappears, frames resume."""
    path = write_video(tmp_path / "clip.avi", frames=6, fps=30)
    events: list[tuple[str, float]] = []
    lost, restored = threading.Event(), threading.Event()

    def listen(event: str, details: dict) -> None:
        events.append((event, time.monotonic()))
        (lost if event == "camera_lost" else restored).set()

    camera = CameraThread(str(path), reconnect_delay_max=0.5)
    camera.add_listener(listen)
    with camera:
        frames_from(camera, 2)
        hidden = path.with_suffix(".hidden")
        os.rename(path, hidden)
        assert lost.wait(TIMEOUT), "camera_lost not reported"
        assert camera.state is CameraState.LOST
        seq = camera.latest().seq
        os.rename(hidden, path)
        back_at = time.monotonic()
        assert restored.wait(TIMEOUT), "camera_restored not reported"
        frame = camera.wait_for_frame(seq, TIMEOUT)
        assert frame is not None and frame.captured_monotonic - back_at < 2.0 * SLACK
    assert [e for e, _ in events] == ["camera_lost", "camera_restored"]


def test_one_side_keeps_the_aspect_ratio() -> None:
    with CameraThread("test", width=320) as camera:
        frame = frames_from(camera, 1)[0]
    assert (frame.width, frame.height) == (320, 240)  # 4:3 where the source has no ratio
    with CameraThread("test", height=90) as camera:
        assert (camera.width, camera.height) == (120, 90)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"width": 40000, "height": 40000}, "width must be 16 to 8192"),
        ({"width": 8193}, "width must be 16 to 8192"),
        ({"height": 8}, "height must be 16 to 8192"),
        ({"width": 320.5}, "whole number"),
        ({"width": True}, "whole number"),
        ({"fps": float("nan")}, "fps must be above 0"),
        ({"fps": 1e9}, "fps must be above 0"),
        ({"fps": "30"}, "fps must be above 0"),
    ],
)
def test_size_and_rate_are_checked_before_anything_opens(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CameraThread("test", **kwargs)


@pytest.mark.parametrize(
    "source, message",
    [
        (None, "source is None: give 'auto', 'push'"),
        ("", "source is empty"),
        ("   ", "source is empty"),
        (-1, "camera index must be 0 or more"),
        (b"0", "not bytes"),
    ],
)
def test_sources_that_mean_nothing_are_config_errors(source: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CameraThread(source)  # type: ignore[arg-type]


def test_publish_errors_say_what_they_got() -> None:
    with CameraThread("push") as camera:
        with pytest.raises(ConfigError, match=r"dtype float32, shape \(4, 4, 3\)"):
            camera.publish(np.zeros((4, 4, 3), np.float32))
        with pytest.raises(ConfigError, match=r"channels; got dtype uint8, shape \(4, 4, 2\)"):
            camera.publish(np.zeros((4, 4, 2), np.uint8))
        with pytest.raises(ConfigError, match="not list"):
            camera.publish([[0]])  # type: ignore[arg-type]
        bgra = np.zeros((4, 6, 4), np.uint8)
        assert camera.publish(bgra).width == 6


def test_auto_source_uses_camera_0_or_falls_back_to_the_test_pattern(caplog) -> None:
    from fake_capture import FakeWebcam

    webcam = FakeWebcam()
    with CameraThread(capture_factory=webcam.factory) as camera:  # "auto" is the default
        assert camera.source == 0 and camera.pixel_format == "MJPG"
        assert frames_from(camera, 1)[0].jpeg is not None
    webcam.vanish()
    caplog.set_level("WARNING", "camstream")
    with CameraThread("auto", capture_factory=webcam.factory) as camera:
        assert camera.source == "test"
        assert frames_from(camera, 1)[0].jpeg is None
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["no camera found at index 0: streaming the built-in test pattern"]
    with pytest.raises(SourceError, match="camera 0"):
        CameraThread(0, capture_factory=webcam.factory).start()  # an explicit 0 is strict


class _BrokenCapture:
    """A capture whose read() hits a bug (not a cv2.error): the camera thread crashes."""

    def isOpened(self) -> bool:  # noqa: N802
        return True

    def getBackendName(self) -> str:  # noqa: N802
        return "BROKEN"

    def get(self, prop: int) -> float:
        return 0.0

    def set(self, prop: int, value: float) -> bool:
        return False

    def read(self) -> tuple:
        raise ZeroDivisionError("a bug in the driver glue")

    def release(self) -> None:
        pass


def test_crashed_camera_thread_is_visible_to_viewers_and_stats(streamer_factory) -> None:
    streamer = streamer_factory(5, capture_factory=lambda target, api: _BrokenCapture())
    assert wait_until(lambda: streamer.camera.state is CameraState.FAILED)
    ws = websocket.create_connection(streamer.url, timeout=TIMEOUT)
    try:
        metadata = json.loads(ws.recv())
    finally:
        ws.close()
    assert metadata["type"] == "metadata" and metadata["camera"] == "failed"
    camera = streamer.stats()["camera"]
    assert camera["state"] == "failed"
    assert "ZeroDivisionError: a bug in the driver glue" in camera["failure_reason"]


def test_crash_event_reaches_a_connected_viewer(streamer_factory) -> None:
    release = threading.Event()

    class LateBug(_BrokenCapture):
        def read(self) -> tuple:
            if not release.wait(TIMEOUT):
                return False, None
            raise ZeroDivisionError("late bug")

    streamer = streamer_factory(5, capture_factory=lambda target, api: LateBug())
    ws = websocket.create_connection(streamer.url, timeout=TIMEOUT)
    try:
        assert json.loads(ws.recv())["type"] == "metadata"
        release.set()
        event = json.loads(ws.recv())
    finally:
        ws.close()
    assert event["type"] == "camera_lost" and "ZeroDivisionError: late bug" in event["reason"]
    assert streamer.camera.state is CameraState.FAILED


def test_file_without_loop_tells_viewers_it_ended(streamer_factory, tmp_path: Path,
                                                  caplog) -> None:
    caplog.set_level("INFO", "camstream")
    path = write_video(tmp_path / "short.avi", frames=10, fps=30)  # ends in ~0.3 s
    streamer = streamer_factory(str(path), loop=False)
    ws = websocket.create_connection(streamer.url, timeout=TIMEOUT)
    try:
        event, deadline = None, time.monotonic() + 2 * TIMEOUT
        while event is None and time.monotonic() < deadline:
            message = ws.recv()
            if isinstance(message, str) and json.loads(message)["type"] == "source_ended":
                event = json.loads(message)
    finally:
        ws.close()
    assert event is not None and event["source"] == f"file {path}"
    assert streamer.stats()["camera"]["state"] == "ended"
    assert any("ended (no loop)" in r.getMessage() for r in caplog.records)


def test_cli_width_alone_streams_at_4_3_without_a_camera() -> None:
    """`camstream --width 320` on a machine without a camera: the test pattern at 320x240."""
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "camstream", "--width", "320", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        line = read_line(process.stdout)  # the banner, printed once it is serving
    finally:
        stop_process(process)
    assert "320x240" in line, line
