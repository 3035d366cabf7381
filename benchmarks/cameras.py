"""Several cameras on one port (issue 21): throughput, first frame on demand, idle cost.

Three measurements, each against the V4L2-like fake webcams of the tests
(``tests/fake_capture.py``: 640x480 MJPEG at 30 fps, passed through untouched, each camera's
pictures marked with a colour of its own):

* **load**: a server process (this script, ``--serve``) with ``--cameras`` cameras on one port;
  this process holds ``--viewers`` raw-socket WebSocket viewers on each camera's path
  (``benchmarks/loadgen.py``'s one-thread selectors loop) for ``--duration`` seconds after a
  warm-up. Prints every viewer's rate (min, median), the server process's CPU over the window
  (``/proc/<pid>/stat``: % of one core), this process's CPU, and checks a sample of frames per
  viewer for the right camera's mark (no cross-talk);
* **first frame**: an on-demand camera behind a Streamer (in this process), idle, grace 0; a
  WebSocket viewer connects and the figure is the time from ``connect()`` to its first JPEG,
  next to the open time the camera measured and the budget "open time + one frame interval"
  (``--trials`` per ``--open-delays`` value after one warm-up trial; each trial waits for the
  release first; the time includes the WebSocket handshake and the metadata);
* **idle**: ``--cameras`` on-demand cameras behind one Streamer, nobody watching, for
  ``--idle-seconds``: the CPU time and context switches of their camera and fan-out threads
  (``/proc/self/task/<tid>``), and of the whole process (the accept loop included).

Usage: ``flock /tmp/camstream-bench.lock python benchmarks/cameras.py``; ~40 s. ``--json PATH``
also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from fake_capture import FakeWebcam, mark_of, pictures  # noqa: E402
from loadgen import Loop, Viewer  # noqa: E402
from on_demand import (  # noqa: E402
    first_frame_figures,
    thread_cpu_s,
    thread_switches,
    wait_idle,
)

from camstream import CameraConfig, Streamer  # noqa: E402

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
NAMES = ("cam0", "cam1", "cam2", "cam3", "cam4", "cam5", "cam6", "cam7")


def fake_sources(count: int, **webcam: Any) -> tuple[dict[str, CameraConfig], list[FakeWebcam]]:
    webcams = [FakeWebcam(mark=i, dht_less_every=0, truncated_every=0, **webcam)
               for i in range(count)]
    return ({NAMES[i]: CameraConfig(0, capture_factory=w.factory, fps=30)
             for i, w in enumerate(webcams)}, webcams)


# The server process (--serve)


def serve(cameras: int) -> None:
    sources, _ = fake_sources(cameras)
    for i in range(cameras):
        pictures((640, 480), i)  # drawn once, before the window
    streamer = Streamer(sources=sources, port=0, max_connections_per_address=0)
    with streamer:
        print(f"READY {streamer.port} {os.getpid()}", flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                print("STATS " + json.dumps(streamer.stats()), flush=True)
            elif line.strip() == "quit":
                break


def process_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def load(cameras: int, viewers: int, warmup: float, duration: float, query: str = ""
         ) -> dict[str, Any]:
    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", "--cameras", str(cameras)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        ready = server.stdout.readline().split()
        assert ready and ready[0] == "READY", ready
        port, pid = int(ready[1]), int(ready[2])
        clients = [
            Viewer(c * viewers + v,
                   f"ws://127.0.0.1:{port}/{NAMES[c]}?max_bytes=0{'&' if query else ''}{query}",
                   30.0)
            for c in range(cameras) for v in range(viewers)
        ]
        loop = Loop()
        for client in clients:
            client.begin_connect(30.0)
        deadline = time.monotonic() + 30.0
        for client in clients:
            client.finish_connect(deadline)
            loop.add(client)
        loop.run_until(time.time() + warmup)
        for client in clients:
            client.reset_window()
            client.counting = True
            client.sample_every, client.sampling = 97, True  # a few frames each, checked later
        own0 = time.process_time()
        cpu0, t0 = process_cpu_s(pid), time.time()
        loop.run_until(t0 + duration)
        cpu1, t1 = process_cpu_s(pid), time.time()
        own = time.process_time() - own0
        for client in clients:
            client.counting = client.sampling = False
        server.stdin.write("stats\n")
        server.stdin.flush()
        stats = json.loads(server.stdout.readline().split(" ", 1)[1])
        loop.close()
        window = t1 - t0
        rates = [client.frames / window for client in clients]
        wrong = checked = 0
        for client in clients:
            expected = client.index // viewers
            for _, jpeg in client.samples[:3]:
                image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
                image = cv2.resize(image, (640, 480))  # the mark is where it is at full size
                checked += 1
                wrong += mark_of(image) != expected
        per_camera = {
            NAMES[c]: min(rates[c * viewers:(c + 1) * viewers]) for c in range(cameras)
        }
        return {
            "cameras": cameras, "viewers_per_camera": viewers, "query": query,
            "window_s": round(window, 2),
            "fps_min": min(rates), "fps_median": statistics.median(rates),
            "fps_min_per_camera": per_camera,
            "viewers_below_29_5": sum(r < 29.5 for r in rates),
            "server_cpu_pct_of_one_core": 100 * (cpu1 - cpu0) / window,
            "loadgen_cpu_pct_of_one_core": 100 * own / window,
            "frames_checked": checked, "frames_of_another_camera": wrong,
            "gaps_over_3_periods": sum(c.gaps_over for c in clients),
            "encodes_per_s": stats["encodes_per_s"],
            "server_frames_captured": stats["frames_captured"],
        }
    finally:
        if server.stdin is not None:
            try:
                server.stdin.write("quit\n")
                server.stdin.flush()
            except OSError:
                pass
        server.wait(30)


# First frame, in this process


def first_frame(open_delay: float, trials: int) -> dict[str, float]:
    from websockets.sync.client import connect

    webcam = FakeWebcam(open_delay=open_delay, dht_less_every=0, truncated_every=0)
    pictures((640, 480))  # the fake camera draws its pictures once: not part of any open
    waits, opens, overshoots = [], [], []
    with Streamer(sources={"cam": CameraConfig(0, capture_factory=webcam.factory)}, port=0,
                  on_demand=0) as streamer:
        camera = streamer.cameras["cam"]
        for trial in range(trials + 1):  # the first one warms up (imports, first handshake)
            wait_idle(camera)
            asked = time.monotonic()
            with connect(f"{streamer.url}cam?max_bytes=0", max_size=2**24) as ws:
                while not isinstance(ws.recv(timeout=10), bytes):
                    pass
                got = time.monotonic()
            took = camera.last_open_duration or 0.0
            if trial == 0:
                continue
            waits.append(got - asked)
            opens.append(took)
            overshoots.append(got - asked - took - 1.0 / camera.fps)
    return first_frame_figures(open_delay, waits, opens, overshoots)


# Idle on-demand cameras, in this process


def idle(cameras: int, seconds: float) -> dict[str, Any]:
    sources, _ = fake_sources(cameras)
    with Streamer(sources=sources, port=0, on_demand=1.0) as streamer:
        served = streamer._cameras.all()  # the benchmark looks inside; the tests do not
        threads = []
        for camera in served:
            threads.append(camera.thread._thread)
            if camera.fanout is not None:
                threads.append(camera.fanout._thread)
        ids = [t.native_id for t in threads if t is not None and t.native_id is not None]
        assert len(ids) == 2 * cameras, "a camera or fan-out thread is missing"
        time.sleep(0.5)  # every thread reaches its wait
        cpu0 = [thread_cpu_s(i) for i in ids]
        sw0 = [thread_switches(i) for i in ids]
        process0, t0 = time.process_time(), time.monotonic()
        time.sleep(seconds)
        window = time.monotonic() - t0
        process = time.process_time() - process0
        cpu = sum(thread_cpu_s(i) - c for i, c in zip(ids, cpu0))
        switches = sum(thread_switches(i) - s for i, s in zip(ids, sw0))
        states = {c.name: c.thread.state.value for c in served}
    return {
        "cameras": cameras, "window_s": round(window, 2), "states": states,
        "camera_and_fanout_threads": len(ids),
        "threads_cpu_ms": 1000 * cpu, "threads_cpu_pct": 100 * cpu / window,
        "threads_context_switches": switches,
        "process_cpu_pct": 100 * process / window,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--viewers", type=int, default=20, help="viewers per camera")
    parser.add_argument("--query", default="",
                        help="more query parameters of every viewer (width=320: one encode per "
                        "camera frame instead of the camera's own JPEGs)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--open-delays", default="0,0.1,0.3,1.0",
                        help="the fake camera's open times to try, seconds (comma-separated)")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--skip", default="", help="comma-separated: load, first, idle")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.serve:
        serve(args.cameras)
        return
    skip = set(filter(None, args.skip.split(",")))
    result: dict[str, Any] = {"cpus": os.cpu_count()}
    if "load" not in skip:
        r = result["load"] = load(args.cameras, args.viewers, args.warmup, args.duration,
                                  args.query)
        print(f"load: {r['cameras']} cameras x 640x480 MJPEG at 30 fps, {r['viewers_per_camera']} "
              f"viewers each{' (' + args.query + ')' if args.query else ''}, {r['window_s']} s "
              f"window on {os.cpu_count()} cores")
        print(f"  fps per viewer: min {r['fps_min']:.2f}, median {r['fps_median']:.2f}; "
              f"viewers below 29.5: {r['viewers_below_29_5']}; gaps > 3 periods: "
              f"{r['gaps_over_3_periods']}")
        print("  min fps by camera: " + ", ".join(
            f"{name} {fps:.2f}" for name, fps in r["fps_min_per_camera"].items()))
        print(f"  server CPU {r['server_cpu_pct_of_one_core']:.1f} % of one core "
              f"(load generator {r['loadgen_cpu_pct_of_one_core']:.1f} %); encodes/s "
              f"{r['encodes_per_s']}{'' if r['encodes_per_s'] else ' (JPEGs passed through)'}")
        print(f"  frames checked for their camera's mark: {r['frames_checked']}, of another "
              f"camera: {r['frames_of_another_camera']}")
    if "first" not in skip:
        rows = result["first_frame"] = [
            first_frame(float(d), args.trials) for d in args.open_delays.split(",")
        ]
        print("first frame: connect() to the first JPEG of an idle on-demand camera (budget = "
              "the open time the camera measured + one frame interval, 33.3 ms)")
        print(f"{'open delay':>12} {'median':>8} {'max':>8} {'open':>8} {'over budget':>12} "
              f"{'within':>7}")
        for row in rows:
            ms = {k: 1000 * v for k, v in row.items()}
            print(f"{row['open_delay_s']:>11.2f}s {ms['first_frame_median_s']:>6.1f}ms "
                  f"{ms['first_frame_max_s']:>6.1f}ms {ms['open_median_s']:>6.1f}ms "
                  f"{row['over_budget_max_ms']:>10.1f}ms {row['within_budget']:>7.0%}")
    if "idle" not in skip:
        r = result["idle"] = idle(args.cameras, args.idle_seconds)
        print(f"idle: {r['cameras']} on-demand cameras, nobody watching, {r['window_s']} s: their "
              f"{r['camera_and_fanout_threads']} camera and fan-out threads used "
              f"{r['threads_cpu_ms']:.0f} ms CPU ({r['threads_cpu_pct']:.2f} %), "
              f"{r['threads_context_switches']} context switches; states {r['states']}")
        print(f"  the whole process (the server's accept loop included): "
              f"{r['process_cpu_pct']:.2f} % of one core")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    threading.current_thread().name = "benchmark"
    main()
