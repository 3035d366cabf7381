"""A built-in animated test pattern, so camstream works on machines without a camera."""

from __future__ import annotations

import datetime

import cv2
import numpy as np

__all__ = ["TestPattern"]

_BAR_COLOURS_BGR = (
    (192, 192, 192),
    (0, 192, 192),
    (192, 192, 0),
    (0, 192, 0),
    (192, 0, 192),
    (0, 0, 192),
    (192, 0, 0),
    (16, 16, 16),
)


class TestPattern:
    """Draws frames of a moving test card at any size.

    Each frame has colour bars, a ball that bounces across the picture, the frame counter and
    the wall-clock time, so a viewer can see at a glance that the stream is live and how late it
    is. The static background is drawn once and copied per frame.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, width: int, height: int) -> None:
        if width < 16 or height < 16:
            raise ValueError(f"test pattern needs at least 16x16 pixels, not {width}x{height}")
        self.width = width
        self.height = height
        self._background = self._draw_background(width, height)
        self._scale = max(height / 480.0, 0.35)

    @staticmethod
    def _draw_background(width: int, height: int) -> np.ndarray:
        image = np.empty((height, width, 3), dtype=np.uint8)
        bars_height = height * 2 // 3
        for i, colour in enumerate(_BAR_COLOURS_BGR):
            x0 = i * width // len(_BAR_COLOURS_BGR)
            x1 = (i + 1) * width // len(_BAR_COLOURS_BGR)
            image[:bars_height, x0:x1] = colour
        ramp = np.linspace(0, 255, width, dtype=np.uint8)
        image[bars_height:] = ramp[np.newaxis, :, np.newaxis]
        return image

    def render(self, index: int, fps: float) -> np.ndarray:
        """Return frame number ``index`` (a new BGR array the caller owns)."""
        image = self._background.copy()
        width, height, scale = self.width, self.height, self._scale
        radius = max(int(24 * scale), 4)
        period = max(int(fps * 4), 2)  # one trip across the picture every 4 seconds
        phase = index % (2 * period)
        travel = phase if phase < period else 2 * period - phase
        centre = (radius + (width - 2 * radius) * travel // period, height * 2 // 3 - radius - 2)
        cv2.circle(image, centre, radius, (255, 255, 255), -1, cv2.LINE_AA)
        clock = datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]
        thickness = max(int(2 * scale), 1)
        origin = (int(12 * scale), int(44 * scale))
        _outlined_text(image, f"camstream #{index}", origin, 1.2 * scale, thickness)
        origin = (int(12 * scale), height - int(16 * scale))
        _outlined_text(image, f"{clock}  {width}x{height}", origin, 0.9 * scale, thickness)
        return image


def _outlined_text(
    image: np.ndarray, text: str, origin: tuple[int, int], size: float, thickness: int
) -> None:
    """White text with a black outline, readable on any background."""
    for colour, extra in (((0, 0, 0), 2), ((255, 255, 255), 0)):
        cv2.putText(
            image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, size, colour, thickness + extra,
            cv2.LINE_AA,
        )
