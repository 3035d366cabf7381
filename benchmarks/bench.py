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

Usage::

    python benchmarks/bench.py            # the full matrix (~10 minutes), writes
                                          # benchmarks/results/<date>.json and
                                          # docs/images/benchmark.png
    python benchmarks/bench.py --quick    # 640x480, N = 1, 10, 50, 5 s windows (~2 minutes)

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


@dataclass(frozen=True)
class Point:
    server: str  # "camstream" or "naive"
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
        return f"{self.server}{mjpeg} {self.size} N={self.clients}{mixed}{query}{extra}"


# The MJPEG source (a webcam's own JPEGs): native viewers get them untouched; "?quality=80"
# forces camstream's decode-and-encode path on the same source, for comparison in the same run.
MJPEG_POINTS = [
    Point("camstream", "1920x1080", 10, source="mjpeg"),
    Point("camstream", "1920x1080", 10, source="mjpeg", query="quality=80"),
    Point("camstream", "1920x1080", 50, source="mjpeg"),
    Point("camstream", "1920x1080", 50, source="mjpeg", query="quality=80"),
    Point("camstream", "1920x1080", 10, source="mjpeg", extra="width=320"),
]


def matrix(quick: bool, naive: bool, counts: list[int] | None = None) -> list[Point]:
    sizes = ["640x480"] if quick else list(SIZES)
    counts = counts or ([1, 10, 50] if quick else [1, 10, 50, 100])
    servers = ["camstream", "naive"] if naive else ["camstream"]
    points = [Point(s, size, n) for size in sizes for s in servers for n in counts]
    mixed_counts = [50] if quick else [50, 100]
    points += [Point(s, "640x480", n, "30,10") for s in servers for n in mixed_counts]
    return points if quick else points + MJPEG_POINTS


# -- child processes ---------------------------------------------------------------------------


class Child:
    """A child process whose stdout lines are read by a thread into a queue."""

    def __init__(self, argv: list[str], log_path: str) -> None:
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            text=True, bufsize=1, env={**os.environ, "PYTHONPATH": REPO},
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
    script = "stamped_server.py" if point.server == "camstream" else "naive_server.py"
    log = os.path.join(workdir, "children.log")
    server = Child([sys.executable, os.path.join(HERE, script), "--width", str(width),
                    "--height", str(height), "--fps", str(CAMERA_FPS),
                    *(["--mjpeg"] if point.source == "mjpeg" else [])], log)
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
                               "fps_min": min(fps)}
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
    if point.server == "camstream":
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
            r["server"], r["size"], str(r["clients"]), r["rates"], fps_mean, fps_min,
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


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The project's targets for this machine, checked against the camstream rows."""
    def row(size: str, n: int, rates: str = f"{CAMERA_FPS:g}") -> dict[str, Any] | None:
        return next((r for r in rows if r["server"] == "camstream" and r["size"] == size
                     and r["clients"] == n and r["rates"] == rates), None)

    checks: list[tuple[str, dict[str, Any] | None, str, Any, Any]] = []
    r = row("640x480", 50)
    if r:
        checks += [
            ("640x480 N=50: every client >= 29.5 fps", r, "fps_min", r["fps_min"], 29.5),
            ("640x480 N=50: p50 <= 5 ms", r, "p50", r["latency_ms"]["p50"], 5.0),
            ("640x480 N=50: p95 <= 15 ms", r, "p95", r["latency_ms"]["p95"], 15.0),
            ("640x480 N=50: server <= 25 % of one core", r, "cpu", r["server_cpu_pct"], 25.0),
        ]
    r = row("640x480", 100)
    if r:
        checks.append(("640x480 N=100: every client >= 29 fps", r, "fps_min", r["fps_min"], 29.0))
    r = row("1280x720", 10)
    if r:
        checks += [
            ("1280x720 N=10: every client >= 29.5 fps", r, "fps_min", r["fps_min"], 29.5),
            ("1280x720 N=10: p95 <= 20 ms", r, "p95", r["latency_ms"]["p95"], 20.0),
        ]
    out = []
    for name, _, kind, value, limit in checks:
        ok = value is not None and (value >= limit if kind == "fps_min" else value <= limit)
        out.append({"target": name, "value": value, "limit": limit, "met": ok})
    for r in rows:
        if r["server"] != "camstream":
            continue
        # One encode per captured frame and variant at most, whatever N (fewer only if no
        # viewer wanted a frame before the next one replaced it).
        limit = r.get("camera_fps", CAMERA_FPS) * max(r.get("variants", 1), 1)
        out.append({"target": f"{r['size']} N={r['clients']} rates {r['rates']}: encodes/s <= "
                              f"camera rate x variants ({limit:.1f})",
                    "value": r["encodes_per_s"], "limit": limit,
                    "met": r["encodes_per_s"] <= 1.01 * limit})
    return out


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


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [s for s in SIZES if any(r["size"] == s for r in rows)]
    fig, axes = plt.subplots(3, len(sizes), figsize=(5 * len(sizes), 11), squeeze=False)
    colours = {"camstream": "tab:blue", "naive": "tab:orange"}
    for col, size in enumerate(sizes):
        for server in ("camstream", "naive"):
            pts = sorted((r for r in rows if r["server"] == server and r["size"] == size
                          and r["rates"] == f"{CAMERA_FPS:g}"), key=lambda r: r["clients"])
            if not pts:
                continue
            n = [r["clients"] for r in pts]
            c = colours[server]
            ax = axes[0][col]
            ax.plot(n, [r["fps_mean"] for r in pts], "o-", color=c, label=f"{server} mean")
            ax.plot(n, [r["fps_min"] for r in pts], "v--", color=c, label=f"{server} min")
            ax = axes[1][col]
            ax.plot(n, [r["latency_ms"]["p50"] for r in pts], "o-", color=c, label=f"{server} p50")
            ax.plot(n, [r["latency_ms"]["p95"] for r in pts], "^--", color=c,
                    label=f"{server} p95")
            ax = axes[2][col]
            ax.plot(n, [r["server_cpu_pct"] for r in pts], "o-", color=c, label=f"{server} server")
            if server == "camstream":
                ax.plot(n, [r["loadgen_cpu_pct"] for r in pts], ":", color="grey",
                        label="load generator")
        axes[0][col].set_title(f"{size} @ {CAMERA_FPS:g} fps")
        axes[0][col].set_ylabel("fps per client")
        axes[0][col].set_ylim(0, CAMERA_FPS * 1.1)
        axes[0][col].axhline(CAMERA_FPS, color="grey", lw=0.5)
        axes[1][col].set_ylabel("latency, ms (log)")
        axes[1][col].set_yscale("log")
        axes[2][col].set_ylabel("CPU, % of one core")
        axes[2][col].axhline(200, color="grey", lw=0.5)
        for row in range(3):
            ax = axes[row][col]
            ax.set_xscale("log")
            ax.set_xticks([1, 10, 50, 100])
            ax.set_xticklabels(["1", "10", "50", "100"])
            ax.set_xlabel("clients (N)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("camstream vs naive one-encode-per-client server (same machine, 2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="640x480 only, N = 1, 10, 50, 5 s windows")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive server")
    parser.add_argument("--duration", type=float, help="measurement window per point, seconds")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out", help="results JSON (default benchmarks/results/<date>.json)")
    parser.add_argument("--plot", help="PNG (default docs/images/benchmark.png, or no plot with "
                        "--quick); 'none': no plot")
    parser.add_argument("--only", help="run only points whose label contains this text")
    parser.add_argument("--counts", help="viewer counts N, comma-separated (default 1,10,50,100)")
    args = parser.parse_args()
    if args.duration is None:
        args.duration = 5.0 if args.quick else 10.0
    today = datetime.date.today().isoformat()
    out = args.out or os.path.join(HERE, "results", f"{today}{'-quick' if args.quick else ''}.json")
    plot_path = args.plot or (None if args.quick else os.path.join(REPO, "docs", "images",
                                                                   "benchmark.png"))
    if plot_path == "none":
        plot_path = None
    workdir = os.path.join(tempfile.gettempdir(), "camstream-bench")  # child logs, scratch
    os.makedirs(workdir, exist_ok=True)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    counts = [int(n) for n in args.counts.split(",")] if args.counts else None
    points = [p for p in matrix(args.quick, not args.no_naive, counts)
              if not args.only or args.only in p.label]
    info = machine_info()
    print(f"camstream benchmark, {info['date']}: {info['cpu_model']}, {info['cores']} cores, "
          f"Python {info['python']}, OpenCV {info['opencv']}, camstream {info['camstream']} "
          f"({info['git_commit']}); {len(points)} points, {args.duration:g} s windows", flush=True)
    rows = []
    started = time.monotonic()
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
              f"CPU {row['server_cpu_pct']:.1f} %, loadgen {row['loadgen_cpu_pct']:.1f} %, "
              f"other {row['other_cpu_pct']:.1f} % "
              f"({time.monotonic() - t:.0f} s)", flush=True)
    pixel_rows = [r for r in rows if not is_mjpeg_row(r)]
    mjpeg_rows = [r for r in rows if is_mjpeg_row(r)]
    cost = decode_encode_cost_pct() if mjpeg_rows else None
    report = {"machine": info, "settings": {"duration_s": args.duration, "warmup_s": args.warmup,
                                            "camera_fps": CAMERA_FPS, "quality": 80},
              "rows": rows, "ratios": ratios(pixel_rows),
              "targets": targets(pixel_rows) + mjpeg_targets(mjpeg_rows, cost),
              "decode_encode_cost_pct_1080p": cost,
              "elapsed_s": round(time.monotonic() - started, 1)}
    with open(out + ".tmp", "w") as f:
        json.dump(report, f, indent=1)
    os.replace(out + ".tmp", out)
    if pixel_rows:
        print()
        print(table(pixel_rows))
    if mjpeg_rows:
        print()
        print(mjpeg_table(mjpeg_rows))
        print(f"\none JPEG decode + encode per frame at 1080p30, measured here: {cost:.1f} % "
              "of one core")
    if report["ratios"]:
        print()
        print(ratio_table(report["ratios"]))
    print()
    for t in report["targets"]:
        print(f"{'MET   ' if t['met'] else 'MISSED'} {t['target']}: {_f(t['value'], '{:.2f}')} "
              f"(limit {t['limit']:g})")
    if plot_path and pixel_rows:
        plot(pixel_rows, plot_path)
        print(f"\nplot: {os.path.relpath(plot_path, REPO)}")
    print(f"results: {os.path.relpath(out, REPO)} ({report['elapsed_s']:.0f} s)")
    return 0 if len(rows) == len(points) else 1


if __name__ == "__main__":
    sys.exit(main())
