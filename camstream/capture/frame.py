"""Frame: one captured picture, as pixels, as the source's own JPEG file, or both.

A source that delivers JPEG (a camera in MJPEG mode, an MJPEG file or stream,
``publish_jpeg``) makes frames that carry :attr:`Frame.jpeg`, the bytes exactly as the source
made them; their pixels are decoded only when something asks for :attr:`Frame.image`, at most
once, whichever thread asks first. Other sources make frames from pixels, with no JPEG.

Whoever needs the picture only at a smaller size (a rung of adaptive delivery, a small variant)
asks :meth:`Frame.pixels` instead: a JPEG frame not decoded yet is then decoded straight at the
smallest of libjpeg's scales (1/2, 1/4, 1/8: the inverse DCT at a smaller size) that still
covers that size, for less CPU (a 175 KB 1280x720 webcam frame at half size: ~3.3 ms against
~4.2 whole; the entropy decoding is the same, and the smaller picture needs less scaling after)
and as good a picture as a full decode scaled down by area averaging.

A frame may carry the application's data for it (:attr:`Frame.data_json`: ``publish(...,
data=)`` or the Streamer's ``annotate`` hook), serialized once when the frame is made; viewers
that asked for data get it right before the frame's JPEG.
"""

from __future__ import annotations

import threading
from typing import Callable

import cv2
import numpy as np

from .jpeg import CorruptJpeg, inspect_jpeg

__all__ = ["DECODE_SCALES", "Frame", "decoded_side"]

DECODE_SCALES = (8, 4, 2)
"""The reduced sizes libjpeg decodes at (1/8, 1/4, 1/2 of each side), smallest first."""



def decoded_side(side: int, scale: int) -> int:
    """A picture side of ``side`` pixels as libjpeg decodes it at 1/``scale`` (rounded up)."""
    return -(-side // scale)


# OpenCV refuses to decode a picture of more pixels than this (CV_IO_MAX_IMAGE_PIXELS's default),
# and must not decode one at a smaller scale instead: its header may lie (a 60000x60000 claim
# would allocate hundreds of MB at 1/8).
_MAX_DECODE_PIXELS = 1 << 30

# (scale, components) -> imdecode flags; as IMREAD_UNCHANGED does, an EXIF orientation is left
# alone (the frame's size is its header's).
_REDUCED_FLAGS = {
    key: flag | cv2.IMREAD_IGNORE_ORIENTATION for key, flag in {
        (8, 3): cv2.IMREAD_REDUCED_COLOR_8, (4, 3): cv2.IMREAD_REDUCED_COLOR_4,
        (2, 3): cv2.IMREAD_REDUCED_COLOR_2, (8, 1): cv2.IMREAD_REDUCED_GRAYSCALE_8,
        (4, 1): cv2.IMREAD_REDUCED_GRAYSCALE_4, (2, 1): cv2.IMREAD_REDUCED_GRAYSCALE_2,
    }.items()
}


class Frame:
    """One captured frame, shared read-only by every reader.

    Args:
        seq: increases by one per frame, starting at 1.
        image: the pixels (BGR, BGRA or grayscale, read-only), or None for a JPEG frame.
        captured_at: wall-clock capture time, seconds since the epoch (``time.time()``).
        captured_monotonic: capture time on ``time.monotonic()``'s clock, for durations.
        jpeg: the source's own JPEG file, untouched; None for frames made from pixels.
        width, height: the picture size; required with ``jpeg`` and no ``image`` (read it
            from the JPEG frame header: :func:`camstream.capture.jpeg.inspect_jpeg`).
        on_decode: called in the decoding thread each time the JPEG is decoded to pixels (once,
            or once more at a smaller scale: :meth:`pixels`), for counting decodes.
        data_json: the application's data for this frame as compact JSON text
            (:func:`camstream.protocol.encode_value`), or None for none. Set only before the
            frame is published (the camera thread sets it after ``annotate``).
    """

    __slots__ = (
        "seq",
        "captured_at",
        "captured_monotonic",
        "jpeg",
        "width",
        "height",
        "_image",
        "_reduced",
        "_decode_lock",
        "_on_decode",
        "data_json",
    )

    def __init__(
        self,
        seq: int,
        image: np.ndarray | None = None,
        captured_at: float = 0.0,
        captured_monotonic: float = 0.0,
        *,
        jpeg: bytes | None = None,
        width: int | None = None,
        height: int | None = None,
        on_decode: Callable[[], None] | None = None,
        data_json: str | None = None,
    ) -> None:
        if image is None and jpeg is None:
            raise ValueError("a Frame needs an image or a JPEG")
        if image is not None:
            height, width = int(image.shape[0]), int(image.shape[1])
        elif width is None or height is None:
            raise ValueError("a JPEG Frame without an image needs its width and height")
        self.seq = seq
        self.captured_at = captured_at
        self.captured_monotonic = captured_monotonic
        self.jpeg = jpeg
        self.width = int(width)
        self.height = int(height)
        self._image = image
        self._reduced: tuple[int, np.ndarray] | None = None  # (scale, pixels) of pixels()
        self._decode_lock = threading.Lock()
        self._on_decode = on_decode
        self.data_json = data_json

    @property
    def image(self) -> np.ndarray:
        """The pixels; a JPEG frame is decoded on first use (once, thread-safe).

        Raises:
            ValueError: the JPEG cannot be decoded.
        """
        image = self._image
        if image is not None:
            return image
        with self._decode_lock:
            if self._image is None:
                self._image = self._decode(cv2.IMREAD_UNCHANGED)
            return self._image

    def pixels(self, width: int, height: int) -> np.ndarray:
        """The picture at ``width`` x ``height`` or more, for scaling down to that size: the
        pixels if they are there, else the JPEG decoded at the smallest of
        :data:`DECODE_SCALES` that covers the size (kept for the next caller; see the module
        docstring), else decoded whole (:attr:`image`). Thread-safe.

        Raises:
            ValueError: the JPEG cannot be decoded.
        """
        image = self._image
        if image is not None:
            return image
        scale = self.decode_scale(width, height)
        if scale == 1 or self.width * self.height > _MAX_DECODE_PIXELS:
            return self.image  # (a header claiming more than OpenCV decodes: refused whole)
        with self._decode_lock:
            if self._image is not None:
                return self._image
            reduced = self._reduced
            if reduced is not None and reduced[0] <= scale:
                return reduced[1]  # made already, at this size or a larger one
            try:
                components = inspect_jpeg(self.jpeg or b"").components
            except CorruptJpeg as exc:
                raise ValueError(f"frame {self.seq}: the JPEG cannot be decoded") from exc
            if components not in (1, 3):
                self._image = self._decode(cv2.IMREAD_UNCHANGED)
                return self._image
            decoded = self._decode(_REDUCED_FLAGS[scale, components])
            self._reduced = (scale, decoded)
            return decoded

    def decode_scale(self, width: int, height: int) -> int:
        """The reduction (1: none; else one of :data:`DECODE_SCALES`) :meth:`pixels` decodes
        this frame's JPEG at for a picture of ``width`` x ``height``."""
        for scale in DECODE_SCALES:
            if decoded_side(self.width, scale) >= width and (
                decoded_side(self.height, scale) >= height
            ):
                return scale
        return 1

    def _decode(self, flag: int) -> np.ndarray:
        """The JPEG decoded with ``flag`` (read-only); counts a decode. ``_decode_lock`` held."""
        assert self.jpeg is not None
        buffer = np.frombuffer(self.jpeg, np.uint8)
        try:
            decoded = cv2.imdecode(buffer, flag)
        except cv2.error as exc:  # e.g. a frame header claiming 60000x60000
            raise ValueError(f"frame {self.seq}: the JPEG cannot be decoded") from exc
        if decoded is None:
            raise ValueError(f"frame {self.seq}: the JPEG cannot be decoded")
        decoded.flags.writeable = False
        if self._on_decode is not None:
            self._on_decode()
        return decoded

    @property
    def is_decoded(self) -> bool:
        """Whether the pixels are there (always, for frames made from pixels)."""
        return self._image is not None

    def __repr__(self) -> str:
        kind = f"jpeg={len(self.jpeg)}B" if self.jpeg is not None else "pixels"
        data = f" data={len(self.data_json)}ch" if self.data_json is not None else ""
        return f"<Frame seq={self.seq} {self.width}x{self.height} {kind}{data}>"
