"""On-demand capture (issue 21): first-frame time, quick reconnects, and what an idle camera costs.

Against the V4L2-like fake webcam of the tests (``tests/fake_capture.py``: 640x480 MJPEG at
30 fps, an open that takes ``--open-delays`` seconds), in this process:

* **first frame**: an idle ``CameraThread(0, on_demand=...)`` is acquired and a waiter blocks
  in ``wait_for_frame``; the figure is the time from ``acquire()`` to the frame reaching the
  waiter, next to the open time the camera measured and the budget "open time + one frame
  interval" (``--trials`` per open delay; each trial waits for the release first);
* **reconnects**: ``--reconnects`` release/acquire pairs inside the grace period, then the
  opens and closes counted (1 and 0 expected: no open/close storm);
* **idle cost**: ``--cameras`` idle on-demand cameras for ``--idle-seconds``: the CPU time of
  their threads (``/proc/self/task/<tid>/stat``, clock ticks) and their context switches; a
  streaming camera's thread over the same window for scale.

Usage: ``flock /tmp/camstream-bench.lock python benchmarks/on_demand.py``; ~15 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from fake_capture import FakeWebcam, pictures  # noqa: E402

from camstream import CameraState, CameraThread  # noqa: E402

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def thread_cpu_s(native_id: int) -> float:
    """User + system CPU of one thread of this process, in seconds (clock-tick resolution)."""
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def thread_switches(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/status") as f:
        return sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)


def camera_thread(camera: CameraThread) -> threading.Thread:
    thread = camera._thread  # the benchmark looks inside; the tests do not
    assert thread is not None and thread.native_id is not None
    return thread


def wait_idle(camera: CameraThread, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while camera.state is not CameraState.IDLE:
        if time.monotonic() > deadline:
            raise RuntimeError(f"camera did not go idle: {camera.state}")
        time.sleep(0.005)


def first_frame(open_delay: float, trials: int) -> dict[str, float]:
    webcam = FakeWebcam(open_delay=open_delay)
    waits, opens, overshoots = [], [], []
    with CameraThread(0, on_demand=0, capture_factory=webcam.factory) as camera:
        for _ in range(trials):
            wait_idle(camera)
            asked = time.monotonic()
            with camera.acquire():
                frame = camera.wait_for_frame(0, 10.0)
                got = time.monotonic()
            assert frame is not None, "no first frame within 10 s"
            took = camera.last_open_duration or 0.0
            waits.append(got - asked)
            opens.append(took)
            overshoots.append(got - asked - took - 1.0 / camera.fps)
    return first_frame_figures(open_delay, waits, opens, overshoots)


def first_frame_figures(open_delay: float, waits: list[float], opens: list[float],
                        overshoots: list[float]) -> dict[str, float]:
    """The first-frame row: waits, open times and overshoots of the budget, in seconds."""
    return {
        "open_delay_s": open_delay,
        "first_frame_median_s": statistics.median(waits),
        "first_frame_max_s": max(waits),
        "open_median_s": statistics.median(opens),
        "over_budget_max_ms": 1000 * max(overshoots),
        "within_budget": sum(o <= 0 for o in overshoots) / len(overshoots),
    }


def reconnects(count: int) -> tuple[int, int]:
    webcam = FakeWebcam()
    with CameraThread(0, on_demand=5.0, capture_factory=webcam.factory) as camera:
        lease = camera.acquire()
        camera.wait_for_frame(0, 10.0)
        for _ in range(count):
            lease.release()
            lease = camera.acquire()
        lease.release()
        return camera.opens, camera.closes


def idle_cost(cameras: int, seconds: float) -> None:
    idle = [
        CameraThread(0, on_demand=1.0, capture_factory=FakeWebcam().factory).start()
        for _ in range(cameras)
    ]
    streaming = CameraThread(0, capture_factory=FakeWebcam().factory).start()
    try:
        threads = [camera_thread(c) for c in idle] + [camera_thread(streaming)]
        ids = [t.native_id for t in threads]
        time.sleep(0.5)  # let every thread reach its wait
        cpu0 = [thread_cpu_s(i) for i in ids]  # type: ignore[arg-type]
        sw0 = [thread_switches(i) for i in ids]  # type: ignore[arg-type]
        time.sleep(seconds)
        cpu = [thread_cpu_s(i) - c for i, c in zip(ids, cpu0)]  # type: ignore[arg-type]
        sw = [thread_switches(i) - s for i, s in zip(ids, sw0)]  # type: ignore[arg-type]
    finally:
        for camera in [*idle, streaming]:
            camera.stop()
    idle_cpu = sum(cpu[:-1])
    print(f"idle: {cameras} idle on-demand cameras over {seconds:g} s: threads' CPU "
          f"{idle_cpu * 1000:.0f} ms ({100 * idle_cpu / seconds:.2f} % of a core, tick "
          f"{TICK_S * 1000:.0f} ms), context switches {sum(sw[:-1])}")
    print(f"idle: one streaming camera (640x480 MJPEG 30 fps, passthrough) over the same window: "
          f"CPU {cpu[-1] * 1000:.0f} ms ({100 * cpu[-1] / seconds:.2f} % of a core), "
          f"context switches {sw[-1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--open-delays", default="0,0.1,0.3,1.0",
                        help="the fake camera's open times to try, seconds (comma-separated)")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--reconnects", type=int, default=1000)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    args = parser.parse_args()
    pictures((640, 480))  # the fake camera draws its pictures once: not part of any open

    print("first frame after acquire() (the fake webcam: 640x480 MJPEG, 30 fps; budget = the "
          "open time the camera measured + one frame interval)")
    print(f"{'open delay':>10} {'median':>8} {'max':>8} {'open':>8} {'over budget':>12} "
          f"{'within':>7}")
    for delay in (float(d) for d in args.open_delays.split(",")):
        r = first_frame(delay, args.trials)
        print(f"{r['open_delay_s']:>9.2f}s {r['first_frame_median_s'] * 1000:>6.1f}ms "
              f"{r['first_frame_max_s'] * 1000:>6.1f}ms {r['open_median_s'] * 1000:>6.1f}ms "
              f"{r['over_budget_max_ms']:>10.1f}ms {r['within_budget']:>7.0%}")
    opens, closes = reconnects(args.reconnects)
    print(f"reconnects: {args.reconnects} release/acquire pairs inside a 5 s grace period: "
          f"{opens} open(s), {closes} close(s)")
    idle_cost(args.cameras, args.idle_seconds)


if __name__ == "__main__":
    main()
