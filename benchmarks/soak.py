"""Soak test: 20 viewers with random reconnects and rate changes against one camstream server.

Starts ``stamped_server.py`` (640x480 at 30 fps by default) in its own process and, in this
process, drives 20 raw-socket viewers (``loadgen.Viewer``) for ``--minutes`` (30 by default).
About once a second a random viewer either leaves (a clean Close, or a RST) and comes back with a
random ``?fps=``, or sends a ``config`` message with a new rate. Besides, ``--mjpeg`` MJPEG
readers (4 by default, a thread each) come and go at random rates: each part must be a whole
JPEG. Every ``--interval`` seconds it
samples the server process (RSS, threads, open fds, CPU %) and the delivery: frames received /
frames expected at each viewer's requested rate.

At the end every viewer leaves, and the server must be back to its idle thread and fd count. It
prints whether anything grew, writes ``benchmarks/results/soak-<date>.json`` and
``docs/images/soak.png``, and exits 1 if something grew or delivery (WebSocket or MJPEG) fell
below 95 %.

Usage: ``python benchmarks/soak.py [--minutes 30] [--clients 20] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from typing import Any
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, REPO)

from bench import Child, machine_info, server_stats  # noqa: E402
from loadgen import Loop, Viewer  # noqa: E402
from stamp import cpu_seconds, open_fds, proc_status  # noqa: E402

RATES = (5.0, 10.0, 15.0, 30.0)
WARMUP_S = 180.0  # RSS growth before this is warm-up (allocator arenas, caches), not a leak


class Fleet:
    """The viewers, their requested rates, and the frames each was owed and got."""

    def __init__(self, url: str, clients: int, camera_fps: float, rng: random.Random) -> None:
        self.url, self.camera_fps, self.rng = url, camera_fps, rng
        self.loop = Loop()
        self.viewers: list[Viewer | None] = [None] * clients
        self.accrued_at = [0.0] * clients  # expected frames are counted up to this time
        self.expected = 0.0  # frames owed since the last sample, all viewers
        self.received = 0  # frames received since the last sample, all viewers
        self.counted = [0] * clients  # viewer.frames already added to self.received
        self.reconnects = self.config_changes = self.unexpected_closes = 0
        self.close_codes: dict[str, int] = {}

    def connect(self, i: int) -> None:
        fps = self.rng.choice(RATES)
        viewer = Viewer(i, f"{self.url}?fps={fps:g}", fps)
        viewer.connect(timeout=10)
        viewer.counting = True
        self.loop.add(viewer)
        self.viewers[i] = viewer
        self.counted[i] = 0
        self.accrued_at[i] = time.time()

    def leave(self, i: int, abrupt: bool) -> None:
        """Viewer ``i`` leaves: a Close frame, or a RST (SO_LINGER 0)."""
        viewer = self.viewers[i]
        if viewer is None:
            return
        self._settle(i, time.time())
        self.loop.remove(viewer)
        if abrupt and viewer.sock is not None:
            try:
                viewer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            viewer.close(code=None)
        else:
            viewer.close(code=1000)
        self.viewers[i] = None

    def change_rate(self, i: int) -> None:
        viewer = self.viewers[i]
        if viewer is None:
            return
        self._settle(i, time.time())
        viewer.fps = self.rng.choice([r for r in RATES if r != viewer.fps])
        viewer.send_text(json.dumps({"type": "config", "fps": viewer.fps}))
        self.config_changes += 1

    def on_close(self, viewer: Viewer) -> None:
        """The server closed a viewer that did not ask to leave (counted as a failure)."""
        self.unexpected_closes += 1
        key = str(viewer.close_code)
        self.close_codes[key] = self.close_codes.get(key, 0) + 1
        if self.viewers[viewer.index] is viewer:
            self._settle(viewer.index, time.time())
            self.viewers[viewer.index] = None

    def _settle(self, i: int, now: float) -> None:
        """Count viewer i's frames and what it was owed up to ``now``."""
        viewer = self.viewers[i]
        if viewer is None:
            return
        rate = min(viewer.fps or self.camera_fps, self.camera_fps)
        # The first frame is owed one period after connecting; a rate change takes effect at
        # the server a moment later, which the 5 % tolerance absorbs.
        self.expected += max(now - self.accrued_at[i], 0.0) * rate
        self.accrued_at[i] = now
        self.received += viewer.frames - self.counted[i]
        self.counted[i] = viewer.frames

    def sample(self, now: float) -> tuple[int, float]:
        """(frames received, frames expected) since the previous sample, all viewers."""
        for i in range(len(self.viewers)):
            self._settle(i, now)
        out = (self.received, self.expected)
        self.received, self.expected = 0, 0.0
        return out

    def close(self) -> None:
        for i in range(len(self.viewers)):
            self.leave(i, abrupt=False)
        self.loop.close()


class MjpegReaders:
    """``count`` MJPEG readers (``/stream.mjpg``), each in its own thread: it reads parts at a
    random rate for a random while (about a minute), leaves (FIN or RST) and comes back.

    Counts the parts read, the parts owed at each reader's rate, parts that are not whole JPEGs
    and streams the server ended on its own.
    """

    def __init__(self, url: str, count: int, seed: int) -> None:
        split = urlsplit(url)
        self.address = (split.hostname or "127.0.0.1", split.port or 80)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.parts = self.corrupt = self.reconnects = self.unexpected_ends = 0
        self.expected = 0.0
        self._threads = [
            threading.Thread(target=self._run, args=(random.Random(seed * 1000 + i),),
                             name=f"soak-mjpeg-{i}", daemon=True)
            for i in range(count)
        ]

    def start(self) -> MjpegReaders:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Every reader leaves; joined (each notices within one part or a 10 s timeout)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _run(self, rng: random.Random) -> None:
        while not self._stop.is_set():
            fps = rng.choice(RATES)
            started = time.monotonic()
            parts, corrupt, ended = self._read_one(fps, started + rng.expovariate(1 / 60), rng)
            with self._lock:
                self.parts += parts
                self.corrupt += corrupt
                self.unexpected_ends += ended
                self.expected += (time.monotonic() - started) * fps
                self.reconnects += 1

    def _read_one(self, fps: float, until: float, rng: random.Random) -> tuple[int, int, int]:
        """One visit: (parts read, parts not whole JPEGs, 1 if the server ended it)."""
        parts = corrupt = 0
        sock = socket.create_connection(self.address, timeout=10)
        try:
            host = f"{self.address[0]}:{self.address[1]}"
            sock.sendall(f"GET /stream.mjpg?fps={fps:g} HTTP/1.1\r\nHost: {host}\r\n\r\n"
                         .encode())
            f = sock.makefile("rb")
            if b" 200 " not in f.readline():
                return 0, 0, 1
            while f.readline().strip():  # the response headers
                pass
            while not self._stop.is_set() and time.monotonic() < until:
                if not f.readline():  # the boundary line
                    return parts, corrupt, 1
                length = 0
                while line := f.readline().strip():
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                body, tail = f.read(length), f.read(2)
                if len(body) < length or tail != b"\r\n":
                    return parts, corrupt, 1
                parts += 1
                corrupt += not (body.startswith(b"\xff\xd8") and body.endswith(b"\xff\xd9"))
            return parts, corrupt, 0
        except OSError:
            return parts, corrupt, 1
        finally:
            if rng.random() < 0.5:  # half leave with a RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

    def delivery(self) -> float | None:
        with self._lock:
            return self.parts / self.expected if self.expected else None


def trend(values: list[float]) -> tuple[float, float]:
    """(median of the first quarter, median of the last quarter) of ``values``."""
    k = max(len(values) // 4, 1)
    return statistics.median(values[:k]), statistics.median(values[-k:])


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    os.makedirs(os.path.join(tempfile.gettempdir(), "camstream-bench"), exist_ok=True)
    log = os.path.join(tempfile.gettempdir(), "camstream-bench", "soak-server.log")
    server = Child([sys.executable, os.path.join(HERE, "stamped_server.py"), "--width",
                    str(args.width), "--height", str(args.height), "--fps", str(args.fps)], log)
    samples: list[dict[str, Any]] = []
    fleet: Fleet | None = None
    readers: MjpegReaders | None = None
    try:
        url, pid_text = server.expect("READY ", 30).split()
        pid = int(pid_text)
        # The server's idle state (no viewer), once a few frames have gone by.
        time.sleep(1.0)  # let the publisher and the server settle before the baseline
        idle = proc_status(pid) | {"fds": open_fds(pid)}
        fleet = Fleet(url, args.clients, args.fps, rng)
        for i in range(args.clients):
            fleet.connect(i)
        readers = MjpegReaders(url, args.mjpeg, args.seed).start()
        started = time.time()
        end = started + args.minutes * 60
        next_sample = started + args.interval
        next_action = started + rng.expovariate(args.actions_per_s)
        cpu_prev, t_prev = cpu_seconds(pid), time.time()
        stats_prev = server_stats(server)
        print(f"soak: {args.clients} viewers on {url} for {args.minutes:g} min "
              f"(server pid {pid}; idle: {idle['Threads']} threads, {idle['fds']} fds, "
              f"{idle['VmRSS'] / 1024:.0f} MB)", flush=True)
        while True:
            now = time.time()
            if now >= end:
                break
            fleet.loop.run_until(min(next_sample, next_action, end), on_close=fleet.on_close)
            now = time.time()
            if now >= next_action:
                next_action = now + rng.expovariate(args.actions_per_s)
                i = rng.randrange(args.clients)
                roll = rng.random()
                if fleet.viewers[i] is None or roll < 0.5:
                    fleet.leave(i, abrupt=rng.random() < 0.5)
                    fleet.connect(i)
                    fleet.reconnects += 1
                else:
                    fleet.change_rate(i)
            if now >= next_sample:
                received, expected = fleet.sample(now)
                cpu, t = cpu_seconds(pid), time.time()
                stats = server_stats(server)
                status = proc_status(pid)
                sample = {
                    "t_s": round(t - started, 1),
                    "rss_mb": status["VmRSS"] / 1024,
                    "threads": status["Threads"],
                    "fds": open_fds(pid),
                    "cpu_pct": (cpu - cpu_prev) / (t - t_prev) * 100,
                    "delivery": received / expected if expected else None,
                    "fps_received": received / (t - t_prev),
                    "clients": stats["client_count"],
                    "encodes_per_s": (stats["frames_encoded"] - stats_prev["frames_encoded"])
                    / (stats["t"] - stats_prev["t"]),
                    "variants": len(stats["variants"]),
                }
                samples.append(sample)
                cpu_prev, t_prev, stats_prev = cpu, t, stats
                next_sample = now + args.interval
                if len(samples) % max(int(60 / args.interval), 1) == 0:
                    print(f"  {sample['t_s'] / 60:5.1f} min: RSS {sample['rss_mb']:.1f} MB, "
                          f"{sample['threads']} threads, {sample['fds']} fds, CPU "
                          f"{sample['cpu_pct']:.0f} %, delivery {sample['delivery'] or 0:.3f}, "
                          f"{sample['clients']} clients, {fleet.reconnects} reconnects, "
                          f"{fleet.config_changes} rate changes", flush=True)
        fleet.close()
        readers.stop()
        # Every viewer gone: the server must drop back to its idle threads and fds.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            after = proc_status(pid) | {"fds": open_fds(pid)}
            if after["Threads"] <= idle["Threads"] and after["fds"] <= idle["fds"]:
                break
            time.sleep(0.1)  # polling another process's /proc: there is nothing to wait on
        final_stats = server_stats(server)
    finally:
        if fleet is not None:
            fleet.close()
        if readers is not None:
            readers.stop()
        server_exit = server.stop()
    report = analyse(args, samples, idle, after, final_stats, fleet, server_exit)
    assert readers is not None
    mjpeg = {"readers": args.mjpeg, "parts": readers.parts, "delivery": readers.delivery(),
             "corrupt": readers.corrupt, "visits": readers.reconnects,
             "unexpected_ends": readers.unexpected_ends}
    report["findings"]["mjpeg"] = mjpeg
    if mjpeg["corrupt"]:
        report["problems"].append(f"{mjpeg['corrupt']} MJPEG parts were not whole JPEGs")
    if mjpeg["unexpected_ends"]:
        report["problems"].append(f"{mjpeg['unexpected_ends']} MJPEG streams ended by the server")
    if mjpeg["delivery"] is not None and mjpeg["delivery"] < 0.95:
        report["problems"].append(f"MJPEG delivery fell to {mjpeg['delivery']:.3f}")
    return report


def analyse(args: argparse.Namespace, samples: list[dict[str, Any]], idle: dict[str, int],
            after: dict[str, int], final_stats: dict[str, Any], fleet: Fleet,
            server_exit: int) -> dict[str, Any]:
    rss = [s["rss_mb"] for s in samples]
    threads = [s["threads"] for s in samples]
    fds = [s["fds"] for s in samples]
    delivery = [s["delivery"] for s in samples if s["delivery"] is not None]
    # Allocator arenas and caches fill during the first minutes (~3 min here, then flat); judge
    # growth on what comes after: the steady part's first quarter against its last quarter.
    skip = next((i for i, s in enumerate(samples) if s["t_s"] >= WARMUP_S), len(samples) // 4)
    skip = min(skip, len(samples) // 2)
    rss_first, rss_last = trend(rss[skip:])
    findings = {
        "warmup_excluded_s": samples[skip]["t_s"] if samples else 0,
        "rss_start_mb": rss[0],
        "rss_first_quarter_mb": rss_first,
        "rss_last_quarter_mb": rss_last,
        "rss_growth_mb": rss_last - rss_first,
        "rss_max_mb": max(rss),
        "threads_first_last": trend([float(t) for t in threads]),
        "fds_first_last": trend([float(f) for f in fds]),
        "idle_threads_before_after": (idle["Threads"], after["Threads"]),
        "idle_fds_before_after": (idle["fds"], after["fds"]),
        "clients_left_on_server": final_stats["client_count"],
        "delivery_median": statistics.median(delivery) if delivery else None,
        "delivery_min": min(delivery) if delivery else None,
        "reconnects": fleet.reconnects,
        "rate_changes": fleet.config_changes,
        "unexpected_closes": fleet.unexpected_closes,
        "close_codes": fleet.close_codes,
        "server_exit": server_exit,
    }
    grew = []
    if findings["rss_growth_mb"] > 5:
        grew.append(f"RSS grew {findings['rss_growth_mb']:.1f} MB after warm-up "
                    f"(first to last quarter of the steady part)")
    if after["Threads"] > idle["Threads"]:
        grew.append(f"threads {idle['Threads']} -> {after['Threads']} after every viewer left")
    if after["fds"] > idle["fds"]:
        grew.append(f"fds {idle['fds']} -> {after['fds']} after every viewer left")
    if final_stats["client_count"]:
        grew.append(f"{final_stats['client_count']} sessions left on the server")
    problems = list(grew)
    if findings["delivery_min"] is not None and findings["delivery_min"] < 0.95:
        problems.append(f"delivery fell to {findings['delivery_min']:.3f}")
    if fleet.unexpected_closes:
        problems.append(f"{fleet.unexpected_closes} viewers closed by the server")
    if server_exit != 0:
        problems.append(f"server exited with {server_exit}")
    return {"machine": machine_info(), "settings": vars(args), "findings": findings,
            "grew": grew, "problems": problems, "samples": samples}


def reanalyse(saved: dict[str, Any]) -> dict[str, Any]:
    """Recompute a saved run's findings (the fleet counters and idle checks are kept)."""
    f = saved["findings"]

    class Saved:
        reconnects, config_changes = f["reconnects"], f["rate_changes"]
        unexpected_closes, close_codes = f["unexpected_closes"], f["close_codes"]

    idle = {"Threads": f["idle_threads_before_after"][0], "fds": f["idle_fds_before_after"][0]}
    after = {"Threads": f["idle_threads_before_after"][1], "fds": f["idle_fds_before_after"][1]}
    report = analyse(argparse.Namespace(**saved["settings"]), saved["samples"], idle, after,
                     {"client_count": f["clients_left_on_server"]}, Saved,  # type: ignore[arg-type]
                     f["server_exit"])
    report["machine"] = saved["machine"]
    return report


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(t, [s["rss_mb"] for s in samples], color="tab:blue")
    axes[0].set_ylabel("server RSS, MB")
    axes[1].plot(t, [s["threads"] for s in samples], label="threads", color="tab:green")
    axes[1].plot(t, [s["fds"] for s in samples], label="open fds", color="tab:purple")
    axes[1].plot(t, [s["clients"] for s in samples], label="clients", color="grey", ls=":")
    axes[1].legend(fontsize=8)
    axes[1].set_ylabel("count")
    axes[2].plot(t, [s["delivery"] for s in samples], color="tab:orange")
    axes[2].axhline(1.0, color="grey", lw=0.5)
    axes[2].set_ylim(0.8, 1.1)
    axes[2].set_ylabel("frames received /\nframes expected")
    axes[3].plot(t, [s["cpu_pct"] for s in samples], color="tab:red")
    axes[3].set_ylabel("server CPU, % of a core")
    axes[3].set_xlabel("minutes")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    f = report["findings"]
    fig.suptitle(f"camstream soak: {report['settings']['clients']} viewers, "
                 f"{f['reconnects']} reconnects, {f['rate_changes']} rate changes, "
                 f"{report['settings']['minutes']:g} min")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--mjpeg", type=int, default=4,
                        help="MJPEG readers besides the WebSocket viewers (each its own thread)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--actions-per-s", type=float, default=1.0,
                        help="reconnects + rate changes per second, on average")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", help="JSON (default benchmarks/results/soak-<date>.json)")
    parser.add_argument("--plot", default=os.path.join(REPO, "docs", "images", "soak.png"))
    parser.add_argument("--reanalyse", metavar="JSON", help="redo the analysis of a saved run")
    args = parser.parse_args()
    out = args.out or os.path.join(HERE, "results", f"soak-{datetime.date.today()}.json")
    if args.reanalyse:  # recompute findings and the plot from a saved run's samples
        with open(args.reanalyse) as f:
            saved = json.load(f)
        report = reanalyse(saved)
        out = args.reanalyse
    else:
        report = run(args)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    plot(report, args.plot)
    f = report["findings"]
    print(f"\nRSS {f['rss_start_mb']:.1f} at start; after {f['warmup_excluded_s']:.0f} s of "
          f"warm-up "
          f"{f['rss_first_quarter_mb']:.1f} -> {f['rss_last_quarter_mb']:.1f} MB "
          f"(max {f['rss_max_mb']:.1f}); idle threads {f['idle_threads_before_after']}, "
          f"idle fds {f['idle_fds_before_after']}; delivery median {f['delivery_median']:.3f}, "
          f"min {f['delivery_min']:.3f}; {f['reconnects']} reconnects, {f['rate_changes']} rate "
          f"changes, {f['unexpected_closes']} unexpected closes")
    if "mjpeg" in f:
        m = f["mjpeg"]
        print(f"MJPEG: {m['readers']} readers, {m['visits']} visits, {m['parts']} parts, delivery "
              f"{m['delivery'] or 0:.3f}, {m['corrupt']} not whole, {m['unexpected_ends']} ended "
              f"by the server")
    print("nothing grew" if not report["grew"] else "GREW: " + "; ".join(report["grew"]))
    for problem in report["problems"]:
        if problem not in report["grew"]:
            print("PROBLEM: " + problem)
    print(f"results: {os.path.relpath(out, REPO)}, plot: {os.path.relpath(args.plot, REPO)}")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
