"""Webcam logic against a V4L2-like fake camera (tests/fake_capture.py) behind the seam.

Mode selection (MJPEG asked for before size and fps), the readback warning, JPEG passthrough,
corrupt-frame drop, camera controls, and a vanishing camera.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import cv2
import numpy as np
import pytest
import websocket
from conftest import SLACK, TIMEOUT, wait_until
from fake_capture import FakeCapture, FakeWebcam, pictures, strip_dht
from helpers import frames_from

from camstream import CameraState, CameraThread, ConfigError, SourceError
from camstream.capture.camera import describe_source
from camstream.capture.jpeg import inspect_jpeg


def test_mjpeg_is_asked_for_before_size_and_fps(caplog: pytest.LogCaptureFixture) -> None:
    webcam = FakeWebcam()
    caplog.set_level(logging.INFO, "camstream")
    with CameraThread(0, width=1280, height=720, capture_factory=webcam.factory) as camera:
        names = [name for name, _ in webcam.calls]
        assert names.index("fourcc") < names.index("width") < names.index("fps"), names
        assert webcam.opens == [(0, cv2.CAP_V4L2)]
        assert (camera.pixel_format, camera.width, camera.height, camera.fps) == (
            "MJPG", 1280, 720, 30.0)
        assert camera.jpeg_passthrough and camera.backend == "V4L2"
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("MJPG 1280x720 at 30 fps (JPEG passthrough" in m for m in info), info
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_forced_yuyv_gets_yuyv_and_one_warning_names_what_was_granted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    webcam = FakeWebcam()
    caplog.set_level(logging.INFO, "camstream")
    camera = CameraThread(0, width=1280, height=720, pixel_format="yuyv",
                          capture_factory=webcam.factory)
    with camera:
        frame = frames_from(camera, 1)[0]
        assert camera.pixel_format == "YUYV" and not camera.jpeg_passthrough
        assert camera.fps == 10.0 and frame.jpeg is None and frame.is_decoded
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "YUYV 1280x720 at 10 fps" in warnings[0] and "10 fps instead of 30" in warnings[0]


def test_size_the_camera_does_not_have_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    webcam = FakeWebcam()
    caplog.set_level(logging.WARNING, "camstream")
    with CameraThread(0, width=1000, height=600, capture_factory=webcam.factory) as camera:
        assert (camera.width, camera.height) == (1280, 720)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "1280x720 instead of 1000x600" in warnings[0], warnings


def test_camera_without_mjpeg_falls_back_to_what_it_gives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    webcam = FakeWebcam(formats=("YUYV",))
    caplog.set_level(logging.WARNING, "camstream")
    with CameraThread(0, capture_factory=webcam.factory) as camera:
        frame = frames_from(camera, 1)[0]
        assert camera.pixel_format == "YUYV" and frame.jpeg is None
        assert (camera.width, camera.height, camera.fps) == (640, 480, 30.0)
    assert not caplog.records, "auto falling back at full rate is not a warning"


def test_passthrough_frames_are_the_cameras_jpeg_never_decoded() -> None:
    webcam = FakeWebcam(truncated_every=0)
    with CameraThread(0, width=1920, height=1080, capture_factory=webcam.factory) as camera:
        frames = frames_from(camera, 6)
        originals = set(pictures((1920, 1080))[1])
        stripped = {strip_dht(data) for data in originals}
        for frame in frames:
            assert frame.jpeg in originals | stripped
            assert not frame.is_decoded
            assert (frame.width, frame.height) == (1920, 1080)
        assert any(not inspect_jpeg(f.jpeg).has_huffman_tables for f in frames)
        assert camera.decodes == 0
        image = frames[-1].image  # something that needs pixels decodes once
        assert image.shape == (1080, 1920, 3) and camera.decodes == 1


def test_truncated_frames_are_dropped_and_counted() -> None:
    webcam = FakeWebcam(truncated_every=3, dht_less_every=0)
    with CameraThread(0, capture_factory=webcam.factory) as camera:
        frames = frames_from(camera, 8)
        for frame in frames:
            inspect_jpeg(frame.jpeg)  # whole files only
        assert camera.frames_dropped_corrupt >= 2
        sent_corrupt = sum(1 for i, _ in enumerate(webcam.sent, 1) if i % 3 == 0)
        assert camera.frames_dropped_corrupt <= sent_corrupt
        assert camera.frames_captured + camera.frames_dropped_corrupt >= len(frames)


def test_frames_whose_header_disagrees_with_the_stream_are_dropped() -> None:
    webcam = FakeWebcam(truncated_every=0, wrong_size_every=2)
    with CameraThread(0, capture_factory=webcam.factory) as camera:
        frames = frames_from(camera, 5)
        assert {(f.width, f.height) for f in frames} == {(640, 480)}
        assert camera.frames_dropped_corrupt >= 4
        assert (camera.width, camera.height) == (640, 480)


def test_backend_that_ignores_convert_rgb_gives_pixels() -> None:
    webcam = FakeWebcam(honours_convert_rgb=False)
    with CameraThread(0, width=1280, height=720, capture_factory=webcam.factory) as camera:
        frame = frames_from(camera, 2)[-1]
        assert camera.pixel_format == "MJPG"
        assert frame.jpeg is None and frame.image.shape == (720, 1280, 3)


def test_camera_settings_applied_after_every_open(caplog: pytest.LogCaptureFixture) -> None:
    webcam = FakeWebcam()
    caplog.set_level(logging.INFO, "camstream")
    lost, restored = threading.Event(), threading.Event()

    def listen(event: str, details: dict) -> None:
        (lost if event == "camera_lost" else restored).set()

    camera = CameraThread(
        0, capture_factory=webcam.factory, reconnect_delay_max=0.25,
        camera_settings=["brightness=200", "exposure=99999", "focus=10"],
    )
    camera.add_listener(listen)
    with camera:
        assert {(r.name, r.granted) for r in camera.controls} == {
            ("brightness", True), ("exposure", False), ("focus", False)}
        frames_from(camera, 1)
        webcam.vanish()
        assert lost.wait(TIMEOUT) and camera.state is CameraState.LOST
        seq = camera.latest().seq
        webcam.come_back()
        assert restored.wait(TIMEOUT)
        assert camera.wait_for_frame(seq, TIMEOUT) is not None
        assert camera.jpeg_passthrough, "the reopened camera is in MJPEG mode again"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("brightness=200 granted" in m for m in messages) == 2, messages
    assert any("exposure=99999 refused (reads 2047)" in m for m in messages)
    assert any("focus=10 refused (reads unknown)" in m for m in messages)


@pytest.mark.parametrize(
    "settings, message",
    [
        (["shutter=3"], "unknown camera setting 'shutter'"),
        (["exposure"], "NAME=VALUE"),
        (["exposure=fast"], "needs a number"),
        (["gain=nan"], "needs a number"),
        ({"gain": 1e300}, "needs a number"),
        ("exposure=3", "mapping or a list"),
    ],
)
def test_bad_camera_settings_are_config_errors(settings: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CameraThread(0, camera_settings=settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"pixel_format": "bogus"}, "unknown pixel format"),
        ({"pixel_format": 3}, "pixel_format must be a string"),
        ({"backend": "quicktime"}, "unknown backend"),
    ],
)
def test_bad_pixel_format_and_backend(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CameraThread(0, **kwargs)


def test_device_paths_and_stable_names_are_cameras() -> None:
    webcam = FakeWebcam()
    with CameraThread("/dev/video7", capture_factory=webcam.factory) as camera:
        assert camera.pixel_format == "MJPG"
    assert webcam.opens[-1] == ("/dev/video7", cv2.CAP_V4L2)
    stable = "/dev/v4l/by-id/usb-Fake_Webcam-video-index0"
    assert describe_source(stable) == f"camera {stable}"
    with CameraThread(stable, capture_factory=webcam.factory):
        pass
    assert webcam.opens[-1][0] == stable  # no such link here: realpath leaves it as it is


# Rates: run these with the heavy lock held (flock /tmp/camstream-heavy.lock pytest ...), as
# every fps measurement on the shared machine.

MEASURE_S = 2.0


def measured_rate(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def test_720p_is_full_rate_in_the_camera_thread() -> None:
    """The `--width 1280 --height 720` case: YUYV would give 10 fps, MJPEG gives 30."""
    webcam = FakeWebcam(truncated_every=0)  # a dropped corrupt frame is a frame less
    with CameraThread(0, width=1280, height=720, capture_factory=webcam.factory) as camera:
        frames_from(camera, 3)  # warm up
        stamps, seq = [], camera.latest().seq
        while not stamps or stamps[-1] - stamps[0] < MEASURE_S:
            frame = camera.wait_for_frame(seq, TIMEOUT)
            assert frame is not None
            seq = frame.seq
            stamps.append(frame.captured_monotonic)
    rate = measured_rate(stamps)
    assert rate >= 29.5 / SLACK, rate  # the camera's 30 (YUYV gives 10)
    with CameraThread(0, width=1280, height=720, pixel_format="yuyv",
                      capture_factory=FakeWebcam().factory) as camera:
        frames = frames_from(camera, 6)
    yuyv_rate = measured_rate([f.captured_monotonic for f in frames])
    assert yuyv_rate < 11, yuyv_rate  # what camstream got before it asked for MJPEG


def test_720p_is_full_rate_for_a_real_viewer(streamer_factory) -> None:
    webcam = FakeWebcam(truncated_every=0)
    streamer = streamer_factory(0, width=1280, height=720, capture_factory=webcam.factory)
    # max_bytes=0: this viewer takes frames of any size (the camera's 720p JPEGs, untouched
    # once passthrough is there); a server that does not know the key answers with an error.
    ws = websocket.create_connection(streamer.url + "?max_bytes=0", timeout=TIMEOUT)
    try:
        metadata = json.loads(ws.recv())
        while metadata["type"] == "error":
            metadata = json.loads(ws.recv())
        assert metadata["type"] == "metadata"
        assert metadata["source_format"] == "MJPG" and metadata["source_fps"] == 30.0
        stamps: list[float] = []
        while not stamps or stamps[-1] - stamps[0] < MEASURE_S:
            message = ws.recv()
            if isinstance(message, bytes):
                stamps.append(time.monotonic())
        assert len(stamps) > 10
        rate = measured_rate(stamps[5:])  # skip the first frames (connection warm-up)
        stats = streamer.stats()["camera"]
    finally:
        ws.close()
    assert rate >= 29.5 / SLACK, rate  # the camera's 30 (YUYV gives 10)
    assert stats["format"] == "MJPG" and stats["jpeg_passthrough"] is True
    assert (stats["width"], stats["height"], stats["fps"]) == (1280, 720, 30.0)


def test_a_driver_that_throws_while_being_set_up_is_a_source_error() -> None:
    webcam = FakeWebcam()
    released = []

    class Throwing(FakeCapture):
        def set(self, prop: int, value: float) -> bool:
            raise cv2.error("VIDIOC_S_FMT: Device or resource busy")

        def release(self) -> None:
            released.append(True)
            super().release()

    with pytest.raises(SourceError, match="cannot set up camera 0: .*busy"):
        CameraThread(0, capture_factory=lambda target, api: Throwing(webcam)).start()
    assert released == [True]


def test_oversized_buffers_are_dropped() -> None:
    class Flooding(FakeCapture):
        def read(self) -> tuple:
            ok, buffer = super().read()
            if ok and buffer.ndim == 2 and buffer.shape[0] == 1:
                return True, np.zeros((1, 65 * 1024 * 1024), np.uint8)
            return ok, buffer

    webcam = FakeWebcam()
    with CameraThread(0, capture_factory=lambda t, a: Flooding(webcam)) as camera:
        assert wait_until(lambda: camera.frames_dropped_corrupt >= 2)
        assert camera.latest() is None
