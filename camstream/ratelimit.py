"""A token bucket: how many client messages a connection may send (thread-compatible, no I/O)."""

from __future__ import annotations

import time

__all__ = ["RateLimiter"]


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
