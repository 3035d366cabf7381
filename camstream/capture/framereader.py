"""One read of an open capture, as a frame the camera can store.

:class:`FrameReader` turns what ``capture.read()`` hands out into the source's own JPEG file
(passthrough mode: the backend's 1xN buffer) or pixels (scaled to the requested size for files
and streams). Buffers that cannot be a frame of this source are dropped and counted: a JPEG
over 64 MiB, a camera JPEG whose size is not the one the camera granted, pixels of the wrong
type. No thread of its own: the camera thread calls it.
"""

from __future__ import annotations

from typing import Callable, Union

import cv2
import numpy as np

from .. import logs
from .devices import CaptureMode, VideoCaptureLike
from .jpeg import CorruptJpeg, inspect_jpeg
from .sources import SourceKind, is_buffer

__all__ = ["FrameReader", "Payload"]

logger = logs.get_logger(__name__)

MAX_JPEG_BYTES = 64 * 1024 * 1024  # far above an 8192x8192 JPEG at quality 100

Payload = Union[np.ndarray, bytes, None]
"""A frame read: pixels, the source's JPEG file, or None (a buffer dropped, read on)."""


class FrameReader:
    """Reads frames from a capture of one source.

    Args:
        kind: the source's kind (devices are not scaled; their JPEGs are size-checked).
        requested_size: returns the size asked for, ``(None, None)`` if none (files and
            streams are scaled to it; it may change when the source opens).
        on_dropped: called for every buffer dropped as not a frame (the camera counts them).
    """

    def __init__(
        self,
        kind: SourceKind,
        requested_size: Callable[[], tuple[int | None, int | None]],
        on_dropped: Callable[[], None],
    ) -> None:
        self._kind = kind
        self._requested_size = requested_size
        self._on_dropped = on_dropped

    def read(
        self, capture: VideoCaptureLike | None, mode: CaptureMode | None
    ) -> tuple[bool, Payload]:
        """One frame: ``(True, payload)``, or ``(False, None)`` if the read failed (the source
        is lost or at its end).

        In passthrough mode the backend hands out a 1xN uint8 array holding one JPEG file; a
        backend that ignored ``CONVERT_RGB = 0`` hands out BGR pixels instead, taken as such.
        """
        if capture is None:
            return False, None
        try:
            ok, image = capture.read()
            if not ok or not isinstance(image, np.ndarray) or image.size == 0:
                return False, None
            if mode is not None and mode.jpeg_passthrough and is_buffer(image):
                if image.size > MAX_JPEG_BYTES:  # no real frame is this big: a broken stream
                    self._on_dropped()
                    return True, None
                data = image.tobytes()
                return True, data if self._matches_stream(data, mode) else None
            if image.dtype != np.uint8 or image.ndim not in (2, 3) or is_buffer(image):
                logger.debug("dropped a %s %s frame", image.dtype, image.shape)
                return True, None
            return True, self._fit(image)
        except cv2.error as exc:  # a broken stream: treated like any failed read (reopen)
            logger.debug("read failed: %s", exc)
            return False, None

    def _matches_stream(self, data: bytes, mode: CaptureMode) -> bool:
        """A camera's JPEG must have the size the camera granted; others are dropped, counted.

        (V4L2 fixes the size when the format is set; a frame header that says otherwise is a
        damaged buffer. Files and streams may change size between frames: not checked.)
        """
        if self._kind is not SourceKind.DEVICE or not mode.width:
            return True
        try:
            info = inspect_jpeg(data)
        except CorruptJpeg:
            return True  # the camera's store drops and counts it
        if (info.width, info.height) == (mode.width, mode.height):
            return True
        self._on_dropped()
        logger.debug("dropped a %dx%d JPEG from a %dx%d camera stream",
                     info.width, info.height, mode.width, mode.height)
        return False

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """Scale file and stream frames to the requested size, if one was given."""
        width, height = self._requested_size()
        if self._kind is SourceKind.DEVICE or width is None or height is None:
            return image
        if image.shape[1] == width and image.shape[0] == height:
            return image
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
