"""JPEG encoding, once per frame and variant, shared by every client that wants it.

A *variant* is what a client asked to receive: a size box, a quality and optionally a byte
limit. All clients on the same variant share one encode per frame (single flight: the first
client to ask encodes, the others wait for its result), so the number of encodes per second
depends on the camera rate and the number of distinct variants, never on the number of clients.

Frames that carry the source's own JPEG (:attr:`Frame.jpeg`) are *passed through*: a variant
that takes the frame as the source made it (no smaller size box, no quality of its own, a byte
limit the file fits in) gets those bytes untouched, with no decode and no encode.

:class:`EncodeCache` is the one object the rest of camstream uses; it composes the parts, each
in its own module:

=====================  ========================================================================
``variant``            :class:`Variant`, :class:`EncodedFrame`, :func:`fit_size`, passthrough
``jpegcodec``          :func:`encode_jpeg` and scaling (OpenCV)
``jpegcache``          ``JpegCache``: each (frame, variant)'s JPEG made once (single flight, LRU)
``admission``          ``VariantAdmission``: the variant cap, the encode budget (the rule of
                       which encodes are free), rungs, which variants the fan-out encodes
``fitting``            ``ByteLimitFitter``: the quality/size search under ``max_bytes``
``ratewindow``         ``RateWindow``: events over the last second (the budget)
``decodesize``         ``DecodeSizes``: the size a JPEG frame is decoded at for its encodes
=====================  ========================================================================
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Callable

from ..capture.frame import Frame
from .admission import EncodeBudgetExceeded, VariantAdmission
from .decodesize import DecodeSizes
from .fitting import ByteLimitFitter
from .jpegcache import JpegCache, MakeFailed
from .jpegcodec import encode_jpeg, resize
from .variant import EncodedFrame, Variant, fit_size, passed_through, passes_through

__all__ = [
    "Variant", "EncodedFrame", "EncodeCache", "EncodeBudgetExceeded", "encode_jpeg", "fit_size"
]


class EncodeCache:
    """Encodes each (frame, variant) once and hands the JPEG to every client that asks.

    Thread-safe. Bounded: it keeps the last ``max_entries`` encodes, and no more than
    ``max_total_bytes`` of JPEG data; older ones are dropped first (clients only ever ask for
    recent frames, so a dropped entry is at worst encoded again).

    The encode work is bounded too, whatever clients ask for (:attr:`admission`). Viewers
    register the variant they want with :meth:`assign`: beyond ``max_variants`` distinct live
    variants, a viewer gets the nearest live one instead. And outside the server's default
    variants (no size, no quality, no limit or the default limit), at most
    ``max_encodes_per_s`` JPEG encode attempts a second are made (snapshots and each try of a
    byte-limit search included); past that, :meth:`get` raises :class:`EncodeBudgetExceeded`.

    Args:
        max_entries, max_total_bytes: the bounds of the JPEGs kept.
        default_quality: the quality of frames encoded for a variant without one.
        default_max_bytes: the byte limit viewers get when they ask for none, if any.
        max_variants: distinct live variants, besides the default ones.
        max_encodes_per_s: the encode budget; None for no budget.
        clock: the encode budget's clock, in seconds (``time.monotonic``; tests give their own).
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default_quality = default_quality
        self.jpegs = JpegCache(max_entries, max_total_bytes)
        """The shared JPEGs (single flight, bounded)."""
        self.admission = VariantAdmission(
            default_quality=default_quality,
            default_max_bytes=default_max_bytes,
            max_variants=max_variants,
            max_encodes_per_s=max_encodes_per_s,
            clock=clock,
        )
        """The variant cap, the encode budget, rungs, and the fan-out's inline variants."""
        self.fitter = ByteLimitFitter()
        """The byte-limit search and its hints."""
        self.decode_sizes = DecodeSizes()
        """The size JPEG frames are decoded at for the encodes (see ``decodesize``)."""

    # Who gets which variant (see VariantAdmission)

    def assign(self, wanted: Variant) -> Variant:
        """Register a viewer that wants ``wanted``; returns the variant it gets (the cap may
        give it the nearest live one). Give it back with :meth:`release`."""
        return self.admission.assign(wanted)

    def release(self, given: Variant) -> None:
        """A viewer no longer uses ``given`` (a variant :meth:`assign` returned)."""
        self.admission.release(given)

    def assign_rung(self, top: Variant, rung: Variant) -> Variant:
        """Move a viewer of ``top`` (a variant :meth:`assign` gave it) to ``rung``, a variant
        of its quality ladder; returns the rung it gets (:meth:`VariantAdmission.assign_rung`).
        Give it back with :meth:`release_rung`."""
        return self.admission.assign_rung(top, rung)

    def release_rung(self, top: Variant, rung: Variant) -> None:
        """A viewer of ``top`` no longer uses ``rung`` (which :meth:`assign_rung` gave it)."""
        self.admission.release_rung(top, rung)

    @property
    def default_max_bytes(self) -> int | None:
        """The byte limit viewers get when they ask for none (None: no limit)."""
        return self.admission.default_max_bytes

    def encodes_inline(self) -> frozenset[Variant]:
        """The variants the fan-out may encode itself (:meth:`VariantAdmission.encodes_inline`;
        kept here for callers of the time before the split)."""
        return self.admission.encodes_inline()

    @property
    def max_variants(self) -> int:
        """Distinct live variants allowed besides the default ones."""
        return self.admission.max_variants

    @property
    def max_encodes_per_s(self) -> float | None:
        """The encode budget (None: none)."""
        return self.admission.budget.per_s

    # Counters

    @property
    def live_variants(self) -> int:
        """Distinct variants viewers use now."""
        return self.admission.live_variants

    @property
    def encodes(self) -> int:
        """JPEG files made: one per frame and variant (a byte-limit search's tries not counted)."""
        return self.jpegs.encodes

    @property
    def encodes_by_variant(self) -> collections.Counter[Variant]:
        """Files made per variant (quality filled in)."""
        return self.jpegs.encodes_by_variant

    @property
    def encode_attempts(self) -> int:
        """Budgeted encode attempts (each try of a byte-limit search counts)."""
        return self.admission.budget.attempts

    @property
    def encodes_refused(self) -> int:
        """Encode attempts refused because the budget of the second was spent."""
        return self.admission.budget.refused

    # Frames

    def passes_through(self, frame: Frame, variant: Variant) -> bool:
        """Whether ``variant`` takes ``frame``'s source JPEG untouched (no decode, no encode)."""
        return passes_through(frame, variant)

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
        own, or one already made), else None. Never waits for an encode in progress."""
        return self._lookup(frame, variant, may_encode=False)

    def _lookup(self, frame: Frame, asked: Variant, may_encode: bool) -> EncodedFrame | None:
        """get() or made(); ``asked`` is the variant as the viewer has it, which decides
        whether its encodes are budgeted (:meth:`VariantAdmission.charge`)."""
        if passes_through(frame, asked):
            return passed_through(frame)
        variant = asked
        if variant.quality is None:
            variant = dataclasses.replace(variant, quality=self.default_quality)
        if variant.max_bytes is not None:
            whole = self._whole_if_it_fits(frame, variant, asked, may_encode)
            if whole is not None:
                return whole
        return self._shared(frame, variant, asked, may_encode)

    def _shared(
        self, frame: Frame, variant: Variant, asked: Variant, may_encode: bool
    ) -> EncodedFrame | None:
        """The JPEG of ``variant`` (quality filled in) from the shared cache, made here if
        ``may_encode`` and no one made it yet; None if not made and not ``may_encode``."""
        key = (frame.seq, variant)
        if not may_encode:
            return self.jpegs.made(key)
        try:
            return self.jpegs.get(key, self._encode, frame, variant, asked)
        except MakeFailed as exc:  # it failed in the thread that made it, while this one waited
            if isinstance(exc.cause, EncodeBudgetExceeded):
                raise EncodeBudgetExceeded(str(exc.cause)) from None
            raise

    def _whole_if_it_fits(
        self, frame: Frame, variant: Variant, asked: Variant, may_encode: bool
    ) -> EncodedFrame | None:
        """The encode without a byte limit, if it fits under ``variant.max_bytes``.

        Clients with and without a limit (Godot's default one, the bundled clients' none, the
        HTTP endpoints) then share one encode whenever the frame fits. It is made here only
        while the limit's own search is at full quality and size; else looked up, not made.
        """
        assert variant.max_bytes is not None
        whole_variant = dataclasses.replace(variant, max_bytes=None)
        whole = self.jpegs.made((frame.seq, whole_variant))
        at_full = self.fitter.starts_at_full(variant)
        if whole is None and at_full:
            whole = self._shared(frame, whole_variant, asked, may_encode)
        if whole is None:
            return None  # not made, and not to be made here
        if len(whole.data) <= variant.max_bytes:
            return whole
        if at_full:  # the limit's search starts one step down, not with this encode again
            self.fitter.full_did_not_fit(variant, min(whole.width, whole.height))
        return None

    def _encode(self, frame: Frame, variant: Variant, asked: Variant) -> EncodedFrame:
        """Make the JPEG of ``variant`` (quality filled in); every try is charged to ``asked``
        before its work starts."""
        assert variant.quality is not None

        def charge() -> None:
            self.admission.charge(asked)

        width, height = fit_size(frame.width, frame.height, variant.width, variant.height)
        if variant.max_bytes is None:
            charge()
            image = resize(frame.pixels(*self.decode_sizes.need(width, height)), width, height)
            height, width = image.shape[:2]
            data, quality = encode_jpeg(image, variant.quality), variant.quality
        else:  # (its size counts too, so other encodes of its frames decode them once)
            data, width, height, quality = self.fitter.fit(
                frame, variant, width, height, charge, self.decode_sizes.need(width, height)
            )
        return EncodedFrame(
            frame.seq, data, width, height, quality, frame.captured_at, frame.captured_monotonic,
            frame.data_json,
        )
