"""What frame data costs on the fan-out: CPU per viewer-frame with and without ~1 KB of data.

Issue 20. The same points as ``bench.py`` (a ``stamped_server.py`` camstream fed stamped
640x480 frames at 30 fps, ``loadgen.py`` raw-socket viewers), in two settings: no data, and
every frame published with about ``--data-bytes`` of application data (boxes as JSON) to
viewers that all asked for it (``?data=1``), so each viewer-frame is one text message more in
the same non-blocking write. For each: N = 1 and N = ``--clients``, and

    CPU per viewer-frame = (cpu(N) - cpu(1)) / ((N - 1) x fps mean)    in us

(cpu in % of one core; the per-frame cost, such as encoding the data once at publish time,
cancels out); and the same from the fan-out thread's own CPU time alone (its thread clock:
what the fast path spends per viewer-frame, less noisy on a shared machine). The
settings alternate point by point, ``--repeat`` times, so drift on a shared machine hits both
alike; the tables give each run and the median.

    python benchmarks/app_data.py                    # N = 1 and 50, 10 s windows, 3 rounds
    flock /tmp/camstream-bench.lock python benchmarks/app_data.py --repeat 5

Writes ``benchmarks/results/<date>-app-data.json``. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench import CAMSTREAM, Point, machine_info, run_point  # noqa: E402
from stamped_server import boxes_of_size  # noqa: E402

SIZE = "640x480"


def run(data_bytes: int, clients: int, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    """One point: ``clients`` viewers, frames with ``data_bytes`` of data (0: none)."""
    os.environ["CAMSTREAM_BENCH_DATA_BYTES"] = str(data_bytes)  # read by stamped_server.py
    try:
        point = Point(CAMSTREAM, SIZE, clients, query="data=1" if data_bytes else "")
        return run_point(point, args, workdir)
    finally:
        os.environ.pop("CAMSTREAM_BENCH_DATA_BYTES", None)


def per_viewer_frame_us(
    one: dict[str, Any], many: dict[str, Any], key: str = "server_cpu_pct"
) -> float | None:
    if one.get(key) is None or many.get(key) is None:
        return None
    extra_pct = many[key] - one[key]
    return extra_pct * 1e4 / ((many["clients"] - 1) * many["fps_mean"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--data-bytes", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--out")
    args = parser.parse_args()
    workdir = os.path.join(tempfile.gettempdir(), "camstream-bench")
    os.makedirs(workdir, exist_ok=True)
    info = machine_info()
    size = len(json.dumps(boxes_of_size(args.data_bytes), separators=(",", ":")))
    print(f"app data benchmark, {info['date']}: {info['cpu_model']}, {info['cores']} cores, "
          f"camstream {info['camstream']} ({info['git_commit']}); {SIZE} at 30 fps, data "
          f"{size} bytes a frame, N = 1 and {args.clients}, {args.duration:g} s windows, "
          f"{args.repeat} rounds", flush=True)
    started = time.monotonic()
    rounds: list[dict[str, Any]] = []
    for i in range(args.repeat):
        result: dict[str, Any] = {}
        for data in (0, args.data_bytes):
            one = run(data, 1, args, workdir)
            many = run(data, args.clients, args, workdir)
            us = per_viewer_frame_us(one, many)
            assert us is not None
            fanout_us = per_viewer_frame_us(one, many, "fanout_cpu_pct")
            key = "with_data" if data else "without"
            result[key] = {
                "us_per_viewer_frame": us, "cpu_pct_1": one["server_cpu_pct"],
                "fanout_us_per_viewer_frame": fanout_us,
                "cpu_pct_n": many["server_cpu_pct"], "fps_mean": many["fps_mean"],
                "fps_min": many["fps_min"], "p95_ms": many["latency_ms"]["p95"],
                "other_cpu_pct": many["other_cpu_pct"],
                "loadgen_cpu_pct": many["loadgen_cpu_pct"],
            }
            print(f"[round {i + 1}] {key}: {us:.1f} us/viewer-frame, fan-out thread "
                  f"{fanout_us if fanout_us is not None else float('nan'):.1f} (CPU "
                  f"{one['server_cpu_pct']:.1f} % at N=1, {many['server_cpu_pct']:.1f} % at "
                  f"N={args.clients}; fps mean "
                  f"{many['fps_mean']:.2f}, min {many['fps_min']:.2f}; other "
                  f"{many['other_cpu_pct']:.1f} %)", flush=True)
        rounds.append(result)
    medians: dict[str, dict[str, float]] = {}
    for figure, title in (("us_per_viewer_frame", "process CPU per viewer-frame"),
                          ("fanout_us_per_viewer_frame", "fan-out thread CPU per viewer-frame")):
        values = {key: [r[key][figure] for r in rounds if r[key][figure] is not None]
                  for key in ("without", "with_data")}
        if not all(values.values()):
            continue
        medians[figure] = {key: statistics.median(v) for key, v in values.items()}
        print(f"\n{title} (us), N = {args.clients}:\n")
        print(f"| round | without data | with {size} B of data | difference |")
        print("|---|---|---|---|")
        for i, r in enumerate(rounds, 1):
            a, b = r["without"][figure], r["with_data"][figure]
            if a is not None and b is not None:
                print(f"| {i} | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
        a, b = medians[figure]["without"], medians[figure]["with_data"]
        print(f"| median | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
    out = args.out or os.path.join(
        HERE, "results", f"{datetime.date.today().isoformat()}-app-data.json"
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"machine": info, "data_bytes": size, "clients": args.clients,
                   "duration_s": args.duration, "rounds": rounds, "median_us": medians,
                   "elapsed_s": round(time.monotonic() - started, 1)}, f, indent=1)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
