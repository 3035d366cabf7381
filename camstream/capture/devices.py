"""Opening OpenCV captures: which backend, which pixel format, and what the device granted.

USB webcams offer several pixel formats. Over USB 2 the uncompressed one (YUYV) reaches full
rate only at 640x480 (1280x720 at about 10 fps, 1920x1080 at 5), while MJPEG runs at 30 fps at
every size. OpenCV's V4L2 backend, left to itself, picks YUYV before MJPEG (its fixed
``try_order`` in ``autosetup_capture_mode_v4l2``; opencv/opencv issue #9540), so camstream asks
for MJPEG explicitly and, when granted, takes the camera's own JPEG files without decoding them.

Backends (``backend="auto"``):

=========  ================  ===========================================================
platform   devices           why
=========  ================  ===========================================================
Linux      V4L2              the only one with MJPEG capture and raw buffers
Windows    DirectShow        opens in well under a second and offers MJPG; MSMF is slow
                             to open and often ignores the pixel format
macOS      AVFoundation      the only camera backend there
other      OpenCV's choice
files,     FFmpeg            raw packets (``CAP_PROP_FORMAT = -1``) for MJPEG, so files
URLs                         and MJPEG streams pass through without a decode
=========  ================  ===========================================================
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Union

import cv2

from .. import logs
from ..errors import ConfigError

__all__ = [
    "BACKENDS",
    "CaptureFactory",
    "CaptureMode",
    "PIXEL_FORMATS",
    "VideoCaptureLike",
    "backend_for_device",
    "backend_for_stream",
    "fourcc_code",
    "fourcc_name",
    "negotiate_device",
    "open_raw_jpeg_stream",
    "opencv_capture",
    "pixel_format_code",
]

logger = logs.get_logger(__name__)

BACKENDS: dict[str, int] = {
    "any": cv2.CAP_ANY,
    "v4l2": cv2.CAP_V4L2,
    "dshow": cv2.CAP_DSHOW,
    "msmf": cv2.CAP_MSMF,
    "avfoundation": cv2.CAP_AVFOUNDATION,
    "gstreamer": cv2.CAP_GSTREAMER,
    "ffmpeg": cv2.CAP_FFMPEG,
}
"""Names accepted by ``backend`` / ``--backend`` (besides ``"auto"``)."""

PIXEL_FORMATS: dict[str, str | None] = {
    "auto": "MJPG",  # MJPEG if the device has it, else whatever it gives
    "mjpeg": "MJPG",
    "yuyv": "YUYV",
    "uyvy": "UYVY",
    "nv12": "NV12",
    "yu12": "YU12",
    "grey": "GREY",
    "native": None,  # ask for nothing: the backend's own choice
}
"""Names accepted by ``pixel_format`` / ``--pixel-format``; any other 4-character code (FOURCC)
is passed to the device as it is."""

_JPEG_FOURCCS = frozenset({"MJPG", "JPEG", "mjpg", "jpeg", "MJPEG"})
_URL_TIMEOUT_MS = 5000  # a relay whose upstream stops answering counts as lost after this


class VideoCaptureLike(Protocol):
    """What camstream uses of ``cv2.VideoCapture`` (a test double implements just this)."""

    def isOpened(self) -> bool: ...  # noqa: N802  (OpenCV's names)
    def read(self) -> tuple[bool, Any]: ...
    def get(self, prop: int) -> float: ...
    def set(self, prop: int, value: float) -> bool: ...
    def release(self) -> None: ...
    def getBackendName(self) -> str: ...  # noqa: N802


CaptureFactory = Callable[[Union[int, str], int], VideoCaptureLike]
"""``factory(target, api_preference) -> capture``: how a :class:`CameraThread` opens a source.

The default is :func:`opencv_capture` (``cv2.VideoCapture``). Give another one for tests (a
fake camera) or for unusual backends (a capture object built with extra open parameters).
"""


def opencv_capture(target: int | str, api_preference: int) -> VideoCaptureLike:
    """``cv2.VideoCapture(target, api_preference)``; stream URLs get open and read timeouts.

    Without them a relay whose upstream stops answering (rather than closing) would block in
    ``read()`` for FFmpeg's default of 30 s.
    """
    if isinstance(target, str) and "://" in target and hasattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC"):
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, _URL_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, _URL_TIMEOUT_MS,
        ]
        return cv2.VideoCapture(target, api_preference, params)
    return cv2.VideoCapture(target, api_preference)


def backend_for_device(name: str) -> int:
    """The OpenCV API preference for a camera: ``name`` from :data:`BACKENDS` or ``"auto"``."""
    if name != "auto":
        return _backend(name)
    if sys.platform.startswith("linux"):
        return cv2.CAP_V4L2
    if sys.platform == "win32":
        return cv2.CAP_DSHOW
    if sys.platform == "darwin":
        return cv2.CAP_AVFOUNDATION
    return cv2.CAP_ANY


def backend_for_stream(name: str) -> int:
    """The OpenCV API preference for a file or URL (FFmpeg unless told otherwise)."""
    return cv2.CAP_FFMPEG if name == "auto" else _backend(name)


def _backend(name: str) -> int:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ConfigError(
            f"unknown backend {name!r}: use auto, {', '.join(BACKENDS)}"
        ) from None


def check_backend(name: object) -> str:
    """Validate a ``backend`` argument; returns it."""
    if not isinstance(name, str) or (name != "auto" and name not in BACKENDS):
        raise ConfigError(f"unknown backend {name!r}: use auto, {', '.join(BACKENDS)}")
    return name


def pixel_format_code(name: object) -> str | None:
    """The FOURCC to request for a ``pixel_format`` argument (None: request none).

    Raises:
        ConfigError: not a known name nor a 4-character code.
    """
    if not isinstance(name, str):
        raise ConfigError(f"pixel_format must be a string such as 'auto' or 'mjpeg', not {name!r}")
    key = name.lower()
    if key in PIXEL_FORMATS:
        return PIXEL_FORMATS[key]
    if len(name) == 4 and name.isascii() and name.isprintable():
        return name
    raise ConfigError(
        f"unknown pixel format {name!r}: use {', '.join(PIXEL_FORMATS)} or a 4-character FOURCC"
    )


def fourcc_code(name: str) -> int:
    return int(cv2.VideoWriter.fourcc(*name))


def fourcc_name(value: float) -> str:
    """The 4 characters of a FOURCC property value ('' if there is none)."""
    if not math.isfinite(value) or value <= 0 or value >= 2**32:
        return ""
    raw = int(value).to_bytes(4, "little")
    text = raw.decode("ascii", "replace").rstrip("\x00 ")
    return text if text.isprintable() else ""


def is_jpeg_fourcc(name: str) -> bool:
    return name.strip().upper() in {n.upper() for n in _JPEG_FOURCCS}


@dataclass(frozen=True)
class CaptureMode:
    """What a source delivers, as read back after opening it."""

    pixel_format: str  # FOURCC such as "MJPG" or "YUYV" ("" if the backend does not say)
    width: int
    height: int
    fps: float
    jpeg_passthrough: bool  # read() returns the source's own JPEG files (a 1xN uint8 array)
    backend: str  # the backend OpenCV used, e.g. "V4L2"

    def describe(self) -> str:
        kind = "JPEG passthrough" if self.jpeg_passthrough else "decoded"
        fmt = self.pixel_format or "unknown format"
        return f"{fmt} {self.width}x{self.height} at {self.fps:.3g} fps ({kind}, {self.backend})"


def negotiate_device(
    capture: VideoCaptureLike,
    pixel_format: str | None,
    width: int | None,
    height: int | None,
    fps: float,
) -> CaptureMode:
    """Ask an open camera for a format, size and rate; read back what it granted.

    The format is set first: on V4L2 each ``CAP_PROP_FOURCC`` set restarts the stream with the
    new format (``setProperty`` -> ``v4l2_reset`` in OpenCV's cap_v4l.cpp) and the sizes and
    rates on offer depend on it, so size and fps come after. When the camera grants MJPEG,
    ``CAP_PROP_CONVERT_RGB`` is turned off: cap_v4l.cpp then skips its ``imdecode`` and
    ``v4l2_create_frame`` hands out the buffer itself as a 1 x ``bytesused`` single-channel
    8-bit image — the camera's JPEG file. Other backends may ignore the setting and keep
    returning BGR: the reader accepts either, frame by frame. (Read in opencv/opencv
    ``modules/videoio/src/cap_v4l.cpp`` at 02b4975: ``setProperty`` for FOURCC / CONVERT_RGB,
    ``v4l2_create_frame``, ``convertToRgb``, ``autosetup_capture_mode_v4l2``.)
    """
    if pixel_format is not None:
        capture.set(cv2.CAP_PROP_FOURCC, fourcc_code(pixel_format))
    if width is not None:
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
    if height is not None:
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
    capture.set(cv2.CAP_PROP_FPS, fps)
    granted = fourcc_name(capture.get(cv2.CAP_PROP_FOURCC))
    passthrough = is_jpeg_fourcc(granted) and bool(capture.set(cv2.CAP_PROP_CONVERT_RGB, 0))
    reported_fps = capture.get(cv2.CAP_PROP_FPS)
    return CaptureMode(
        pixel_format=granted,
        width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) or (width or 0),
        height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) or (height or 0),
        fps=reported_fps if 0 < reported_fps <= 1000 else fps,
        jpeg_passthrough=passthrough,
        backend=backend_name(capture),
    )


def shortfall(
    mode: CaptureMode, pixel_format: str | None, width: int | None, height: int | None,
    fps: float, *, format_forced: bool,
) -> list[str]:
    """What the device granted that is less than, or other than, what was asked."""
    gaps = []
    if format_forced and pixel_format is not None and mode.pixel_format != pixel_format:
        gaps.append(f"format {mode.pixel_format or 'unknown'} instead of {pixel_format}")
    if (width is not None and mode.width != width) or (
        height is not None and mode.height != height
    ):
        asked = f"{width or '*'}x{height or '*'}"
        gaps.append(f"{mode.width}x{mode.height} instead of {asked}")
    if mode.fps < fps - 0.5:
        gaps.append(f"{mode.fps:.3g} fps instead of {fps:.3g}")
    return gaps


def open_raw_jpeg_stream(capture: VideoCaptureLike) -> tuple[str, bool]:
    """Switch an FFmpeg capture of an MJPEG file or stream to raw packets, if it is MJPEG.

    Returns ``(codec FOURCC, raw)``. With ``CAP_PROP_FORMAT = -1`` FFmpeg's ``read()`` returns
    each packet undecoded as a 1xN uint8 array; for MJPEG a packet is one JPEG file. Other
    codecs (H.264, ...) keep the decoding path: their packets are not pictures.
    """
    codec = fourcc_name(capture.get(cv2.CAP_PROP_FOURCC))
    if not is_jpeg_fourcc(codec):
        return codec, False
    return codec, bool(capture.set(cv2.CAP_PROP_FORMAT, -1))


def backend_name(capture: VideoCaptureLike) -> str:
    try:
        return str(capture.getBackendName())
    except Exception:  # OpenCV raises when a backend has no name; a fake may not have one
        return "unknown"
