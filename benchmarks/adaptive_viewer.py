"""Viewers for ``adaptive.py``: N WebSocket viewers in one process that log every frame.

Run by the benchmark driver, inside a shaped link's network namespace (``ip netns exec``) or
on the host for unshaped viewers. Each viewer asks for ``frame_info`` (the URL the driver gives
has ``?frame_info=1``), so every JPEG is preceded by a ``frame`` message with its capture time;
the receive time of the JPEG's last byte minus that capture time is the capture-to-receipt
latency (same machine, same clock). Every ``metadata`` message is logged with its receive time
(size, quality, and the adaptation fields where the server sends them).

Built on ``loadgen.Viewer`` and ``loadgen.Loop`` (one ``selectors`` loop, pings answered).

Usage: ``adaptive_viewer.py URL --count N --seconds S``. Prints ``CONNECTED <n>`` once the
handshakes are done, then, after S seconds, ``RESULT <json>``: a list with, per viewer,
``frames`` ([receive time, capture time, width, height, bytes]), ``metadata`` ([receive time,
message]) and ``close_code``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from loadgen import Loop, Viewer  # noqa: E402

_METADATA_FIELDS = (
    "width", "height", "quality", "fps", "adapt", "rung", "rungs", "link_kbps", "rtt_ms",
    "adapt_reason",
)


class LoggingViewer(Viewer):
    """A :class:`loadgen.Viewer` that keeps a line per frame and per metadata message."""

    def __init__(self, index: int, url: str) -> None:
        super().__init__(index, url)
        self.frame_log: list[list[float | int | None]] = []
        self.metadata_log: list[list[Any]] = []
        self.info: dict[str, Any] | None = None  # the frame message before the next JPEG
        self.on_text = LoggingViewer._text

    def _text(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "frame":
            self.info = message
        elif kind == "metadata":
            fields = {k: message[k] for k in _METADATA_FIELDS if k in message}
            self.metadata_log.append([time.time(), fields])

    def _on_frame(self, now: float, p0: int, p1: int) -> None:
        info, self.info = self.info, None
        captured = info.get("captured_at") if info else None
        width = info.get("width") if info else None
        height = info.get("height") if info else None
        self.frame_log.append([round(now, 6), captured, width, height, p1 - p0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    viewers = [LoggingViewer(i, args.url) for i in range(args.count)]
    loop = Loop()
    for viewer in viewers:
        viewer.begin_connect(timeout=20.0)
    deadline = time.monotonic() + 20.0
    for viewer in viewers:
        viewer.finish_connect(deadline)
        loop.add(viewer)
    print(f"CONNECTED {len(viewers)}", flush=True)
    loop.run_until(time.time() + args.seconds)
    loop.close()
    result = [
        {"frames": v.frame_log, "metadata": v.metadata_log, "close_code": v.close_code}
        for v in viewers
    ]
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
