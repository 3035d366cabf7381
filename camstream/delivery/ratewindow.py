"""Counting events over a sliding window of time: how many lately, and how many a second.

One implementation for the encode budget (:mod:`~camstream.delivery.admission`: encode attempts
in the last second) and the ``encodes_per_s`` / ``decodes_per_s`` figures of ``stats()``
(:class:`CounterRates`). Time is passed in (``time.monotonic()`` values), never read, so both
are tested without clocks. (:class:`camstream.ratelimit.RateLimiter` is another thing: a token
bucket that allows bursts, for one reader thread.)
"""

from __future__ import annotations

import collections
import threading

__all__ = ["RateWindow", "CounterRates"]

_MIN_SPAN_S = 0.5  # rates are 0 until this much time has been watched: a rate over less is noise


class RateWindow:
    """Events of one or more kinds over the last ``window_s`` seconds. Thread-safe.

    :meth:`add` records events at a time; :meth:`counts` says how many of each kind happened in
    the window ``(now - window_s, now]``, :meth:`per_s` how many a second. Memory: one entry
    per :meth:`add` call inside the window.

    Args:
        window_s: the window, seconds.
        kinds: how many kinds of events (counters) it keeps.
    """

    def __init__(self, window_s: float, kinds: int = 1) -> None:
        if not window_s > 0 or kinds < 1:
            raise ValueError("a rate window needs window_s > 0 and kinds >= 1")
        self._window_s = window_s
        self._entries: collections.deque[tuple[float, tuple[int, ...]]] = collections.deque()
        self._sums = [0] * kinds  # of the entries in _entries
        self._first: float | None = None  # the time of the first add() ever
        self._lock = threading.Lock()

    def add(self, now: float, amounts: tuple[int, ...] = (1,), limit: float | None = None) -> bool:
        """Record ``amounts`` events (one per kind, in order; missing kinds: 0) at ``now``.

        With ``limit``, only while the first kind's count in the window is below it: checking
        and adding are one step, so threads racing for the last place cannot all take it.

        Returns:
            True if recorded; False (nothing recorded) if the count had reached ``limit``.
        """
        with self._lock:
            self._expire(now)
            if limit is not None and self._sums[0] >= limit:
                return False
            self._entries.append((now, amounts))
            for i, amount in enumerate(amounts):
                self._sums[i] += amount
            if self._first is None:
                self._first = now
            return True

    def counts(self, now: float) -> tuple[int, ...]:
        """Events of each kind in the last ``window_s`` seconds before ``now``."""
        with self._lock:
            self._expire(now)
            return tuple(self._sums)

    def count(self, now: float) -> int:
        """Events of the first kind in the window (see :meth:`counts`)."""
        return self.counts(now)[0]

    def per_s(self, now: float, pending: tuple[int, ...] = ()) -> tuple[float, ...]:
        """Events a second of each kind: the window's counts (plus ``pending``, events not
        recorded yet) over the time watched, the window or less; zeros until 0.5 s watched."""
        with self._lock:
            self._expire(now)
            sums, first = list(self._sums), self._first
        span = 0.0 if first is None else min(self._window_s, now - first)
        if span < _MIN_SPAN_S:
            return tuple(0.0 for _ in sums)
        for i, extra in enumerate(pending):
            sums[i] += extra
        return tuple(round(total / span, 1) for total in sums)

    def _expire(self, now: float) -> None:
        """Drop the entries at or before the window's start (lock held)."""
        entries, start = self._entries, now - self._window_s
        while entries and entries[0][0] <= start:
            _, amounts = entries.popleft()
            for i, amount in enumerate(amounts):
                self._sums[i] -= amount


class CounterRates:
    """Per-second rates of growing counters (encodes, decodes), over the last few seconds.

    :meth:`sample` records the counters' totals (call it often, e.g. once per camera frame);
    :meth:`per_s` divides what they grew in the window by the time watched. The first sample
    only sets the starting totals. Thread-safe.
    """

    def __init__(self, window_s: float = 2.0) -> None:
        self._window_s = window_s
        self._window: RateWindow | None = None  # made at the first sample (the counters' number)
        self._last: tuple[int, ...] | None = None
        self._lock = threading.Lock()

    def sample(self, now: float, totals: tuple[int, ...]) -> None:
        with self._lock:
            last, self._last = self._last, totals
            if self._window is None or last is None:
                self._window = RateWindow(self._window_s, len(totals))
                last = totals  # the starting point: nothing grew yet
            self._window.add(now, tuple(t - o for t, o in zip(totals, last)))

    def per_s(self, now: float, totals: tuple[int, ...]) -> tuple[float, ...]:
        """The rate of each counter, including its growth since the last sample (zeros until
        samples span 0.5 s)."""
        with self._lock:
            window, last = self._window, self._last
        if window is None or last is None:
            return tuple(0.0 for _ in totals)
        return window.per_s(now, tuple(t - o for t, o in zip(totals, last)))
