"""Control-message attacks (issue 22 item 10): a legitimate viewer's fps while clients flood.

The server is ``Streamer("test")`` with its defaults, in its own process; the attackers are one
more process (``tests/attackers.py messages``: a ``selectors`` loop over raw sockets, each bound
to a source address in 127.0.0.0/8 so they count as several clients); the legitimate viewer
(127.0.0.1) is read in this process by ``loadgen.py``'s loop. Every attacker first sends
``pause`` (no video for it: what is measured is the cost of its messages), then its messages at
``rate`` a second, reads and drops whatever comes back, and reconnects whenever the server
closes it. Scenarios:

* ``pings-64k``: 96 connections from 3 addresses, 19 pings a second each with a 64 KB ``t``
  (echoed back) - the attack of the issue;
* ``config-64k``: 32 connections sending 64 KB ``config`` messages with 5,000 unknown keys;
* ``pings-4k`` / ``config-4k``: the same just under the 4 KiB message cap;
* ``pings-fit``: pings small enough for each connection's byte budget (only the budget the
  connections of one address share holds them back);
* ``churn``: 96 connections from 3 addresses that connect and close again at once, for ever.

Prints, per scenario: the viewer's fps (and its longest gap), the server's CPU, the attackers'
messages sent and closes by code (``503``: refused at admission, ``1006``: no Close), the log
lines the server wrote. ``--root DIR`` serves from another checkout, to measure the code before
a change the same way::

    flock /tmp/camstream-bench.lock python benchmarks/attacks.py
    flock /tmp/camstream-bench.lock python benchmarks/attacks.py --root /work/main
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ATTACKERS = os.path.join(os.path.dirname(HERE), "tests", "attackers.py")  # the attack processes
sys.path.insert(0, HERE)

from loadgen import Loop, Viewer  # noqa: E402
from stamp import cpu_seconds, system_cpu  # noqa: E402


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "pings", "config" or "" (no attack)
    connections: int = 0
    addresses: int = 0
    rate: float = 0.0  # messages a second per connection
    size: int = 0  # bytes a message


SCENARIOS = [
    Scenario("none", ""),
    Scenario("pings-64k", "pings", 96, 3, 19, 64_000),
    Scenario("config-64k", "config", 32, 3, 19, 64_000),
    Scenario("pings-4k", "pings", 96, 3, 19, 4_000),
    Scenario("config-4k", "config", 32, 3, 19, 4_000),
    Scenario("pings-fit", "pings", 96, 3, 19, 700),
    Scenario("churn", "churn", 96, 3),
]


# -- The server (a child process) ---------------------------------------------------------------


def serve() -> int:
    """``Streamer("test")`` with every default; ``READY url pid``, ``stats`` -> ``STATS json``."""
    import logging

    from camstream import Streamer

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    streamer = Streamer("test", port=0).start()
    print(f"READY {streamer.url} {os.getpid()}", flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "stats":
                print("STATS " + json.dumps(streamer.stats()["connections"]), flush=True)
    finally:
        streamer.stop()
    return 0


# -- The driver -----------------------------------------------------------------------------------


def run(scenario: Scenario, root: str, seconds: float, warmup: float) -> dict:
    log = tempfile.TemporaryFile(mode="w+")
    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "serve"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1,
        env={**os.environ, "PYTHONPATH": root}, cwd=root,
    )
    attackers = None
    loop = Loop()
    try:
        assert server.stdout is not None and server.stdin is not None
        ready = server.stdout.readline().split()
        assert ready and ready[0] == "READY", ready
        url, pid = ready[1], int(ready[2])
        port = int(url.rsplit(":", 1)[1].strip("/"))
        viewer = Viewer(0, url, fps=30)
        viewer.connect()
        loop.add(viewer)
        loop.run_until(time.time() + 1.0)
        if scenario.kind:
            attackers = subprocess.Popen(
                [sys.executable, ATTACKERS, "messages", scenario.kind, str(port),
                 str(warmup + seconds), str(scenario.connections), str(scenario.addresses),
                 str(scenario.rate), str(scenario.size)],
                stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(ATTACKERS),
            )
            assert attackers.stdout is not None
            assert attackers.stdout.readline().strip() == "STARTED"
        loop.run_until(time.time() + warmup)
        viewer.counting = True
        viewer.reset_window()
        cpu0, sys0, t0 = cpu_seconds(pid), system_cpu()[0], time.time()
        loop.run_until(t0 + seconds)
        elapsed = time.time() - t0
        cpu, machine = cpu_seconds(pid) - cpu0, system_cpu()[0] - sys0
        result = {
            "scenario": scenario.name,
            "viewer_fps": viewer.frames / elapsed,
            "viewer_max_gap_s": viewer.max_gap,
            "viewer_closed": viewer.close_code,
            "server_cpu_pct": 100 * cpu / elapsed,
            "machine_cpu_pct": 100 * machine / elapsed,
        }
        if attackers is not None:
            out, _ = attackers.communicate(timeout=seconds + 30)
            result.update(json.loads(out.strip().splitlines()[-1]))
        server.stdin.write("stats\n")
        server.stdin.flush()
        line = server.stdout.readline()
        result["admission"] = json.loads(line[6:]) if line.startswith("STATS ") else None
    finally:
        loop.close()
        if attackers is not None and attackers.poll() is None:
            attackers.kill()
            attackers.wait()
        if server.stdin is not None:
            server.stdin.close()
        server.wait(30)
        if server.stdout is not None:
            server.stdout.close()
    log.seek(0)
    result["log_lines"] = sum(1 for _ in log)
    log.close()
    return result


def main() -> int:
    if sys.argv[1:2] == ["serve"]:
        return serve()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--only", action="append", help="scenario name (repeatable)")
    parser.add_argument("--root", default=os.path.dirname(HERE), help="checkout to serve from")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    root = os.path.abspath(args.root)
    results = []
    print(f"server from {root}; {args.warmup:g} s warm-up, {args.duration:g} s measured")
    print(f"{'scenario':<12} {'viewer fps':>10} {'max gap s':>9} {'server CPU':>10} "
          f"{'machine':>8} {'sent/s':>7} {'log lines':>9}  closes by code")
    for scenario in SCENARIOS:
        if args.only and scenario.name not in args.only:
            continue
        r = run(scenario, root, args.duration, args.warmup)
        results.append(r)
        closes = " ".join(f"{k}:{v}" for k, v in sorted(r.get("closes", {}).items())) or "-"
        sent = r.get("sent", 0) / (args.duration + args.warmup)
        print(f"{r['scenario']:<12} {r['viewer_fps']:>10.1f} {r['viewer_max_gap_s']:>9.2f} "
              f"{r['server_cpu_pct']:>9.0f}% {r['machine_cpu_pct']:>7.0f}% {sent:>7.0f} "
              f"{r['log_lines']:>9}  {closes}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
