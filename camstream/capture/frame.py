"""Frame: one captured picture, as pixels, as the source's own JPEG file, or both.

A source that delivers JPEG (a camera in MJPEG mode, an MJPEG file or stream,
``publish_jpeg``) makes frames that carry :attr:`Frame.jpeg`, the bytes exactly as the source
made them; their pixels are decoded only when something asks for :attr:`Frame.image`, at most
once, whichever thread asks first. Other sources make frames from pixels, with no JPEG.

A frame may carry the application's data for it (:attr:`Frame.data_json`: ``publish(...,
data=)`` or the Streamer's ``annotate`` hook), serialized once when the frame is made; viewers
that asked for data get it right before the frame's JPEG.
"""

from __future__ import annotations

import threading
from typing import Callable

import cv2
import numpy as np

__all__ = ["Frame"]


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
        on_decode: called once, in the decoding thread, when the JPEG is decoded to pixels
            (for counting decodes).
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
                assert self.jpeg is not None
                buffer = np.frombuffer(self.jpeg, np.uint8)
                try:
                    decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
                except cv2.error as exc:  # e.g. a frame header claiming 60000x60000
                    raise ValueError(f"frame {self.seq}: the JPEG cannot be decoded") from exc
                if decoded is None:
                    raise ValueError(f"frame {self.seq}: the JPEG cannot be decoded")
                decoded.flags.writeable = False
                self._image = decoded
                if self._on_decode is not None:
                    self._on_decode()
            return self._image

    @property
    def is_decoded(self) -> bool:
        """Whether the pixels are there (always, for frames made from pixels)."""
        return self._image is not None

    def __repr__(self) -> str:
        kind = f"jpeg={len(self.jpeg)}B" if self.jpeg is not None else "pixels"
        data = f" data={len(self.data_json)}ch" if self.data_json is not None else ""
        return f"<Frame seq={self.seq} {self.width}x{self.height} {kind}{data}>"
