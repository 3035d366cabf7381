"""Running calls in threads released at the same moment (for races), then joining them."""

from __future__ import annotations

import threading
from typing import Callable, Sequence

from conftest import TIMEOUT


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
