"""Conformance tests for camstream.ws: real server, raw sockets and strict clients.

Each test names the websocket-server defect (research/websocket-server.md, #1-#20) it guards.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websocket  # websocket-client
from conftest import SLACK, TIMEOUT, wait_until  # noqa: E402
from websockets.sync.client import connect as ws_connect
from wsraw import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawClient,
    build_frame,
    upgrade_request,
)

from camstream.errors import ConfigError, ConnectionClosedError, ServerError
from camstream.ws import (
    BaseApplication,
    Connection,
    HandshakeRejected,
    HttpExchange,
    Request,
    WebSocketServer,
)

pytestmark = pytest.mark.timeout(60)


class Recorder(BaseApplication):
    """Records every callback; events to wait on instead of sleeping."""

    def __init__(self) -> None:
        self.opened: queue.Queue[Connection] = queue.Queue()
        self.closed: queue.Queue[Connection] = queue.Queue()
        self.texts: queue.Queue[str] = queue.Queue()
        self.binaries: queue.Queue[bytes] = queue.Queue()
        self.requests: list[Request] = []
        self.close_calls: dict[int, int] = {}
        self.in_registry_at_close: list[bool] = []
        self.server: WebSocketServer | None = None

    def authorize(self, request: Request) -> None:
        self.requests.append(request)
        if request.query.get("token") == "bad":
            raise HandshakeRejected(403, "bad token")

    def on_open(self, conn: Connection) -> None:
        self.opened.put(conn)

    def on_text(self, conn: Connection, text: str) -> None:
        self.texts.put(text)
        if text.startswith("echo:"):
            conn.send_text(text[5:])

    def on_binary(self, conn: Connection, data: bytes) -> None:
        self.binaries.put(data)

    def on_close(self, conn: Connection) -> None:
        self.close_calls[conn.id] = self.close_calls.get(conn.id, 0) + 1
        assert self.server is not None
        self.in_registry_at_close.append(conn in self.server.connections())
        self.closed.put(conn)


@contextlib.contextmanager
def run_server(app: Any, host: str = "127.0.0.1", **kwargs: Any) -> Iterator[WebSocketServer]:
    """Serve ``app`` on ``host``, port 0, in a thread; stop everything and check the threads
    ended."""
    kwargs.setdefault("handshake_timeout", TIMEOUT)
    server = WebSocketServer(app, host, 0, **kwargs)
    if isinstance(app, Recorder):
        app.server = server
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="camstream-test-serve"
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.close_all(timeout=TIMEOUT)
        server.server_close()
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert not server.watchdog.is_alive()


@pytest.fixture
def app() -> Recorder:
    return Recorder()


@pytest.fixture
def server(app: Recorder) -> Iterator[WebSocketServer]:
    with run_server(app) as srv:
        yield srv


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture camstream's log at DEBUG and assert nothing above INFO was logged."""
    caplog.set_level(logging.DEBUG, logger="camstream")
    yield caplog
    loud = [r for r in caplog.records if r.levelno > logging.INFO]
    assert not loud, [r.getMessage() for r in loud]


def open_raw(
    server: WebSocketServer, app: Recorder, path: str = "/"
) -> tuple[RawClient, Connection]:
    client = RawClient(server.port, timeout=TIMEOUT)
    client.handshake(path)
    return client, app.opened.get(timeout=TIMEOUT)


# -- Handshake (#8, #9, #10) -------------------------------------------------------------------


def test_handshake_exposes_request(server: WebSocketServer, app: Recorder, quiet: Any) -> None:
    with RawClient(server.port) as c:
        headers = c.handshake(
            "/cam?fps=5&token=x&fps=7", extra={"Origin": "http://a.example", "X-A": "1"}
        )
        assert "sec-websocket-protocol" not in headers
        conn = app.opened.get(timeout=TIMEOUT)
    req = conn.request
    assert (req.method, req.path, req.query) == ("GET", "/cam", {"fps": "7", "token": "x"})
    assert req.origin == "http://a.example"
    assert req.headers["x-a"] == req.headers["X-A"] == "1"
    assert req.remote_address[0] == "127.0.0.1"
    assert conn.subprotocol is None and conn.id >= 1


@pytest.mark.parametrize(
    "request_bytes, status, header",
    [
        (upgrade_request(method="POST"), 405, ("allow", "GET, HEAD")),
        (upgrade_request(version="HTTP/1.0"), 505, None),
        (
            upgrade_request(extra={"Sec-WebSocket-Version": "8"}),
            426,
            ("sec-websocket-version", "13"),
        ),
        (upgrade_request(drop=("Sec-WebSocket-Version",)), 426, ("sec-websocket-version", "13")),
        (upgrade_request(drop=("Sec-WebSocket-Key",)), 400, None),
        (upgrade_request(key="c2hvcnQ="), 400, None),  # base64 of 5 bytes
        (upgrade_request(key="!!!!notbase64!!!!!!!!!=="), 400, None),
        (upgrade_request(extra={"Connection": "keep-alive"}), 400, None),
        (b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400, None),
        (b"GET /\r\n\r\n", 400, None),
        (b"GET ftp://evil/ HTTP/1.1\r\nHost: x\r\n\r\n", 400, None),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400, None),
        (b"GET evil:80 HTTP/1.1\r\nHost: x\r\n\r\n", 400, None),
        (b"GET http://u@evil/ HTTP/1.1\r\nHost: x\r\n\r\n", 400, None),
        (b"GET http://[::1/ HTTP/1.1\r\nHost: x\r\n\r\n", 400, None),
        # RFC 9112 section 3.2: exactly one Host, with a valid value
        (upgrade_request(drop=("Host",)), 400, None),
        (upgrade_request(extra={"Host": ""}), 400, None),
        (upgrade_request(extra={"Host": "a.example, b.example"}), 400, None),
        (upgrade_request(extra={"Host": "a b"}), 400, None),
        (upgrade_request(extra={"X": "y\r\nHost: second"}), 400, None),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, None),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431, None),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431, None),
        (b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", 405, ("allow", "GET, HEAD")),
    ],
)
def test_handshake_errors(
    server: WebSocketServer,
    app: Recorder,
    quiet: Any,
    request_bytes: bytes,
    status: int,
    header: Any,
) -> None:
    with RawClient(server.port) as c:
        c.send(request_bytes)
        got, headers, body = c.read_http()
        assert got == status
        assert headers["connection"] == "close" and body and b"Traceback" not in body
        if header:
            assert headers[header[0]] == header[1]
        assert c.expect_eof()
    assert app.opened.empty()


def test_absolute_form_target_uses_its_authority_as_host(
    server: WebSocketServer, app: Recorder
) -> None:
    """RFC 9112 section 3.2.2: the target's authority replaces the Host header."""
    target = f"http://127.0.0.1:{server.port}/cam?fps=7"
    with RawClient(server.port) as c:
        c.handshake(target, extra={"Host": "ignored.example"})
        conn = app.opened.get(timeout=TIMEOUT)
    assert (conn.request.path, conn.request.query) == ("/cam", {"fps": "7"})
    assert conn.request.headers["host"] == f"127.0.0.1:{server.port}"  # one value only


def test_head_gets_headers_only(server: WebSocketServer, app: Recorder) -> None:
    with RawClient(server.port) as c:
        c.send(b"HEAD /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        c.buf = b""
        data = b""
        while chunk := c.sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 ") and b"Content-Length: 10" in head
    assert body == b""


def test_authorize_rejects_with_status(server: WebSocketServer, app: Recorder, quiet: Any) -> None:
    with RawClient(server.port) as c:
        c.send(upgrade_request("/?token=bad"))
        status, _, body = c.read_http()
    assert (status, body) == (403, b"bad token\n")
    assert app.opened.empty()


def test_authorize_crash_is_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Crashy(BaseApplication):
        def authorize(self, request: Request) -> None:
            raise RuntimeError("boom")

    with run_server(Crashy()) as srv, RawClient(srv.port) as c:
        c.send(upgrade_request())
        assert c.read_http()[0] == 500
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)


@pytest.mark.parametrize(
    "offered, expected",
    [
        (None, None),
        ("camstream.v1", "camstream.v1"),
        ("x.v9, camstream.v2, camstream.v1", "camstream.v2"),  # the client's first known one
        ("x.v9, y.v1", None),  # only unknown ones: accepted without the header
    ],
)
def test_subprotocol_negotiation(app: Recorder, offered: str | None, expected: str | None) -> None:
    with (
        run_server(app, subprotocols=["camstream.v1", "camstream.v2"]) as srv,
        RawClient(srv.port) as c,
    ):
        headers = c.handshake(extra={"Sec-WebSocket-Protocol": offered} if offered else None)
        assert headers.get("sec-websocket-protocol") == expected
        assert app.opened.get(timeout=TIMEOUT).subprotocol == expected


def test_subprotocol_with_strict_clients(app: Recorder) -> None:
    with run_server(app, subprotocols=["camstream.v1"]) as srv:
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{srv.port}/", subprotocols=["camstream.v1"], timeout=TIMEOUT
        )
        assert ws.getsubprotocol() == "camstream.v1"
        ws.close()
        with ws_connect(f"ws://127.0.0.1:{srv.port}/", subprotocols=["camstream.v1"]) as c:  # type: ignore[list-item]
            assert c.subprotocol == "camstream.v1"


def test_plain_get_goes_to_on_http(quiet: Any) -> None:
    chunks = [b"--frame\r\nA", b"--frame\r\nB"]

    class Http(BaseApplication):
        def on_http(self, exchange: HttpExchange) -> None:
            if exchange.request.path == "/stream":
                exchange.start_stream(
                    200, {"Content-Type": "multipart/x-mixed-replace; boundary=frame"}
                )
                for chunk in chunks:
                    exchange.write(chunk)
            else:
                super().on_http(exchange)

    with run_server(Http()) as srv:
        for path, status in (("/", 426), ("/favicon.ico", 404)):
            with RawClient(srv.port) as c:
                c.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                got, headers, _ = c.read_http()
                assert got == status and headers["connection"] == "close"
                if status == 426:
                    assert headers["sec-websocket-version"] == "13"
        with RawClient(srv.port) as c:
            c.send(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            got, headers, _ = c.read_http()
            assert got == 200 and "content-length" not in headers
            rest = c.buf + b"".join(iter(lambda: c.sock.recv(65536), b""))
            assert rest == b"".join(chunks)


def test_handshake_timeout_closes_silent_and_dribbling_connections(
    app: Recorder, quiet: Any
) -> None:
    with run_server(app, handshake_timeout=0.3) as srv:
        t0 = time.monotonic()
        with RawClient(srv.port) as silent:
            assert silent.expect_eof()
        with RawClient(srv.port) as slow:  # slowloris: one byte at a time never completes
            data = upgrade_request()
            for i in range(40):
                try:
                    slow.send(data[i : i + 1])
                except OSError:
                    break
                time.sleep(0.05)  # pacing the attack, not waiting for a result
            assert slow.expect_eof()
        # Each cut at 0.3 s (the dribble stops when a send fails): far less than a TIMEOUT.
        assert time.monotonic() - t0 < 4 * SLACK
    assert app.opened.empty()


def test_connect_and_close_is_quiet(
    server: WebSocketServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for _ in range(5):
        socket.create_connection(("127.0.0.1", server.port)).close()
        with RawClient(server.port) as c:  # scanner: garbage, then gone
            c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    with RawClient(server.port) as c:  # proves the server handled the above
        c.handshake()
    assert [
        r
        for r in caplog.records
        if r.levelno > logging.DEBUG and not r.name.startswith("camstream.ws")
    ] == []
    assert [r for r in caplog.records if r.levelno > logging.INFO] == []
    assert not [r for r in caplog.records if r.exc_info]


# -- Frames (#3, #4, #6, #7, #18) --------------------------------------------------------------


def test_text_binary_and_smuggling(server: WebSocketServer, app: Recorder, quiet: Any) -> None:
    c, _ = open_raw(server, app)
    with c:
        c.send_frame(OP_TEXT, "héllo".encode())
        assert app.texts.get(timeout=TIMEOUT) == "héllo"
        # A binary frame whose bytes form a text frame must arrive as binary (#3: smuggling).
        evil = b"\x81\x05EVIL!"
        c.send_frame(OP_BINARY, evil)
        assert app.binaries.get(timeout=TIMEOUT) == evil
        big = os.urandom(60000)
        c.send_frame(OP_BINARY, big)
        assert app.binaries.get(timeout=TIMEOUT) == big
        c.send_frame(OP_BINARY, b"")
        assert app.binaries.get(timeout=TIMEOUT) == b""
        c.send_frame(OP_TEXT, b"echo:ok")
        assert c.recv_frame() == (True, OP_TEXT, b"ok")


def test_fragmented_text_with_interleaved_ping(
    server: WebSocketServer, app: Recorder, quiet: Any
) -> None:
    c, _ = open_raw(server, app)
    with c:
        c.send_frame(OP_TEXT, b"hel", fin=False)
        c.send_frame(OP_PING, b"\xff\xfe\x00\x01")
        c.send_frame(OP_CONT, "l\xc3".encode("latin-1"), fin=False)  # UTF-8 split across frames
        c.send_frame(OP_CONT, b"\xa9o")
        assert c.recv_frame() == (True, OP_PONG, b"\xff\xfe\x00\x01")
        assert app.texts.get(timeout=TIMEOUT) == "hellé" + "o"
        c.send_frame(OP_BINARY, b"ab", fin=False)
        c.send_frame(OP_CONT, b"cd")
        assert app.binaries.get(timeout=TIMEOUT) == b"abcd"


def test_ping_payload_echoed_as_bytes(server: WebSocketServer, app: Recorder, quiet: Any) -> None:
    """#4: stock decodes ping payloads as UTF-8 and drops the client on random bytes."""
    c, conn = open_raw(server, app)
    with c:
        for payload in (b"", b"\xff\xfe\x00\x01", os.urandom(125)):
            c.send_frame(OP_PING, payload)
            assert c.recv_frame() == (True, OP_PONG, payload)
        c.send_frame(OP_PONG, b"unsolicited")  # accepted silently
        c.send_frame(OP_TEXT, b"still here")
        assert app.texts.get(timeout=TIMEOUT) == "still here"
        assert conn.is_open


@pytest.mark.parametrize(
    "frames, code",
    [
        ([{"opcode": OP_TEXT, "payload": b"x", "mask": None}], 1002),  # unmasked
        ([{"opcode": OP_TEXT, "payload": b"x", "rsv": 4}], 1002),  # RSV1 without extension
        ([{"opcode": OP_TEXT, "payload": b"x", "rsv": 1}], 1002),
        ([{"opcode": 0x3, "payload": b"x"}], 1002),  # reserved data opcode
        ([{"opcode": 0xB, "payload": b""}], 1002),  # reserved control opcode
        ([{"opcode": OP_PING, "payload": b"x" * 126}], 1002),  # control frame > 125
        ([{"opcode": OP_PING, "payload": b"x", "fin": False}], 1002),  # fragmented control frame
        ([{"opcode": OP_CONT, "payload": b"x"}], 1002),  # continuation without a start
        (
            [
                {"opcode": OP_TEXT, "payload": b"a", "fin": False},
                {"opcode": OP_TEXT, "payload": b"b"},
            ],
            1002,
        ),
        ([{"opcode": OP_TEXT, "payload": b"\xff\xfe"}], 1007),  # invalid UTF-8
        (
            [
                {"opcode": OP_TEXT, "payload": b"\xe2\x82", "fin": False},
                {"opcode": OP_CONT, "payload": b""},
            ],
            1007,
        ),
        ([{"opcode": OP_CLOSE, "payload": b"\x03"}], 1002),  # 1-byte close payload
        ([{"opcode": OP_CLOSE, "payload": struct.pack("!H", 999)}], 1002),
        ([{"opcode": OP_CLOSE, "payload": struct.pack("!H", 1005)}], 1002),
        ([{"opcode": OP_CLOSE, "payload": struct.pack("!H", 1004)}], 1002),
        ([{"opcode": OP_CLOSE, "payload": struct.pack("!H", 2999)}], 1002),
        ([{"opcode": OP_CLOSE, "payload": struct.pack("!H", 1000) + b"\xff"}], 1002),
        ([{"opcode": OP_BINARY, "payload": b"", "length": 2**40}], 1009),  # checked before reading
        ([{"opcode": OP_BINARY, "payload": b"", "length": 2**63}], 1002),  # MSB set
        (
            [
                {"opcode": OP_TEXT, "payload": b"a" * 40000, "fin": False},
                {"opcode": OP_CONT, "payload": b"", "length": 30000},
            ],
            1009,
        ),  # total of fragments
    ],
)
def test_protocol_violations_fail_the_connection(
    server: WebSocketServer, app: Recorder, quiet: Any, frames: list[dict[str, Any]], code: int
) -> None:
    c, conn = open_raw(server, app)
    with c:
        for frame in frames:
            c.send_frame(**frame)
        assert c.recv_close()[0] == code
        assert c.expect_eof()
    assert app.closed.get(timeout=TIMEOUT) is conn
    assert app.texts.empty()


def test_size_limit_boundary_and_memory(app: Recorder, quiet: Any) -> None:
    import resource

    with run_server(app, max_message_size=1000) as srv:
        c, _ = open_raw(srv, app)
        with c:
            c.send_frame(OP_BINARY, b"x" * 1000)
            assert app.binaries.get(timeout=TIMEOUT) == b"x" * 1000
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            c.send_frame(OP_BINARY, b"", length=200 * 2**20)  # claims 200 MiB, sends nothing
            assert c.recv_close()[0] == 1009
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            assert after - before < 50 * 1024  # KiB on Linux


# -- Closing (#11, #12) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload, code, reason",
    [
        (struct.pack("!H", 1000) + b"bye", 1000, "bye"),
        (struct.pack("!H", 4001) + "é".encode(), 4001, "é"),
        (b"", 1005, ""),
    ],
)
def test_client_close_is_echoed(
    server: WebSocketServer, app: Recorder, quiet: Any, payload: bytes, code: int, reason: str
) -> None:
    c, conn = open_raw(server, app)
    with c:
        c.send_frame(OP_CLOSE, payload)
        assert c.recv_frame() == (True, OP_CLOSE, payload[:2])  # echo the code (empty → empty)
        assert c.expect_eof()
    assert app.closed.get(timeout=TIMEOUT) is conn
    assert (conn.close_code, conn.close_reason) == (code, reason)
    assert (
        not conn.is_open and app.close_calls == {conn.id: 1} and app.in_registry_at_close == [False]
    )


def test_server_close_handshake(server: WebSocketServer, app: Recorder, quiet: Any) -> None:
    c, conn = open_raw(server, app)
    with c:
        conn.close(4003, "é" * 100)  # 200 bytes of UTF-8: cut to ≤123 on a char boundary
        conn.close(1000)  # idempotent
        _, opcode, payload = c.recv_frame()
        assert opcode == OP_CLOSE and struct.unpack("!H", payload[:2])[0] == 4003
        assert len(payload) <= 125 and payload[2:].decode() == "é" * 61
        with pytest.raises(ConnectionClosedError):
            conn.send_text("too late")
        assert not conn.is_open
        c.send_frame(OP_TEXT, b"discarded after our Close")
        c.send_frame(OP_CLOSE, payload[:2])
        assert c.expect_eof()
    assert app.closed.get(timeout=TIMEOUT) is conn and conn.close_code == 4003
    assert app.texts.empty()
    with pytest.raises(ValueError):
        conn.close(1005)


def test_server_close_without_peer_answer_times_out(app: Recorder, quiet: Any) -> None:
    with run_server(app, close_timeout=0.3) as srv:
        c, conn = open_raw(srv, app)
        with c:
            t0 = time.monotonic()
            conn.close(1001, "going away")
            assert c.recv_close() == (1001, b"going away")
            assert c.expect_eof()  # the peer never answered: dropped at the closing deadline
            assert time.monotonic() - t0 < 2 * SLACK
        assert app.closed.get(timeout=TIMEOUT) is conn and conn.close_code is None


def test_eof_without_close_is_quiet(server: WebSocketServer, app: Recorder, quiet: Any) -> None:
    """#18: stock logs WARNING 'Client must always be masked.' on every disconnect."""
    c, conn = open_raw(server, app)
    c.close()
    assert app.closed.get(timeout=TIMEOUT) is conn and conn.close_code is None
    assert not conn.is_open
    with pytest.raises(ConnectionClosedError):
        conn.send_binary(b"x")


def test_close_all_and_abort(app: Recorder, quiet: Any) -> None:
    with run_server(app) as srv:
        clients = [open_raw(srv, app) for _ in range(4)]
        clients[0][1].abort()
        assert clients[0][0].expect_eof()
        clients[0][0].close()
        srv.close_all(1001, "bye", timeout=0.5)
        for c, _ in clients[1:]:
            assert c.recv_close() == (1001, b"bye")
            c.close()
        closed = {app.closed.get(timeout=TIMEOUT).id for _ in clients}
        assert closed == {conn.id for _, conn in clients}
        assert srv.connections() == [] and set(app.close_calls.values()) == {1}


def test_callback_crash_closes_1011_and_server_lives(caplog: pytest.LogCaptureFixture) -> None:
    class Crashy(Recorder):
        def on_text(self, conn: Connection, text: str) -> None:
            raise RuntimeError("app bug")

    app = Crashy()
    with run_server(app) as srv:
        c, conn = open_raw(srv, app)
        with c:
            c.send_frame(OP_TEXT, b"x")
            assert c.recv_close()[0] == 1011
        assert app.closed.get(timeout=TIMEOUT) is conn
        c2, _ = open_raw(srv, app)
        c2.close()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and errors[0].exc_info is not None


# -- Sending (#1, #2, #14) ---------------------------------------------------------------------


def test_concurrent_senders_never_interleave(
    server: WebSocketServer, app: Recorder, quiet: Any
) -> None:
    c, conn = open_raw(server, app)
    messages = {i: bytes([i]) * (70000 + i * 1000) for i in range(8)}

    def sender(i: int) -> None:
        for _ in range(5):
            conn.send_binary(memoryview(messages[i]))
            conn.send_text(f"t{i}")

    threads = [threading.Thread(target=sender, args=(i,)) for i in messages]
    for t in threads:
        t.start()
    with c:
        for _ in range(len(messages) * 10):
            fin, opcode, payload = c.recv_frame()
            assert fin
            if opcode == OP_BINARY:
                assert payload == messages[payload[0]]
            else:
                assert opcode == OP_TEXT and payload[:1] == b"t"
    for t in threads:
        t.join(TIMEOUT)


def test_application_pings_carry_their_payload(
    server: WebSocketServer, app: Recorder
) -> None:
    c, conn = open_raw(server, app)
    with c:
        conn.send_ping(b"\x00\xff")
        assert c.recv_frame() == (True, OP_PING, b"\x00\xff")
        with pytest.raises(ValueError):
            conn.send_ping(b"x" * 126)


def test_socket_options(server: WebSocketServer, app: Recorder) -> None:
    c, conn = open_raw(server, app)
    with c:
        assert conn.link.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert conn.link.sock.gettimeout() is None  # reads block after the handshake (#13)
    assert server.request_queue_size >= 128 and server.daemon_threads


# -- Liveness (#13) ----------------------------------------------------------------------------


def test_keepalive_pings_idle_and_closes_silent_peer(app: Recorder, quiet: Any) -> None:
    with run_server(app, ping_interval=0.2, ping_timeout=0.3) as srv:
        c, conn = open_raw(srv, app)
        with c:
            _, opcode, payload = c.recv_frame()
            assert opcode == OP_PING and len(payload) == 4
            c.send_frame(OP_PONG, payload)  # answered: stays open through another round
            assert c.recv_frame()[1] == OP_PING
            # now stay silent: closed with 1011 after ping_interval + ping_timeout
            assert c.recv_close() == (1011, b"keepalive ping timeout")
        assert app.closed.get(timeout=TIMEOUT) is conn


def test_stalled_reader_is_shed_while_viewer_keeps_receiving(app: Recorder, quiet: Any) -> None:
    payload = os.urandom(200_000)
    with run_server(app, send_timeout=1.0) as srv:
        stalled = RawClient(srv.port)  # default buffers: ~4 MB fill up, then sends block
        stalled.handshake()
        stalled_conn = app.opened.get(timeout=TIMEOUT)
        viewer = websocket.create_connection(f"ws://127.0.0.1:{srv.port}/", timeout=TIMEOUT)
        viewer_conn = app.opened.get(timeout=TIMEOUT)
        stop = threading.Event()
        shed_at: list[float] = []

        def feed(conn: Connection, period: float) -> None:
            next_t = time.monotonic()
            while not stop.is_set():
                try:
                    conn.send_binary(payload)
                except ConnectionClosedError:
                    shed_at.append(time.monotonic())
                    return
                next_t += period
                stop.wait(max(0.0, next_t - time.monotonic()))

        t0 = time.monotonic()
        feeders = [
            threading.Thread(target=feed, args=(stalled_conn, 1 / 30)),
            threading.Thread(target=feed, args=(viewer_conn, 1 / 30)),
        ]
        for t in feeders:
            t.start()
        received = 0
        # The viewer reads on until half a second after the stalled one was shed (bounded).
        while not shed_at or time.monotonic() < shed_at[0] + 0.5:
            assert time.monotonic() - t0 < 3 * TIMEOUT, "the stalled reader was never shed"
            assert viewer.recv() == payload
            received += 1
        window = time.monotonic() - t0
        stop.set()
        for t in feeders:
            t.join(TIMEOUT)
        # buffers fill in ~0.7 s at 30 fps x 200 KB, then send_timeout (1 s), plus slack
        assert shed_at[0] - t0 < (1.0 + 2.5) * SLACK, shed_at[0] - t0
        assert app.closed.get(timeout=TIMEOUT) is stalled_conn
        # Every message sent to it meanwhile (30 a second) arrived; loose: a 2-core machine.
        assert received >= 0.8 * 30 * window / SLACK, (received, window)
        viewer.close()
        # #2: what reached the stalled client is whole frames, then EOF; never a partial frame
        # followed by another frame.
        whole = 0
        with stalled, contextlib.suppress(EOFError, ConnectionResetError):
            for _ in range(1000):
                assert stalled.recv_frame() == (True, OP_BINARY, payload)
                whole += 1
        assert whole < 1000


def test_stalled_http_stream_is_shed(quiet: Any) -> None:
    ended = threading.Event()
    chunk = os.urandom(200_000)

    class Mjpeg(BaseApplication):
        def on_http(self, exchange: HttpExchange) -> None:
            exchange.start_stream(200, {"Content-Type": "multipart/x-mixed-replace; boundary=f"})
            try:
                for _ in range(10_000):
                    exchange.write(chunk)
            finally:
                ended.set()

    with run_server(Mjpeg(), send_timeout=0.5) as srv, RawClient(srv.port) as c:
        c.send(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
        assert ended.wait(TIMEOUT)


# -- Strict third-party clients ----------------------------------------------------------------


def _stream_to(conn: Connection, count: int, size: int) -> list[bytes]:
    sent = []
    for _ in range(count):
        data = os.urandom(size)
        sent.append(hashlib.sha256(data).digest())
        conn.send_binary(data)
    return sent


def test_websockets_client_streams_and_closes_cleanly(app: Recorder, quiet: Any) -> None:
    """#4 (random-payload pings), #11 (close echo: websockets sees 1000, not 1006)."""
    with run_server(app) as srv:
        with ws_connect(f"ws://127.0.0.1:{srv.port}/", ping_interval=0.2, max_size=2**20) as ws:
            conn = app.opened.get(timeout=TIMEOUT)
            for _ in range(5):  # rounds of 10, each with a ping of random bytes
                pong = ws.ping(os.urandom(8))
                digests = _stream_to(conn, 10, 300_000)
                for d in digests:
                    assert hashlib.sha256(ws.recv(timeout=TIMEOUT)).digest() == d  # type: ignore[arg-type]
                assert pong.wait(TIMEOUT)
            ws.send("echo:done")
            assert ws.recv(timeout=TIMEOUT) == "done"
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000
        assert app.closed.get(timeout=TIMEOUT).close_code == 1000


def test_websocket_client_streams_and_closes_cleanly(app: Recorder, quiet: Any) -> None:
    with run_server(app) as srv:
        ws = websocket.create_connection(f"ws://127.0.0.1:{srv.port}/", timeout=TIMEOUT)
        conn = app.opened.get(timeout=TIMEOUT)
        for _ in range(5):
            for d in _stream_to(conn, 10, 300_000):
                opcode, data = ws.recv_data()
                assert opcode == websocket.ABNF.OPCODE_BINARY and hashlib.sha256(data).digest() == d
        ws.ping(b"\xff\x00")
        ws.close()
        assert app.closed.get(timeout=TIMEOUT).close_code == 1000


# -- Server lifecycle and hygiene (#16, #17, #19, #20) -----------------------------------------


def test_bind_errors(app: Recorder) -> None:
    with run_server(app) as srv, pytest.raises(ServerError, match=str(srv.port)):
        WebSocketServer(app, "127.0.0.1", srv.port)
    with pytest.raises(ServerError):
        WebSocketServer(app, "no-such-host.invalid", 0)
    with pytest.raises(ConfigError):
        WebSocketServer(app, port=70000)
    srv = WebSocketServer(app, "127.0.0.1", 0)
    srv.server_close()
    srv.server_close()  # idempotent


def test_an_ipv6_server_serves_an_ipv6_client(app: Recorder, quiet: Any) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        probe = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("IPv6 loopback unavailable")
    probe.close()
    with run_server(app, host="::1") as srv, RawClient(srv.port, host="::1") as c:
        c.handshake(extra={"Host": f"[::1]:{srv.port}"})
        conn = app.opened.get(timeout=TIMEOUT)
        assert conn.request.remote_address[0] == "::1"
        c.send_frame(OP_TEXT, b"echo:over IPv6")
        assert c.recv_frame() == (True, OP_TEXT, b"over IPv6")


def test_shutdown_before_serve_forever_does_not_hang(app: Recorder) -> None:
    srv = WebSocketServer(app, port=0)
    try:
        srv.shutdown()  # before serving: must not hang
        thread = threading.Thread(target=srv.serve_forever, name="camstream-test-serve")
        thread.start()
        thread.join(TIMEOUT)  # the early shutdown() made serve_forever return at once
        assert not thread.is_alive()
    finally:
        srv.server_close()


def test_import_leaves_root_logging_alone() -> None:
    """#17: websocket_server calls logging.basicConfig() at import; #19: -W error clean."""
    code = (
        "import logging, sys; r = logging.getLogger(); before = (list(r.handlers), r.level);"
        "import camstream.ws, websocket_server;"
        "assert (list(r.handlers), r.level) == before, r.handlers;"
        "logging.basicConfig(level=logging.DEBUG); assert r.level == logging.DEBUG"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_many_empty_fragments_are_refused_with_1009(app: Recorder) -> None:
    with run_server(app) as server, RawClient(server.port) as client:
        client.handshake()
        frames = build_frame(OP_TEXT, b"", fin=False) + build_frame(OP_CONT, b"", fin=False) * 2000
        client.send(frames)
        assert client.recv_close()[0] == 1009


def test_connections_beyond_the_cap_are_answered_503_and_cost_no_connection_place(
    app: Recorder,
) -> None:
    with run_server(app, max_connections=3) as server:
        clients = [RawClient(server.port) for _ in range(3)]
        try:
            for client in clients:
                client.handshake()
            with RawClient(server.port) as extra:
                extra.send(upgrade_request("/"))
                status, headers, body = extra.read_http()
                assert (status, headers["retry-after"]) == (503, "5")
                assert body == b"server busy: too many connections; try again later\n"
                assert extra.expect_eof()
            assert server.admission_stats()["open"] == 3
        finally:
            for client in clients:
                client.close()
        # the slots come back once those connections are gone
        assert wait_until(lambda: server.admission_stats()["open"] == 0)
        with RawClient(server.port) as client:
            assert client.handshake()


def test_a_full_server_sheds_the_stalest_half_open_connection(app: Recorder) -> None:
    """Sockets that never send a request cannot keep a real client out (issue #11 item 2)."""
    with run_server(app, max_connections=3) as server:
        silent = [RawClient(server.port) for _ in range(3)]
        try:
            assert wait_until(lambda: server.link_count() == 3)
            with RawClient(server.port) as client:
                client.handshake()
            assert silent[0].expect_eof()  # the oldest one made room
            assert server.admission_stats()["evicted"] >= 1
        finally:
            for sock in silent:
                sock.close()


def test_websocket_server_messaging_api_is_not_offered(
    server: WebSocketServer, app: Recorder
) -> None:
    """#19 and the compatibility API: the base's run_forever (sys.exit) and send_* are hidden."""
    c, conn = open_raw(server, app)
    with c:
        for name in ("run_forever", "send_message", "send_message_to_all", "shutdown_gracefully",
                     "deny_new_connections", "handler_to_client", "clients"):
            assert not hasattr(server, name), name
        for name in ("send_message", "_client"):
            assert not hasattr(conn, name), name
        conn.send_text("still works")
        assert c.recv_frame() == (True, OP_TEXT, b"still works")


def test_the_ws_package_layout() -> None:
    """One concern a module: websocket_server imported by ws/upstream.py only, no module over
    500 lines, and each ws module imports only the ones listed before it in ws/__init__.py."""
    import ast
    import pathlib
    import re

    import camstream.ws

    root = pathlib.Path(camstream.ws.__file__).parent.parent
    doc = camstream.ws.__doc__ or ""
    order = list(dict.fromkeys(re.findall(r"^\* :mod:`~camstream\.ws\.(\w+)`", doc, re.M)))
    modules = sorted(p.stem for p in (root / "ws").glob("*.py") if p.stem != "__init__")
    assert sorted(order) == modules
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        if path.relative_to(root).as_posix() != "ws/upstream.py":
            assert "websocket_server" not in imported, path
        if path.parent.name == "ws":
            assert len(path.read_text(encoding="utf-8").splitlines()) <= 500, path
            if path.stem in order:
                local = {  # "from .link import Link" -> "link"
                    n.module for n in ast.walk(tree)
                    if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module in order
                }
                assert all(order.index(m) < order.index(path.stem) for m in local), path
