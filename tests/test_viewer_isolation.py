"""A viewer that stops reading never freezes a healthy one: while a send to the stalled viewer
blocks (until the send timeout sheds it), the healthy viewer's frames keep coming at the frame
period. The longest gap between the healthy viewer's frames is measured, not only their count:
a bug that shared a lock between the two would show a gap of the send timeout.
"""

from __future__ import annotations

import time

import numpy as np
from conftest import SLACK, TIMEOUT, wait_until
from helpers import Counter, Publisher, RawViewer, running


def noise(width: int, height: int, seed: int) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image.flags.writeable = False
    return image


def test_a_stalled_viewer_never_freezes_a_healthy_one(streamer_factory) -> None:
    # Noise at 1920x1080 (~1.3 MB a JPEG) is more than the socket buffers take: a send to the
    # stalled viewer blocks until the send timeout (2 s), which then sheds it.
    images = [noise(1920, 1080, i) for i in range(3)]
    streamer = streamer_factory("push", fps=15, send_timeout=2)
    publisher = Publisher(streamer, images, fps=15)
    healthy = Counter(streamer.url + "?max_bytes=0")
    with running(publisher, healthy):
        assert healthy.ready.wait(TIMEOUT) and healthy.error is None, healthy.error
        stalled = RawViewer(streamer.port, rcvbuf=16384)  # handshake, then never reads
        try:
            t0 = time.monotonic()
            assert wait_until(lambda: streamer.stats()["client_count"] == 2)
            # The window under test: from the stall until the send timeout has shed it.
            assert wait_until(lambda: streamer.stats()["client_count"] == 1, 2 + TIMEOUT)
            t1 = time.monotonic()
        finally:
            stalled.close()
    assert t1 - t0 >= 2 * 0.9, t1 - t0  # a send to it did block (for the send timeout)
    arrivals = [t for t in healthy.arrivals if t0 <= t <= t1]
    assert len(arrivals) >= 15 * (t1 - t0) * 0.8 / SLACK, (len(arrivals), t1 - t0)
    longest = max(b - a for a, b in zip(arrivals, arrivals[1:]))
    # One frame period is 67 ms; a healthy viewer held behind the stalled one's send would show
    # a gap of the send timeout (2 s). Half a second leaves room for a busy machine.
    assert longest < 0.5 * SLACK, f"longest gap {longest:.3f} s"
