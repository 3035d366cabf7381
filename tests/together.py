"""Concurrency in tests: calls released at the same moment (for races), and seeing a thread
wait on a shared encode (for single flight)."""

from __future__ import annotations

import threading
from typing import Callable, Sequence

from conftest import TIMEOUT

from camstream.delivery.jpegcache import JpegCache
from camstream.delivery.variant import Variant


def run_together(calls: Sequence[Callable[[], object]]) -> None:
    """Run each call in its own thread, all released at once by a barrier; join every thread
    (``TIMEOUT`` each) and fail if one did not finish."""
    barrier = threading.Barrier(len(calls))

    def released(call: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            barrier.wait()
            call()

        return run

    threads = [threading.Thread(target=released(call), name="test-together") for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "a call did not finish"


class WatchedEvent(threading.Event):
    """A slot's ``done`` event that tells the test when a caller waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiters = threading.Semaphore(0)

    def wait(self, timeout: float | None = None) -> bool:
        self.waiters.release()
        return super().wait(timeout)


def watch_slot(cache: JpegCache, key: tuple[int, Variant]) -> WatchedEvent:
    """Swap the ``done`` event of the slot being made for ``key`` for a watched one."""
    event = WatchedEvent()
    cache._slots[key].done = event
    return event
