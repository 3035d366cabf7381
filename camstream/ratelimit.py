"""Token buckets: how many messages a client may send, how many log lines an event may cost."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["LogBudget", "RateLimiter"]


class RateLimiter:
    """A token bucket: ``rate`` events a second on average, bursts of up to ``burst``.

    Not locked: each limiter is used by one thread (a connection's reader).
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()

    def allow(self) -> bool:
        """Take one token; False (and nothing taken) if the bucket is empty."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


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

    def log(self, log: logging.Logger, level: int, msg: str, *args: Any) -> None:
        """``log.log(level, msg, *args)`` if the budget allows, else count it."""
        if not log.isEnabledFor(level):
            return
        with self._lock:
            if not self._limiter.allow():
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            msg, args = msg + " (%d more like it not logged)", (*args, suppressed)
        log.log(level, msg, *args)
