"""CameraThread with real sources: the test pattern, video files written here, pushed frames."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TIMEOUT, write_video

from camstream import CameraState, CameraThread, ConfigError, SourceError


def frames_from(camera: CameraThread, count: int) -> list:
    frames, seq = [], 0
    for _ in range(count):
        frame = camera.wait_for_frame(seq, TIMEOUT)
        assert frame is not None, "no frame within the timeout"
        frames.append(frame)
        seq = frame.seq
    return frames


def test_test_pattern_runs_at_requested_size_and_rate() -> None:
    with CameraThread("test", width=320, height=240, fps=25) as camera:
        frames = frames_from(camera, 26)
    assert {(f.width, f.height) for f in frames} == {(320, 240)}
    assert camera.width == 320 and camera.height == 240 and camera.fps == 25
    seqs = [f.seq for f in frames]
    assert seqs == sorted(set(seqs)), "each wait returns a newer frame"
    elapsed = frames[-1].captured_monotonic - frames[0].captured_monotonic
    rate = (frames[-1].seq - frames[0].seq) / elapsed
    assert 20 <= rate <= 27, rate
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
    assert 14 <= rate <= 22, rate
    assert camera.state is CameraState.STOPPED


def test_video_file_without_loop_ends(tmp_path: Path) -> None:
    path = write_video(tmp_path / "five.avi", frames=5, fps=50)
    with CameraThread(str(path), loop=False) as camera:
        frames = frames_from(camera, 5)
        assert camera.wait_for_frame(frames[-1].seq, 0.5) is None
        assert camera.state is CameraState.ENDED


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
        assert frame is not None and frame.captured_monotonic - back_at < 2.0
    assert [e for e, _ in events] == ["camera_lost", "camera_restored"]
