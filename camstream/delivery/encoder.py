"""JPEG encoding, once per frame and variant, shared by every client that wants it.

A *variant* is what a client asked to receive: a size box, a quality and optionally a byte
limit. All clients on the same variant share one encode per frame (single flight: the first
client to ask encodes, the others wait for its result), so the number of encodes per second
depends on the camera rate and the number of distinct variants, never on the number of clients.

Frames that carry the source's own JPEG (:attr:`Frame.jpeg`) are *passed through*: a variant
that takes the frame as the source made it (no smaller size box, no quality of its own, a byte
limit the file fits in) gets those bytes untouched, with no decode and no encode.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
from dataclasses import dataclass, field

import cv2
import imutils
import numpy as np

from .. import logs
from ..capture.frame import Frame

__all__ = [
    "Variant", "EncodedFrame", "EncodeCache", "EncodeBudgetExceeded", "encode_jpeg", "fit_size"
]

logger = logs.get_logger(__name__)

_MIN_QUALITY = 10
_MIN_SIDE = 16
_MAX_JPEG_SIDE = 65500  # libjpeg's limit
_MAX_VARIANTS = 256  # per-variant bookkeeping is reset past this many distinct variants
_OPEN_SIDE = 1 << 16  # a side left free, for comparing variants


def _side(side: int | None) -> int:
    return _OPEN_SIDE if side is None else side


@dataclass(frozen=True)
class Variant:
    """What one client receives: the frame fitted in ``width`` x ``height``, at ``quality``.

    ``width`` / ``height`` of ``None`` leave that side free; the aspect ratio is always kept and
    frames are never enlarged. ``quality`` of ``None`` means "as the source": a JPEG frame is
    passed through untouched where nothing else forces an encode, and frames that must be
    encoded get the cache's default quality. With ``max_bytes``, every JPEG is kept at or under
    that many bytes by lowering the quality first, then the size (a source JPEG that fits is
    passed through).
    """

    width: int | None = None
    height: int | None = None
    quality: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True)
class EncodedFrame:
    """A JPEG file made from one :class:`~camstream.capture.camera.Frame` for one
    :class:`Variant`."""

    seq: int
    data: bytes
    width: int
    height: int
    quality: int | None  # None: the source's own JPEG, passed through untouched
    captured_at: float
    captured_monotonic: float

    @property
    def passed_through(self) -> bool:
        """Whether these are the source's own bytes (no decode, no encode)."""
        return self.quality is None


def fit_size(
    width: int, height: int, box_width: int | None, box_height: int | None
) -> tuple[int, int]:
    """The size of a ``width`` x ``height`` picture scaled down to fit the box, aspect kept.

    Rounds the way ``imutils.resize`` does, which does the scaling.
    """
    width_scale = box_width / width if box_width is not None else 1.0
    height_scale = box_height / height if box_height is not None else 1.0
    if min(width_scale, height_scale) >= 1.0:
        return width, height
    if width_scale <= height_scale:
        return int(box_width), max(int(height * width_scale), 1)  # type: ignore[arg-type]
    return max(int(width * height_scale), 1), int(box_height)  # type: ignore[arg-type]


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale to a size from :func:`fit_size` (or any size, for the byte-limit search)."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    if int(image.shape[0] * (width / image.shape[1])) == height:
        return imutils.resize(image, width=width, inter=cv2.INTER_AREA)
    if int(image.shape[1] * (height / image.shape[0])) == width:
        return imutils.resize(image, height=height, inter=cv2.INTER_AREA)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """Encode a BGR or grayscale image as a baseline JPEG file."""
    if max(image.shape[:2]) > _MAX_JPEG_SIDE:
        raise ValueError(f"a JPEG cannot be over {_MAX_JPEG_SIDE} pixels wide or high")
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("OpenCV could not encode the frame as JPEG")
    return buffer.tobytes()


@dataclass
class _Hint:
    """The quality and scale that last kept a variant under its byte limit."""

    quality: int
    scale: float = 1.0


@dataclass
class _Slot:
    done: threading.Event = field(default_factory=threading.Event)
    result: EncodedFrame | None = None
    error: BaseException | None = None


class EncodeBudgetExceeded(RuntimeError):
    """The encode budget of this second is spent: the caller skips this frame (or snapshot)."""


class _EventWindow:
    """How many events happened in the last ``window_s`` seconds (the caller holds a lock)."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._stamps: collections.deque[float] = collections.deque()

    def add(self, now: float) -> None:
        self._stamps.append(now)

    def count(self, now: float) -> int:
        stamps, oldest = self._stamps, now - self._window_s
        while stamps and stamps[0] < oldest:
            stamps.popleft()
        return len(stamps)


class EncodeCache:
    """Encodes each (frame, variant) once and hands the JPEG to every client that asks.

    Thread-safe. Bounded: it keeps the last ``max_entries`` encodes, and no more than
    ``max_total_bytes`` of JPEG data; older ones are dropped first (clients only ever ask for
    recent frames, so a dropped entry is at worst encoded again).

    The encode work is bounded too, whatever clients ask for. Viewers register the variant they
    want with :meth:`assign`: beyond ``max_variants`` distinct live variants, a viewer gets the
    nearest live one instead. And outside the server's default variants (no size, no quality,
    no limit or the default limit), at most ``max_encodes_per_s`` JPEG encodes a second are
    made (snapshots included); past that, :meth:`get` raises :class:`EncodeBudgetExceeded`.

    Args:
        default_quality: the quality of frames encoded for a variant without one.
        default_max_bytes: the byte limit viewers get when they ask for none, if any.
        max_variants: distinct live variants, besides the default ones.
        max_encodes_per_s: the encode budget; None for no budget.
    """

    def __init__(
        self,
        max_entries: int = 64,
        max_total_bytes: int = 32 * 1024 * 1024,
        *,
        default_quality: int = 80,
        default_max_bytes: int | None = None,
        max_variants: int = 4,
        max_encodes_per_s: float | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._slots: collections.OrderedDict[tuple[int, Variant], _Slot] = (
            collections.OrderedDict()
        )
        self._hints: dict[Variant, _Hint] = {}
        self._max_entries = max_entries
        self._max_total_bytes = max_total_bytes
        self._total_bytes = 0  # JPEG bytes held in _slots
        self.default_quality = default_quality
        self.max_variants = max_variants
        self.max_encodes_per_s = max_encodes_per_s
        self._defaults = frozenset({Variant(), Variant(max_bytes=default_max_bytes)})
        self._live: collections.Counter[Variant] = collections.Counter()  # viewers per variant
        self._budget = _EventWindow(1.0)  # budgeted encodes (every try) in the last second
        self.encodes = 0
        """JPEG files made: one per frame and variant (max_bytes retries not counted)."""
        self.encodes_refused = 0
        """Encodes refused because the budget of the second was spent."""
        self.encodes_by_variant: collections.Counter[Variant] = collections.Counter()

    # Who gets which variant

    def assign(self, wanted: Variant) -> Variant:
        """Register a viewer that wants ``wanted``; returns the variant it gets.

        That is ``wanted`` itself while there are fewer than ``max_variants`` distinct live
        variants (the default ones do not count), else the nearest live variant that keeps the
        viewer's byte limit. Give it back with :meth:`release` when the viewer leaves or
        changes its settings.
        """
        with self._lock:
            live = self._live
            given = wanted
            if wanted not in live and wanted not in self._defaults:
                others = sum(1 for v in live if v not in self._defaults)
                if others >= self.max_variants:
                    given = self._nearest_live(wanted)
            live[given] += 1
        if given != wanted:
            logger.info("variant cap reached: %s gets %s instead", wanted, given)
        return given

    def release(self, given: Variant) -> None:
        """A viewer no longer uses ``given`` (a variant :meth:`assign` returned)."""
        with self._lock:
            self._live[given] -= 1
            if self._live[given] <= 0:
                del self._live[given]

    @property
    def live_variants(self) -> int:
        """Distinct variants viewers use now."""
        with self._lock:
            return len(self._live)

    def _nearest_live(self, wanted: Variant) -> Variant:
        """The live or default variant closest in size and quality among those that keep
        ``wanted``'s byte limit (the caller holds the lock). If none does, the default variant
        with that limit rounded down to a power of two (a short, bounded set)."""
        limit = wanted.max_bytes
        candidates = [
            v for v in (*self._live, *self._defaults)
            if limit is None or (v.max_bytes is not None and v.max_bytes <= limit)
        ]
        if not candidates:
            assert limit is not None
            return Variant(max_bytes=1 << (limit.bit_length() - 1))

        def distance(v: Variant) -> float:
            return (
                abs(math.log(_side(v.width) / _side(wanted.width)))
                + abs(math.log(_side(v.height) / _side(wanted.height)))
                + abs(self._quality(v) - self._quality(wanted)) / 25
            )

        return min(candidates, key=lambda v: (distance(v), repr(v)))

    def _quality(self, variant: Variant) -> int:
        return self.default_quality if variant.quality is None else variant.quality

    # Frames

    def passes_through(self, frame: Frame, variant: Variant) -> bool:
        """Whether ``variant`` takes ``frame``'s source JPEG untouched (no decode, no encode)."""
        return (
            frame.jpeg is not None
            and variant.quality is None
            and fit_size(frame.width, frame.height, variant.width, variant.height)
            == (frame.width, frame.height)
            and (variant.max_bytes is None or len(frame.jpeg) <= variant.max_bytes)
        )

    def get(self, frame: Frame, variant: Variant) -> EncodedFrame:
        """The JPEG of ``frame`` for ``variant``: the source's own bytes where the variant takes
        them as they are, else encoded once (by whichever caller asks first).

        Raises:
            ValueError: the frame cannot be decoded or encoded.
            EncodeBudgetExceeded: the encode is needed but the budget of this second is spent.
        """
        result = self._lookup(frame, variant, may_encode=True)
        assert result is not None
        return result

    def made(self, frame: Frame, variant: Variant) -> EncodedFrame | None:
        """:meth:`get` without making anything: the JPEG if it needs no encode (the source's
        own, or one already made), else None. Never waits for an encode in progress.

        Raises:
            ValueError: the encode of this frame for this variant failed.
        """
        return self._lookup(frame, variant, may_encode=False)

    def encodes_inline(self) -> frozenset[Variant]:
        """The variants the fan-out may encode itself: the default ones and the one most
        viewers use (others are encoded by their viewers' own threads, in parallel)."""
        with self._lock:
            popular = max(self._live.items(), key=lambda item: item[1], default=None)
        return self._defaults if popular is None else self._defaults | {popular[0]}

    def _lookup(self, frame: Frame, variant: Variant, may_encode: bool) -> EncodedFrame | None:
        if self.passes_through(frame, variant):
            assert frame.jpeg is not None
            return EncodedFrame(
                frame.seq, frame.jpeg, frame.width, frame.height, None,
                frame.captured_at, frame.captured_monotonic,
            )
        budgeted = variant not in self._defaults
        if variant.quality is None:
            variant = dataclasses.replace(variant, quality=self.default_quality)
        if variant.max_bytes is not None:
            whole = self._whole_if_it_fits(frame, variant, budgeted, may_encode)
            if whole is not None:
                return whole
        return self._get(frame, variant, budgeted, may_encode)

    def _get(
        self, frame: Frame, variant: Variant, budgeted: bool, may_encode: bool = True
    ) -> EncodedFrame | None:
        """get() for a variant with its quality filled in (``budgeted``: not a default one);
        None if it is not made yet and ``may_encode`` is False."""
        key = (frame.seq, variant)
        with self._lock:
            slot = self._slots.get(key)
            if not may_encode and (slot is None or not slot.done.is_set()):
                return None
            owner = slot is None
            if slot is None:
                if budgeted and self._over_budget():
                    self.encodes_refused += 1
                    raise EncodeBudgetExceeded("the encode budget of this second is spent")
                slot = self._slots[key] = _Slot()
        if not owner:
            slot.done.wait()
        else:
            try:
                slot.result = self._encode(frame, variant, budgeted)
                self._keep(key, slot)
            except BaseException as exc:
                slot.error = exc
                with self._lock:
                    self._slots.pop(key, None)  # let the next caller try again
                raise
            finally:
                slot.done.set()
        if slot.error is not None:
            raise ValueError(f"could not encode frame {frame.seq}: {slot.error}")
        assert slot.result is not None
        return slot.result

    def _over_budget(self) -> bool:
        """Whether the budgeted encodes of the last second reach the budget (lock held)."""
        budget = self.max_encodes_per_s
        return budget is not None and self._budget.count(time.monotonic()) >= budget

    def _whole_if_it_fits(
        self, frame: Frame, variant: Variant, budgeted: bool, may_encode: bool
    ) -> EncodedFrame | None:
        """The encode without a byte limit, if it fits under ``variant.max_bytes``.

        Clients with and without a limit (Godot's default one, the bundled clients' none, the
        HTTP endpoints) then share one encode whenever the frame fits. It is made here only
        while the limit's own search is at full quality and size; else looked up, not made.
        """
        assert variant.max_bytes is not None and variant.quality is not None
        whole_variant = dataclasses.replace(variant, max_bytes=None)
        with self._lock:
            slot = self._slots.get((frame.seq, whole_variant))
            hint = self._hints.get(variant)
        at_full = hint is None or (hint.quality >= variant.quality and hint.scale >= 1.0)
        made = slot is not None and slot.done.is_set() and slot.result is not None
        if not (made or at_full):
            return None
        whole = self._get(frame, whole_variant, budgeted, may_encode)
        if whole is None:
            return None  # not made, and not to be made here
        if len(whole.data) <= variant.max_bytes:
            return whole
        if at_full:  # the limit's search starts one step down, not with this encode again
            step = _step_down(variant.quality, 1.0, min(whole.width, whole.height))
            with self._lock:
                self._hints[variant] = _Hint(*step)
        return None

    def _keep(self, key: tuple[int, Variant], slot: _Slot) -> None:
        """Account for a finished encode; drop the oldest entries beyond the bounds."""
        assert slot.result is not None
        with self._lock:
            slots = self._slots
            if slots.get(key) is slot:  # not already dropped while it was being encoded
                self._total_bytes += len(slot.result.data)
            while len(slots) > 1 and (
                len(slots) > self._max_entries or self._total_bytes > self._max_total_bytes
            ):
                _, old = slots.popitem(last=False)
                if old.result is not None:
                    self._total_bytes -= len(old.result.data)

    def _nearest_hint(self, variant: Variant) -> _Hint:
        """A starting point for a new byte limit: the setting found for the nearest limit on the
        same size and quality (the caller holds the lock). Without it, every new limit a client
        asks for would cost a full search of several encodes."""
        assert variant.max_bytes is not None
        limit = variant.max_bytes
        best: tuple[float, _Hint] | None = None
        for known, hint in self._hints.items():
            if (known.width, known.height, known.quality) == (
                variant.width, variant.height, variant.quality
            ) and known.max_bytes is not None:
                distance = abs(math.log(known.max_bytes / limit))
                if best is None or distance < best[0]:
                    best = (distance, hint)
        return best[1] if best is not None else _Hint(self._quality(variant))

    def _encode_image(self, image: np.ndarray, quality: int, budgeted: bool) -> bytes:
        """encode_jpeg, counted against the budget if ``budgeted``."""
        if budgeted:
            with self._lock:
                self._budget.add(time.monotonic())
        return encode_jpeg(image, quality)

    def _encode(self, frame: Frame, variant: Variant, budgeted: bool) -> EncodedFrame:
        assert variant.quality is not None  # get() filled in the default
        width, height = fit_size(frame.width, frame.height, variant.width, variant.height)
        if variant.max_bytes is None:
            image = _resize(frame.image, width, height)
            height, width = image.shape[:2]
            data = self._encode_image(image, variant.quality, budgeted)
            quality = variant.quality
        else:
            data, width, height, quality = self._encode_within(
                frame, variant, width, height, budgeted
            )
        with self._lock:
            self.encodes += 1
            if len(self.encodes_by_variant) > _MAX_VARIANTS:
                self.encodes_by_variant.clear()
            self.encodes_by_variant[variant] += 1
        return EncodedFrame(
            frame.seq, data, width, height, quality, frame.captured_at, frame.captured_monotonic
        )

    def _encode_within(
        self, frame: Frame, variant: Variant, width: int, height: int, budgeted: bool
    ) -> tuple[bytes, int, int, int]:
        """Encode under ``variant.max_bytes``, trading quality and size (see :func:`_step_down`).

        Starts from the setting that worked for the previous frame, and tries one step better
        when the last result left plenty of room, so the search costs about one encode a frame.
        """
        assert variant.max_bytes is not None and variant.quality is not None
        limit = variant.max_bytes
        with self._lock:
            hint = self._hints.get(variant) or self._nearest_hint(variant)
            quality, scale = hint.quality, hint.scale
        data = b""
        while True:
            w = max(round(width * scale), _MIN_SIDE) if scale < 1.0 else width
            h = max(round(height * scale), _MIN_SIDE) if scale < 1.0 else height
            image = _resize(frame.image, w, h)
            h, w = image.shape[:2]
            data = self._encode_image(image, quality, budgeted)
            if len(data) <= limit:
                break
            quality, scale = _step_down(quality, scale, min(w, h))
        # Next frame: stay here, or step back up if this one used less than 60 % of the limit.
        next_quality, next_scale = quality, scale
        if len(data) < 0.6 * limit:
            next_quality, next_scale = _step_up(quality, scale, self._quality(variant))
        with self._lock:
            if len(self._hints) > _MAX_VARIANTS:  # clients keep changing their byte limits
                self._hints.clear()
            self._hints[variant] = _Hint(next_quality, next_scale)
        return data, w, h, quality


_GOOD_QUALITY = 40  # below this JPEG looks blocky: make the picture smaller first
_GOOD_SCALE = 0.5


def _step_down(quality: int, scale: float, smaller_side: int) -> tuple[int, float]:
    """One step smaller: quality down to 40, then size down to half, then both further.

    Raises:
        ValueError: already at the smallest quality and size.
    """
    if quality > _GOOD_QUALITY:
        return max(int(quality * 0.8), _GOOD_QUALITY), scale
    if scale > _GOOD_SCALE:
        return quality, max(scale * 0.8, _GOOD_SCALE)
    if quality > _MIN_QUALITY:
        return max(int(quality * 0.8), _MIN_QUALITY), scale
    if smaller_side > _MIN_SIDE:
        return quality, scale * 0.8
    raise ValueError("cannot make the frame any smaller")


def _step_up(quality: int, scale: float, wanted_quality: int) -> tuple[int, float]:
    """One step back towards the wanted quality at full size: _step_down in reverse."""
    good_quality = min(_GOOD_QUALITY, wanted_quality)
    if scale < _GOOD_SCALE:
        return quality, min(scale / 0.8, _GOOD_SCALE)
    if quality < good_quality:
        return min(int(quality / 0.8) + 1, good_quality), scale
    if scale < 1.0:
        return quality, min(scale / 0.8, 1.0)
    return min(int(quality / 0.8) + 1, wanted_quality), scale
