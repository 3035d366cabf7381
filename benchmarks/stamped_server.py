"""A camstream server fed with stamped frames, for the benchmark and the soak test.

Runs ``Streamer("push", port=0, ...)`` plus a publisher thread that makes one stamped frame
(see ``stamp.py``) per camera period and publishes it. Talks to its parent over stdio:

* prints ``READY <url> <pid>`` once serving;
* on a ``stats`` line on stdin prints ``STATS <json>``: ``Streamer.stats()`` plus the
  publisher's own counters (frames published, its thread CPU time, so the cost of the test
  source can be told apart from camstream's);
* on ``quit``, end of stdin when stdin is a pipe, SIGTERM or SIGINT, stops the Streamer and exits 0.

Logging goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import stat
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stamp import FrameSource  # noqa: E402

from camstream import Streamer  # noqa: E402


class Publisher:
    """Publishes stamped frames at ``fps`` on a deadline clock (skips ahead if it falls behind)."""

    def __init__(self, streamer: Streamer, width: int, height: int, fps: float) -> None:
        self.streamer = streamer
        self.source = FrameSource(width, height)
        self.fps = fps
        self.published = 0
        self.late = 0  # periods where the publisher itself could not keep up
        self.cpu_s = 0.0  # this thread's CPU time (render + stamp + publish)
        self._stop = threading.Event()
        # Not a daemon: stop() joins it.
        self._thread = threading.Thread(target=self._run, name="bench-publisher")

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        period = 1.0 / self.fps
        deadline = time.monotonic()
        index = 0
        while not self._stop.is_set():
            image, _ = self.source.frame(index, self.fps)
            self.streamer.publish(image, copy=False)
            self.published += 1
            self.cpu_s = time.thread_time()
            index += 1
            deadline += period
            now = time.monotonic()
            if deadline < now - period:
                self.late += 1
                deadline = now
            self._stop.wait(max(deadline - now, 0.0))


def _stdin_is_pipe() -> bool:
    return stat.S_ISFIFO(os.fstat(0).st_mode)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--quality", type=int, default=80)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--send-timeout", type=float, default=5.0)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    streamer = Streamer("push", port=args.port, fps=args.fps, quality=args.quality,
                        send_timeout=args.send_timeout).start()
    publisher = Publisher(streamer, args.width, args.height, args.fps).start()
    done = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def read_commands() -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "stats":
                stats = streamer.stats()
                stats["publisher"] = {"published": publisher.published, "late": publisher.late,
                                      "cpu_s": publisher.cpu_s}
                stats["t"] = time.time()
                print("STATS " + json.dumps(stats), flush=True)
            elif command == "quit":
                break
        if _stdin_is_pipe():  # the parent closed our stdin: it wants us gone
            done.set()

    # Daemon: it may sit in a blocking read of stdin when the process exits.
    threading.Thread(target=read_commands, name="bench-stdin", daemon=True).start()
    print(f"READY {streamer.url} {os.getpid()}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        publisher.stop()
        streamer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
