"""Which size a frame's JPEG is decoded at for the encodes made of it.

A JPEG frame is decoded at the smallest of libjpeg's scales that covers the picture an encode
needs (:meth:`~camstream.capture.frame.Frame.pixels`): for the small rungs of adaptive delivery,
less CPU than a whole decode (about 3.3 ms against 4.2 for a 175 KB 1280x720 frame at half).
But a frame decoded small for one encode and then again whole for a larger one costs more than
one whole decode. So :class:`DecodeSizes` asks for the
largest size any encode asked for within the last :data:`WINDOW_S`: while a viewer takes a large
variant every frame is decoded whole once, and a few frames after it left, small again.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

__all__ = ["DecodeSizes", "WINDOW_S"]

WINDOW_S = 0.25
"""How long the largest size asked for counts, in seconds, after it was last asked for."""


class DecodeSizes:
    """The size to ask a frame's pixels at (see the module docstring). Thread-safe.

    Args:
        clock: seconds (``time.monotonic``; tests give their own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._width = 0
        self._height = 0
        self._seen = -math.inf  # when the largest size was last asked for

    def need(self, width: int, height: int) -> tuple[int, int]:
        """The size to decode at for an encode at ``width`` x ``height``: at least that, or
        the largest size asked for lately."""
        now = self._clock()
        with self._lock:
            if now - self._seen > WINDOW_S:
                self._width = self._height = 0
            if width >= self._width and height >= self._height:
                self._seen = now  # the largest size is still asked for
            self._width = max(self._width, width)
            self._height = max(self._height, height)
            return self._width, self._height
