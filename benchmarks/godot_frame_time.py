"""What a camstream stream costs a Godot game's main thread, per frame.

A headless Godot 4 "game" (``benchmarks/godot/``: ``Engine.max_fps = 60``, one full-window
TextureRect, nothing else) hosts a ``CamstreamClient`` from ``addons/camstream`` and watches a
local camstream at 640x480, 1280x720 and 1920x1080, 30 fps. The source is a ``Streamer("push")``
in this process fed pre-encoded webcam-like JPEGs (a gradient with sensor-like noise, quality
80: ~45, ~120, ~270 KB) with ``publish_jpeg``, so the server passes them through untouched and
costs next to nothing. One more run without a stream (the client in the tree, never started)
gives the idle cost.

For each point, after a warm-up, the probe records per game frame:

* ``TIME_PROCESS``: ``Performance.get_monitor(Performance.TIME_PROCESS)``. Godot updates it
  once a second with the **longest** process step of that second, so its p50 is "the typical
  worst frame of a second" and its p99 about the worst frame of the run.
* ``step``: the probe's own per-frame measure of the same process step, from
  ``SceneTree.process_frame`` (before any ``_process``) to the end of the last ``_process``.
* ``step less waits`` (with ``--waits``): the same minus the time the main thread spent
  waiting for a core in that span (``run_delay`` of ``/proc/<pid>/task/<pid>/schedstat``):
  the work itself. Reading that file twice a frame costs the probe ~0.1 ms a frame, so it is
  off by default.

and prints p50 / p99 of both, the frames the client decoded per second, the frames it dropped
(received but never shown), and the change of Godot's static memory over the window. CPU over
the window (from ``/proc``): the main thread's CPU time per game frame (unlike the wall-clock
figures above, not inflated when the machine is busy and the thread waits for a core), in %
of one core Godot's whole process (main thread and decode workers), and ``other``: everything
else on the machine but this process (the server), which disturbs the wall-clock figures when
it is more than a few %.

Usage::

    flock /tmp/camstream-bench.lock python benchmarks/godot_frame_time.py
    python benchmarks/godot_frame_time.py --addon-rev main      # the addon of another commit
    python benchmarks/godot_frame_time.py --sizes 1920x1080 --set use_worker_threads:false

``--set NAME:VALUE`` sets a client property where the addon has it (a GDScript literal).
Needs Godot 4 (``$GODOT_BIN`` or ``.ci/install_godot.sh``), numpy and OpenCV.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from stamp import CLOCK_TICKS, cpu_seconds, system_cpu  # noqa: E402

from camstream import Streamer  # noqa: E402

FPS = 30.0
SIZES = ["640x480", "1280x720", "1920x1080"]


def webcam_like_jpegs(width: int, height: int, count: int = 6, seed: int = 7) -> list[bytes]:
    """Quality-80 JPEGs of a gradient with sensor-like noise (each one different)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.dstack(
        [x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)]
    ).astype(np.int16)
    base[height // 4 : height * 3 // 4, width * 5 // 8 : width * 7 // 8] = (200, 50, 50)
    jpegs = []
    for _ in range(count):
        image = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
        jpegs.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes())
    return jpegs


@contextmanager
def stream(jpegs: list[bytes]) -> Iterator[Streamer]:
    """A push-mode Streamer on 127.0.0.1 fed ``jpegs`` in a loop at 30 fps by a thread."""
    stop = threading.Event()
    with Streamer("push", port=0, fps=FPS) as server:

        def publish() -> None:
            i = 0
            while not stop.wait(1 / FPS):
                server.publish_jpeg(jpegs[i % len(jpegs)])
                i += 1

        publisher = threading.Thread(target=publish, name="bench-publisher")
        publisher.start()
        try:
            yield server
        finally:
            stop.set()
            publisher.join(10)


def godot_binary() -> str:
    env = os.environ.get("GODOT_BIN", "").strip()
    if env:
        return env
    result = subprocess.run(
        ["bash", str(REPO / ".ci" / "install_godot.sh")],
        check=True, capture_output=True, text=True,
    )
    return result.stdout.strip().splitlines()[-1]


def make_project(directory: Path, addon: Path | None, addon_rev: str | None) -> Path:
    """A copy of the probe project with the addon to measure in ``addons/camstream``."""
    project = directory / "probe"
    shutil.copytree(HERE / "godot", project, ignore=shutil.ignore_patterns(".godot"))
    target = project / "addons" / "camstream"
    target.mkdir(parents=True)
    if addon_rev:
        listing = subprocess.run(
            ["git", "-C", str(REPO), "ls-tree", "--name-only", addon_rev, "addons/camstream/"],
            check=True, capture_output=True, text=True,
        ).stdout.split()
        for path in listing:
            data = subprocess.run(
                ["git", "-C", str(REPO), "show", f"{addon_rev}:{path}"],
                check=True, capture_output=True,
            ).stdout
            (target / Path(path).name).write_bytes(data)
    else:
        for file in sorted((addon or REPO / "addons" / "camstream").iterdir()):
            if file.is_file():
                shutil.copy(file, target / file.name)
    return project


def run_probe(godot: str, project: Path, env: dict[str, str], args: list[str],
              timeout: float) -> dict[str, Any]:
    """Run the probe; its result plus the CPU used over its window (Godot, other, this)."""
    proc = subprocess.Popen(
        [godot, "--headless", "--path", str(project), "--", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        env=env,
    )
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    lines: list[str] = []
    start: tuple[float, float, float, float] | None = None
    probe: dict[str, Any] | None = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("PROBE_WINDOW"):
                start = cpu_sample(proc.pid)
            elif line.startswith("PROBE_RESULT ") and start is not None:
                end = cpu_sample(proc.pid)
                probe = json.loads(line.removeprefix("PROBE_RESULT "))
                elapsed = end[0] - start[0]
                godot_cpu, main_cpu = end[1] - start[1], end[2] - start[2]
                own_cpu, busy = end[3] - start[3], end[4] - start[4]
                probe["godot_cpu_pct"] = godot_cpu / elapsed * 100
                probe["main_cpu_ms_per_frame"] = main_cpu * 1000 / max(probe["game_frames"], 1)
                probe["other_cpu_pct"] = max(busy - godot_cpu - own_cpu, 0.0) / elapsed * 100
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if probe is None:
        output = "\n".join(lines)
        raise RuntimeError(f"no PROBE_RESULT (exit {proc.returncode}):\n{output}")
    probe["errors"] = [x for x in lines if "ERROR" in x or "WARNING" in x]
    return probe


def cpu_sample(pid: int) -> tuple[float, float, float, float, float]:
    """(now, Godot's CPU s, its main thread's CPU s, this process's CPU s, machine busy s)."""
    times = os.times()
    return (time.monotonic(), cpu_seconds(pid), thread_cpu_seconds(pid, pid),
            times.user + times.system, system_cpu()[0])


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """User + system CPU time of one thread (the main thread's id is the process id)."""
    with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def summarize(label: str, probe: dict[str, Any]) -> dict[str, Any]:
    step = np.array(probe["step_ms"])
    monitor = np.array(probe["monitor_ms"])
    work = step - np.array(probe["wait_ms"])
    window = probe["window_s"]
    counters = probe["counters"]
    return {
        "point": label,
        "game_fps": probe["game_frames"] / window,
        "step_p50_ms": float(np.percentile(step, 50)),
        "step_p99_ms": float(np.percentile(step, 99)),
        "step_max_ms": float(step.max()),
        "work_p99_ms": float(np.percentile(work, 99)),
        "work_max_ms": float(work.max()),
        "monitor_p50_ms": float(np.percentile(monitor, 50)),
        "monitor_p99_ms": float(np.percentile(monitor, 99)),
        "decoded_fps": counters["frames_decoded"] / window,
        "received_fps": counters["frames_received"] / window,
        "dropped": counters["frames_dropped"],
        "decode_errors": counters["decode_errors"],
        "static_memory_delta_kb": counters["static_memory"] / 1024,
        "godot_cpu_pct": probe["godot_cpu_pct"],
        "main_cpu_ms_per_frame": probe["main_cpu_ms_per_frame"],
        "other_cpu_pct": probe["other_cpu_pct"],
        "shown": probe["shown"],
        "messages": probe["errors"][:5],
    }


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per point: the median of every number over that point's runs."""
    by_point: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_point.setdefault(row["point"], []).append(row)
    merged = []
    for runs in by_point.values():
        row = dict(runs[0])
        for key, value in row.items():
            if isinstance(value, (int, float)):
                row[key] = float(np.median([run[key] for run in runs]))
        merged.append(row)
    return merged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="e.g. 640x480,1920x1080")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the window")
    parser.add_argument("--seconds", type=float, default=10.0, help="the measured window")
    parser.add_argument("--addon", type=Path, help="addon folder (default: this checkout's)")
    parser.add_argument("--addon-rev", help="take the addon from this git revision instead")
    parser.add_argument("--set", action="append", default=[], metavar="NAME:VALUE",
                        help="client property to set where the addon has it")
    parser.add_argument("--no-idle", action="store_true", help="skip the run without a stream")
    parser.add_argument("--waits", action="store_true",
                        help="also measure the main thread's waits for a core (Linux)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every point this many times (in turn); the table shows medians")
    parser.add_argument("--json", type=Path, help="also write the summary rows here")
    args = parser.parse_args()

    godot = godot_binary()
    rows = []
    with tempfile.TemporaryDirectory(prefix="camstream-godot-bench-") as tmp:
        directory = Path(tmp)
        project = make_project(directory, args.addon, args.addon_rev)
        env = dict(os.environ)
        for name in ("DATA", "CONFIG", "CACHE"):
            env[f"XDG_{name}_HOME"] = str(directory / name.lower())
        probe_args = [f"--warmup={args.warmup}", f"--seconds={args.seconds}"]
        probe_args += [f"--set={setting}" for setting in args.set]
        probe_args += ["--waits"] if args.waits else []
        timeout = args.warmup + args.seconds + 60
        points: list[tuple[str, list[bytes] | None]] = []
        if not args.no_idle:
            points.append(("idle (no stream)", None))
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.split("x"))
            points.append((f"{size} @ 30 fps", webcam_like_jpegs(width, height)))
        for _ in range(args.repeat):
            for label, jpegs in points:
                if jpegs is None:
                    probe = run_probe(godot, project, env, probe_args, timeout)
                else:
                    with stream(jpegs) as server:
                        url = f"--url={server.url}"
                        probe = run_probe(godot, project, env, [url, *probe_args], timeout)
                    label += f", {len(jpegs[0]) // 1000} KB JPEGs"
                row = summarize(label, probe)
                if jpegs is not None and not label.startswith(row["shown"] + " "):
                    row["messages"].append(f"shown {row['shown']}, not the stream's size")
                rows.append(row)
                print(json.dumps(row), flush=True)

    print(f"\nGodot {probe['version']}, headless, Engine.max_fps = 60; "
          f"{args.warmup:g} s warm-up, {args.seconds:g} s window"
          + (f"; set {', '.join(args.set)}" if args.set else "")
          + (f"; medians of {args.repeat} runs" if args.repeat > 1 else ""))
    print("\n| stream | TIME_PROCESS p50 / p99 | step p50 / p99 / max "
          "| step less waits p99 / max | game fps "
          "| decoded fps | dropped | static memory change | main-thread CPU a frame "
          "| Godot CPU | other CPU |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for row in medians(rows):
        print(f"| {row['point']} | {row['monitor_p50_ms']:.2f} / {row['monitor_p99_ms']:.2f} ms "
              f"| {row['step_p50_ms']:.2f} / {row['step_p99_ms']:.2f} / "
              f"{row['step_max_ms']:.2f} ms "
              f"| {row['work_p99_ms']:.2f} / {row['work_max_ms']:.2f} ms "
              f"| {row['game_fps']:.1f} | {row['decoded_fps']:.1f} "
              f"| {row['dropped']:.0f} | {row['static_memory_delta_kb']:+.0f} KB "
              f"| {row['main_cpu_ms_per_frame']:.2f} ms "
              f"| {row['godot_cpu_pct']:.0f} % | {row['other_cpu_pct']:.0f} % |")
    for row in rows:
        for message in row["messages"]:
            print(f"{row['point']}: {message}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
