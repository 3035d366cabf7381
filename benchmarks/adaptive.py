"""Adaptive delivery benchmark (issue 18): viewers behind real slow links.

The source is a 1280x720 webcam-like MJPEG camera at 30 fps: ``Streamer("push")`` fed with
``publish_jpeg`` of pre-encoded JPEGs of a moving, noisy test card (~180 KB each, the quality
chosen to hit ``--frame-kb``), so a viewer that takes them as they are costs no encode. The
server runs in this process, bound to the host side of a private test network
(``tests/netns.py``): each shaped viewer sits in its own network namespace behind a veth pair
with ``tc tbf`` at its rate on the server's side (server -> viewer); unshaped viewers run on the
host and reach the same address over loopback. Viewers (``adaptive_viewer.py``) ask
``?max_bytes=0`` as the bundled clients do, ``&frame_info=1`` (capture time of each frame) and
``&adapt=on|off`` (ignored by servers before issue 18).

Scenarios (``--scenarios``, comma-separated):

* ``rates``: one viewer alone at each of ``--rates`` Mbit/s, and one unshaped.
* ``drop``: one viewer on a 20 Mbit/s link that drops to 2 Mbit/s and clears again; time to
  adapt and to recover, from the metadata stream (first size change) and from the frames
  (first second with >= 15 fps and p95 <= 300 ms; first second back at full size and >= 25 fps).
* ``mixed``: ``--per-rate`` viewers at each of four rates next to ``--unshaped`` unshaped ones
  at once; JPEG encodes/s (from ``stats()``) and server CPU %, in the steady state: after
  ``--mixed-warmup`` s (30), over ``--mixed-window`` s (60). Twenty viewers that arrive at once
  start their probes up together, every 2, 4, 8, 16 s at first (each failed probe doubles the
  wait, up to 30 s): a short window right after they came measures that start, not what a
  server serving them costs (a 10-s window after 4 s gave 38-58 %, median 46 %, against
  39-42 % over a minute after half a one, before the late-frame fix of 2026-12-03). With
  adaptation on, also the *codec floor*: the CPU one thread takes, on this machine, to decode
  each source JPEG and make the rungs the viewers were on (those that carried at least 5 % of
  their frames; decoding, scaling and encoding as the server does), per frame and as a share
  of a core at 30 fps: what any server must spend before it sends a byte.

Each point: a fresh server and network, ``--warmup`` s, then a ``--window`` s measurement
(the mixed point: its own, above).
Prints per viewer: fps, capture-to-receipt latency p50/p95, widths seen, kB/s; per point:
server CPU % of one core (this process: the server and the publisher; the viewers are other
processes), JPEG encodes/s, and what else ran on the machine (``other %`` of all cores). Writes
``results/adaptive-<date>.json`` and, if matplotlib is installed, a plot of fps and latency
against link rate, adaptation on and off (``--plot``).

Needs root and iproute2 (network namespaces, tc). Wrap runs in
``flock /tmp/camstream-bench.lock`` so measurements never overlap.

Usage: ``python benchmarks/adaptive.py [--scenarios rates,drop,mixed] [--adapt off,on]``.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, HERE)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from loadgen import percentile  # noqa: E402
from netns import Lane, SlowLinks, unavailable  # noqa: E402
from stamp import FrameSource, system_cpu  # noqa: E402

from camstream import Streamer  # noqa: E402
from camstream.capture.frame import Frame  # noqa: E402
from camstream.delivery.encoder import Variant  # noqa: E402
from camstream.delivery.jpegcodec import encode_jpeg, resize  # noqa: E402
from camstream.delivery.ladder import build_ladder  # noqa: E402

FPS = 30.0
VIEWER = os.path.join(HERE, "adaptive_viewer.py")
CONNECT_TIMEOUT = 30.0


# The source


def webcam_jpegs(frame_kb: float, count: int = 60) -> tuple[list[bytes], int]:
    """``count`` 1280x720 JPEGs of the moving noisy test card, at the quality whose mean size
    is nearest ``frame_kb``; returns them and that quality."""
    source = FrameSource(1280, 720)
    images = [source.frame(i, FPS)[0] for i in range(count)]

    def encode(quality: int, some: list[Any]) -> list[bytes]:
        return [cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
                for im in some]

    probe = images[:: max(count // 6, 1)]
    quality = min(range(60, 99), key=lambda q: abs(
        sum(map(len, encode(q, probe))) / len(probe) / 1000 - frame_kb))
    return encode(quality, images), quality


class Publisher(threading.Thread):
    """The camera: publishes the JPEGs in turn at 30 fps on its own clock."""

    def __init__(self, streamer: Streamer, jpegs: list[bytes]) -> None:
        super().__init__(name="bench-publisher", daemon=True)
        self.streamer, self.jpegs = streamer, jpegs
        self.stop = threading.Event()

    def run(self) -> None:
        deadline, i, period = time.monotonic(), 0, 1.0 / FPS
        while not self.stop.is_set():
            self.streamer.publish_jpeg(self.jpegs[i % len(self.jpegs)])
            i += 1
            deadline = max(deadline + period, time.monotonic() - period)
            self.stop.wait(max(deadline - time.monotonic(), 0.0))


# One point


@dataclass
class ViewerSpec:
    label: str
    rate: float | None  # Mbit/s; None: unshaped (on the host, over loopback)
    count: int = 1


@dataclass
class Point:
    name: str
    adapt: str
    specs: list[ViewerSpec]
    schedule: list[tuple[float, float]] = field(default_factory=list)  # (s into window, Mbit/s)
    window: float | None = None  # seconds; None: --window
    warmup: float | None = None  # seconds; None: --warmup


def run_point(point: Point, jpegs: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    """Start a server and the viewers, measure one window; returns the point's results."""
    seconds = point.window or args.window
    warmup = args.warmup if point.warmup is None else point.warmup
    total = warmup + seconds + 2.0
    query = f"?max_bytes=0&frame_info=1&adapt={point.adapt}"
    with SlowLinks(queue_ms=args.queue_ms) as links:
        streamer = Streamer("push", host=links.host_address, port=0, fps=FPS)
        streamer.start()
        publisher = Publisher(streamer, jpegs)
        publisher.start()
        processes: list[tuple[ViewerSpec, Lane | None, subprocess.Popen[str]]] = []
        try:
            url = f"ws://{links.host_address}:{streamer.port}/{query}"
            argv_tail = ["--seconds", str(total)]
            for spec in point.specs:
                if spec.rate is None:
                    argv = [sys.executable, VIEWER, url, "--count", str(spec.count), *argv_tail]
                    processes.append((spec, None, subprocess.Popen(
                        argv, stdout=subprocess.PIPE, text=True)))
                    continue
                for _ in range(spec.count):
                    lane = links.lane(spec.rate)
                    argv = [sys.executable, VIEWER, url, "--count", "1", *argv_tail]
                    processes.append((spec, lane, lane.popen(
                        argv, stdout=subprocess.PIPE, text=True)))
            for _, _, process in processes:
                line = read_line(process, CONNECT_TIMEOUT)
                if not line.startswith("CONNECTED"):
                    raise RuntimeError(f"a viewer did not connect: {line!r}")
            time.sleep(warmup)  # the warm-up (the viewers are running)
            window = measure(point, streamer, processes, seconds)
            results = [
                (spec, json.loads(read_line(process, total + 30).split(" ", 1)[1]))
                for spec, _, process in processes
            ]
        finally:
            publisher.stop.set()
            publisher.join(5)
            streamer.stop()
            for _, _, process in processes:
                if process.poll() is None:
                    process.kill()
                process.wait(10)
                if process.stdout is not None:
                    process.stdout.close()
    viewers = []
    for spec, per_process in results:
        for viewer in per_process:
            viewers.append(summarise(spec, viewer, window, point.schedule))
    return {"name": point.name, "adapt": point.adapt, **window, "viewers": viewers}


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next line of a viewer's output, within ``timeout`` seconds."""
    assert process.stdout is not None
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    reader.join(timeout)
    if not box:
        process.kill()
        raise RuntimeError("a viewer said nothing in time")
    return box[0].strip()


def measure(
    point: Point, streamer: Streamer, processes: list[Any], seconds: float
) -> dict[str, Any]:
    """The measurement window: server CPU, encodes, the machine's load; rate changes on
    schedule. Returns the window's wall-clock bounds and the server figures."""
    lanes = [lane for _, lane, _ in processes if lane is not None]
    cpu0, busy0, stats0 = os.times(), system_cpu()[0], streamer.stats()
    t0 = time.time()
    for at, rate in point.schedule:
        time.sleep(max(t0 + at - time.time(), 0.0))
        for lane in lanes:
            lane.set_rate(rate)
    time.sleep(max(t0 + seconds - time.time(), 0.0))
    t1 = time.time()
    cpu1, busy1, stats1 = os.times(), system_cpu()[0], streamer.stats()
    server_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    elapsed = t1 - t0
    return {
        "t0": t0,
        "t1": t1,
        "server_cpu_pct": round(100 * server_s / elapsed, 1),
        # Of which the kernel's (sending, and on loopback and veth also the viewers' receiving,
        # which the kernel runs in the sender's system call).
        "server_system_pct": round(100 * (cpu1.system - cpu0.system) / elapsed, 1),
        "other_cpu_pct": round(100 * ((busy1 - busy0) - server_s) / elapsed / os.cpu_count(), 1),  # type: ignore[operator]
        "encodes_per_s": round((stats1["encodes"] - stats0["encodes"]) / elapsed, 1),
        "decodes_per_s": round((stats1["decodes"] - stats0["decodes"]) / elapsed, 1),
    }


# Figures


def phase_figures(frames: list[list[Any]], start: float, end: float) -> dict[str, Any]:
    """fps, latency p50/p95 (ms), widths seen and kB/s of the frames received in [start, end)."""
    inside = [f for f in frames if start <= f[0] < end]
    seconds = max(end - start, 1e-9)
    latencies = [(f[0] - f[1]) * 1000 for f in inside if f[1] is not None]
    widths = collections.Counter(f[2] for f in inside)
    return {
        "fps": round(len(inside) / seconds, 2),
        "p50_ms": _round(percentile(latencies, 50)),
        "p95_ms": _round(percentile(latencies, 95)),
        "widths": {str(w): n for w, n in sorted(widths.items(), key=lambda i: -(i[0] or 0))},
        "kbytes_per_s": round(sum(f[4] for f in inside) / seconds / 1000, 1),
    }


def seconds_arg(text: str) -> float:
    """An argparse type: a finite number of seconds, at least 0.1 (else a clear error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0.1:
        raise argparse.ArgumentTypeError(f"seconds must be finite and at least 0.1: {text!r}")
    return value


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def summarise(
    spec: ViewerSpec, viewer: dict[str, Any], window: dict[str, Any],
    schedule: list[tuple[float, float]],
) -> dict[str, Any]:
    frames, t0, t1 = viewer["frames"], window["t0"], window["t1"]
    out: dict[str, Any] = {
        "label": spec.label, "rate_mbit": spec.rate, "close_code": viewer["close_code"],
        **phase_figures(frames, t0, t1),
    }
    if schedule:
        edges = [t0] + [t0 + at for at, _ in schedule] + [t1]
        out["phases"] = [
            {"from_s": round(a - t0, 1), **phase_figures(frames, a, b)}
            for a, b in zip(edges, edges[1:])
        ]
        out["drop"] = drop_times(frames, viewer["metadata"], t0 + schedule[0][0],
                                 t0 + schedule[1][0] if len(schedule) > 1 else t1, t1)
    return out


def drop_times(
    frames: list[list[Any]], metadata: list[list[Any]], dropped: float, cleared: float,
    end: float,
) -> dict[str, float | None]:
    """Seconds from the drop to adapted, and from the link clearing to recovered (back at
    the width most frames had in the 2 s before the drop: the rung the fast link settled on)."""
    before = collections.Counter(f[2] for f in frames if dropped - 2.0 <= f[0] < dropped)
    top = before.most_common(1)[0][0] if before else None

    def first_second(start: float, stop: float, good: Any) -> float | None:
        t = start
        while t + 1.0 <= stop:
            second = [f for f in frames if t <= f[0] < t + 1.0]
            if second and good(second):
                return round(t - start, 2)
            t += 0.1
        return None

    def fluent(second: list[list[Any]]) -> bool:
        latencies = [(f[0] - f[1]) for f in second if f[1] is not None]
        return len(second) >= 15 and (percentile(latencies, 95) or 9.9) <= 0.3

    def back(second: list[list[Any]]) -> bool:
        return len(second) >= 25 and all(f[2] == top for f in second)

    def first_metadata(start: float, stop: float, smaller: bool) -> float | None:
        for at, fields in metadata:
            width = fields.get("width")
            if start <= at < stop and width is not None and top is not None and (
                (width < top) if smaller else (width == top)
            ):
                return round(at - start, 2)
        return None

    return {
        "adapted_s": first_second(dropped, cleared, fluent),
        "recovered_s": first_second(cleared, end, back),
        "metadata_down_s": first_metadata(dropped, cleared, True),
        "metadata_top_s": first_metadata(cleared, end, False),
    }


# The codec floor


def codec_floor(jpegs: list[bytes], widths: set[int], repeats: int = 3) -> dict[str, Any]:
    """The CPU (this thread, best of ``repeats`` passes over ``jpegs``) of decoding a source
    JPEG and of making each rung of ``widths`` from it (the default viewer's ladder: its
    rung's size and quality, scaled and encoded by camstream's own functions), in ms a frame;
    and their sum as % of a core at :data:`FPS`. The decode is camstream's own too
    (``Frame.pixels``): at the smallest of libjpeg's scales that covers the widest of the
    rungs. Rungs are told by their width, so one at the source's own width (a lower quality
    of it) is not told from the top and is left out."""
    whole = cv2.imdecode(np.frombuffer(jpegs[0], np.uint8), cv2.IMREAD_COLOR)
    height, width = whole.shape[:2]
    ladder = build_ladder(Variant(), width, height)
    rungs = {r.width: r for r in ladder.rungs[1:] if r.width in widths and r.width != width}
    widest = max(rungs.values(), key=lambda r: r.width, default=None)

    def frame(seq: int, jpeg: bytes) -> Frame:
        return Frame(seq, None, 0.0, 0.0, jpeg=jpeg, width=width, height=height)

    def decode(jpeg: bytes) -> Any:
        if widest is None:
            return frame(1, jpeg).image
        return frame(1, jpeg).pixels(widest.width, widest.height)

    def best_ms(work: Any, items: list[Any]) -> float:
        passes = []
        for _ in range(repeats):
            started = time.thread_time()
            for item in items:
                work(item)
            passes.append((time.thread_time() - started) / len(items) * 1000)
        return round(min(passes), 2)

    images = [decode(j) for j in jpegs]
    scale = width // images[0].shape[1]
    costs = {"decode" + (f" 1/{scale}" if scale > 1 else ""): best_ms(decode, jpegs)}
    for rung_width, rung in sorted(rungs.items(), reverse=True):
        quality = rung.variant.quality or 80
        costs[f"{rung_width} q{quality}"] = best_ms(
            lambda image, r=rung, q=quality: encode_jpeg(resize(image, r.width, r.height), q),
            images)
    per_frame = sum(costs.values())
    return {"ms_per_frame": costs, "total_ms": round(per_frame, 2),
            "core_pct_at_fps": round(per_frame * FPS / 10, 1)}


def rung_widths(result: dict[str, Any], share: float = 0.05) -> set[int]:
    """The widths that carried at least ``share`` of the shaped viewers' frames (the rungs in
    use; a probe's few frames on a rung above are not)."""
    counts: collections.Counter[int] = collections.Counter()
    for viewer in result["viewers"]:
        if viewer["rate_mbit"] is not None:
            counts.update({int(w): n for w, n in viewer["widths"].items()})
    total = sum(counts.values())
    return {w for w, n in counts.items() if n >= share * total}


# Scenarios


def points(args: argparse.Namespace) -> list[Point]:
    chosen: list[Point] = []
    for adapt in args.adapt:
        if "rates" in args.scenarios:
            for rate in [*args.rates, None]:
                label = "unshaped" if rate is None else f"{rate:g} Mbit/s"
                chosen.append(Point(f"alone {label}", adapt, [ViewerSpec(label, rate)]))
        if "drop" in args.scenarios:  # 5 s on 20 Mbit/s, 8 s on 2, 8 s on 20 again
            chosen.append(Point(
                "drop 20 -> 2 -> 20 Mbit/s", adapt, [ViewerSpec("20/2/20 Mbit/s", 20.0)],
                schedule=[(5.0, 2.0), (13.0, 20.0)], window=21.0,
            ))
        if "mixed" in args.scenarios:
            specs = [ViewerSpec(f"{r:g} Mbit/s", r, args.per_rate) for r in (1.0, 2.0, 4.0, 8.0)]
            specs.append(ViewerSpec("unshaped", None, args.unshaped))
            chosen.append(Point(
                f"mixed {4 * args.per_rate} shaped + {args.unshaped} unshaped", adapt, specs,
                window=args.mixed_window, warmup=args.mixed_warmup))
    return chosen


def print_point(result: dict[str, Any]) -> None:
    print(f"\n== {result['name']}, adapt={result['adapt']}: server {result['server_cpu_pct']} % "
          f"of a core ({result.get('server_system_pct', '-')} % in the kernel), "
          f"{result['encodes_per_s']} encodes/s, {result['decodes_per_s']} "
          f"decodes/s (other load {result['other_cpu_pct']} % of all cores)")
    floor = result.get("codec_floor")
    if floor is not None:
        parts = ", ".join(f"{k} {v} ms" for k, v in floor["ms_per_frame"].items())
        print(f"   codec floor (one thread, after the window): {parts} = {floor['total_ms']} ms "
              f"a frame, {floor['core_pct_at_fps']} % of a core at {FPS:g} fps")
    print(f"   {'viewer':<16} {'fps':>6} {'p50 ms':>8} {'p95 ms':>8} {'kB/s':>8}  widths")
    groups: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for viewer in result["viewers"]:
        groups[viewer["label"]].append(viewer)
    for label, viewers in groups.items():
        for viewer in viewers:
            widths = " ".join(f"{w}x{n}" for w, n in viewer["widths"].items())
            print(f"   {label:<16} {viewer['fps']:>6} {_fmt(viewer['p50_ms']):>8} "
                  f"{_fmt(viewer['p95_ms']):>8} {viewer['kbytes_per_s']:>8}  {widths}")
            for phase in viewer.get("phases", []):
                print(f"     from {phase['from_s']:>5} s  {phase['fps']:>6} "
                      f"{_fmt(phase['p50_ms']):>8} {_fmt(phase['p95_ms']):>8} "
                      f"{phase['kbytes_per_s']:>8}  "
                      + " ".join(f"{w}x{n}" for w, n in phase["widths"].items()))
            if "drop" in viewer:
                drop = viewer["drop"]
                print(f"     adapted {_fmt(drop['adapted_s'], 's')} after the drop "
                      f"(first smaller metadata {_fmt(drop['metadata_down_s'], 's')}), "
                      f"recovered {_fmt(drop['recovered_s'], 's')} after it cleared "
                      f"(metadata back on top {_fmt(drop['metadata_top_s'], 's')})")


def _fmt(value: float | None, unit: str = "") -> str:
    return "never" if value is None and unit else "-" if value is None else f"{value}{unit}"


def plot(results: list[dict[str, Any]], path: str) -> None:
    """fps and p95 latency against link rate, adaptation on and off (if matplotlib is there)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\n(matplotlib is not installed: no plot; pip install -e '.[bench]')")
        return
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, (ax_fps, ax_lat) = plt.subplots(1, 2, figsize=(10, 4))
    all_rates: set[float] = set()
    for adapt in sorted({r["adapt"] for r in results}):
        alone = [r for r in results if r["adapt"] == adapt and r["name"].startswith("alone")
                 and r["viewers"][0]["rate_mbit"] is not None]
        alone.sort(key=lambda r: r["viewers"][0]["rate_mbit"])
        rates = [r["viewers"][0]["rate_mbit"] for r in alone]
        all_rates.update(rates)
        ax_fps.plot(rates, [r["viewers"][0]["fps"] for r in alone], "o-", label=f"adapt {adapt}")
        ax_lat.plot(rates, [r["viewers"][0]["p95_ms"] or 0 for r in alone], "o-",
                    label=f"adapt {adapt}")
    ax_fps.set(xscale="log", xlabel="link rate (Mbit/s)", ylabel="frames/s", ylim=(0, 32),
               title="frame rate, 1280x720 camera at 30 fps")
    ax_lat.set(xscale="log", yscale="log", xlabel="link rate (Mbit/s)",
               ylabel="capture to receipt p95 (ms)", title="latency")
    for ax in (ax_fps, ax_lat):
        ax.set_xticks(sorted(all_rates), [f"{r:g}" for r in sorted(all_rates)])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    low, high = ax_lat.get_ylim()
    ax_lat.set_yticks([t for t in (10, 25, 50, 100, 250, 500, 1000, 2000, 4000, 8000)
                       if low <= t <= high])
    ax_lat.yaxis.set_major_formatter(ScalarFormatter())
    ax_lat.yaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="rates,drop,mixed",
                        type=lambda s: s.split(","))
    parser.add_argument("--adapt", default="off,on", type=lambda s: s.split(","))
    parser.add_argument("--rates", default="1,2,4,8",
                        type=lambda s: [float(x) for x in s.split(",")])
    parser.add_argument("--per-rate", type=int, default=5)
    parser.add_argument("--unshaped", type=int, default=10)
    parser.add_argument("--warmup", type=seconds_arg, default=4.0)
    parser.add_argument("--window", type=seconds_arg, default=10.0)
    parser.add_argument("--mixed-warmup", type=seconds_arg, default=30.0,
                        help="the mixed point's warm-up (s): past the viewers' first probes")
    parser.add_argument("--mixed-window", type=seconds_arg, default=60.0,
                        help="the mixed point's measurement window (s)")
    parser.add_argument("--frame-kb", type=float, default=180.0)
    parser.add_argument("--queue-ms", type=float, default=100.0,
                        help="how much each shaped link queues before it drops (ms)")
    parser.add_argument("--json", default=os.path.join(
        HERE, "results", f"adaptive-{datetime.date.today().isoformat()}.json"))
    parser.add_argument("--plot", default=os.path.join(REPO, "docs", "images", "adaptive.png"),
                        help="where to write the plot ('none': no plot)")
    parser.add_argument("--replot", metavar="JSON",
                        help="only draw the plot of a results file written before")
    args = parser.parse_args()
    if args.replot:
        with open(args.replot) as f:
            plot(json.load(f)["points"], args.plot)
        return 0
    problem = unavailable()
    if problem is not None:
        print(f"cannot make shaped links: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR)  # the server's per-viewer lines would drown this
    jpegs, quality = webcam_jpegs(args.frame_kb)
    mean_kb = sum(map(len, jpegs)) / len(jpegs) / 1000
    print(f"source: 1280x720 at {FPS:g} fps, {len(jpegs)} JPEGs of {mean_kb:.0f} KB on average "
          f"(quality {quality}); {os.cpu_count()} cores")
    results = []
    for point in points(args):
        result = run_point(point, jpegs, args)
        if point.name.startswith("mixed") and point.adapt == "on":
            result["codec_floor"] = codec_floor(jpegs, rung_widths(result))
        print_point(result)
        results.append(result)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"source_kb": round(mean_kb, 1), "quality": quality,
                   "warmup_s": args.warmup, "window_s": args.window,
                   "mixed_warmup_s": args.mixed_warmup, "mixed_window_s": args.mixed_window,
                   "queue_ms": args.queue_ms, "points": results}, f, indent=1)
    print(f"\nresults: {args.json}")
    if args.plot != "none" and any(r["name"].startswith("alone") for r in results):
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
