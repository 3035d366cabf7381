"""Seeded fuzz: 1,200 malformed handshakes and frames (``CAMSTREAM_FUZZ_CASES`` for more) against
a live server.

Meanwhile a well-behaved websocket-client viewer receives checksummed binary messages; it must
keep receiving whole, intact messages, the server must stay up, and nothing may be logged above
INFO (no tracebacks, no warnings). Deterministic: every worker draws from ``random.Random(seed)``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import random
import socket
import struct
import threading
import time

import pytest
import websocket  # websocket-client
from conftest import TIMEOUT, wait_until  # noqa: E402
from test_transport import Recorder, run_server
from wsraw import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    build_frame,
    upgrade_request,
)

from camstream.errors import ConnectionClosedError
from camstream.ws import Connection

SEED = int(os.environ.get("CAMSTREAM_FUZZ_SEED", "20240611"))
CASES = int(os.environ.get("CAMSTREAM_FUZZ_CASES", "1200"))
WORKERS = 4


def _payload(rng: random.Random) -> bytes:
    """A message whose header carries its own length and checksum."""
    body = rng.randbytes(rng.choice((0, 1, 100, 5000, 70000, 200_000)))
    return struct.pack("!Q", len(body)) + hashlib.sha256(body).digest() + body


def _check(message: bytes) -> None:
    (n,) = struct.unpack("!Q", message[:8])
    assert len(message) == 40 + n and hashlib.sha256(message[40:]).digest() == message[8:40]


def fuzz_handshake(rng: random.Random) -> bytes:
    req = bytearray(upgrade_request(rng.choice(["/", "/x?a=1", "/%ff", "/" + "a" * 9000])))
    kind = rng.randrange(10)
    if kind == 0:
        return bytes(rng.randbytes(rng.randrange(1, 3000)))
    if kind == 1:
        return bytes(req[: rng.randrange(len(req))])  # truncated
    if kind == 2:
        for _ in range(rng.randrange(1, 8)):  # byte flips
            req[rng.randrange(len(req))] = rng.randrange(256)
        return bytes(req)
    if kind == 3:
        name = rng.choice(
            ["Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Host"]
        )
        return upgrade_request(drop=(name,))
    if kind == 4:
        key = base64.b64encode(rng.randbytes(rng.choice((0, 1, 15, 17, 32)))).decode() or "x"
        return upgrade_request(key=key)
    if kind == 5:
        return upgrade_request(method=rng.choice(["POST", "PUT", "get", "PRI", "G\x00T"]))
    if kind == 6:
        return upgrade_request(version=rng.choice(["HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", "XYZ"]))
    if kind == 7:
        return b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * rng.randrange(90, 130) + b"\r\n"
    if kind == 8:
        return upgrade_request(
            extra={"Sec-WebSocket-Version": rng.choice(["8", "", "13, 8", "x" * 50])}
        )
    return bytes(req.replace(b"\r\n", rng.choice([b"\n", b"\r", b"\r\r\n", b"\x00"])))


def fuzz_frames(rng: random.Random) -> bytes:
    out = bytearray()
    for _ in range(rng.randrange(1, 6)):
        kind = rng.randrange(8)
        if kind == 0:
            out += rng.randbytes(rng.randrange(1, 200))
            continue
        opcode = rng.choice(
            [OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, 3, 7, 0xB, 0xF]
        )
        size = rng.choice([0, 1, 2, 125, 126, 127, 1000, 65535, 65536, 70000])
        payload = rng.randbytes(min(size, 70000))
        if opcode == OP_TEXT and rng.random() < 0.5:
            payload = "héllo €".encode()[: rng.randrange(10)]
        if opcode == OP_CLOSE and rng.random() < 0.5:
            payload = struct.pack(
                "!H", rng.choice([0, 999, 1000, 1004, 1005, 1006, 1015, 3000, 5000])
            )
            payload += rng.choice([b"", b"ok", b"\xff\xfe"])
        out += build_frame(
            opcode,
            payload,
            fin=rng.random() < 0.8,
            rsv=rng.choice([0, 0, 0, 0, 1, 4]),
            mask=None if rng.random() < 0.1 else rng.randbytes(4),
            length=rng.choice([None] * 6 + [0, 126, 2**16, 2**40, 2**63 + 5]),
        )
        if kind == 1:
            del out[rng.randrange(len(out)) :]  # truncated
    return bytes(out)


def run_case(port: int, rng: random.Random) -> None:
    """Send one malformed exchange, half-close, and read until the server closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        kind = rng.randrange(10)
        if kind == 0:  # connect and vanish, sometimes with an RST
            if rng.random() < 0.5:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        if kind < 4:
            sock.sendall(fuzz_handshake(rng))
        else:
            sock.sendall(upgrade_request())
            sock.sendall(fuzz_frames(rng))
        if rng.random() < 0.2:
            return  # close without reading (the server may hit EPIPE/ECONNRESET)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # ENOTCONN: the server already dropped the connection; nothing to read
            return
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
            assert len(reply) < 10_000_000
        assert reply == b"" or reply.startswith(b"HTTP/1.1 ")
        if kind < 4:
            assert not reply.startswith(b"HTTP/1.1 101") or b"Sec-WebSocket-Accept" in reply
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server dropped a broken connection while we were still sending
    finally:
        sock.close()


@pytest.mark.timeout(120)
def test_fuzz_server_survives_and_viewer_is_unaffected(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="camstream")
    app = Recorder()
    with run_server(app, handshake_timeout=2.0, close_timeout=0.5) as srv:
        viewer = websocket.create_connection(f"ws://127.0.0.1:{srv.port}/", timeout=TIMEOUT)
        viewer_conn: Connection = app.opened.get(timeout=TIMEOUT)
        stop = threading.Event()
        sent = [0]

        def feed() -> None:
            rng = random.Random(SEED)
            while not stop.is_set():
                try:
                    viewer_conn.send_binary(_payload(rng))
                except ConnectionClosedError:
                    return
                sent[0] += 1
                stop.wait(0.03)  # ~30 messages a second, as a camera

        received = [0]
        errors: list[BaseException] = []

        def view() -> None:
            try:
                while True:
                    opcode, data = viewer.recv_data()
                    if opcode == websocket.ABNF.OPCODE_TEXT:
                        assert data == b"end"
                        return
                    assert opcode == websocket.ABNF.OPCODE_BINARY
                    _check(data)
                    received[0] += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        failures: list[BaseException] = []

        def fuzz(worker: int) -> None:
            rng = random.Random(SEED * 100 + worker)
            try:
                for _ in range(CASES // WORKERS):
                    run_case(srv.port, rng)
            except BaseException as exc:  # noqa: BLE001
                failures.append(exc)

        threads = [threading.Thread(target=feed), threading.Thread(target=view)]
        threads += [threading.Thread(target=fuzz, args=(w,)) for w in range(WORKERS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads[2:]:
            t.join(20 * TIMEOUT)
        elapsed = time.monotonic() - t0
        stop.set()
        threads[0].join(TIMEOUT)
        viewer_conn.send_text("end")
        threads[1].join(TIMEOUT)
        assert not failures, failures[:3]
        assert not errors, errors
        assert received[0] == sent[0] and sent[0] > 10, (received, sent, elapsed)
        assert viewer_conn.is_open
        # Fuzz connections finish their cleanup.
        assert wait_until(lambda: srv.connections() == [viewer_conn]), srv.connections()
        viewer.close()
    loud = [r for r in caplog.records if r.levelno > logging.INFO]
    assert not loud, [(r.levelname, r.getMessage()) for r in loud[:5]]
