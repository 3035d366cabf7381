"""Helpers shared by the tests: JPEG checks, WebSocket and HTTP clients, viewer threads.

Everything here talks to real servers over real sockets on 127.0.0.1, and every wait is bounded
by ``conftest.TIMEOUT``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pytest
from conftest import TIMEOUT
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from camstream import Streamer


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU seconds (user and system) a process, or one of its threads, used so far (Linux
    /proc; clock ticks)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def decode_jpeg(data: bytes) -> np.ndarray:
    assert isinstance(data, bytes), f"expected a binary message, got {data!r:.80}"
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9", "not a whole JPEG file"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "JPEG does not decode"
    return image


def receive_for(ws: Any, seconds: float) -> tuple[list[dict], list[bytes]]:
    """Collect messages from a websockets client for ``seconds``."""
    texts: list[dict] = []
    frames: list[bytes] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = ws.recv(timeout=left)
        except TimeoutError:
            break
        if isinstance(message, bytes):
            frames.append(message)
        else:
            texts.append(json.loads(message))
    return texts, frames


def next_text(ws: Any, kind: str | None = None, timeout: float = TIMEOUT) -> dict:
    """The next JSON message (of type ``kind``), skipping binary frames and other types."""
    deadline = time.monotonic() + timeout
    while True:
        message = ws.recv(timeout=max(deadline - time.monotonic(), 0.001))
        if isinstance(message, str):
            parsed = json.loads(message)
            if kind is None or parsed.get("type") == kind:
                return parsed


def next_binary(ws: Any, timeout: float = TIMEOUT) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        message = ws.recv(timeout=max(deadline - time.monotonic(), 0.001))
        if isinstance(message, bytes):
            return message


def next_binaries(ws: Any, count: int, timeout: float = TIMEOUT) -> list[bytes]:
    """The next ``count`` binary messages (text skipped), all within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    return [next_binary(ws, max(deadline - time.monotonic(), 0.001)) for _ in range(count)]


def close_code_of(ws: Any) -> tuple[int, str]:
    """Read until the server closes; return the code and reason it sent."""
    with pytest.raises(ConnectionClosed) as info:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            ws.recv(timeout=TIMEOUT)
    received = info.value.rcvd
    assert received is not None, "closed without a Close frame"
    return received.code, received.reason


class RawViewer:
    """A WebSocket viewer on a bare socket: handshake, then exactly the reads a test asks for."""

    def __init__(self, port: int, *, rcvbuf: int | None = None, timeout: float = TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        return chunk

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self._recv()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_header(self) -> tuple[int, int]:
        """Read one frame header; returns (opcode, payload length)."""
        b1, b2 = self.read_exact(2)
        n = b2 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self.read_exact(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self.read_exact(8))
        return b1 & 0x0F, n

    def read_message(self) -> tuple[int, bytes]:
        opcode, n = self.read_header()
        return opcode, self.read_exact(n)

    def send_close(self, code: int = 1000) -> None:
        payload = struct.pack("!H", code)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes((0x88, 0x80 | len(payload))) + mask + masked)

    def reset(self) -> None:
        """Close abruptly: SO_LINGER 0 makes close() send a RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


class Counter(threading.Thread):
    """A websockets viewer in its own thread, stamping the arrival time of every frame."""

    def __init__(self, url: str, *, keep: bool = False) -> None:
        super().__init__(name="test-viewer", daemon=True)  # daemon: a failed test must not hang
        self.url = url
        self.arrivals: list[float] = []
        self.last: bytes = b""  # the latest frame
        self.keep = keep
        self.frames: list[bytes] = []  # every frame, with keep=True
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self.ready = threading.Event()  # set once the first frame arrived
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connect(self.url, open_timeout=TIMEOUT, max_size=2**24) as ws:
                while not self.stop.is_set():
                    try:
                        message = ws.recv(timeout=0.2)
                    except TimeoutError:
                        continue
                    except ConnectionClosed as exc:
                        self.closed_at = time.monotonic()
                        self.close_code = exc.rcvd.code if exc.rcvd is not None else None
                        return
                    if isinstance(message, bytes):
                        self.last = message
                        if self.keep:
                            self.frames.append(message)
                        self.arrivals.append(time.monotonic())
                        self.ready.set()
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.ready.set()

    def frames_between(self, t0: float, t1: float) -> int:
        return sum(1 for t in list(self.arrivals) if t0 <= t < t1)


class Publisher(threading.Thread):
    """Publishes the given images in turn at ``fps`` (push source), stamping each publish time."""

    def __init__(self, streamer: Streamer, images: list[np.ndarray], fps: float) -> None:
        super().__init__(name="test-publisher", daemon=True)
        self.streamer, self.images, self.period = streamer, images, 1.0 / fps
        self.published: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic()
        i = 0
        while not self.stop.is_set():
            self.streamer.publish(self.images[i % len(self.images)], copy=False)
            self.published.append(time.monotonic())
            i += 1
            deadline = max(deadline + self.period, time.monotonic() - self.period)
            # The publisher's clock (a camera's frame period), not a wait for some state.
            self.stop.wait(max(deadline - time.monotonic(), 0.0))

    def count_between(self, t0: float, t1: float) -> int:
        return sum(1 for t in list(self.published) if t0 <= t < t1)


@contextlib.contextmanager
def running(*threads: threading.Thread) -> Iterator[None]:
    """Start the threads; on exit set their ``stop`` event and join them (bounded)."""
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for thread in threads:
            thread.stop.set()  # type: ignore[attr-defined]
        for thread in threads:
            thread.join(TIMEOUT)
            assert not thread.is_alive(), f"{thread.name} did not stop"


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def get(port: int, target: str, headers: dict[str, str] | None = None) -> Response:
    """One GET with ``http.client``; the whole body is read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


class MjpegReader:
    """A raw-socket ``multipart/x-mixed-replace`` reader: exactly what goes over the wire."""

    def __init__(
        self,
        port: int,
        target: str = "/stream.mjpg",
        *,
        rcvbuf: int | None = None,
        read: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # a small receive window makes a stalled reader stall quickly
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.file = self.sock.makefile("rb")
        self.status = 0
        self.headers: dict[str, str] = {}
        self.boundary = b""
        if read:
            self.read_head()

    def read_head(self) -> None:
        self.status = int(self.file.readline().split()[1])
        self.headers = self._read_headers()
        match = re.search(r"boundary=([^;\s]+)", self.headers.get("content-type", ""))
        if match:
            self.boundary = match.group(1).strip('"').encode()

    def _read_headers(self) -> dict[str, str]:
        headers = {}
        while line := self.file.readline().rstrip(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return headers

    def next_part(self) -> tuple[dict[str, str], bytes]:
        """The next part's headers and body; raises EOFError at the end of the stream."""
        line = self.file.readline()
        if not line:
            raise EOFError("stream ended")
        assert line.rstrip(b"\r\n") == b"--" + self.boundary, line
        headers = self._read_headers()
        size = int(headers["content-length"])
        body = self.file.read(size)
        tail = self.file.read(2)
        if len(body) < size or len(tail) < 2:
            raise EOFError("stream ended inside a part")
        assert tail == b"\r\n", tail
        return headers, body

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> MjpegReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_line(stream: Any, timeout: float = 3 * TIMEOUT) -> Any:
    """One line from a subprocess pipe, failing the test if none comes within ``timeout`` s.

    (A plain ``readline()`` would wait forever on a child that hangs before printing.)
    """
    lines: list[Any] = []
    reader = threading.Thread(target=lambda: lines.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert not reader.is_alive(), f"no line within {timeout:g} s"
    return lines[0]


def frames_from(camera: Any, count: int) -> list:
    """The next ``count`` frames of a started CameraThread, each newer than the one before."""
    frames, seq = [], 0
    for _ in range(count):
        frame = camera.wait_for_frame(seq, TIMEOUT)
        assert frame is not None, "no frame within the timeout"
        frames.append(frame)
        seq = frame.seq
    return frames


def attack(*args: str) -> subprocess.Popen:
    """Run ``tests/attackers.py ARGS`` in its own process (not on this process's GIL); its
    stdout is a text pipe. The caller ends it with ``conftest.stop_process``."""
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("attackers.py")), *args],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent,
    )
