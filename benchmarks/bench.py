"""camstream's multi-client benchmark: fps, latency and server cost against N viewers.

For every point of the matrix (frame size x number of viewers, plus mixed-rate runs) this starts
a fresh server process (``stamped_server.py``: camstream fed with stamped frames; or
``naive_server.py``: the seed's one-encode-per-client design, same frames) and a load generator
process (``loadgen.py``, N raw-socket viewers), lets it warm up, and measures over a window:

* fps per viewer (mean and min) — frames received in the window / window length;
* latency p50/p95/max — receive time of a frame's last byte minus the capture time stamped into
  its pixels (same machine clock), on a sample of frames decoded after the window;
* server CPU — utime+stime of all its threads (/proc/<pid>/stat) over the window, % of one core;
  ``src`` is the part spent by the benchmark's own frame source (render + stamp, a stand-in for
  a camera driver), ``loadgen`` the load generator's own CPU (it shares the 2 cores);
* peak RSS (VmHWM) of the server process;
* JPEG encodes per second (``Streamer.stats()`` through the server's stdin side channel);
* MB/s received by all viewers together.

``camstream`` is the server as shipped (fan-out fast path on); ``camstream-threads`` is the same
server with ``CAMSTREAM_BENCH_FANOUT=0`` (``Streamer(fast_fanout=False)``: every frame handed to
each viewer's sender thread), run in the same matrix so before and after share the machine's
state. Its point labels end in " fan-out off"; tables and plots call it "camstream (fan-out off)".

CPU per viewer-frame, for each server kind and size with an N=1 row, at every N > 1:
(cpu(N) - cpu(1)) / ((N - 1) * fps_mean), cpu in % of one core (1 % = 10,000 us per second).

Usage::

    python benchmarks/bench.py            # the full matrix (~18 minutes), writes
                                          # benchmarks/results/<date>.json and
                                          # docs/images/benchmark.png
    python benchmarks/bench.py --quick    # 640x480, N = 1, 10, 50, 5 s windows (~2 minutes)
    python benchmarks/bench.py --fanout-compare   # 640x480 fan-out on/off, N = 1..200 (~3
                                          # minutes), writes docs/images/fanout.png

Only 127.0.0.1 is used. Every process started is stopped (quit on stdin, then SIGKILL after a
timeout).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, REPO)

from stamp import cpu_seconds, proc_status, system_cpu  # noqa: E402

SIZES = {"640x480": (640, 480), "1280x720": (1280, 720), "1920x1080": (1920, 1080)}
SIZE_HINT = {"640x480": 40e3, "1280x720": 110e3, "1920x1080": 240e3}  # bytes per JPEG, about
CAMERA_FPS = 30.0
CAMSTREAM = "camstream"  # fan-out fast path on (the default); targets and ratios use these rows
THREADS = "camstream-threads"  # the same server with the fan-out off (sender threads only)
CAMSTREAM_KINDS = (CAMSTREAM, THREADS)
SERVER_NAMES = {CAMSTREAM: "camstream", THREADS: "camstream (fan-out off)", "naive": "naive"}
FANOUT_COUNTS = [1, 10, 50, 100, 200]  # the on/off series at 640x480


@dataclass(frozen=True)
class Point:
    server: str  # "camstream", "camstream-threads" (fan-out off) or "naive"
    size: str
    clients: int
    rates: str = ""  # "" = every viewer at the camera rate; "30,10" = alternate 30 and 10 fps
    source: str = "pixels"  # "mjpeg": the publisher hands in JPEG files (publish_jpeg)
    query: str = ""  # more query parameters for every viewer ("quality=80": force a re-encode)
    extra: str = ""  # query of one more viewer ("width=320"), counted in N as +1

    @property
    def label(self) -> str:
        mixed = f" mixed {self.rates}" if self.rates else ""
        mjpeg = " mjpeg" if self.source == "mjpeg" else ""
        query = f" ?{self.query}" if self.query else ""
        extra = f" +1 ?{self.extra}" if self.extra else ""
        # "camstream ... fan-out off": --only "camstream 640x480" selects both kinds,
        # --only "fan-out off" the off series alone, --skip "fan-out off" the on series alone.
        server, off = (CAMSTREAM, " fan-out off") if self.server == THREADS else (self.server, "")
        return f"{server}{mjpeg} {self.size} N={self.clients}{mixed}{query}{extra}{off}"


# The MJPEG source (a webcam's own JPEGs): native viewers get them untouched; "?quality=80"
# forces camstream's decode-and-encode path on the same source, for comparison in the same run.
MJPEG_POINTS = [
    Point("camstream", "1920x1080", 10, source="mjpeg"),
    Point("camstream", "1920x1080", 10, source="mjpeg", query="quality=80"),
    Point("camstream", "1920x1080", 50, source="mjpeg"),
    Point("camstream", "1920x1080", 50, source="mjpeg", query="quality=80"),
    Point("camstream", "1920x1080", 10, source="mjpeg", extra="width=320"),
]


def fanout_series(counts: list[int]) -> list[Point]:
    """640x480 fan-out on and off, side by side at each N (so drift hits both alike)."""
    return [Point(s, "640x480", n) for n in counts for s in (CAMSTREAM, THREADS)]


def matrix(quick: bool, naive: bool, counts: list[int] | None = None) -> list[Point]:
    """The default matrix (or ``--quick``'s); ``counts`` replaces every N series."""
    servers = [CAMSTREAM, "naive"] if naive else [CAMSTREAM]
    if quick:
        counts = counts or [1, 10, 50]
        return ([Point(s, "640x480", n) for s in servers for n in counts]
                + [Point(s, "640x480", 50, "30,10") for s in servers])
    points = fanout_series(counts or FANOUT_COUNTS)
    counts = counts or [1, 10, 50, 100]
    points += [Point("naive", "640x480", n) for n in counts if naive]
    points += [Point(s, size, n) for size in list(SIZES)[1:] for s in servers for n in counts]
    points += [Point(s, "640x480", 50, "30,10") for s in servers]
    points += [Point(s, "640x480", 100, "30,10") for s in [CAMSTREAM, THREADS, *servers[1:]]]
    return points + MJPEG_POINTS


# -- child processes ---------------------------------------------------------------------------


class Child:
    """A child process whose stdout lines are read by a thread into a queue."""

    def __init__(self, argv: list[str], log_path: str, env: dict[str, str] | None = None) -> None:
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            text=True, bufsize=1, env={**os.environ, "PYTHONPATH": REPO, **(env or {})},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        # Daemon: it ends by itself at the child's EOF; never joined.
        self._reader = threading.Thread(target=self._read, daemon=True, name="bench-reader")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        """The rest of the next stdout line starting with ``prefix`` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {prefix!r} line within {timeout} s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"child exited ({self.proc.wait()}) before {prefix!r}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 15.0) -> int:
        """Ask the child to quit (stdin), then SIGKILL it after ``timeout``; returns its status."""
        if self.proc.poll() is None:
            try:
                self.command("quit")
                self.proc.stdin.close()  # type: ignore[union-attr]
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def server_stats(server: Child) -> dict[str, Any]:
    server.command("stats")
    return json.loads(server.expect("STATS ", 10))


# -- one point ---------------------------------------------------------------------------------


def run_point(point: Point, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    width, height = SIZES[point.size]
    script = "stamped_server.py" if point.server in CAMSTREAM_KINDS else "naive_server.py"
    log = os.path.join(workdir, "children.log")
    # Set either way, so a CAMSTREAM_BENCH_FANOUT=0 in the caller's environment cannot turn
    # the "camstream" rows into fan-out-off rows.
    fanout = {"CAMSTREAM_BENCH_FANOUT": "0" if point.server == THREADS else "1"}
    server = Child([sys.executable, os.path.join(HERE, script), "--width", str(width),
                    "--height", str(height), "--fps", str(CAMERA_FPS),
                    *(["--mjpeg"] if point.source == "mjpeg" else [])], log, fanout)
    loadgen: Child | None = None
    try:
        url, pid_text = server.expect("READY ", 120).split()  # MJPEG: frames made first
        pid = int(pid_text)
        out = os.path.join(workdir, f"loadgen-{os.getpid()}.json")
        loadgen = Child([
            sys.executable, os.path.join(HERE, "loadgen.py"), url,
            "--clients", str(point.clients), "--fps", point.rates,
            "--camera-fps", str(CAMERA_FPS), "--warmup", str(args.warmup),
            "--duration", str(args.duration), "--size-hint", str(SIZE_HINT[point.size]),
            "--reduce", "8" if width >= 1280 else "4", "--out", out,
            "--query", point.query, "--extra", point.extra,
        ], log)
        loadgen.expect("CONNECTED", 120)
        loadgen.expect("WINDOW_START", args.warmup + 30)
        t0, cpu0, sys0 = time.time(), cpu_seconds(pid), system_cpu()
        stats0 = server_stats(server)
        loadgen.expect("WINDOW_END", args.duration + 30)
        t1, cpu1, sys1 = time.time(), cpu_seconds(pid), system_cpu()
        stats1 = server_stats(server)
        status = proc_status(pid)
        loadgen.expect("RESULT", 300)
        with open(out) as f:
            result = json.load(f)
        os.unlink(out)
    finally:
        if loadgen is not None:
            loadgen.stop()
        server_exit = server.stop()
    row = summarize(point, result, t1 - t0, cpu1 - cpu0, stats0, stats1, status, server_exit)
    # Whatever else ran on the machine during the window (another process, the hypervisor):
    # it shares the 2 cores, so a noisy neighbour shows up here rather than as a mystery.
    busy_pct = (sys1[0] - sys0[0]) / (t1 - t0) * 100
    row["other_cpu_pct"] = max(busy_pct - row["server_cpu_pct"] - row["loadgen_cpu_pct"], 0.0)
    row["steal_pct"] = (sys1[1] - sys0[1]) / (t1 - t0) * 100
    return row


def summarize(point: Point, result: dict[str, Any], dt: float, cpu: float,
              stats0: dict[str, Any], stats1: dict[str, Any], status: dict[str, int],
              server_exit: int) -> dict[str, Any]:
    clients = result["per_client"]
    window = result["window_s"]
    groups: dict[str, dict[str, Any]] = {}
    for rate in sorted({c["fps_requested"] for c in clients}, reverse=True):
        fps = [c["fps"] for c in clients if c["fps_requested"] == rate]
        groups[f"{rate:g}"] = {"clients": len(fps), "fps_mean": sum(fps) / len(fps),
                               "fps_min": min(fps), "fps_max": max(fps)}
    fps_all = [c["fps"] for c in clients]
    total_bytes = sum(c["bytes"] for c in clients)
    total_frames = sum(c["frames"] for c in clients)
    encodes = stats1["frames_encoded"] - stats0["frames_encoded"]
    out: dict[str, Any] = {
        "server": point.server,
        "source": point.source,
        "query": point.query,
        "extra": point.extra,
        "size": point.size,
        "clients": point.clients,
        "rates": point.rates or f"{CAMERA_FPS:g}",
        "fps_mean": sum(fps_all) / len(fps_all),
        "fps_min": min(fps_all),
        "fps_by_rate": groups,
        "latency_ms": result["latency_ms"],
        "server_cpu_pct": cpu / dt * 100,
        "loadgen_cpu_pct": result["loadgen_cpu_pct"],
        "peak_rss_mb": status.get("VmHWM", 0) / 1024,
        "server_threads": status.get("Threads"),
        "encodes_per_s": encodes / (stats1["t"] - stats0["t"]),
        "mb_per_s": total_bytes / window / 1e6,
        "mean_jpeg_kb": total_bytes / total_frames / 1e3 if total_frames else None,
        "max_gap_ms": max(c["max_gap_ms"] for c in clients),
        "clients_closed": sum(1 for c in clients if c["close_code"] is not None),
        "server_exit": server_exit,
        "window_s": window,
    }
    if point.server in CAMSTREAM_KINDS:
        out["fast_fanout"] = stats1.get("fast_fanout")
        if out["fast_fanout"] is not None and out["fast_fanout"] != (point.server == CAMSTREAM):
            raise RuntimeError(f"{point.server} server reports fast_fanout={out['fast_fanout']}")
        pub0, pub1 = stats0["publisher"], stats1["publisher"]
        span = stats1["t"] - stats0["t"]
        out["source_cpu_pct"] = (pub1["cpu_s"] - pub0["cpu_s"]) / span * 100
        out["source_late"] = pub1["late"] - pub0["late"]
        out["camera_fps"] = (stats1["frames_captured"] - stats0["frames_captured"]) / span
        out["decodes_per_s"] = (stats1.get("decodes", 0) - stats0.get("decodes", 0)) / span
        if point.extra:
            extra = [c["fps"] for c in clients if c["query"].startswith(point.extra)]
            out["extra_fps"] = extra[0] if extra else None
        out["variants"] = sum(
            1 for v in stats1["variants"]
            if v["encodes"] > next((w["encodes"] for w in stats0["variants"]
                                    if _same_variant(v, w)), 0)
        )
        fanout0, fanout1 = stats0.get("fanout_cpu_s"), stats1.get("fanout_cpu_s")
        if fanout0 is not None and fanout1 is not None:  # the fan-out thread's own CPU
            out["fanout_cpu_pct"] = (fanout1 - fanout0) / span * 100
        skipped0 = {c["id"]: c["frames_skipped"] for c in stats0["clients"]}
        out["server_skipped_per_s"] = sum(
            c["frames_skipped"] - skipped0.get(c["id"], 0) for c in stats1["clients"]
        ) / span
    return out


def _same_variant(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("width", "height", "quality", "max_bytes")
    return all(a[k] == b[k] for k in keys)


# -- report ------------------------------------------------------------------------------------


def _f(value: Any, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("server", "size", "N", "rate", "fps mean", "fps min", "p50 ms", "p95 ms", "max ms",
            "CPU %", "src %", "loadgen %", "other %", "RSS MB", "enc/s", "MB/s", "KB/frame")
    lines = [head]
    for r in rows:
        lat = r["latency_ms"]
        if len(r["fps_by_rate"]) > 1:
            fps_mean = "/".join(f"{g['fps_mean']:.1f}" for g in r["fps_by_rate"].values())
            fps_min = "/".join(f"{g['fps_min']:.1f}" for g in r["fps_by_rate"].values())
        else:
            fps_mean, fps_min = f"{r['fps_mean']:.2f}", f"{r['fps_min']:.2f}"
        lines.append((
            SERVER_NAMES.get(r["server"], r["server"]), r["size"], str(r["clients"]), r["rates"],
            fps_mean, fps_min,
            _f(lat["p50"]), _f(lat["p95"]), _f(lat["max"]), _f(r["server_cpu_pct"]),
            _f(r.get("source_cpu_pct")), _f(r["loadgen_cpu_pct"]), _f(r.get("other_cpu_pct")),
            _f(r["peak_rss_mb"], "{:.0f}"),
            _f(r["encodes_per_s"], "{:.0f}"), _f(r["mb_per_s"]), _f(r["mean_jpeg_kb"], "{:.0f}"),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.rjust(w) if i > 1 else c.ljust(w)
                                     for i, (c, w) in enumerate(zip(line, widths))) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """naive / camstream at every (size, N, rates) where both ran."""
    by_key = {(r["server"], r["size"], r["clients"], r["rates"]): r for r in rows}
    out = []
    for (server, size, n, rates), cam in by_key.items():
        naive = by_key.get(("naive", size, n, rates))
        if server != "camstream" or naive is None:
            continue
        out.append({
            "size": size, "clients": n, "rates": rates,
            "cpu_naive_over_camstream": naive["server_cpu_pct"] / max(cam["server_cpu_pct"], 0.1),
            # CPU per frame delivered: the naive server saturates one core and drops fps instead
            "cpu_per_frame_naive_over_camstream":
                (naive["server_cpu_pct"] / max(naive["fps_mean"] * n, 0.01))
                / max(cam["server_cpu_pct"] / max(cam["fps_mean"] * n, 0.01), 1e-6),
            "fps_camstream_over_naive": cam["fps_mean"] / max(naive["fps_mean"], 0.01),
            "fps_min_camstream_over_naive": cam["fps_min"] / max(naive["fps_min"], 0.01),
            "p50_naive_over_camstream": _div(naive["latency_ms"]["p50"], cam["latency_ms"]["p50"]),
            "p95_naive_over_camstream": _div(naive["latency_ms"]["p95"], cam["latency_ms"]["p95"]),
        })
    return out


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def ratio_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| size | N | rate | CPU naive/camstream | CPU per frame naive/camstream "
             "| fps camstream/naive (mean, min) | p50 naive/camstream | p95 naive/camstream |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['clients']} | {r['rates']} | {r['cpu_naive_over_camstream']:.1f}x "
            f"| {r['cpu_per_frame_naive_over_camstream']:.1f}x "
            f"| {r['fps_camstream_over_naive']:.2f}x, {r['fps_min_camstream_over_naive']:.2f}x "
            f"| {_f(r['p50_naive_over_camstream'], '{:.2f}x')} "
            f"| {_f(r['p95_naive_over_camstream'], '{:.2f}x')} |"
        )
    return "\n".join(lines)


def _camera_rate_row(rows: list[dict[str, Any]], server: str, size: str, n: int,
                    rates: str = f"{CAMERA_FPS:g}") -> dict[str, Any] | None:
    return next((r for r in rows if r["server"] == server and r["size"] == size
                 and r["clients"] == n and r["rates"] == rates), None)


def _check(name: str, value: float | None, limit: float, at_least: bool) -> dict[str, Any]:
    met = value is not None and (value >= limit if at_least else value <= limit)
    return {"target": name, "value": value, "limit": limit, "met": met}


def _mixed_checks(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Every viewer of each rate group within +-2 % of its rate."""
    out = []
    name = f"{r['size']} N={r['clients']} mixed {r['rates']}"
    for rate, group in r["fps_by_rate"].items():
        low, high = float(rate) * 0.98, float(rate) * 1.02
        what = f"{name}: every {rate}-fps viewer"
        out.append(_check(f"{what} >= {low:g} fps", group["fps_min"], low, True))
        out.append(_check(f"{what} <= {high:g} fps", group.get("fps_max"), high, False))
    return out


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 13's targets for this machine, checked against the camstream (fan-out on) rows."""
    out: list[dict[str, Any]] = []
    r = _camera_rate_row(rows, CAMSTREAM, "640x480", 50)
    if r:
        lat, cpu = r["latency_ms"], r["server_cpu_pct"]
        out += [
            _check("640x480 N=50: every viewer >= 29.5 fps", r["fps_min"], 29.5, True),
            _check("640x480 N=50: p50 <= 3 ms", lat["p50"], 3.0, False),
            _check("640x480 N=50: p95 <= 8 ms", lat["p95"], 8.0, False),
            _check("640x480 N=50: server <= 12 % of one core (with the source)", cpu, 12.0, False),
            _check("640x480 N=50: server <= 10 % of one core (without the source)",
                   cpu - r.get("source_cpu_pct", 0.0), 10.0, False),
        ]
    r = _camera_rate_row(rows, CAMSTREAM, "640x480", 100)
    if r:
        out.append(_check("640x480 N=100: every viewer >= 29 fps", r["fps_min"], 29.0, True))
    r = _camera_rate_row(rows, CAMSTREAM, "640x480", 200)
    if r:
        out += [_check("640x480 N=200: every viewer >= 29 fps", r["fps_min"], 29.0, True),
                _check("640x480 N=200: p95 <= 25 ms", r["latency_ms"]["p95"], 25.0, False)]
    r = _camera_rate_row(rows, CAMSTREAM, "1280x720", 10)
    if r:
        out += [_check("1280x720 N=10: every viewer >= 29.5 fps", r["fps_min"], 29.5, True),
                _check("1280x720 N=10: p95 <= 20 ms", r["latency_ms"]["p95"], 20.0, False)]
    r = _camera_rate_row(rows, CAMSTREAM, "1280x720", 100)
    if r:
        out.append(_check("1280x720 N=100: every viewer >= 29.5 fps", r["fps_min"], 29.5, True))
    r = _camera_rate_row(rows, CAMSTREAM, "640x480", 100, "30,10")
    if r:
        out += _mixed_checks(r)
    return out + _encode_checks(rows)


def _encode_checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One encode per captured frame and variant at most, whatever N (fewer only if no viewer
    wanted a frame before the next one replaced it)."""
    out = []
    for r in rows:
        if r["server"] != CAMSTREAM:
            continue
        limit = r.get("camera_fps", CAMERA_FPS) * max(r.get("variants", 1), 1)
        out.append({"target": f"{r['size']} N={r['clients']} rates {r['rates']}: encodes/s <= "
                              f"camera rate x variants ({limit:.1f})",
                    "value": r["encodes_per_s"], "limit": limit,
                    "met": r["encodes_per_s"] <= 1.01 * limit})
    return out


# -- CPU per viewer-frame ----------------------------------------------------------------------


def per_viewer_frame(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """(cpu(N) - cpu(1)) / ((N - 1) * fps_mean) in us, per server kind and size with an N=1
    row, at the camera rate; cpu in % of one core (1 % = 10,000 us per second)."""
    rate = f"{CAMERA_FPS:g}"
    out = []
    for r in rows:
        base = _camera_rate_row(rows, r["server"], r["size"], 1)
        if base is None or r["clients"] <= 1 or r["rates"] != rate or r["fps_mean"] <= 0:
            continue
        extra_pct = r["server_cpu_pct"] - base["server_cpu_pct"]
        us = extra_pct * 1e4 / ((r["clients"] - 1) * r["fps_mean"])
        out.append({"server": r["server"], "size": r["size"], "clients": r["clients"],
                     "us_per_viewer_frame": us, "cpu_pct": r["server_cpu_pct"],
                     "cpu_pct_at_1": base["server_cpu_pct"],
                     "source_cpu_pct": r.get("source_cpu_pct"), "fps_mean": r["fps_mean"],
                     "fps_min": r["fps_min"], "latency_ms": r["latency_ms"]})
    return out


def _pair(off: dict[str, Any] | None, on: dict[str, Any] | None, key: str,
          fmt: str = "{:.1f}") -> str:
    """``off / on`` of one field ("latency_ms.p95": a nested one); "-" where a side is missing."""
    def get(e: dict[str, Any] | None) -> Any:
        for part in key.split("."):
            e = e.get(part) if e else None
        return e

    return f"{_f(get(off), fmt)} / {_f(get(on), fmt)}"


def per_viewer_frame_table(entries: list[dict[str, Any]]) -> str:
    """Fan-out off and on side by side, per size and N (camstream rows only)."""
    by_key = {(e["server"], e["size"], e["clients"]): e for e in entries}
    keys = sorted({(e["size"], e["clients"]) for e in entries if e["server"] in CAMSTREAM_KINDS},
                  key=lambda k: (list(SIZES).index(k[0]), k[1]))
    lines = ["| size | N | us/viewer-frame off / on | on/off | CPU % off / on "
             "| src % off / on | p50 ms off / on | p95 ms off / on | fps min off / on |",
             "|---|---|---|---|---|---|---|---|---|"]
    for size, n in keys:
        off, on = by_key.get((THREADS, size, n)), by_key.get((CAMSTREAM, size, n))
        ratio = _div(on["us_per_viewer_frame"], off["us_per_viewer_frame"]) if off and on else None
        lines.append(
            f"| {size} | {n} | {_pair(off, on, 'us_per_viewer_frame', '{:.0f}')} "
            f"| {_f(ratio, '{:.2f}x')} | {_pair(off, on, 'cpu_pct')} "
            f"| {_pair(off, on, 'source_cpu_pct')} | {_pair(off, on, 'latency_ms.p50')} "
            f"| {_pair(off, on, 'latency_ms.p95')} | {_pair(off, on, 'fps_min', '{:.2f}')} |"
        )
    return "\n".join(lines)


def is_mjpeg_row(row: dict[str, Any]) -> bool:
    return row.get("source", "pixels") != "pixels" or bool(row.get("query") or row.get("extra"))


def mjpeg_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| size | viewers | fps min (extra viewer) | p50 / p95 ms | CPU % | src % "
             "| camstream % | other % | enc/s | dec/s | MB/s | KB/frame |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        viewers = f"{r['clients']} native"
        if r.get("query"):
            viewers = f"{r['clients']} ?{r['query']} (decode + encode)"
        if r.get("extra"):
            viewers += f" + 1 ?{r['extra']}"
        lat = r["latency_ms"]
        fps = f"{r['fps_min']:.2f}"
        if r.get("extra_fps") is not None:
            fps += f" ({r['extra_fps']:.2f})"
        lines.append(
            f"| {r['size']} MJPEG | {viewers} | {fps} | {_f(lat['p50'])} / {_f(lat['p95'])} "
            f"| {r['server_cpu_pct']:.1f} | {_f(r.get('source_cpu_pct'))} "
            f"| {r['server_cpu_pct'] - r.get('source_cpu_pct', 0):.1f} "
            f"| {_f(r.get('other_cpu_pct'))} | {r['encodes_per_s']:.1f} "
            f"| {r.get('decodes_per_s', 0):.1f} | {r['mb_per_s']:.1f} "
            f"| {_f(r['mean_jpeg_kb'], '{:.0f}')} |"
        )
    return "\n".join(lines)


def decode_encode_cost_pct(size: str = "1920x1080", frames: int = 30) -> float:
    """CPU (% of one core) of one JPEG decode + one encode per frame at 30 fps, measured here:
    what camstream's decode-and-encode path costs on an MJPEG source whatever the viewers."""
    import cv2
    from stamp import FrameSource

    width, height = SIZES[size]
    source = FrameSource(width, height)
    jpegs = [cv2.imencode(".jpg", source.frame(i, CAMERA_FPS)[0],
                          [cv2.IMWRITE_JPEG_QUALITY, 80])[1] for i in range(frames)]
    start = time.process_time()
    for jpeg in jpegs:
        image = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
        cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return (time.process_time() - start) / frames * CAMERA_FPS * 100


def mjpeg_targets(rows: list[dict[str, Any]], cost_pct: float | None) -> list[dict[str, Any]]:
    """Issue 9's "done when" for the MJPEG source, checked against the MJPEG rows."""
    def row(n: int, query: str = "", extra: str = "") -> dict[str, Any] | None:
        return next((r for r in rows if r["clients"] == n and r.get("query", "") == query
                     and r.get("extra", "") == extra), None)

    def own(r: dict[str, Any]) -> float:  # camstream's CPU, without the source's encoder
        return r["server_cpu_pct"] - r.get("source_cpu_pct", 0.0)

    out = []

    def check(name: str, value: float | None, limit: float, at_least: bool) -> None:
        met = value is not None and (value >= limit if at_least else value <= limit)
        out.append({"target": name, "value": value, "limit": limit, "met": met})

    for n in (10, 50):
        r = row(n)
        if r:
            check(f"MJPEG 1080p N={n} native: every viewer >= 29.5 fps", r["fps_min"], 29.5, True)
            check(f"MJPEG 1080p N={n} native: encodes/s = 0", r["encodes_per_s"], 0, False)
            check(f"MJPEG 1080p N={n} native: decodes/s = 0", r["decodes_per_s"], 0, False)
    native, forced = row(10), row(10, "quality=80")
    if native and forced:
        check("MJPEG 1080p N=10: camstream CPU of decode-and-encode / passthrough >= 3",
              own(forced) / max(own(native), 0.1), 3.0, True)
    native, forced = row(50), row(50, "quality=80")
    if native and forced and cost_pct is not None:
        check(f"MJPEG 1080p N=50: CPU saved >= 90 % of one decode + encode per frame "
              f"({cost_pct:.0f} % of a core)", own(forced) - own(native), 0.9 * cost_pct, True)
    r = row(10, extra="width=320")
    if r:
        camera = r.get("camera_fps", CAMERA_FPS)
        for kind in ("decodes_per_s", "encodes_per_s"):
            check(f"MJPEG 1080p N=10 + one 320-wide viewer: {kind} = camera rate "
                  f"({camera:.1f}), not more", r[kind], 1.02 * camera, False)
            check(f"MJPEG 1080p N=10 + one 320-wide viewer: {kind} >= 95 % of the camera rate",
                  r[kind], 0.95 * camera, True)
        check("MJPEG 1080p N=10 + one 320-wide viewer: every viewer >= 29.5 fps",
              min(r["fps_min"], r.get("extra_fps") or 0), 29.5, True)
    return out


def machine_info() -> dict[str, Any]:
    import cv2
    import numpy
    import websockets

    import camstream

    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                                capture_output=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "camstream"], cwd=REPO,
                                    text=True, capture_output=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "?", False
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "opencv": cv2.__version__,
        "numpy": numpy.__version__,
        "websockets": websockets.__version__,
        "camstream": camstream.__version__,
        "git_commit": commit + ("+dirty" if dirty else ""),
    }


COLOURS = {CAMSTREAM: "tab:blue", THREADS: "tab:purple", "naive": "tab:orange"}


def _series(rows: list[dict[str, Any]], server: str, size: str) -> list[dict[str, Any]]:
    """One server kind's rows at one size, every viewer at the camera rate, by N."""
    return sorted((r for r in rows if r["server"] == server and r["size"] == size
                   and r["rates"] == f"{CAMERA_FPS:g}"), key=lambda r: r["clients"])


def _n_axis(ax: Any, counts: list[int]) -> None:
    """Log-scaled N axis with a tick at every N measured, a grid and a legend."""
    ax.set_xscale("log")
    ax.set_xticks(counts)
    ax.set_xticklabels([str(n) for n in counts])
    ax.minorticks_off()
    ax.set_xlabel("viewers (N)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def _log_y(ax: Any) -> None:
    """Log-scaled y axis labelled at 1, 2, 5 x 10^k in plain numbers (also over a short range)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot(rows: list[dict[str, Any]], entries: list[dict[str, Any]], path: str) -> None:
    """docs/images/benchmark.png: one column per frame size; rows fps, latency, server CPU and
    CPU per viewer-frame against N, for every server kind measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [s for s in SIZES if any(r["size"] == s for r in rows)]
    fig, axes = plt.subplots(4, len(sizes), figsize=(5.5 * len(sizes), 15), squeeze=False)
    for col, size in enumerate(sizes):
        for server, colour in COLOURS.items():
            _plot_server_column([ax[col] for ax in axes], _series(rows, server, size),
                                [e for e in entries if e["server"] == server
                                 and e["size"] == size], server, colour)
        _label_column([ax[col] for ax in axes], size,
                      sorted({r["clients"] for r in rows if r["size"] == size}))
    fig.suptitle("camstream (fan-out on; purple: fan-out off)\nvs the naive "
                 "one-encode-per-client server (2 cores)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_server_column(axes: list[Any], pts: list[dict[str, Any]],
                        entries: list[dict[str, Any]], server: str, colour: str) -> None:
    if not pts:
        return
    name = SERVER_NAMES[server]
    n = [r["clients"] for r in pts]
    axes[0].plot(n, [r["fps_mean"] for r in pts], "o-", color=colour, label=f"{name} mean")
    axes[0].plot(n, [r["fps_min"] for r in pts], "v--", color=colour, label=f"{name} min")
    axes[1].plot(n, [r["latency_ms"]["p50"] for r in pts], "o-", color=colour, label=f"{name} p50")
    axes[1].plot(n, [r["latency_ms"]["p95"] for r in pts], "^--", color=colour,
                 label=f"{name} p95")
    axes[2].plot(n, [r["server_cpu_pct"] for r in pts], "o-", color=colour, label=name)
    if server == CAMSTREAM:
        axes[2].plot(n, [r["loadgen_cpu_pct"] for r in pts], ":", color="grey",
                     label="load generator")
    # At small N the difference from N=1 is within the noise and may come out at or below
    # zero: such points cannot go on the log axis and are left out (the table has them).
    entries = [e for e in entries if e["us_per_viewer_frame"] > 0]
    if entries:
        axes[3].plot([e["clients"] for e in entries],
                     [e["us_per_viewer_frame"] for e in entries], "o-", color=colour, label=name)


def _label_column(axes: list[Any], size: str, counts: list[int]) -> None:
    axes[0].set_title(f"{size} @ {CAMERA_FPS:g} fps")
    axes[0].set_ylabel("fps per viewer")
    axes[0].set_ylim(0, CAMERA_FPS * 1.1)
    axes[0].axhline(CAMERA_FPS, color="grey", lw=0.5)
    axes[1].set_ylabel("latency, ms (log)")
    _log_y(axes[1])
    axes[2].set_ylabel("server CPU, % of one core")
    axes[2].axhline(200, color="grey", lw=0.5)
    axes[3].set_title("CPU per viewer-frame: (cpu(N) - cpu(1)) / ((N - 1) x fps)", fontsize=9)
    axes[3].set_ylabel("us per viewer-frame (log)")
    _log_y(axes[3])
    for ax in axes:
        _n_axis(ax, counts)


def plot_fanout(rows: list[dict[str, Any]], entries: list[dict[str, Any]], path: str,
                note: str) -> None:
    """docs/images/fanout.png (``--fanout-compare``): fan-out off against on at one size, from
    one run: CPU per viewer-frame, server CPU, latency and fps against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = next((s for s in SIZES if _series(rows, CAMSTREAM, s) and _series(rows, THREADS, s)),
                "640x480")
    counts = sorted({r["clients"] for r in rows if r["size"] == size})
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    kinds = ((THREADS, "fan-out off (sender threads)"), (CAMSTREAM, "fan-out on"))
    for server, name in kinds:
        pts, colour = _series(rows, server, size), COLOURS[server]
        n = [r["clients"] for r in pts]
        mine = [e for e in entries if e["server"] == server and e["size"] == size]
        _fanout_us(axes[0][0], mine, colour, name)
        axes[0][1].plot(n, [r["server_cpu_pct"] for r in pts], "o-", color=colour,
                        label=f"{name}: server")
        axes[0][1].plot(n, [r.get("source_cpu_pct") for r in pts], "x:", color=colour,
                        label=f"{name}: of which the test source")
        axes[1][0].plot(n, [r["latency_ms"]["p50"] for r in pts], "o-", color=colour,
                        label=f"{name}: p50")
        axes[1][0].plot(n, [r["latency_ms"]["p95"] for r in pts], "^--", color=colour,
                        label=f"{name}: p95")
        axes[1][1].plot(n, [r["fps_mean"] for r in pts], "o-", color=colour,
                        label=f"{name}: mean")
        axes[1][1].plot(n, [r["fps_min"] for r in pts], "v--", color=colour,
                        label=f"{name}: worst viewer")
    _label_fanout(axes, rows, counts)
    us = [e["us_per_viewer_frame"] for e in entries if e["size"] == size] or [1.0]
    axes[0][0].set_ylim(min(0.0, min(us) * 1.2), max(us) * 1.2)  # room for the value labels
    fig.suptitle(f"camstream {size} @ {CAMERA_FPS:g} fps: fan-out off vs on, one run\n{note}",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fanout_us(ax: Any, entries: list[dict[str, Any]], colour: str, name: str) -> None:
    """us per viewer-frame against N, each point labelled with its value."""
    n = [e["clients"] for e in entries]
    us = [e["us_per_viewer_frame"] for e in entries]
    ax.plot(n, us, "o-", color=colour, label=name)
    for x, y in zip(n, us):
        ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=8, color=colour)


def _label_fanout(axes: Any, rows: list[dict[str, Any]], counts: list[int]) -> None:
    ax = axes[0][0]
    ax.set_title("CPU per viewer-frame: (cpu(N) - cpu(1)) / ((N - 1) x fps)")
    ax.set_ylabel("us of server CPU per viewer-frame")
    axes[0][1].set_title("server CPU (the test source dotted)")
    axes[0][1].set_ylabel("% of one core")
    axes[0][1].set_ylim(bottom=0)
    axes[1][0].set_title("latency, capture to last byte received")
    axes[1][0].set_ylabel("ms")
    axes[1][0].set_ylim(bottom=0)
    ax = axes[1][1]
    ax.set_title("fps per viewer")
    ax.set_ylabel("fps")
    worst = min((r["fps_min"] for r in rows), default=CAMERA_FPS)
    ax.set_ylim(min(CAMERA_FPS * 0.9, worst - 0.5), CAMERA_FPS * 1.03)
    ax.axhline(CAMERA_FPS, color="grey", lw=0.5)
    for row in axes:
        for ax in row:
            _n_axis(ax, counts)


# -- main --------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="640x480 only, N = 1, 10, 50, 5 s windows (no fan-out-off series)")
    parser.add_argument("--fanout-compare", action="store_true",
                        help="only camstream 640x480 with the fan-out off and on, N = "
                        f"{', '.join(map(str, FANOUT_COUNTS))} (or --counts); plots "
                        "docs/images/fanout.png")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive server")
    parser.add_argument("--duration", type=float, help="measurement window per point, seconds")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", help="results JSON (default benchmarks/results/<date>.json)")
    parser.add_argument("--plot", help="PNG (default docs/images/benchmark.png, with "
                        "--fanout-compare docs/images/fanout.png, none with --quick); "
                        "'none': no plot")
    parser.add_argument("--only", help="run only points whose label contains this text "
                        "(labels: 'camstream 640x480 N=50', 'camstream 640x480 N=50 fan-out "
                        "off', 'naive 640x480 N=50', '... mixed 30,10')")
    parser.add_argument("--skip", help="leave out points whose label contains this text "
                        "(e.g. 'fan-out off')")
    parser.add_argument("--counts", help="viewer counts N, comma-separated (default 1,10,50,100; "
                        "the 640x480 fan-out on/off series 1,10,50,100,200)")
    args = parser.parse_args()
    if args.quick and args.fanout_compare:
        parser.error("--quick and --fanout-compare are exclusive")
    if args.duration is None:
        args.duration = 5.0 if args.quick else 10.0
    return args


def select_points(args: argparse.Namespace) -> list[Point]:
    counts = [int(n) for n in args.counts.split(",")] if args.counts else None
    if args.fanout_compare:
        points = fanout_series(counts or FANOUT_COUNTS)
    else:
        points = matrix(args.quick, not args.no_naive, counts)
    return [p for p in points if (not args.only or args.only in p.label)
            and not (args.skip and args.skip in p.label)]


def output_paths(args: argparse.Namespace) -> tuple[str, str | None]:
    """The results JSON and the PNG (None: no plot)."""
    today = datetime.date.today().isoformat()
    suffix = "-quick" if args.quick else "-fanout" if args.fanout_compare else ""
    out = args.out or os.path.join(HERE, "results", f"{today}{suffix}.json")
    image = "fanout.png" if args.fanout_compare else "benchmark.png"
    plot_path = args.plot or (None if args.quick else os.path.join(REPO, "docs", "images", image))
    return out, None if plot_path == "none" else plot_path


def run_points(points: list[Point], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Runs every point in turn, printing a line each; a failed point is reported and skipped."""
    workdir = os.path.join(tempfile.gettempdir(), "camstream-bench")  # child logs, scratch
    os.makedirs(workdir, exist_ok=True)
    rows = []
    for i, point in enumerate(points, 1):
        t = time.monotonic()
        try:
            row = run_point(point, args, workdir)
        except Exception as exc:  # one broken point must not lose the others
            print(f"[{i}/{len(points)}] {point.label}: FAILED: {exc!r}", flush=True)
            continue
        rows.append(row)
        lat = row["latency_ms"]
        print(f"[{i}/{len(points)}] {point.label}: fps {row['fps_mean']:.2f} (min "
              f"{row['fps_min']:.2f}), p50 {_f(lat['p50'])} ms, p95 {_f(lat['p95'])} ms, "
              f"CPU {row['server_cpu_pct']:.1f} % (src {_f(row.get('source_cpu_pct'))}), "
              f"loadgen {row['loadgen_cpu_pct']:.1f} %, other {row['other_cpu_pct']:.1f} % "
              f"({time.monotonic() - t:.0f} s)", flush=True)
    return rows


def print_report(report: dict[str, Any], pixel_rows: list[dict[str, Any]],
                 mjpeg_rows: list[dict[str, Any]]) -> None:
    if pixel_rows:
        print()
        print(table(pixel_rows))
    if report["cpu_per_viewer_frame"]:
        print("\nCPU per viewer-frame: (cpu(N) - cpu(1)) / ((N - 1) x fps mean), in us "
              "(1 % of a core = 10,000 us/s); fan-out off / on:\n")
        print(per_viewer_frame_table(report["cpu_per_viewer_frame"]))
    if mjpeg_rows:
        print()
        print(mjpeg_table(mjpeg_rows))
        print(f"\none JPEG decode + encode per frame at 1080p30, measured here: "
              f"{report['decode_encode_cost_pct_1080p']:.1f} % of one core")
    if report["ratios"]:
        print()
        print(ratio_table(report["ratios"]))
    print()
    for t in report["targets"]:
        print(f"{'MET   ' if t['met'] else 'MISSED'} {t['target']}: {_f(t['value'], '{:.2f}')} "
              f"(limit {t['limit']:g})")


def _shown(path: str) -> str:
    """``path`` relative to the repository when it is inside it."""
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path


def main() -> int:
    args = parse_args()
    out, plot_path = output_paths(args)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    points = select_points(args)
    info = machine_info()
    print(f"camstream benchmark, {info['date']}: {info['cpu_model']}, {info['cores']} cores, "
          f"Python {info['python']}, OpenCV {info['opencv']}, camstream {info['camstream']} "
          f"({info['git_commit']}); {len(points)} points, {args.duration:g} s windows", flush=True)
    started = time.monotonic()
    rows = run_points(points, args)
    pixel_rows = [r for r in rows if not is_mjpeg_row(r)]
    mjpeg_rows = [r for r in rows if is_mjpeg_row(r)]
    cost = decode_encode_cost_pct() if mjpeg_rows else None
    entries = per_viewer_frame(pixel_rows)
    settings = {"duration_s": args.duration, "warmup_s": args.warmup, "camera_fps": CAMERA_FPS,
                "quality": 80}
    report: dict[str, Any] = {
        "machine": info, "settings": settings, "rows": rows, "ratios": ratios(pixel_rows),
        "cpu_per_viewer_frame": entries,
        "targets": targets(pixel_rows) + mjpeg_targets(mjpeg_rows, cost),
        "decode_encode_cost_pct_1080p": cost, "elapsed_s": round(time.monotonic() - started, 1),
    }
    with open(out + ".tmp", "w") as f:
        json.dump(report, f, indent=1)
    os.replace(out + ".tmp", out)
    print_report(report, pixel_rows, mjpeg_rows)
    if plot_path and pixel_rows:
        if args.fanout_compare:
            note = (f"{info['date'][:10]}, {info['git_commit']}, {info['cores']} cores shared "
                    f"with the load generator, {args.duration:g} s windows")
            plot_fanout(pixel_rows, entries, plot_path, note)
        else:
            plot(pixel_rows, entries, plot_path)
        print(f"\nplot: {_shown(plot_path)}")
    print(f"results: {_shown(out)} ({report['elapsed_s']:.0f} s)")
    return 0 if len(rows) == len(points) else 1


if __name__ == "__main__":
    sys.exit(main())
