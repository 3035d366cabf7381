"""Snapshot bursts: one viewer's fps while bursts of /snapshot.jpg requests ask for encodes.

Issue 22 item 14: bursts of concurrent ``/snapshot.jpg`` requests, each at its own width
(32, 34, ... px) and ``quality=100`` (``--max-bytes 4096`` adds a quality/size search to each),
made every request its own encode. The server is ``stamped_server.py`` (640x480 stamped frames,
30 fps, its own process); the legitimate viewer is a raw-socket WebSocket viewer
(``loadgen.py``) in this process's main thread; the bursts come from a second thread, every
request of a burst in flight at once (one ``selectors`` loop, raw sockets). Prints the viewer's
fps over the bursts and its worst 1-s window, the answers (200 / 503 / other), the server's
encodes a second and CPU, and the machine's other load::

    flock /tmp/camstream-bench.lock python benchmarks/snapshot_load.py
    flock /tmp/camstream-bench.lock python benchmarks/snapshot_load.py --max-bytes 4096
    flock /tmp/camstream-bench.lock python benchmarks/snapshot_load.py --root /work/main

``burst PORT`` runs one set of bursts against a server that is already running and prints
the answers as JSON (``tests/test_snapshot_load.py`` uses it).
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from loadgen import Loop, Viewer  # noqa: E402
from stamp import cpu_seconds, system_cpu  # noqa: E402
from variant_flood import stats  # noqa: E402


def snapshot_target(index: int, quality: int, max_bytes: int) -> str:
    """Request ``index``'s target: its own width (32, 34, ...)."""
    target = f"/snapshot.jpg?width={32 + 2 * index}&quality={quality}"
    return target + (f"&max_bytes={max_bytes}" if max_bytes else "")


class _Request:
    __slots__ = ("sock", "request", "sent", "data")

    def __init__(self, sock: socket.socket, request: bytes) -> None:
        self.sock, self.request, self.sent, self.data = sock, request, 0, bytearray()


def burst(port: int, targets: list[str], timeout: float) -> list[dict[str, Any]]:
    """Send every GET of ``targets`` at once (one socket each); return each answer's
    ``status``, ``retry_after`` and the first line of its ``body`` (status 0: no answer)."""
    selector = selectors.DefaultSelector()
    pending: dict[socket.socket, _Request] = {}
    answers: list[dict[str, Any]] = []
    for target in targets:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            answers.append({"status": 0, "error": os.strerror(code)})
            continue
        request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        pending[sock] = _Request(sock, request)
        selector.register(sock, selectors.EVENT_WRITE, pending[sock])
    deadline = time.monotonic() + timeout
    try:
        while pending and time.monotonic() < deadline:
            for key, events in selector.select(0.05):
                item: _Request = key.data
                try:
                    if events & selectors.EVENT_WRITE:
                        item.sent += item.sock.send(item.request[item.sent:])
                        if item.sent == len(item.request):
                            selector.modify(item.sock, selectors.EVENT_READ, item)
                        continue
                    chunk = item.sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    chunk, item.data = b"", bytearray(f"ERROR {exc}".encode())
                if chunk:
                    item.data += chunk
                    continue
                selector.unregister(item.sock)
                item.sock.close()
                del pending[item.sock]
                answers.append(_parse(bytes(item.data)))
    finally:
        for sock in pending:
            selector.unregister(sock)
            sock.close()
            answers.append({"status": 0, "error": "no answer in time"})
        selector.close()
    return answers


def _parse(data: bytes) -> dict[str, Any]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return {"status": 0, "error": lines[0][:80]}
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return {
        "status": status,
        "retry_after": headers.get("retry-after"),
        "body": body[:80].decode("latin-1").split("\n", 1)[0] if status != 200 else "",
        "bytes": len(body),
    }


def run_bursts(port: int, args: argparse.Namespace) -> dict[str, Any]:
    """``args.bursts`` bursts of ``args.requests`` requests, ``args.gap`` s apart."""
    targets = [snapshot_target(i, args.quality, args.max_bytes) for i in range(args.requests)]
    answers: list[dict[str, Any]] = []
    durations = []
    for i in range(args.bursts):
        if i:
            time.sleep(args.gap)  # the bursts' own rhythm, not a wait for some state
        start = time.monotonic()
        answers += burst(port, targets, args.timeout)
        durations.append(round(time.monotonic() - start, 3))
    statuses = collections.Counter(a["status"] for a in answers)
    reasons = collections.Counter(a.get("body") or a.get("error") or "" for a in answers
                                  if a["status"] != 200)
    return {
        "answers": len(answers),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "reasons": dict(reasons.most_common(5)),
        "all_503_have_retry_after": all(a["retry_after"] for a in answers if a["status"] == 503),
        "burst_s": durations,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    root = os.path.abspath(args.root)
    server = subprocess.Popen(
        [sys.executable, os.path.join(root, "benchmarks", "stamped_server.py"),
         "--width", str(args.width), "--height", str(args.height), "--fps", "30"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        env={**os.environ, "PYTHONPATH": root}, cwd=root,
    )
    loop = Loop()
    result: dict[str, Any] = {}
    try:
        assert server.stdout is not None
        ready = server.stdout.readline().split()
        assert ready and ready[0] == "READY", ready
        url, pid = ready[1], int(ready[2])
        port = int(url.rsplit(":", 1)[1].strip("/"))
        legit = Viewer(0, url, fps=30)
        legit.connect()
        loop.add(legit)
        loop.run_until(time.time() + args.warmup)
        legit.reset_window()
        legit.counting = True
        stats0 = stats(server)
        t0, cpu0, sys0, own0 = time.time(), cpu_seconds(pid), system_cpu(), time.process_time()
        bursts = threading.Thread(
            target=lambda: result.update(run_bursts(port, args)), name="bursts"
        )
        bursts.start()
        windows = []  # frames per 1-s window while the bursts run
        while bursts.is_alive() or not windows:
            before, start = legit.frames, time.time()
            loop.run_until(start + 1.0)
            windows.append(legit.frames - before)
        bursts.join()
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
    return {
        "root": root,
        "requests_per_burst": args.requests,
        "bursts": args.bursts,
        "quality": args.quality,
        "max_bytes": args.max_bytes,
        "viewer_fps": round(legit.frames / span, 2),
        "viewer_fps_min_1s": min(windows),
        "viewer_max_gap_ms": round(legit.max_gap * 1000, 1),
        "viewer_gaps_over_100ms": legit.gaps_over,
        "viewer_closed": legit.close_code,
        **result,
        "encodes_per_s": round(
            (stats1["frames_encoded"] - stats0["frames_encoded"]) / (stats1["t"] - stats0["t"]), 1
        ),
        "encodes_refused": stats1.get("encodes_refused", 0) - stats0.get("encodes_refused", 0),
        "server_cpu_pct": round(server_cpu, 1),
        "loadgen_cpu_pct": round(loadgen_cpu, 1),
        "other_pct": round(max(busy - server_cpu - loadgen_cpu, 0.0), 1),
        "seconds": round(span, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=["measure", "burst"], default="measure")
    parser.add_argument("port", nargs="?", type=int, help="burst: the server's port")
    parser.add_argument("--requests", type=int, default=300, help="requests per burst")
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between bursts")
    parser.add_argument("--quality", type=int, default=100)
    parser.add_argument("--max-bytes", type=int, default=0, help="0: no byte limit")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a burst may take")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--root", default=os.path.dirname(HERE), help="checkout to serve from")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.mode == "burst":
        if args.port is None:
            parser.error("burst needs the server's PORT")
        figures = run_bursts(args.port, args)
    else:
        figures = measure(args)
    print(json.dumps(figures, indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
