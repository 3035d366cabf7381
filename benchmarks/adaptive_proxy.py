"""Adaptive delivery behind nginx: one viewer on a shaped link, direct or through a real nginx.

The figures of docs/scaling.md, *Adaptive delivery behind nginx*. For each path (``direct``: the
viewer talks to camstream; ``nginx``: Debian's nginx with the shipped site file in front of it,
camstream trusting it as a proxy; ``nginx-sndbuf16k``: the same with ``listen ... sndbuf=16k``)
and each of adaptation on and off: a 1280x720 webcam-like push source (~118 KB JPEGs at 30 fps),
one viewer in a network namespace behind ``tc tbf`` at ``--rate`` Mbit/s (``tests/netns.py``),
a warm-up, then a window. Prints fps, capture-to-receipt latency p50/p95, the widths received,
when the first step down came and the rungs in order; ``--json`` writes them.

Needs root, iproute2 and nginx (as the tests do). Usage:
``python benchmarks/adaptive_proxy.py [--paths direct,nginx] [--adapt on,off] [--rate 2]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, HERE)

from adaptive import phase_figures, read_line  # noqa: E402
from netns import SlowLinks  # noqa: E402
from test_adaptive import serving, webcam_jpegs  # noqa: E402
from test_adaptive_proxy import nginx_in_front  # noqa: E402
from test_deploy import find_nginx  # noqa: E402

VIEWER = os.path.join(HERE, "adaptive_viewer.py")
PROXY = "127.0.0.1"  # nginx reaches camstream from here; camstream trusts it
PATHS: dict[str, dict[str, str] | None] = {
    "direct": None,
    "nginx": {},
    "nginx-sndbuf16k": {"listen_options": "sndbuf=16k"},
}


@contextlib.contextmanager
def direct(port: int) -> Iterator[int]:
    yield port


def run_one(path: str, adapt: str, jpegs: list[bytes], args: argparse.Namespace
            ) -> dict[str, Any]:
    """One viewer, one window: its figures."""
    settings = PATHS[path]
    total = args.warmup + args.window + 2.0
    with SlowLinks() as links, tempfile.TemporaryDirectory() as tmp:
        host = links.host_address
        lane = links.lane(args.rate)
        bind = PROXY if settings is not None else host
        with serving(bind, jpegs, trusted_proxies=[PROXY]) as streamer, (
            nginx_in_front(find_nginx() or "nginx", Path(tmp), host, streamer.port, **settings)
            if settings is not None else direct(streamer.port)
        ) as port:
            url = f"ws://{host}:{port}/?max_bytes=0&frame_info=1&adapt={adapt}"
            process = lane.popen(
                [sys.executable, VIEWER, url, "--count", "1", "--seconds", str(total)],
                stdout=subprocess.PIPE, text=True,
            )
            try:
                if not read_line(process, 30).startswith("CONNECTED"):
                    raise RuntimeError("the viewer did not connect")
                connected = time.time()
                time.sleep(args.warmup)
                t0 = time.time()
                time.sleep(args.window)
                t1 = time.time()
                result = json.loads(read_line(process, total + 30).split(" ", 1)[1])[0]
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait(10)
                if process.stdout is not None:
                    process.stdout.close()
    figures = phase_figures(result["frames"], t0, t1)
    metadata = result["metadata"]
    first_down = next((t - connected for t, m in metadata if m.get("rung", 0) > 0), None)
    return {
        "path": path, "adapt": adapt, "rate_mbit": args.rate, **figures,
        "first_step_down_s": None if first_down is None else round(first_down, 2),
        "rungs": [m.get("rung") for _, m in metadata],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", default="direct,nginx,nginx-sndbuf16k",
                        help=f"comma-separated, of {', '.join(PATHS)}")
    parser.add_argument("--adapt", default="on,off")
    parser.add_argument("--rate", type=float, default=2.0, help="Mbit/s (default 2)")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        parser.error(f"unknown path {unknown[0]!r}: one of {', '.join(PATHS)}")
    if find_nginx() is None and any(PATHS[p] is not None for p in paths):
        parser.error("nginx is not installed (apt-get install nginx-light)")
    jpegs = webcam_jpegs(1280, 720, 89)
    print(f"source: 1280x720, {sum(map(len, jpegs)) // len(jpegs) // 1000} KB JPEGs at 30 fps; "
          f"{args.rate:g} Mbit/s; warm-up {args.warmup:g} s, window {args.window:g} s")
    results = []
    for path in paths:
        for adapt in args.adapt.split(","):
            r = run_one(path, adapt, jpegs, args)
            results.append(r)
            down = "-" if r["first_step_down_s"] is None else f"{r['first_step_down_s']} s"
            print(f"{path:16} adapt={adapt:3} fps {r['fps']:5.2f}  p50 {r['p50_ms']} ms  "
                  f"p95 {r['p95_ms']} ms  widths {r['widths']}  first step down {down}  "
                  f"rungs {r['rungs']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rate_mbit": args.rate, "warmup_s": args.warmup,
                       "window_s": args.window, "results": results}, f, indent=1)
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
