"""The quality ladder: the few variants a viewer steps down to when its link cannot carry more.

:func:`build_ladder` turns the variant a viewer asked for and the source's frame size into a
:class:`Ladder` of :class:`Rung`\\ s. Rung 0 is the variant asked for, untouched (the camera's
own JPEG where it takes it as it is). Each rung below carries roughly half the bytes of the one
above: first a lower quality at the same size, then smaller sizes (aspect kept), down to a
floor about 320 pixels wide; at most ``max_below`` rungs below the top.

Of two widths about as near a step's byte target, the ladder takes the one that is the source's
width halved (or quartered, ...): the encode cache makes it straight from a JPEG decoded at that
scale, with no scaling and from the cheaper decode (a 1280x720 source's 640 rung rather than its
480).

The rungs below the top are made of fixed steps only: widths from :data:`WIDTHS` (or the
source's own), qualities from :data:`QUALITIES`, byte limits that are none, the server's
default or a power of two. So every viewer that asks for the same thing of the same source gets
the same ladder, viewers on the same rung share one encode (the encode cache keys on the
:class:`~camstream.delivery.encoder.Variant`), and however odd the parameters a client picks,
the rungs below its top fall into a small set: a hostile client cannot multiply encodes through
adaptation. (Its top rung is what it asked for, as without adaptation: the cache's variant cap
and encode budget bound that.)

Byte counts are a model (JPEG bytes as a function of pixels and quality, fitted to
webcam-like pictures), used to space the rungs and as the controller's first guess for rungs
never sent; real sizes vary with the picture, and the controller goes by those it sees.
Pure functions, any thread; ladders are cached.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from ..capture.frame import DECODE_SCALES, decoded_side
from .encoder import Variant, fit_size

__all__ = ["FLOOR_WIDTH", "Ladder", "QUALITIES", "Rung", "WIDTHS", "build_ladder", "model_bytes"]

WIDTHS = (7680, 5120, 3840, 2560, 1920, 1280, 960, 640, 480, 320)
"""The widths of rungs below the top (besides the source's own): each about 3/4 or 2/3 of the
next, so about half the pixels every two steps and a half of the bytes every step or so."""

QUALITIES = (75, 60)
"""The qualities rungs below the top step through before the size goes down (at the lower)."""

FLOOR_WIDTH = 320
"""The smallest width a rung steps down to (a smaller top stays as it is)."""

_SMALL_DECODE_PREFERENCE = 0.1  # how much nearer (log of a byte ratio) such a rung counts
_PASSTHROUGH_QUALITY = 90  # what a camera's own JPEG is taken to weigh, as a quality
_BYTES_PER_PIXEL_Q80 = 0.1  # webcam-like pictures: 0.08 (smooth) to 0.12 (noisy) at quality 80
_HEADER_BYTES = 600  # tables and markers of a baseline JPEG
_MIN_STEP = 0.7  # a rung must carry at most this share of the top's bytes
# JPEG bytes relative to quality 80, as a function of quality (libjpeg tables; measured on
# noisy and smooth 1280x720 pictures, both within about 15 % of this curve).
_QUALITY_CURVE = (
    (1, 0.1), (10, 0.18), (20, 0.22), (30, 0.27), (40, 0.34), (50, 0.42), (60, 0.52),
    (70, 0.68), (75, 0.8), (80, 1.0), (85, 1.3), (90, 1.8), (95, 2.8), (100, 5.0),
)


@dataclass(frozen=True)
class Rung:
    """One step of a ladder: the variant to ask the encode cache for, and what it gives."""

    variant: Variant
    width: int
    """The frame width this rung gives for the ladder's source size."""
    height: int
    model_bytes: int
    """The model's guess of a frame's JPEG bytes (before any byte limit)."""


@dataclass(frozen=True)
class Ladder:
    """The rungs for one (requested variant, source size): ``rungs[0]`` is the top."""

    rungs: tuple[Rung, ...]

    def __len__(self) -> int:
        return len(self.rungs)

    def variant(self, rung: int) -> Variant:
        """The variant of rung ``rung`` (0: the top)."""
        return self.rungs[rung].variant

    @property
    def model_bytes(self) -> tuple[int, ...]:
        """The model's bytes of each rung, top first (priors for the controller)."""
        return tuple(r.model_bytes for r in self.rungs)


def model_bytes(width: int, height: int, quality: float) -> int:
    """The model's JPEG bytes of a ``width`` x ``height`` picture at ``quality``."""
    return int(_HEADER_BYTES + width * height * _BYTES_PER_PIXEL_Q80 * _quality_factor(quality))


def _quality_factor(quality: float) -> float:
    """Bytes relative to quality 80 (linear between the curve's points)."""
    curve = _QUALITY_CURVE
    quality = min(max(quality, curve[0][0]), curve[-1][0])
    for (q0, f0), (q1, f1) in zip(curve, curve[1:]):
        if quality <= q1:
            return f0 + (f1 - f0) * (quality - q0) / (q1 - q0)
    return curve[-1][1]


def _lower_max_bytes(max_bytes: int | None, default_max_bytes: int | None) -> int | None:
    """The byte limit of the rungs below a top with ``max_bytes``: none, the server's default,
    or the power of two at or under the limit (so odd limits share rungs)."""
    if max_bytes is None or max_bytes == default_max_bytes:
        return max_bytes
    return 1 << (max_bytes.bit_length() - 1)


@functools.lru_cache(maxsize=512)
def build_ladder(
    requested: Variant,
    source_width: int,
    source_height: int,
    *,
    source_is_jpeg: bool = True,
    default_quality: int = 80,
    default_max_bytes: int | None = None,
    max_below: int = 4,
) -> Ladder:
    """The ladder of a viewer that asked for ``requested``, on a ``source_width`` x
    ``source_height`` source (see the module docstring).

    Args:
        source_is_jpeg: whether the source gives its own JPEGs (a top without a quality of its
            own is then taken as a camera JPEG, about quality 90), else pixels the server
            encodes at ``default_quality``.
        default_quality: the server's quality for variants without one.
        default_max_bytes: the server's default byte limit (kept as it is on lower rungs).
        max_below: at most this many rungs below the top.

    Raises:
        ValueError: a size is not positive or ``max_below`` is negative.
    """
    if source_width <= 0 or source_height <= 0 or max_below < 0:
        raise ValueError("the source size must be positive and max_below not negative")
    top_width, top_height = fit_size(
        source_width, source_height, requested.width, requested.height
    )
    if requested.quality is not None:
        top_quality: float = requested.quality
    elif source_is_jpeg and (top_width, top_height) == (source_width, source_height):
        top_quality = _PASSTHROUGH_QUALITY
    else:
        top_quality = default_quality
    top_bytes = model_bytes(top_width, top_height, top_quality)
    if requested.max_bytes is not None:
        top_bytes = min(top_bytes, requested.max_bytes)
    top = Rung(requested, top_width, top_height, top_bytes)
    limit = _lower_max_bytes(requested.max_bytes, default_max_bytes)
    candidates = [
        c for c in _candidates(source_width, source_height, top_width, top_quality, limit)
        if c.model_bytes <= _MIN_STEP * top_bytes
    ]
    return Ladder((top, *_spread(top_bytes, candidates, max_below, source_width)))


def _candidates(
    source_width: int, source_height: int, top_width: int, top_quality: float,
    limit: int | None,
) -> list[Rung]:
    """Every rung the fixed steps allow below a top, largest first: the qualities at the
    largest step width that fits the top, then the smaller widths at the lowest quality."""
    widths = sorted({w for w in (*WIDTHS, source_width) if w <= top_width}, reverse=True)
    if not widths:
        return []
    qualities = [q for q in QUALITIES if q < top_quality - 4]
    size_quality = min(QUALITIES[-1], _snap_quality(top_quality))
    steps = [(widths[0], q) for q in qualities]
    steps += [(w, size_quality) for w in widths[1:] if w >= FLOOR_WIDTH]
    rungs = []
    for width, quality in steps:
        w, h = fit_size(source_width, source_height, width, None)
        variant = Variant(width=width, quality=quality, max_bytes=limit)
        rungs.append(Rung(variant, w, h, model_bytes(w, h, quality)))
    return rungs


def _snap_quality(quality: float) -> int:
    """A quality at or under ``quality`` from a fixed set (multiples of 10, at least 10)."""
    return max(int(quality) // 10 * 10, 10)


def _decoded_small(width: int, source_width: int) -> bool:
    """Whether a rung ``width`` wide is the source decoded at one of libjpeg's smaller scales
    (half, a quarter, an eighth of its width): made with no scaling, from the cheaper decode."""
    return any(width == decoded_side(source_width, scale) for scale in DECODE_SCALES)


def _spread(
    top_bytes: int, candidates: list[Rung], max_below: int, source_width: int
) -> list[Rung]:
    """At most ``max_below`` of ``candidates`` (largest first), ending with the smallest,
    spaced about evenly in bytes (by ratio) between the top and that floor; of two about as
    near a step's target, the one a smaller decode makes (:func:`_decoded_small`)."""
    if not candidates or max_below == 0:
        return []
    floor = candidates[-1]
    steps = round(math.log2(top_bytes / floor.model_bytes))
    steps = min(max(steps, 1), max_below, len(candidates))
    chosen: list[Rung] = []
    start = 0
    for i in range(1, steps):
        target = top_bytes * (floor.model_bytes / top_bytes) ** (i / steps)
        # leave room for the rungs still to choose, the floor last
        last_allowed = len(candidates) - (steps - i) - 1
        pick = min(
            range(start, last_allowed + 1),
            key=lambda k: abs(math.log(candidates[k].model_bytes / target)) - (
                _SMALL_DECODE_PREFERENCE
                if _decoded_small(candidates[k].width, source_width) else 0.0),
        )
        chosen.append(candidates[pick])
        start = pick + 1
    chosen.append(floor)
    return chosen
