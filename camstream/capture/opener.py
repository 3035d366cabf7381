"""Opening a capture: a webcam in the mode it grants, a file or stream as raw JPEG if it can.

:class:`CaptureOpener` holds what :class:`~camstream.capture.camera.CameraThread` was asked for
(pixel
format, backend, size, rate, camera settings) and opens a source with it, at the first open and
at every reopen after a loss: devices are negotiated
(:func:`camstream.capture.devices.negotiate_device`)
and their camera settings applied; MJPEG files and streams are read as raw JPEG packets unless
they must be scaled. No thread of its own: the camera thread calls it.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

import cv2

from .. import logs
from ..errors import SourceError
from . import devices
from .controls import ControlResult, ControlValue, apply_controls, parse_controls
from .devices import CaptureFactory, CaptureMode, VideoCaptureLike
from .sources import Source, SourceKind, complete_size, describe_source, quiet_opencv

__all__ = ["CaptureOpener"]

logger = logs.get_logger(__name__)


class CaptureOpener:
    """Opens sources with the settings a :class:`~camstream.capture.camera.CameraThread` was given.

    Args:
        pixel_format, backend, camera_settings, capture_factory: see ``CameraThread``.
        size: the (width, height) asked for, either or both None.
        fps: the rate asked for.

    Raises:
        ConfigError: an unknown pixel format, backend or camera setting.
    """

    def __init__(
        self,
        *,
        pixel_format: str,
        backend: str,
        camera_settings: Mapping[str, ControlValue] | Iterable[str] | None,
        capture_factory: CaptureFactory | None,
        size: tuple[int | None, int | None],
        fps: float,
    ) -> None:
        self._pixel_format_name = pixel_format
        self._pixel_format = devices.pixel_format_code(pixel_format)
        self._backend_name = devices.check_backend(backend)
        self._camera_settings = parse_controls(camera_settings)
        self._factory: CaptureFactory = capture_factory or devices.opencv_capture
        self.given_size = size
        self.requested_size: tuple[int | None, int | None] = complete_size(*size, 4, 3)
        """The size asked for, the missing side filled in (from the source's aspect ratio
        once a file or stream is open, else 4:3)."""
        self._requested_fps = fps
        self._source: Source = ""
        self._kind = SourceKind.TEST
        self._target: int | str | None = None
        self._previous: CaptureMode | None = None
        self._controls: list[ControlResult] | None = None

    def open(
        self, source: Source, kind: SourceKind, target: int | str | None, *, first_time: bool,
        previous: CaptureMode | None,
    ) -> tuple[VideoCaptureLike, CaptureMode, list[ControlResult] | None]:
        """Open the capture, negotiate its mode, apply the camera settings, read them back.

        Args:
            source, kind, target: what to open (see :func:`camstream.capture.sources.classify`).
            first_time: the first open (later ones are reopens: fewer log lines).
            previous: the mode granted at the last open, if any.

        Returns:
            The open capture, the mode it was granted, and the camera settings as applied
            (None if none were applied).

        Raises:
            SourceError: it cannot be opened or set up.
        """
        self.check_exists(source, kind, target)
        self._source, self._kind, self._target, self._previous = source, kind, target, previous
        self._controls = None
        description = describe_source(self._source)
        is_device = self._kind is SourceKind.DEVICE
        if is_device and isinstance(target, str):
            # A stable name (/dev/v4l/by-id/...) points at whichever /dev/videoN the camera got
            # this time it was plugged in: resolve it at every open.
            target = os.path.realpath(target)
        if is_device:
            api = devices.backend_for_device(self._backend_name)
        else:
            api = devices.backend_for_stream(self._backend_name)
        assert target is not None  # only push sources have none, and they are never opened
        with quiet_opencv():
            capture = self._create(target, api)
            if capture is None and not is_device and self._backend_name == "auto":
                capture = self._create(target, cv2.CAP_ANY)  # FFmpeg could not: try the others
            if capture is None:
                raise SourceError(self._source, self._open_failure_message())
            try:
                mode = self._configure(capture, first_time)
            except BaseException as exc:
                capture.release()
                if isinstance(exc, cv2.error):  # the driver refused a setting outright
                    raise SourceError(self._source, f"cannot set up {description}: {exc}") from exc
                raise
        return capture, mode, self._controls

    @staticmethod
    def check_exists(source: Source, kind: SourceKind, target: int | str | None) -> None:
        """What can be known without opening: a file source must exist. Any thread.

        Raises:
            SourceError: it is a file that does not exist.
        """
        if kind is SourceKind.FILE and not os.path.exists(str(target)):
            raise SourceError(
                source,
                f"cannot open {describe_source(source)}: no such file. Give an existing video "
                f"file, a stream URL, a camera index, or 'test' for the built-in test pattern.",
            )

    def _configure(self, capture: VideoCaptureLike, first_time: bool) -> CaptureMode:
        """Negotiate the mode of a just-opened capture and apply the camera settings."""
        if self._kind is not SourceKind.DEVICE:
            if self._camera_settings and first_time:
                logger.warning("camera settings apply to cameras only; ignored for %s",
                               describe_source(self._source))
            return self._negotiate_stream(capture)
        mode = self._negotiate_device(capture, first_time)
        if self._camera_settings:
            self._controls = apply_controls(capture, self._camera_settings)
        return mode

    def _create(self, target: int | str, api: int) -> VideoCaptureLike | None:
        """The factory's capture if it opened, else None (released)."""
        try:
            capture = self._factory(target, api)
        except cv2.error as exc:  # OpenCV refuses some targets outright
            logger.debug("cannot open %r: %s", target, exc)
            return None
        if capture.isOpened():
            return capture
        capture.release()
        return None

    def _negotiate_device(self, capture: VideoCaptureLike, first_time: bool) -> CaptureMode:
        width, height = self.requested_size
        mode = devices.negotiate_device(
            capture, self._pixel_format, width, height, self._requested_fps
        )
        forced = self._pixel_format_name.lower() != "auto"
        gaps = devices.shortfall(
            mode, self._pixel_format, *self.given_size, self._requested_fps,
            format_forced=forced,
        )
        if gaps and (first_time or mode != self._previous):
            logger.warning(
                "%s gives %s: %s", describe_source(self._source), mode.describe(), "; ".join(gaps)
            )
        return mode

    def _negotiate_stream(self, capture: VideoCaptureLike) -> CaptureMode:
        """Files and URLs: MJPEG ones are read as raw JPEG packets unless they must be scaled."""
        source_size = (
            int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        )
        if all(source_size) and (self.given_size[0] is None) != (self.given_size[1] is None):
            # One side given: keep the source's aspect ratio.
            self.requested_size = complete_size(*self.given_size, *source_size)
        wanted = self.requested_size
        needs_scaling = wanted[0] is not None and wanted != source_size
        codec, raw = devices.fourcc_name(capture.get(cv2.CAP_PROP_FOURCC)), False
        if not needs_scaling:
            codec, raw = devices.open_raw_jpeg_stream(capture)
        reported_fps = capture.get(cv2.CAP_PROP_FPS)
        fps = reported_fps if 0 < reported_fps <= 1000 else self._requested_fps
        return CaptureMode(
            pixel_format=codec, width=source_size[0], height=source_size[1],
            fps=fps if self._kind is SourceKind.FILE else self._requested_fps,
            jpeg_passthrough=raw, backend=devices.backend_name(capture),
        )

    def _open_failure_message(self) -> str:
        description = describe_source(self._source)
        if self._kind is SourceKind.DEVICE:
            where = self._target if isinstance(self._target, str) else f"/dev/video{self._target}"
            return (
                f"cannot open {description}: no camera there, or it is busy or not permitted. "
                f"Check the device ({where} on Linux; camstream --list-cameras lists them) or "
                f"use source 'test' (camstream --source test) for the built-in test pattern."
            )
        if self._kind is SourceKind.URL:
            return f"cannot open {description}: the stream did not answer or is not a video."
        return f"cannot open {description}: not a video OpenCV can read."
