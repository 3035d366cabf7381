"""Who wants a camera's frames, and how often its source was opened (on-demand capture).

:class:`Demand` counts the viewers holding a :class:`CameraLease` and remembers when the last
one let go, so an on-demand :class:`~camstream.capture.camera.CameraThread` knows when to open
its source and when its grace period has run out. The camera thread sleeps on it (a condition
variable: no polling while nobody watches). :class:`OpenCounters` are the camera's open/close
figures for ``stats()``. No thread of its own.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["DEFAULT_GRACE_S", "CameraLease", "Demand", "OpenCounters", "check_on_demand"]

DEFAULT_GRACE_S = 10.0
"""The grace period of ``on_demand=True``: the source is released this long after the last
viewer leaves."""


def check_on_demand(on_demand: bool | float | None) -> float | None:
    """The grace period in seconds that ``on_demand`` asks for, or None (always open).

    ``True`` is :data:`DEFAULT_GRACE_S`; ``False`` and ``None`` are off; a number is the grace
    period itself (0 to one day; 0 releases the source as soon as the last viewer leaves).

    Raises:
        ConfigError: not a bool, None or a number in range.
    """
    if on_demand is None or on_demand is False:
        return None
    if on_demand is True:
        return DEFAULT_GRACE_S
    if not isinstance(on_demand, (int, float)) or not 0 <= on_demand <= 86400:
        raise ConfigError(
            f"on_demand must be True, False or a grace period of 0 to 86400 seconds, "
            f"not {on_demand!r}"
        )
    return float(on_demand)  # NaN and infinity fail the range check


class CameraLease:
    """One viewer's claim on a camera's frames, from
    :meth:`~camstream.capture.camera.CameraThread.acquire`.

    :meth:`release` (or leaving a ``with`` block) gives it back; thread-safe and idempotent, so
    a viewer whose close path runs twice releases once.
    """

    __slots__ = ("_demand", "_held")

    def __init__(self, demand: Demand) -> None:
        self._demand = demand
        self._held = True

    @property
    def held(self) -> bool:
        """Whether this lease still counts (not released)."""
        return self._held

    def release(self) -> None:
        """Give the claim back. Any thread; idempotent."""
        self._demand._release(self)

    def __enter__(self) -> CameraLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Demand:
    """How many leases are held on one camera, and since when none is (thread-safe)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0
        self._unwanted_since: float | None = time.monotonic()
        self._closed = False

    @property
    def count(self) -> int:
        """Leases held now."""
        return self._count

    def acquire(self) -> CameraLease:
        """A new lease; wakes the camera thread if it was the first. Any thread."""
        with self._cond:
            self._count += 1
            self._unwanted_since = None
            self._cond.notify_all()
        return CameraLease(self)

    def _release(self, lease: CameraLease) -> None:
        with self._cond:
            if not lease._held:
                return
            lease._held = False
            self._count -= 1
            if self._count == 0:
                self._unwanted_since = time.monotonic()
                self._cond.notify_all()

    def unwanted_for(self, now: float) -> float | None:
        """Seconds since the last lease was released, or None while one is held."""
        since = self._unwanted_since
        return None if since is None else now - since

    def wait_wanted(self) -> bool:
        """Block until a lease is held (True) or :meth:`close` is called (False).

        Blocks on a condition variable, with no timeout: a camera nobody watches costs no CPU.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._count > 0)
            return not self._closed

    def sleep_while_wanted(self, timeout: float) -> bool:
        """Sleep ``timeout`` seconds; False at once if no lease is held or on :meth:`close`
        (the caller stops retrying), True if the time passed with a lease held."""
        with self._cond:
            woken = self._cond.wait_for(lambda: self._closed or self._count == 0, timeout)
            return not woken

    def close(self) -> None:
        """Wake every waiter for good (the camera is stopping). Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class OpenCounters:
    """How often a camera's source was opened and closed (written by the camera's threads)."""

    opens: int = 0
    """Successful opens of the source (the first, after a loss, on demand, a file's loop)."""
    closes: int = 0
    """Releases of an open source (a loss, an on-demand release, stop)."""
    open_failures: int = 0
    """Attempts to open that failed."""
    last_open_at: float | None = None
    """``time.monotonic()`` when the last successful open finished, or None."""
    last_open_duration: float | None = None
    """How long the last successful open took, in seconds, or None."""

    def opened(self, started: float, now: float) -> None:
        self.opens += 1
        self.last_open_at = now
        self.last_open_duration = now - started
