"""Which variants get encoded, and how many encodes a second: the bounds on the encode work.

Whatever clients ask for, the work stays bounded:

* **The variant cap.** Viewers register the variant they want (:meth:`VariantAdmission.assign`);
  beyond ``max_variants`` distinct live variants besides the server's default ones, a viewer
  gets the nearest live one instead.
* **The encode budget.** :meth:`VariantAdmission.charge` is called before every encode attempt
  (each try of a byte-limit search too). This is the one rule of what is free: encodes for the
  default variants (no size, no quality, no limit or the default limit), and for the rungs
  derived from them, are never refused and do not count; every other attempt takes one unit of
  ``max_encodes_per_s`` (snapshots included) and past it raises :class:`EncodeBudgetExceeded`.
* **Rungs** (the seam for per-viewer adaptation, issue 18): a viewer on a live variant may be
  moved to a variant derived below it (:meth:`VariantAdmission.assign_rung`). Rungs do not take
  places under the cap but are bounded per live variant (:data:`MAX_RUNGS_BELOW`), so at most
  ``(max_variants + 2) x (1 + MAX_RUNGS_BELOW)`` variants are ever live, and a rung is budgeted
  exactly as the variant it is derived from: adaptation cannot multiply encodes.

It also knows which variant most viewers use, so it decides which variants the fan-out thread
may encode itself (:meth:`VariantAdmission.encodes_inline`).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from typing import Callable

from .. import logs
from .ratewindow import RateWindow
from .variant import Variant

__all__ = ["EncodeBudget", "EncodeBudgetExceeded", "MAX_RUNGS_BELOW", "VariantAdmission"]

logger = logs.get_logger(__name__)

MAX_RUNGS_BELOW = 4
"""Distinct rungs live at once below one variant (issue 18: at most 4 below the top)."""

_OPEN_SIDE = 1 << 16  # a side left free, for comparing variants


class EncodeBudgetExceeded(RuntimeError):
    """The encode budget of this second is spent: the caller skips this frame (or snapshot)."""


class EncodeBudget:
    """At most ``per_s`` encode attempts in any one second, all callers together. Thread-safe.

    Args:
        per_s: the budget; None for none (every attempt allowed, still counted).
        clock: the time, in seconds (``time.monotonic`` unless a test gives its own).
    """

    def __init__(
        self, per_s: float | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_s = per_s
        self._clock = clock
        self._window = RateWindow(1.0)
        self._lock = threading.Lock()  # for the counters
        self.attempts = 0
        """Attempts allowed since the start."""
        self.refused = 0
        """Attempts refused because the budget of the second was spent."""

    def take(self) -> None:
        """Account for one encode attempt, before making it.

        Raises:
            EncodeBudgetExceeded: the budget of this second is spent (nothing was taken).
        """
        allowed = self.per_s is None or self._window.add(self._clock(), limit=self.per_s)
        with self._lock:
            if not allowed:
                self.refused += 1
                raise EncodeBudgetExceeded("the encode budget of this second is spent")
            self.attempts += 1


class VariantAdmission:
    """The variant cap, the encode budget and the rungs (see the module docstring).

    Thread-safe. :meth:`assign` / :meth:`release` (and the rung pair) are called by each
    viewer's thread when its settings change; :meth:`charge` by whichever thread encodes.

    Args:
        default_quality: the quality of a variant without one (for comparing variants).
        default_max_bytes: the byte limit viewers get when they ask for none, if any.
        max_variants: distinct live variants besides the default ones.
        max_encodes_per_s: the encode budget; None for none.
        clock: the budget's clock (tests).
    """

    def __init__(
        self,
        *,
        default_quality: int = 80,
        default_max_bytes: int | None = None,
        max_variants: int = 4,
        max_encodes_per_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default_quality = default_quality
        self.default_max_bytes = default_max_bytes
        self.max_variants = max_variants
        self.defaults = frozenset({Variant(), Variant(max_bytes=default_max_bytes)})
        """The server's default variants: never capped, never budgeted."""
        self.budget = EncodeBudget(max_encodes_per_s, clock)
        self._lock = threading.Lock()
        self._live: collections.Counter[Variant] = collections.Counter()  # viewers per variant
        # Rungs: for each live variant, its rungs in use and the viewers on each.
        self._rungs: dict[Variant, collections.Counter[Variant]] = {}

    # Which encodes are free

    def is_free(self, variant: Variant) -> bool:
        """Whether encodes for ``variant`` (as a viewer was given it, quality not filled in) are
        outside the budget: a default variant, or a rung in use below one."""
        if variant in self.defaults:
            return True
        if not self._rungs:
            return False
        with self._lock:
            return any(
                variant in rungs for top, rungs in self._rungs.items() if top in self.defaults
            )

    def charge(self, variant: Variant) -> None:
        """Account for one encode attempt for ``variant`` (as :meth:`is_free` takes it), before
        it is made: free variants pass, any other takes one unit of the budget.

        Raises:
            EncodeBudgetExceeded: the budget of this second is spent.
        """
        if not self.is_free(variant):
            self.budget.take()

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
            if wanted not in live and wanted not in self.defaults:
                others = sum(1 for v in live if v not in self.defaults)
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

    def assign_rung(self, top: Variant, rung: Variant) -> Variant:
        """Move one viewer of ``top`` (a variant :meth:`assign` gave it, still held) to
        ``rung``, a variant derived below it; returns the rung it gets.

        That is ``rung`` while ``top`` has fewer than :data:`MAX_RUNGS_BELOW` distinct rungs in
        use, else the nearest of those. The viewer keeps its place on ``top`` (released with
        :meth:`release` as before) and gives the rung back with :meth:`release_rung`.

        Raises:
            ValueError: no viewer holds ``top``.
        """
        with self._lock:
            if top not in self._live:
                raise ValueError(f"{top} is not a live variant")
            rungs = self._rungs.setdefault(top, collections.Counter())
            given = rung
            if rung not in rungs and len(rungs) >= MAX_RUNGS_BELOW:
                given = min(rungs, key=lambda v: (self._distance(v, rung), repr(v)))
            rungs[given] += 1
        return given

    def release_rung(self, top: Variant, rung: Variant) -> None:
        """A viewer no longer uses ``rung`` (which :meth:`assign_rung` gave it below ``top``)."""
        with self._lock:
            rungs = self._rungs.get(top)
            if rungs is None:
                return
            rungs[rung] -= 1
            if rungs[rung] <= 0:
                del rungs[rung]
            if not rungs:
                del self._rungs[top]

    @property
    def live_variants(self) -> int:
        """Distinct variants viewers use now (rungs included)."""
        with self._lock:
            return len(self._live.keys() | {r for rungs in self._rungs.values() for r in rungs})

    def encodes_inline(self) -> frozenset[Variant]:
        """The variants the fan-out thread may encode itself: the default ones and the one most
        viewers use (others are encoded by their viewers' own threads, in parallel)."""
        with self._lock:
            popular = max(self._live.items(), key=lambda item: item[1], default=None)
        return self.defaults if popular is None else self.defaults | {popular[0]}

    def _nearest_live(self, wanted: Variant) -> Variant:
        """The live or default variant closest in size and quality among those that keep
        ``wanted``'s byte limit (the caller holds the lock). If none does, the default variant
        with that limit rounded down to a power of two (a short, bounded set)."""
        limit = wanted.max_bytes
        candidates = [
            v for v in (*self._live, *self.defaults)
            if limit is None or (v.max_bytes is not None and v.max_bytes <= limit)
        ]
        if not candidates:
            assert limit is not None
            return Variant(max_bytes=1 << (limit.bit_length() - 1))
        return min(candidates, key=lambda v: (self._distance(v, wanted), repr(v)))

    def _distance(self, a: Variant, b: Variant) -> float:
        """How far apart two variants are in size (log scale) and quality."""
        return (
            abs(math.log(_side(a.width) / _side(b.width)))
            + abs(math.log(_side(a.height) / _side(b.height)))
            + abs(self._quality(a) - self._quality(b)) / 25
        )

    def _quality(self, variant: Variant) -> int:
        return self.default_quality if variant.quality is None else variant.quality


def _side(side: int | None) -> int:
    return _OPEN_SIDE if side is None else side
