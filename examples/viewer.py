"""A Python viewer for a camstream server: a window, or a headless fps meter.

    python examples/viewer.py                          # window (needs a desktop and opencv-python)
    python examples/viewer.py --headless --seconds 5   # prints fps and latency once a second
    python examples/viewer.py ws://127.0.0.1:8765/ --fps 10 --width 320

Needs the client extra, installed from a camstream checkout (camstream is not on PyPI):
pip install '.[client]'.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import cv2

from camstream import CamstreamError
from camstream.client import Client


def no_window_reason() -> str | None:
    """Why this machine cannot open a window, or None if it can (as far as can be told without
    opening one: OpenCV's Qt aborts the process when the display is missing)."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return "no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description="View a camstream stream.")
    parser.add_argument("url", nargs="?", default="ws://127.0.0.1:8765/")
    parser.add_argument("--headless", action="store_true", help="no window: print fps")
    parser.add_argument("--seconds", type=float, help="stop after this long")
    parser.add_argument("--fps", type=float)
    parser.add_argument("--width", type=int)
    parser.add_argument("--token")
    args = parser.parse_args()

    if not args.headless and (reason := no_window_reason()) is not None:
        print(f"viewer: cannot open a window: {reason}. Use --headless to print fps and "
              "latency instead.", file=sys.stderr)
        return 2
    started = time.monotonic()
    window = "camstream" if not args.headless else None
    count, window_start = 0, time.monotonic()
    try:
        with Client(args.url, token=args.token, fps=args.fps, width=args.width,
                    frame_info=True) as client:
            print(f"connected: {client.metadata}", flush=True)
            for frame in client:
                count += 1
                now = time.monotonic()
                if window is not None:
                    try:
                        cv2.imshow(window, frame.image)
                    except cv2.error as exc:  # e.g. opencv-python-headless: no GUI at all
                        why = str(exc).strip().splitlines()[-1]
                        print(f"viewer: cannot open a window ({why}). Use --headless to print "
                              "fps and latency instead.", file=sys.stderr)
                        window = None
                        return 2
                    if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                        break
                if now - window_start >= 1.0:
                    latency = ""
                    if frame.info is not None:
                        late_ms = (time.time() - frame.info["captured_at"]) * 1000
                        latency = f", latency {late_ms:.1f} ms"
                    print(f"{count / (now - window_start):.1f} fps, {frame.width}x{frame.height}, "
                          f"{len(frame.jpeg)} bytes{latency}", flush=True)
                    count, window_start = 0, now
                if args.seconds is not None and now - started >= args.seconds:
                    break
            if client.close_code is not None:
                print(f"server closed the connection: {client.close_code} {client.close_reason}")
    except (OSError, ConnectionError) as exc:
        print(f"viewer: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return 1
    except CamstreamError as exc:  # a bad URL, a setting the server refused
        print(f"viewer: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        if window is not None:
            cv2.destroyAllWindows()
    return 0


if __name__ == "__main__":
    sys.exit(main())
