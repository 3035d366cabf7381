"""A camstream server fed with stamped frames, for the benchmark and the soak test.

Runs ``Streamer("push", port=0, ...)`` plus a publisher thread that makes one stamped frame
(see ``stamp.py``) per camera period and publishes it. With ``--mjpeg`` the source is a webcam
in MJPEG mode, whose JPEGs cost the server nothing to make: ``--mjpeg-seconds`` of frames are
stamped with their *scheduled* capture times and encoded (quality 80) before serving starts, and
the publisher hands frame i in with ``publish_jpeg`` at its scheduled time (late frames are
skipped, so the stamp stays honest). Past the prepared frames it stamps and encodes live.
Talks to its parent over stdio:

* prints ``READY <url> <pid>`` once serving;
* on a ``stats`` line on stdin prints ``STATS <json>``: ``Streamer.stats()`` plus the
  publisher's own counters (frames published, its thread CPU time, so the cost of the test
  source can be told apart from camstream's) and ``fast_fanout`` (false when the environment
  has ``CAMSTREAM_BENCH_FANOUT=0``: the sender-thread path only, for before/after runs);
* with ``CAMSTREAM_BENCH_DATA_BYTES=N`` in the environment, every frame is published with
  about N bytes of application data (boxes, as JSON; issue 20), for ``app_data.py``; the
  ``STATS`` line then also has ``fanout_cpu_s``, the fan-out thread's own CPU time (Linux);
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

import cv2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stamp import TICKS_PER_S, FrameSource, stamp  # noqa: E402

from camstream import Streamer  # noqa: E402


def encode(image: object) -> bytes:
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return jpeg.tobytes()


class PreparedMjpeg:
    """A camera's MJPEG output made ahead of time: frame i shows capture time start + i / fps."""

    def __init__(self, source: FrameSource, fps: float, seconds: float) -> None:
        clock = time.perf_counter()
        encode(source.frame(0, fps)[0])
        cost = time.perf_counter() - clock
        count = max(int(seconds * fps), 1)
        self.fps = fps
        self.start = time.time() + count * cost * 1.5 + 1.0  # when frame 0 is "captured"
        self.frames = []
        for i in range(count):
            image, _ = source.frame(i, fps)
            stamp(image, int((self.start + i / fps) * TICKS_PER_S))
            self.frames.append(encode(image))


class Publisher:
    """Publishes stamped frames at ``fps`` on a deadline clock (skips ahead if it falls behind)."""

    def __init__(
        self, streamer: Streamer, width: int, height: int, fps: float, mjpeg_seconds: float = 0,
        data_bytes: int = 0,
    ) -> None:
        self.streamer = streamer
        self.data = boxes_of_size(data_bytes) if data_bytes else None
        self.source = FrameSource(width, height)
        self.prepared = PreparedMjpeg(self.source, fps, mjpeg_seconds) if mjpeg_seconds else None
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
        if self.prepared is not None:
            self._run_mjpeg(self.prepared)
        else:
            self._run_pixels()

    def _run_mjpeg(self, prepared: PreparedMjpeg) -> None:
        """Frame i at wall-clock time start + i / fps; frames already past are skipped."""
        index = 0
        while not self._stop.is_set():
            due = prepared.start + index / self.fps
            if self._stop.wait(max(due - time.time(), 0.0)):
                return
            if index < len(prepared.frames):
                self.streamer.publish_jpeg(prepared.frames[index])
            else:  # past the prepared frames: stamp and encode live
                image, _ = self.source.frame(index, self.fps)
                self.streamer.publish_jpeg(encode(image))
            self.published += 1
            self.cpu_s = time.thread_time()
            behind = int((time.time() - prepared.start) * self.fps) - index
            self.late += max(behind, 0)
            index += 1 + max(behind, 0)

    def _run_pixels(self) -> None:
        period = 1.0 / self.fps
        deadline = time.monotonic()
        index = 0
        while not self._stop.is_set():
            image, _ = self.source.frame(index, self.fps)
            self.streamer.publish(image, copy=False, data=self.data)
            self.published += 1
            self.cpu_s = time.thread_time()
            index += 1
            deadline += period
            now = time.monotonic()
            if deadline < now - period:
                self.late += 1
                deadline = now
            self._stop.wait(max(deadline - now, 0.0))


def boxes_of_size(size: int) -> dict[str, object]:
    """A detector's result of about ``size`` bytes as JSON: boxes with labels and scores."""
    boxes = []
    while len(json.dumps({"boxes": boxes}, separators=(",", ":"))) < size - 60:
        i = len(boxes)
        boxes.append({"x": 10 * i, "y": 20 + i, "w": 64, "h": 48, "label": "person",
                      "score": 0.87})
    return {"boxes": boxes}


def thread_cpu_s(name: str) -> float | None:
    """The CPU time of this process's thread ``name`` (None: no such thread, or no per-thread
    clocks here)."""
    for thread in threading.enumerate():
        if thread.name == name and thread.ident is not None:
            try:
                return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
            except (AttributeError, OSError):
                return None
    return None


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
    parser.add_argument("--mjpeg", action="store_true",
                        help="an MJPEG source: publish_jpeg of JPEGs prepared before serving")
    parser.add_argument("--mjpeg-seconds", type=float, default=30.0,
                        help="seconds of MJPEG frames to prepare (then encoded live)")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # CAMSTREAM_BENCH_FANOUT=0: the sender-thread path only (bench.py's "camstream-threads")
    fast_fanout = os.environ.get("CAMSTREAM_BENCH_FANOUT", "1") != "0"
    # Every benchmark viewer connects from 127.0.0.1: no per-address limit here.
    streamer = Streamer("push", port=args.port, fps=args.fps, quality=args.quality,
                        send_timeout=args.send_timeout, max_connections_per_address=None,
                        max_clients=None, fast_fanout=fast_fanout).start()
    publisher = Publisher(
        streamer, args.width, args.height, args.fps, args.mjpeg_seconds if args.mjpeg else 0,
        int(os.environ.get("CAMSTREAM_BENCH_DATA_BYTES", "0")),
    ).start()
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
                stats["fast_fanout"] = fast_fanout  # so the driver can check which path ran
                stats["fanout_cpu_s"] = thread_cpu_s("camstream-fanout")
                stats["t"] = time.time()
                print("STATS " + json.dumps(stats), flush=True)
            elif command == "quit":
                break
        if _stdin_is_pipe():  # the parent closed our stdin: it wants us gone
            done.set()

    # Daemon: it may sit in a blocking read of stdin when the process exits.
    threading.Thread(target=read_commands, name="bench-stdin", daemon=True).start()
    if publisher.prepared is not None:  # serve once the prepared frames begin
        done.wait(max(publisher.prepared.start - time.time(), 0.0))
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
