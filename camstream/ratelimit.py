"""Token buckets: what a client may send, how many log lines an event or a client may cost."""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

__all__ = ["KeyedLogBudget", "LogBudget", "RateLimiter", "SharedBucket"]


class RateLimiter:
    """A token bucket: ``rate`` tokens a second on average, bursts of up to ``burst``.

    Not locked: each limiter is used by one thread (a connection's reader) or under its owner's
    lock.
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()

    def allow(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens; False (and nothing taken) if the bucket holds fewer.

        A ``cost`` above the burst is never allowed.
        """
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < cost:
            return False
        self._tokens -= cost
        return True


class SharedBucket:
    """A token bucket shared by several threads that wait for their turn instead of failing.

    :meth:`reserve` always takes the tokens, going into debt if it must, and says how long the
    caller should wait before going on: callers are served in the order they came, at ``rate``
    tokens a second after a burst of ``burst``. Thread-safe.
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self._burst = burst
        self._tokens = burst  # negative: debt, paid back at ``rate``
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def reserve(self, cost: float) -> float:
        """Take ``cost`` tokens; return the seconds to wait until they are paid for (0: none)."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= cost
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class LogBudget:
    """Log one kind of event at most ``rate`` times a second (bursts of ``burst``); thread-safe.

    What a hostile client can trigger at will (refusals, flood closes) goes through one of
    these, so thousands of connections a second cost a few log lines, not thousands. Records
    that do not fit are counted, and the count is added to the next record that goes out.
    """

    def __init__(self, rate: float = 1.0, burst: float = 10.0) -> None:
        self._limiter = RateLimiter(rate, burst)
        self._lock = threading.Lock()
        self._suppressed = 0

    def log(
        self, log: logging.Logger, level: int, msg: str, *args: Any, exc_info: bool = False
    ) -> None:
        """``log.log(level, msg, *args)`` if the budget allows, else count it (``exc_info``:
        with the exception being handled, as ``log.exception`` does)."""
        if not log.isEnabledFor(level):
            return
        with self._lock:
            if not self._limiter.allow():
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            msg, args = msg + " (%d more like it not logged)", (*args, suppressed)
        log.log(level, msg, *args, exc_info=exc_info)


class KeyedLogBudget:
    """A :class:`LogBudget` for each key (a client address): one client's lines are bounded
    (a burst, then ``rate`` a second, each carrying the count of those left out), another
    client's are not touched; all keys together get at most ``total_rate`` a second (bursts of
    ``total_burst``), so many addresses cannot flood the log either. Thread-safe.

    At most ``max_keys`` keys are remembered (the least recently seen is forgotten first), so
    the memory is bounded whatever the number of addresses.
    """

    def __init__(
        self,
        rate: float = 1.0,
        burst: float = 10.0,
        *,
        total_rate: float = 20.0,
        total_burst: float = 500.0,
        max_keys: int = 4096,
    ) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._total = RateLimiter(total_rate, total_burst)
        self._lock = threading.Lock()
        self._keys: collections.OrderedDict[str, tuple[RateLimiter, int]] = (
            collections.OrderedDict()
        )

    def admit(self, key: str) -> int | None:
        """Charge one line to ``key``: None if it must not be logged (it is counted), else how
        many lines of ``key`` were left out since the last one that was logged."""
        with self._lock:
            limiter, suppressed = self._keys.pop(key, (None, 0))
            if limiter is None:
                limiter = RateLimiter(self.rate, self.burst)
                if len(self._keys) >= self.max_keys:
                    self._keys.popitem(last=False)
            allowed = limiter.allow() and self._total.allow()
            self._keys[key] = (limiter, 0 if allowed else suppressed + 1)
        return suppressed if allowed else None
