"""Variant flood: one legitimate viewer's fps while N attackers each ask for their own variant.

Each attacker connects with a different ``width`` and ``quality`` in its URL, so an unbounded
server makes one JPEG encode per frame per attacker. The server is ``stamped_server.py`` (640x480
stamped frames, 30 fps, its own process); the viewers are raw-socket clients in one selectors
loop (``loadgen.py``), all reading every frame they get. Prints the legitimate viewer's fps, the
attackers' mean fps, the server's encodes per second and CPU, and the machine's other load.

``--root DIR`` runs the server from another checkout (``DIR/benchmarks/stamped_server.py`` with
``PYTHONPATH=DIR``), to measure the code before a change the same way::

    flock /tmp/camstream-heavy.lock python benchmarks/variant_flood.py --attackers 60
    flock /tmp/camstream-heavy.lock python benchmarks/variant_flood.py --root /work/main
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from loadgen import Loop, Viewer  # noqa: E402
from stamp import cpu_seconds, system_cpu  # noqa: E402


def attacker_query(index: int) -> str:
    """A distinct width (160-632 px) and quality (30-89) per attacker."""
    return f"?width={160 + 8 * (index % 60)}&quality={30 + index % 60}&fps=30"


def stats(server: subprocess.Popen) -> dict:
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write("stats\n")
    server.stdin.flush()
    while True:
        line = server.stdout.readline()
        if not line:
            raise RuntimeError("the server exited")
        if line.startswith("STATS "):
            return json.loads(line[6:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attackers", type=int, default=60)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--root", default=os.path.dirname(HERE), help="checkout to serve from")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    root = os.path.abspath(args.root)
    server = subprocess.Popen(
        [sys.executable, os.path.join(root, "benchmarks", "stamped_server.py"),
         "--width", str(args.width), "--height", str(args.height), "--fps", "30"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        env={**os.environ, "PYTHONPATH": root}, cwd=root,
    )
    loop = Loop()
    try:
        assert server.stdout is not None
        ready = server.stdout.readline().split()
        assert ready and ready[0] == "READY", ready
        url, pid = ready[1], int(ready[2])
        legit = Viewer(0, url, fps=30)
        legit.connect()
        loop.add(legit)
        attackers = []
        for i in range(args.attackers):
            viewer = Viewer(i + 1, url + attacker_query(i), fps=30)
            viewer.connect()
            loop.add(viewer)
            attackers.append(viewer)
        loop.run_until(time.time() + args.warmup)
        for viewer in loop.viewers:
            viewer.reset_window()
            viewer.counting = True
        stats0 = stats(server)
        t0, cpu0, sys0, own0 = time.time(), cpu_seconds(pid), system_cpu(), time.process_time()
        loop.run_until(t0 + args.duration)
        t1, cpu1, sys1, own1 = time.time(), cpu_seconds(pid), system_cpu(), time.process_time()
        stats1 = stats(server)
    finally:
        loop.close()
        if server.poll() is None:
            server.stdin.close()  # type: ignore[union-attr]
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    span = t1 - t0
    server_cpu = (cpu1 - cpu0) / span * 100
    busy = (sys1[0] - sys0[0]) / span * 100
    loadgen_cpu = (own1 - own0) / span * 100
    figures = {
        "root": root,
        "attackers": args.attackers,
        "size": f"{args.width}x{args.height}",
        "legit_fps": round(legit.frames / span, 2),
        "attacker_fps_mean": round(
            sum(a.frames for a in attackers) / max(len(attackers), 1) / span, 2
        ),
        "attackers_closed_by_server": sum(1 for a in attackers if a.close_code is not None),
        "encodes_per_s": round(
            (stats1["frames_encoded"] - stats0["frames_encoded"]) / (stats1["t"] - stats0["t"]), 1
        ),
        "encodes_refused": stats1.get("encodes_refused"),
        "live_variants": stats1.get("live_variants"),
        "server_cpu_pct": round(server_cpu, 1),
        "loadgen_cpu_pct": round(loadgen_cpu, 1),
        "other_pct": round(max(busy - server_cpu - loadgen_cpu, 0.0), 1),
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
