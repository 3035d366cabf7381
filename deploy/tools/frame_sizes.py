"""Bytes per frame and encode time per size and JPEG quality: the figures of docs/scaling.md.

Run from the repository root:  PYTHONPATH=. python deploy/tools/frame_sizes.py
The source is the benchmarks' webcam-like picture (camstream's test card plus a fixed noise
texture, benchmarks/stamp.py), and the plain test card for comparison. Each figure is the mean
over 60 consecutive frames (2 s of motion at 30 fps); the encode time is the median.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from stamp import FrameSource  # noqa: E402

SIZES = [("480p", 640, 480), ("720p", 1280, 720), ("1080p", 1920, 1080)]
QUALITIES = [70, 80, 90]
FRAMES = 60
FPS = 30


def measure(source: FrameSource, quality: int) -> tuple[float, float]:
    sizes, times = [], []
    for i in range(FRAMES):
        image, _ = source.frame(i, FPS)
        start = time.perf_counter()
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        times.append(time.perf_counter() - start)
        assert ok
        sizes.append(len(data))
    return statistics.mean(sizes), statistics.median(times)


def main() -> None:
    print(f"OpenCV {cv2.__version__}, {FRAMES} frames each, {FPS} fps for the rates")
    print("| source | size | quality | KB/frame | MB/s per viewer | Mbit/s per viewer "
          "| viewers per 1 Gbit/s | encode ms |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for label, noise in (("webcam-like", 28), ("test card", 0)):
        for name, width, height in SIZES:
            source = FrameSource(width, height, noise=noise)
            for quality in QUALITIES:
                size, seconds = measure(source, quality)
                per_s = size * FPS
                print(
                    f"| {label} | {name} | q{quality} | {size / 1000:.1f} | {per_s / 1e6:.2f} "
                    f"| {per_s * 8 / 1e6:.1f} | {1e9 * 0.9 / (per_s * 8):.0f} "
                    f"| {seconds * 1000:.1f} |"
                )


if __name__ == "__main__":
    main()
