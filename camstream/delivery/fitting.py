"""Keeping a JPEG under a byte limit: the quality and size search, and what it remembers.

A variant with ``max_bytes`` gets the best JPEG that fits: quality down to 40 first, then the
size down to half, then both further (:func:`step_down`). The setting that worked for the last
frame is kept per variant (a *hint*), so the next frame starts there and the search costs about
one encode a frame; a result well under the limit steps back up (:func:`step_up`).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable

from ..capture.frame import Frame
from .jpegcodec import encode_jpeg, resize
from .variant import Variant

__all__ = ["ByteLimitFitter", "step_down", "step_up"]

MIN_QUALITY = 10
MIN_SIDE = 16
_GOOD_QUALITY = 40  # below this JPEG looks blocky: make the picture smaller first
_GOOD_SCALE = 0.5
_ROOM_TO_STEP_UP = 0.6  # a result under this share of the limit tries one step better next
_MAX_HINTS = 256  # hints are forgotten past this many distinct variants (limits keep changing)


@dataclass(frozen=True)
class Hint:
    """The quality and scale that last kept a variant under its byte limit."""

    quality: int
    scale: float = 1.0


class ByteLimitFitter:
    """The byte-limit search of every variant, with one :class:`Hint` per variant.

    Thread-safe: searches for different variants (or frames) run in parallel; the hints are
    under a lock, the encodes are not. Variants come with their quality filled in.
    """

    def __init__(self) -> None:
        self._hints: dict[Variant, Hint] = {}
        self._lock = threading.Lock()

    def starts_at_full(self, variant: Variant) -> bool:
        """Whether ``variant``'s next search starts at its full quality and size (no hint yet,
        or the last frame fitted without giving anything up)."""
        assert variant.quality is not None
        with self._lock:
            hint = self._hints.get(variant)
        return hint is None or (hint.quality >= variant.quality and hint.scale >= 1.0)

    def full_did_not_fit(self, variant: Variant, smaller_side: int) -> None:
        """``variant``'s JPEG at full quality and size was over the limit (an encode made for
        another reason): its next search starts one step down, not with that encode again."""
        assert variant.quality is not None
        self._remember(variant, Hint(*step_down(variant.quality, 1.0, smaller_side)))

    def fit(
        self, frame: Frame, variant: Variant, width: int, height: int,
        charge: Callable[[], None], decode_at: tuple[int, int] | None = None,
    ) -> tuple[bytes, int, int, int]:
        """Encode ``frame`` (scaled to fit ``width`` x ``height``) under ``variant.max_bytes``,
        trading quality and size. Calls ``charge()`` before each try, before any decode or
        scaling (the caller counts every try against its budget). ``decode_at``: the size to
        decode a JPEG frame at (:meth:`Frame.pixels`; default ``width`` x ``height``).

        Returns:
            ``(jpeg, width, height, quality)`` as made.

        Raises:
            ValueError: the frame cannot be decoded or encoded, or made small enough.
            Whatever ``charge`` raises: the search stops, and the next one resumes where it
            stopped (a search longer than the budget allows still ends, over several frames).
        """
        assert variant.max_bytes is not None and variant.quality is not None
        limit = variant.max_bytes
        with self._lock:
            hint = self._hints.get(variant) or self._nearest_hint(variant)
        quality, scale = hint.quality, hint.scale
        while True:
            try:
                charge()
            except BaseException:
                self._remember(variant, Hint(quality, scale))
                raise
            w = max(round(width * scale), MIN_SIDE) if scale < 1.0 else width
            h = max(round(height * scale), MIN_SIDE) if scale < 1.0 else height
            scaled = resize(frame.pixels(*(decode_at or (width, height))), w, h)
            h, w = scaled.shape[:2]
            data = encode_jpeg(scaled, quality)
            if len(data) <= limit:
                break
            quality, scale = step_down(quality, scale, min(w, h))
        next_hint = Hint(quality, scale)
        if len(data) < _ROOM_TO_STEP_UP * limit:
            next_hint = Hint(*step_up(quality, scale, variant.quality))
        self._remember(variant, next_hint)
        return data, w, h, quality

    def _remember(self, variant: Variant, hint: Hint) -> None:
        with self._lock:
            if len(self._hints) > _MAX_HINTS:
                self._hints.clear()
            self._hints[variant] = hint

    def _nearest_hint(self, variant: Variant) -> Hint:
        """A starting point for a new byte limit: the setting found for the nearest limit on the
        same size and quality (the caller holds the lock). Without it, every new limit a client
        asks for would cost a full search of several encodes."""
        assert variant.max_bytes is not None and variant.quality is not None
        limit = variant.max_bytes
        best: tuple[float, Hint] | None = None
        for known, hint in self._hints.items():
            if (known.width, known.height, known.quality) == (
                variant.width, variant.height, variant.quality
            ) and known.max_bytes is not None:
                distance = abs(math.log(known.max_bytes / limit))
                if best is None or distance < best[0]:
                    best = (distance, hint)
        return best[1] if best is not None else Hint(variant.quality)


def step_down(quality: int, scale: float, smaller_side: int) -> tuple[int, float]:
    """One step smaller: quality down to 40, then size down to half, then both further.

    Raises:
        ValueError: already at the smallest quality and size.
    """
    if quality > _GOOD_QUALITY:
        return max(int(quality * 0.8), _GOOD_QUALITY), scale
    if scale > _GOOD_SCALE:
        return quality, max(scale * 0.8, _GOOD_SCALE)
    if quality > MIN_QUALITY:
        return max(int(quality * 0.8), MIN_QUALITY), scale
    if smaller_side > MIN_SIDE:
        return quality, scale * 0.8
    raise ValueError("cannot make the frame any smaller")


def step_up(quality: int, scale: float, wanted_quality: int) -> tuple[int, float]:
    """One step back towards the wanted quality at full size: :func:`step_down` in reverse."""
    good_quality = min(_GOOD_QUALITY, wanted_quality)
    if scale < _GOOD_SCALE:
        return quality, min(scale / 0.8, _GOOD_SCALE)
    if quality < good_quality:
        return min(int(quality / 0.8) + 1, good_quality), scale
    if scale < 1.0:
        return quality, min(scale / 0.8, 1.0)
    return min(int(quality / 0.8) + 1, wanted_quality), scale
