"""An existing OpenCV loop that draws on its frames and publishes them to every viewer.

Your application keeps its own capture and processing; camstream only serves what you publish.
Here the "capture" is a synthetic moving scene so the example runs anywhere; replace
``make_frame`` with ``cap.read()`` from your own ``cv2.VideoCapture``.

    python examples/push_frames.py            # then open ws://127.0.0.1:8765/ in a viewer
    python examples/push_frames.py --seconds 5
"""

from __future__ import annotations

import argparse
import logging
import math
import time

import cv2
import numpy as np

from camstream import Streamer


def make_frame(t: float, width: int = 640, height: int = 480) -> np.ndarray:
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:] = (40, 30, 20)
    x = int(width / 2 + width / 3 * math.cos(t))
    y = int(height / 2 + height / 3 * math.sin(2 * t))
    cv2.circle(frame, (x, y), 40, (0, 200, 255), -1)
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

    with Streamer("push", port=args.port, fps=args.fps) as streamer:
        print(f"publishing to {streamer.url} (Ctrl+C to stop)", flush=True)
        start = time.monotonic()
        next_frame = start
        count = 0
        try:
            while args.seconds is None or time.monotonic() - start < args.seconds:
                frame = make_frame(time.monotonic() - start)
                # Your processing goes here: detections, overlays, ...
                cv2.putText(frame, f"frame {count}", (20, 40), cv2.FONT_HERSHEY_SIMPLEX, 1,
                            (255, 255, 255), 2)
                streamer.publish(frame)
                count += 1
                next_frame += 1.0 / args.fps
                time.sleep(max(next_frame - time.monotonic(), 0))
        except KeyboardInterrupt:
            pass
    print(f"published {count} frames", flush=True)


if __name__ == "__main__":
    main()
