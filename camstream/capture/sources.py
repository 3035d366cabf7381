"""What a source names, and small helpers for reading it through OpenCV. No threads.

:func:`classify` tells the kinds of :data:`Source` apart (see :mod:`camstream.capture.camera` for
what
each means); :func:`describe_source` words one for logs and errors.
"""

from __future__ import annotations

import contextlib
import enum
import math
import urllib.parse
from typing import Iterator, Union

import cv2
import numpy as np

from ..errors import ConfigError
from ..protocol import MAX_FPS, MAX_JPEG_SIDE, MAX_SIDE

__all__ = [
    "AUTO", "Source", "SourceKind", "check_fps", "check_pushed_image", "check_request",
    "classify", "complete_size", "describe_source", "is_buffer", "quiet_opencv",
]

Source = Union[int, str]
"""``"auto"``, a device index or path, a file path or URL, ``"test"``, or ``"push"``."""

AUTO = "auto"
_DEVICE_PREFIXES = ("/dev/video", "/dev/v4l/")
_URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class SourceKind(str, enum.Enum):
    """What kind of source a :data:`Source` names."""

    AUTO = "auto"
    DEVICE = "device"
    FILE = "file"
    URL = "url"
    TEST = "test"
    PUSH = "push"


_SOURCE_HELP = "a camera index (0), a device path, a video file, a stream URL, 'test' or 'push'"


def classify(source: Source) -> tuple[SourceKind, Union[int, str, None]]:
    """The kind of ``source`` and its target (device index or path, file, URL).

    Raises:
        ConfigError: not a source camstream knows.
    """
    if source is None:
        # None used to mean push; with "auto" as the default it is more likely a mistake.
        raise ConfigError(
            f"source is None: give 'auto', 'push' (to publish frames) or {_SOURCE_HELP}"
        )
    if isinstance(source, bool):
        raise ConfigError(f"unknown source {source!r}: give {_SOURCE_HELP}")
    if isinstance(source, int):
        if source < 0:
            raise ConfigError(f"camera index must be 0 or more, not {source}")
        return SourceKind.DEVICE, source
    if not isinstance(source, str):
        raise ConfigError(f"source must be {_SOURCE_HELP}, not {type(source).__name__}")
    if not source.strip():
        raise ConfigError(f"source is empty: give {_SOURCE_HELP}")
    if source == "push":
        return SourceKind.PUSH, None
    if source == AUTO:
        return SourceKind.AUTO, 0
    if source.strip().isdigit():
        return SourceKind.DEVICE, int(source)
    if source.startswith(_DEVICE_PREFIXES):
        return SourceKind.DEVICE, source
    if source == "test":
        return SourceKind.TEST, source
    if source.lower().startswith(_URL_SCHEMES):
        return SourceKind.URL, source
    return SourceKind.FILE, source


def describe_source(source: Source) -> str:
    """A short human description of ``source``, for logs and error messages."""
    kind, value = classify(source)
    if kind is SourceKind.AUTO:
        return "camera 0 or the test pattern"
    if kind is SourceKind.DEVICE:
        return f"camera {value}"
    if kind is SourceKind.TEST:
        return "test pattern"
    if kind is SourceKind.PUSH:
        return "pushed frames"
    if kind is SourceKind.URL:
        return f"url {_redacted(str(value))}"
    return f"{kind.value} {value}"


def _redacted(url: str) -> str:
    """``url`` without its secrets, for logs and stats: a relay's source URL may carry the
    upstream's token (``?token=``) or a password (``user:pass@``)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{pair.split('=', 1)[0]}=***" if "=" in pair else pair
        for pair in parts.query.split("&") if pair
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own warnings (e.g. "can't open camera by index") for a moment.

    camstream reports these failures itself, as one clear exception or log line.
    """
    try:
        previous = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # an OpenCV build without the utils.logging module
        yield
        return
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


def is_buffer(image: np.ndarray) -> bool:
    """A 1xN (or N) uint8 array: an encoded buffer, not a picture."""
    return image.dtype == np.uint8 and (
        image.ndim == 1 or (image.ndim == 2 and image.shape[0] == 1)
    )


def check_fps(fps: object) -> None:
    """Check a camera rate (the ``Streamer``'s and the camera's ``fps``): a number above 0 and
    at most :data:`~camstream.protocol.MAX_FPS`.

    Raises:
        ConfigError: it is not.
    """
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (
        math.isfinite(fps) and 0 < fps <= MAX_FPS
    ):
        raise ConfigError(f"fps must be above 0 and at most {MAX_FPS:g}, not {fps!r}")


def check_request(width: object, height: object, fps: object) -> None:
    """Check the size and rate a camera is asked for (either side may be None).

    Raises:
        ConfigError: a side is not a whole number of pixels from 16 to
            :data:`~camstream.protocol.MAX_SIDE`, or the rate fails :func:`check_fps`.
    """
    check_fps(fps)
    for name, value in (("width", width), ("height", height)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be a whole number of pixels, not {value!r}")
        if not 16 <= value <= MAX_SIDE:
            raise ConfigError(f"{name} must be 16 to {MAX_SIDE} pixels, not {value}")


def complete_size(
    width: int | None, height: int | None, ratio_w: int, ratio_h: int
) -> tuple[int | None, int | None]:
    """Fill in the missing side of a size from an aspect ratio (even, at least 16)."""
    if width is not None and height is None:
        height = max(16, int(round(width * ratio_h / ratio_w / 2)) * 2)
    elif height is not None and width is None:
        width = max(16, int(round(height * ratio_w / ratio_h / 2)) * 2)
    return width, height


def check_pushed_image(image: object) -> None:
    """Check an image handed to ``publish()``: an 8-bit BGR, BGRA or grayscale numpy array.

    Raises:
        ConfigError: not such an image (the message says what it got).
    """
    if not isinstance(image, np.ndarray):
        raise ConfigError(
            f"publish() takes a numpy array (8-bit BGR, BGRA or grayscale), "
            f"not {type(image).__name__}"
        )
    got = f"got dtype {image.dtype}, shape {image.shape}"
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ConfigError(
            f"publish() takes an 8-bit BGR (HxWx3), BGRA (HxWx4) or grayscale (HxW) "
            f"array; {got}"
        )
    if image.ndim == 3 and image.shape[2] not in (1, 3, 4):
        raise ConfigError(f"publish() takes 1, 3 or 4 colour channels; {got}")
    if image.size == 0 or max(image.shape[:2]) > MAX_JPEG_SIDE:
        raise ConfigError(
            f"publish() takes a non-empty image at most {MAX_JPEG_SIDE} px a side; {got}"
        )
