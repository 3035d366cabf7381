"""Load generator: N WebSocket viewers in one process, cheap enough for N=100 at 30 fps.

One thread, one ``selectors`` loop over N raw non-blocking sockets: each viewer does its own
HTTP upgrade, then the loop reads whatever arrived with ``recv_into`` into that viewer's buffer
and walks the frame headers; payloads are never copied or decoded, except a sample of frames
(spread evenly over the viewers and the window) that are kept as bytes with their receive time
and decoded *after* the measurement window, so decoding never competes with receiving. Pings are
answered (so the server's keepalive never drops a viewer), Close frames recorded.

Latency = receive time of a frame's last byte - the capture time stamped into its pixels (see
``stamp.py``); both are ``time.time()`` on the same machine.

Protocol with the driver (stdout, one line each, flushed): ``CONNECTED <n>``, ``WINDOW_START
<t>``, ``WINDOW_END <t>``, then ``RESULT <path>`` once the JSON result is written. The driver
reads server CPU and stats at the two window lines.

The :class:`Viewer` and :class:`Loop` classes are reused by ``soak.py``.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import resource
import selectors
import socket
import statistics
import struct
import sys
import time
from typing import Any, Callable
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
_INITIAL_BUFFER = 1 << 20


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked, final client frame (RFC 6455 5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    if n:
        key = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    else:
        masked = b""
    return head + mask + masked


class Viewer:
    """One raw-socket WebSocket viewer; :meth:`on_readable` is called by the loop."""

    __slots__ = (
        "index", "url", "fps", "sock", "buf", "mv", "start", "end", "frames", "bytes",
        "frames_total", "texts", "metadata", "samples", "sample_every", "sample_phase",
        "counting", "sampling", "close_code", "closed", "last_frame_t", "max_gap",
        "connected_at", "on_text", "gaps_over", "events",
    )

    def __init__(self, index: int, url: str, fps: float | None = None) -> None:
        self.index = index
        self.url = url
        self.fps = fps
        self.sock: socket.socket | None = None
        self.buf = bytearray(_INITIAL_BUFFER)
        self.mv = memoryview(self.buf)
        self.start = self.end = 0
        self.frames = self.bytes = self.frames_total = 0
        self.texts: dict[str, int] = {}
        self.events: list[tuple[float, str]] = []  # (time, type) of every non-metadata text
        self.metadata: dict[str, Any] | None = None
        self.samples: list[tuple[float, bytes]] = []
        self.sample_every = 0  # 0: no sampling
        self.sample_phase = index
        self.counting = self.sampling = False
        self.close_code: int | None = None
        self.closed = False
        self.last_frame_t: float | None = None
        self.max_gap = 0.0
        self.gaps_over = 0  # gaps longer than 3 periods while counting
        self.connected_at = 0.0
        self.on_text: Callable[[Viewer, dict[str, Any]], None] | None = None

    # Connecting

    def connect(self, timeout: float = 10.0, linger0: bool = False) -> None:
        """TCP connect and HTTP upgrade (blocking), then switch to non-blocking."""
        self.begin_connect(timeout, linger0)
        self.finish_connect(time.monotonic() + timeout)

    def begin_connect(self, timeout: float = 10.0, linger0: bool = False) -> None:
        """TCP connect and send the upgrade request; :meth:`finish_connect` reads the answer.

        Split in two so that many viewers can have their handshakes in flight at once (a busy
        server answers them in parallel).
        """
        parts = urlsplit(self.url)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        if linger0:  # close() then sends a RST instead of a FIN
            linger = struct.pack("ii", 1, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (f"GET {path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
             f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
             f"Sec-WebSocket-Version: 13\r\n\r\n").encode()
        )
        self.sock = sock

    def finish_connect(self, deadline: float) -> None:
        """Read the 101 answer (blocking until ``deadline``, monotonic), go non-blocking."""
        sock = self.sock
        assert sock is not None
        data = b""
        while b"\r\n\r\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                sock.close()
                raise TimeoutError("handshake timed out")
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                sock.close()
                raise ConnectionError(f"EOF during handshake: {data!r}")
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            sock.close()
            raise ConnectionError(f"handshake refused: {head[:80]!r}")
        self.buf[: len(rest)] = rest
        self.start, self.end = 0, len(rest)
        sock.setblocking(False)
        self.closed = False
        self.connected_at = time.time()

    def send_text(self, text: str) -> None:
        """Send a (small) text message; it is dropped if the socket buffer is full."""
        if self.sock is not None and not self.closed:
            try:
                self.sock.send(client_frame(OP_TEXT, text.encode()))
            except (BlockingIOError, OSError):
                pass

    def close(self, code: int | None = 1000) -> None:
        """Send a Close (if ``code``) and close the socket without waiting for the answer."""
        if self.sock is None:
            return
        if code is not None and not self.closed:
            try:
                self.sock.send(client_frame(OP_CLOSE, code.to_bytes(2, "big")))
            except OSError:
                pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True

    # Reading

    def on_readable(self) -> bool:
        """Read what is there and handle complete frames; False once the connection ended."""
        if self.end == len(self.buf):
            self._make_room(0)
        try:
            n = self.sock.recv_into(self.mv[self.end:])  # type: ignore[union-attr]
        except BlockingIOError:
            return True
        except OSError:
            self.closed = True
            return False
        if n == 0:
            self.closed = True
            return False
        self.end += n
        return self.parse(time.time())

    def parse(self, now: float) -> bool:
        """Handle the complete frames in the buffer; False once the connection ended."""
        buf = self.buf
        while True:
            start = self.start
            avail = self.end - start
            if avail < 2:
                break
            b1, b2 = buf[start], buf[start + 1]
            length = b2 & 0x7F
            head = 2
            if length == 126:
                if avail < 4:
                    break
                length = (buf[start + 2] << 8) | buf[start + 3]
                head = 4
            elif length == 127:
                if avail < 10:
                    break
                length = int.from_bytes(buf[start + 2:start + 10], "big")
                head = 10
            if avail < head + length:
                self._make_room(head + length)
                break
            p0 = start + head
            p1 = p0 + length
            opcode = b1 & 0x0F
            if opcode == OP_BINARY:
                self._on_frame(now, p0, p1)
            elif opcode == OP_TEXT:
                self._on_text(now, bytes(self.mv[p0:p1]))
            elif opcode == OP_PING:
                try:
                    pong = client_frame(OP_PONG, bytes(self.mv[p0:p1]))
                    self.sock.send(pong)  # type: ignore[union-attr]
                except OSError:
                    pass
            elif opcode == OP_CLOSE:
                self.close_code = int.from_bytes(buf[p0:p0 + 2], "big") if length >= 2 else 1005
                self.start = p1
                self.close(code=None)
                return False
            self.start = p1
        if self.start == self.end:
            self.start = self.end = 0
        return True

    def _make_room(self, need: int) -> None:
        """Make sure a frame of ``need`` bytes starting at ``start`` fits in the buffer."""
        pending = self.end - self.start
        if need > len(self.buf) or pending == len(self.buf):
            size = max(need, 2 * len(self.buf))
            new = bytearray(size)
            new[:pending] = self.mv[self.start:self.end]
            self.buf, self.mv = new, memoryview(new)
            self.start, self.end = 0, pending
        elif self.start + need > len(self.buf) or self.end == len(self.buf):
            self.mv[:pending] = self.mv[self.start:self.end]
            self.start, self.end = 0, pending

    def _on_frame(self, now: float, p0: int, p1: int) -> None:
        self.frames_total += 1
        if self.counting:
            self.frames += 1
            self.bytes += p1 - p0
            if self.last_frame_t is not None:
                gap = now - self.last_frame_t
                if gap > self.max_gap:
                    self.max_gap = gap
                if self.fps and gap > 3.0 / self.fps:
                    self.gaps_over += 1
            if self.sampling and (self.frames + self.sample_phase) % self.sample_every == 0:
                self.samples.append((now, bytes(self.mv[p0:p1])))
        self.last_frame_t = now

    def _on_text(self, now: float, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            message = {"type": "?"}
        kind = str(message.get("type"))
        self.texts[kind] = self.texts.get(kind, 0) + 1
        if kind == "metadata":
            self.metadata = message
        else:
            self.events.append((now, kind))
        if self.on_text is not None:
            self.on_text(self, message)

    def reset_window(self) -> None:
        self.frames = self.bytes = 0
        self.max_gap = 0.0
        self.gaps_over = 0
        self.samples = []


class Loop:
    """A selectors loop over viewers; :meth:`run_until` serves them until a deadline."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.viewers: set[Viewer] = set()

    def add(self, viewer: Viewer) -> None:
        self.selector.register(viewer.sock, selectors.EVENT_READ, viewer)  # type: ignore[arg-type]
        self.viewers.add(viewer)
        if viewer.end > viewer.start:  # data came with the handshake answer
            viewer.parse(time.time())

    def remove(self, viewer: Viewer) -> None:
        if viewer in self.viewers:
            self.viewers.discard(viewer)
            try:
                self.selector.unregister(viewer.sock)  # type: ignore[arg-type]
            except (KeyError, ValueError):
                pass

    def run_until(self, deadline: float, on_close: Callable[[Viewer], None] | None = None) -> None:
        """Serve readable viewers until ``time.time() >= deadline``."""
        select = self.selector.select
        while True:
            remaining = deadline - time.time()
            if remaining <= 0:
                return
            for key, _ in select(min(remaining, 0.05)):
                viewer: Viewer = key.data
                if not viewer.on_readable():
                    self.remove(viewer)
                    if on_close is not None:
                        on_close(viewer)

    def close(self) -> None:
        for viewer in list(self.viewers):
            self.remove(viewer)
            viewer.close()
        self.selector.close()


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from stamp import decode_stamp

    rates = [float(x) for x in args.fps.split(",")] if args.fps else [None]
    viewers = []
    for i in range(args.clients):
        fps = rates[i % len(rates)]
        query = [f"fps={fps:g}"] if fps is not None else []
        query += [f"max_bytes={args.max_bytes}"] if args.max_bytes is not None else []
        query += [args.query] if args.query else []
        url = args.url + ("?" + "&".join(query) if query else "")
        viewers.append(Viewer(i, url, fps or args.camera_fps))
    if args.extra:  # one more viewer with its own settings (a smaller size, say)
        extra = args.extra + (f"&max_bytes={args.max_bytes}" if args.max_bytes is not None else "")
        viewers.append(Viewer(len(viewers), f"{args.url}?{extra}", args.camera_fps))
    loop = Loop()
    for viewer in viewers:
        viewer.begin_connect(args.connect_timeout)
    deadline = time.monotonic() + args.connect_timeout
    for viewer in viewers:
        viewer.finish_connect(deadline)
        loop.add(viewer)
    print(f"CONNECTED {len(viewers)}", flush=True)

    t_start = time.time()
    loop.run_until(t_start + args.warmup)
    # Sampling: about --samples-per-s frames a second in all, and at most --sample-mb kept.
    expected = sum(min(v.fps or args.camera_fps, args.camera_fps) for v in viewers)
    warm_frames = sum(v.frames_total for v in viewers)
    for v in viewers:
        v.reset_window()
        v.counting = True
    every = max(1, math.ceil(expected / args.samples_per_s))
    if args.size_hint:
        every = max(every, math.ceil(args.size_hint * expected * args.duration
                                     / (args.sample_mb * 1e6)))
    for v in viewers:
        v.sample_every = every
        v.sampling = True
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.time()
    print(f"WINDOW_START {t0:.6f}", flush=True)
    loop.run_until(t0 + args.duration)
    t1 = time.time()
    for v in viewers:
        v.counting = v.sampling = False
    print(f"WINDOW_END {t1:.6f}", flush=True)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    window = t1 - t0
    loadgen_cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / window * 100
    loop.close()

    # Decode the sampled stamps now that nothing is measured any more.
    latencies: list[float] = []
    per_client = []
    decode_errors = 0
    for v in viewers:
        lat = []
        for t_recv, jpeg in v.samples:
            captured = decode_stamp(jpeg, args.reduce)
            if captured is None or abs(t_recv - captured) > 60:
                decode_errors += 1
                continue
            lat.append((t_recv - captured) * 1000)
        v.samples = []
        latencies += lat
        per_client.append({
            "index": v.index,
            "query": urlsplit(v.url).query,
            "fps_requested": v.fps,
            "frames": v.frames,
            "fps": v.frames / window,
            "bytes": v.bytes,
            "max_gap_ms": round(v.max_gap * 1000, 1),
            "gaps_over_3_periods": v.gaps_over,
            "latency_p50_ms": percentile(lat, 50),
            "latency_samples": len(lat),
            "close_code": v.close_code,
            "texts": v.texts,
        })
    return {
        "clients": len(viewers),
        "window_s": window,
        "warmup_frames": warm_frames,
        "sample_every": every,
        "loadgen_cpu_pct": loadgen_cpu,
        "latency_ms": {
            "samples": len(latencies),
            "decode_errors": decode_errors,
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "p99": percentile(latencies, 99),
            "max": max(latencies) if latencies else None,
            "mean": statistics.fmean(latencies) if latencies else None,
        },
        "per_client": per_client,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--fps", default="",
                        help="comma-separated ?fps= values assigned round-robin (default: none)")
    parser.add_argument("--camera-fps", type=float, default=30.0)
    parser.add_argument("--query", default="", help="more query parameters for every viewer")
    parser.add_argument("--max-bytes", type=int, default=0,
                        help="?max_bytes= of every viewer (default 0: full frames, as the bundled "
                        "clients ask; -1: none sent, the server's default applies)")
    parser.add_argument("--extra", default="",
                        help="query of one more viewer (e.g. width=320); default: none")
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--samples-per-s", type=float, default=200.0)
    parser.add_argument("--sample-mb", type=float, default=300.0)
    parser.add_argument("--size-hint", type=float, default=0.0,
                        help="expected JPEG size in bytes (caps the memory kept for samples)")
    parser.add_argument("--reduce", type=int, default=4, choices=(2, 4, 8))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.max_bytes < 0:
        args.max_bytes = None
    result = run(args)
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(f"RESULT {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
