"""Control-message attacks (issue 22 item 10): a legitimate viewer's fps while clients flood.

The server is ``Streamer("test")`` with its defaults, in its own process; the attackers are one
more process (a ``selectors`` loop over raw sockets, each bound to a source address in
127.0.0.0/8 so they count as several clients); the legitimate viewer (127.0.0.1) is read in this
process by ``loadgen.py``'s loop. Every attacker first sends ``pause`` (no video for it: what is
measured is the cost of its messages), then its messages at ``rate`` a second, reads and drops
whatever comes back, and reconnects whenever the server closes it. Scenarios:

* ``pings-64k``: 96 connections from 3 addresses, 19 pings a second each with a 64 KB ``t``
  (echoed back) - the attack of the issue;
* ``config-64k``: 32 connections sending 64 KB ``config`` messages with 5,000 unknown keys;
* ``pings-4k`` / ``config-4k``: the same just under the 4 KiB message cap;
* ``pings-fit``: pings small enough for each connection's byte budget (only the budget the
  connections of one address share holds them back).

Prints, per scenario: the viewer's fps (and its longest gap), the server's CPU, the attackers'
messages sent and closes by code (``503``: refused at admission, ``1006``: no Close), the log
lines the server wrote. ``--root DIR`` serves from another checkout, to measure the code before
a change the same way::

    flock /tmp/camstream-bench.lock python benchmarks/attacks.py
    flock /tmp/camstream-bench.lock python benchmarks/attacks.py --root /work/main
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from loadgen import OP_CLOSE, OP_TEXT, Loop, Viewer, client_frame  # noqa: E402
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


def message(kind: str, size: int) -> bytes:
    """A ``ping`` with a long ``t``, or a ``config`` of unknown keys, ``size`` bytes long."""
    if kind == "churn":
        return b""
    if kind == "pings":
        head = '{"type": "ping", "t": "'
        return (head + "x" * max(size - len(head) - 2, 0) + '"}').encode()
    keys, text = 0, '{"type": "config"'
    while len(text) + 12 < size:  # 5,000 keys in 64 KB
        text += f', "k{keys}": 0'
        keys += 1
    return (text + "}").encode()


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


# -- The attackers (a child process) -------------------------------------------------------------


class Attacker:
    """One raw-socket connection that sends ``frame`` every ``period`` seconds."""

    def __init__(self, port: int, source: str, frame: bytes, period: float) -> None:
        self.port, self.source, self.frame, self.period = port, source, frame, period
        self.sock: socket.socket | None = None
        self.out = b""
        self.inbuf = bytearray()
        self.due = 0.0

    def connect(self) -> str | None:
        """Connect and upgrade (blocking, short); None, or why it failed (``503``, ...)."""
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2.0,
                                            source_address=(self.source, 0))
        except OSError:
            return "connect"
        key = base64.b64encode(os.urandom(16)).decode()
        try:
            sock.sendall(
                (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError
                data += chunk
        except OSError:
            sock.close()
            return "1006"
        head, _, rest = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            sock.close()
            return head.split(b" ", 2)[1].decode() if b" " in head else "refused"
        sock.setblocking(False)
        self.sock, self.inbuf = sock, bytearray(rest)
        self.out = client_frame(OP_TEXT, b'{"type": "pause"}')
        self.due = time.monotonic()
        return None

    def pump(self, now: float) -> int:
        """Queue the next message if due and nothing is pending; write what the socket takes.
        Returns the messages queued."""
        queued = 0
        if not self.out and now >= self.due:
            self.out, queued = self.frame, 1
            self.due = max(self.due + self.period, now - self.period)
        if self.out and self.sock is not None:
            try:
                n = self.sock.send(self.out)
                self.out = self.out[n:]
            except BlockingIOError:
                pass
            except OSError:
                pass
        return queued

    def read(self) -> int | None:
        """Read what arrived; the server's close code once it closed (1006 without a Close)."""
        assert self.sock is not None
        try:
            chunk = self.sock.recv(1 << 20)
        except BlockingIOError:
            return None
        except OSError:
            return 1006
        if not chunk:
            return 1006
        self.inbuf += chunk
        buf = self.inbuf
        while len(buf) >= 2:
            length, head = buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, head = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, head = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < head + length:
                break
            if buf[0] & 0x0F == OP_CLOSE:
                return int.from_bytes(buf[head:head + 2], "big") if length >= 2 else 1005
            del buf[:head + length]
        return None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def attack(argv: list[str]) -> int:
    """``attack KIND PORT SECONDS CONNECTIONS ADDRESSES RATE SIZE``: prints one JSON line."""
    kind, port, seconds = argv[0], int(argv[1]), float(argv[2])
    connections, addresses, rate, size = int(argv[3]), int(argv[4]), float(argv[5]), int(argv[6])
    frame = client_frame(OP_TEXT, message(kind, size))
    attackers = [Attacker(port, f"127.0.0.{2 + i % addresses}", frame, 1.0 / (rate or 1))
                 for i in range(connections)]
    closes: dict[str, int] = {}
    sent = 0
    selector = selectors.DefaultSelector()
    deadline = time.monotonic() + seconds
    retry_at = {id(a): 0.0 for a in attackers}
    print("STARTED", flush=True)
    try:
        while (now := time.monotonic()) < deadline:
            for a in attackers:
                if a.sock is None and now >= retry_at[id(a)]:
                    failure = a.connect()
                    if failure is not None:
                        closes[failure] = closes.get(failure, 0) + 1
                        retry_at[id(a)] = now + 0.1
                    else:
                        selector.register(a.sock, selectors.EVENT_READ, a)  # type: ignore[arg-type]
                if a.sock is not None and kind == "churn":  # connect, close, again
                    selector.unregister(a.sock)
                    a.close()
                    closes["client"] = closes.get("client", 0) + 1
                elif a.sock is not None:
                    sent += a.pump(now)
            for key, _ in selector.select(0.005):
                a = key.data
                code = a.read()
                if code is not None:
                    closes[str(code)] = closes.get(str(code), 0) + 1
                    selector.unregister(a.sock)
                    a.close()
                    retry_at[id(a)] = time.monotonic() + 0.05
    finally:
        for a in attackers:
            a.close()
        selector.close()
    print(json.dumps({"sent": sent, "closes": closes}), flush=True)
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
                [sys.executable, os.path.abspath(__file__), "attack", scenario.kind, str(port),
                 str(warmup + seconds), str(scenario.connections), str(scenario.addresses),
                 str(scenario.rate), str(scenario.size)],
                stdout=subprocess.PIPE, text=True, cwd=HERE,
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
    if sys.argv[1:2] == ["attack"]:
        return attack(sys.argv[2:])
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
