"""TLS: wss streaming with strict clients, start-up errors, and no plaintext fallback (#5, #15)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import websocket  # websocket-client
from conftest import SLACK, wait_until
from test_transport import TIMEOUT, Recorder, run_server
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect
from wsraw import RawClient, upgrade_request

from camstream.errors import ConfigError, ConnectionClosedError, ServerError
from camstream.ws import Connection, TlsChannel, WebSocketServer, make_ssl_context

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI"),
]


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (an RST also ends it)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def self_signed_cert(d: Path) -> tuple[str, str]:
    """Make a self-signed certificate for localhost/127.0.0.1 in ``d``: (cert, key) paths."""
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return str(crt), str(key)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_server(cert: tuple[str, str]) -> Iterator[tuple[WebSocketServer, Recorder]]:
    app = Recorder()
    with run_server(app, ssl_context=make_ssl_context(*cert), handshake_timeout=1.0) as srv:
        yield srv, app


@pytest.fixture
def client_ctx(cert: tuple[str, str]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cert[0])


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG, logger="camstream")
    yield
    loud = [r for r in caplog.records if r.levelno > logging.INFO or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]


def test_wss_streaming_websockets(tls_server: Any, client_ctx: ssl.SSLContext, quiet: None) -> None:
    srv, app = tls_server
    with ws_connect(
        f"wss://localhost:{srv.port}/", ssl=client_ctx, ping_interval=0.2, max_size=2**20
    ) as ws:
        conn = app.opened.get(timeout=TIMEOUT)
        for _ in range(30):
            data = os.urandom(250_000)
            conn.send_binary(data)
            assert (
                hashlib.sha256(ws.recv(timeout=TIMEOUT)).digest() == hashlib.sha256(data).digest()
            )  # type: ignore[arg-type]
    assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000
    assert app.closed.get(timeout=TIMEOUT).close_code == 1000


def test_wss_streaming_websocket_client(
    tls_server: Any, cert: tuple[str, str], quiet: None
) -> None:
    srv, app = tls_server
    ws = websocket.create_connection(
        f"wss://127.0.0.1:{srv.port}/", sslopt={"ca_certs": cert[0]}, timeout=TIMEOUT
    )
    conn = app.opened.get(timeout=TIMEOUT)
    for _ in range(30):
        data = os.urandom(200_000)
        conn.send_binary(data)
        assert ws.recv() == data
    ws.close()
    assert app.closed.get(timeout=TIMEOUT).close_code == 1000


def test_no_tls_session_tickets_race_a_threaded_clients_request(
    tls_server: Any, client_ctx: ssl.SSLContext
) -> None:
    """TLS 1.3 session tickets come after the handshake, while the client already writes its
    request. A client that reads in one thread and writes in another on the same TLS socket
    (websockets' sync client) then loses its request now and then (1 connect in ~500 hung until
    its open timeout here): OpenSSL connections are not for two threads at once. The server
    sends none, so nothing arrives until the client's request is answered."""
    srv, _ = tls_server
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
    with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.version() == "TLSv1.3"
        tls.sendall(upgrade_request())
        answer = b""
        while b"\r\n\r\n" not in answer:  # (tickets sent would come before the answer)
            chunk = tls.recv(4096)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 101"), answer
        assert tls.session is None or not tls.session.has_ticket


def test_wss_over_tls_1_2(tls_server: Any, cert: tuple[str, str], quiet: None) -> None:
    """The channel is not TLS 1.3 only: a client that stops at TLS 1.2 streams as well."""
    srv, app = tls_server
    ctx = ssl.create_default_context(cafile=cert[0])
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with ws_connect(f"wss://localhost:{srv.port}/", ssl=ctx, max_size=2**20) as ws:
        assert ws.socket.version() == "TLSv1.2"  # type: ignore[attr-defined]
        conn = app.opened.get(timeout=TIMEOUT)
        for _ in range(10):
            data = os.urandom(300_000)
            conn.send_binary(data)
            assert ws.recv(timeout=TIMEOUT) == data
        ws.send("echo:both ways")
        assert ws.recv(timeout=TIMEOUT) == "both ways"


def test_plaintext_client_on_tls_port_gets_nothing(
    tls_server: Any, client_ctx: ssl.SSLContext, quiet: None
) -> None:
    """#5: stock logs 'SSL not available' and may serve ws:// in cleartext on the TLS port."""
    srv, app = tls_server
    with RawClient(srv.port) as c:
        c.send(upgrade_request())
        reply = read_all(c.sock)
        assert b"HTTP" not in reply  # at most a TLS alert record, never an HTTP response
    with pytest.raises((websocket.WebSocketException, OSError)):
        websocket.create_connection(f"ws://127.0.0.1:{srv.port}/", timeout=TIMEOUT)
    # A TLS handshake that never starts times out; so does a ClientHello dribbled in.
    with RawClient(srv.port) as silent, RawClient(srv.port) as slow:
        t0 = time.monotonic()
        with contextlib.suppress(OSError):
            for byte in b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 4:
                slow.send(bytes([byte]))
                time.sleep(0.05)  # pacing the attack (handshake_timeout is 1 s)
        assert slow.expect_eof() and time.monotonic() - t0 < 3 * SLACK
        assert silent.expect_eof()
    assert app.opened.empty()
    with ws_connect(f"wss://localhost:{srv.port}/", ssl=client_ctx) as ws:  # still serving wss
        ws.send("echo:alive")
        assert ws.recv(timeout=TIMEOUT) == "alive"


def test_missing_certificate_files_and_a_file_name_for_a_context(
    tmp_path: Path, cert: tuple[str, str]
) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ServerError, match="missing.pem"):
        make_ssl_context(missing)
    with pytest.raises(ServerError, match="missing.pem"):
        make_ssl_context(cert[0], missing)
    with pytest.raises(ConfigError):
        WebSocketServer(Recorder(), port=0, ssl_context="cert.pem")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pem_files(tmp_path_factory: pytest.TempPathFactory, cert: tuple[str, str]) -> Path:
    """Two certificates with their keys (a: the module's), an encrypted key, and junk."""
    d = tmp_path_factory.mktemp("pem")
    other = self_signed_cert(tmp_path_factory.mktemp("other"))
    for name, (crt, key) in (("a", cert), ("b", other)):
        shutil.copy(crt, d / f"{name}.crt")
        shutil.copy(key, d / f"{name}.key")
    subprocess.run(
        ["openssl", "pkey", "-in", str(d / "a.key"), "-aes256", "-passout", "pass:x", "-out",
         str(d / "encrypted.key")], check=True, capture_output=True, timeout=60,
    )
    (d / "junk.pem").write_text("junk\n")
    (d / "cut.crt").write_bytes((d / "a.crt").read_bytes()[:300])
    return d


@pytest.mark.parametrize(
    ("certfile", "keyfile", "words"),
    [
        ("junk.pem", "a.key", "certificate file {d}/junk.pem holds no PEM certificate"),
        ("cut.crt", "a.key", "certificate file {d}/cut.crt holds a damaged PEM certificate"),
        ("a.crt", None, "{d}/a.crt holds no PEM private key: give the key file too"),
        ("a.crt", "junk.pem", "key file {d}/junk.pem holds no PEM private key"),
        ("a.crt", "encrypted.key", "private key {d}/encrypted.key is encrypted"),
        ("a.crt", "b.key", "private key {d}/b.key does not belong to the certificate in "
                           "{d}/a.crt"),
    ],
)
def test_a_bad_tls_file_is_named_with_the_reason(pem_files: Path, certfile, keyfile, words):
    with pytest.raises(ServerError) as info:
        make_ssl_context(str(pem_files / certfile), keyfile and str(pem_files / keyfile))
    assert words.format(d=pem_files) in str(info.value)
    assert "_ssl.c" not in str(info.value)
    make_ssl_context(str(pem_files / "a.crt"), str(pem_files / "a.key"))  # the good pair works


def test_tls_handshake_failure_never_falls_back(tls_server: Any, quiet: None) -> None:
    srv, app = tls_server
    ctx = ssl.create_default_context()  # does not trust the self-signed cert: client aborts
    with (
        socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT) as raw,
        pytest.raises(ssl.SSLError),
    ):
        ctx.wrap_socket(raw, server_hostname="localhost")
    with RawClient(srv.port) as c:
        c.send(b"\x16\x03\x01\x00\x05hello" + upgrade_request())  # broken ClientHello
        assert b"HTTP" not in read_all(c.sock)
    assert app.opened.empty()


# -- The TLS channel (#15): handshake deadline, plaintext clients, shedding, stop() ------------


def test_plaintext_request_on_tls_port_is_dropped_at_once(
    cert: tuple[str, str], caplog: pytest.LogCaptureFixture, quiet: None
) -> None:
    """Plain HTTP (a WebSocket upgrade, a snapshot GET) on the TLS port: dropped without
    waiting for the handshake deadline, logged at DEBUG, never answered in plaintext."""
    app = Recorder()
    requests = (upgrade_request(), b"GET /snapshot.jpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    with run_server(app, ssl_context=make_ssl_context(*cert),
                    handshake_timeout=2.0 * SLACK) as srv:
        for request in requests:
            with RawClient(srv.port) as c:
                started = time.monotonic()
                c.send(request)
                reply = read_all(c.sock)
                assert time.monotonic() - started < srv.handshake_timeout / 2
            assert b"HTTP" not in reply
            assert not reply or reply[0] == 0x15  # nothing, or a TLS alert record
        assert wait_until(lambda: srv.link_count() == 0)

    def dropped() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "dropped: SSLError" in r.getMessage()]

    assert wait_until(lambda: len(dropped()) == len(requests))
    assert all(r.levelno == logging.DEBUG and not r.exc_info for r in dropped())
    assert not app.requests and app.opened.empty()


def test_client_stalled_mid_tls_handshake_is_dropped_at_the_deadline(
    tls_server: Any, cert: tuple[str, str], client_ctx: ssl.SSLContext, quiet: None
) -> None:
    """A real ClientHello, the server's whole first flight, then silence: the server hangs up
    at handshake_timeout (1 s here), and serves others meanwhile."""
    srv, app = tls_server
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    half = client_ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with RawClient(srv.port) as stalled:
        started = time.monotonic()
        with pytest.raises(ssl.SSLWantReadError):
            half.do_handshake()
        stalled.send(outgoing.read())  # the ClientHello
        flight = stalled.sock.recv(65536)
        assert flight[:1] == b"\x16"  # a handshake record: the server answered
        with ws_connect(f"wss://localhost:{srv.port}/", ssl=client_ctx) as ws:
            ws.send("echo:meanwhile")
            assert ws.recv(timeout=TIMEOUT) == "meanwhile"
        assert stalled.expect_eof()  # never finished: dropped
        elapsed = time.monotonic() - started
    assert srv.handshake_timeout * 0.9 < elapsed < srv.handshake_timeout + 1.5 * SLACK, elapsed
    assert wait_until(lambda: srv.link_count() == 0)
    assert len(app.requests) == 1  # only the other client got as far as HTTP


def test_stalled_tls_reader_is_shed_while_others_keep_streaming(
    cert: tuple[str, str], client_ctx: ssl.SSLContext, quiet: None
) -> None:
    """A wss viewer that stops reading blocks the sender: shed after send_timeout, while two
    other wss viewers keep receiving every frame intact."""
    app = Recorder()
    payload = os.urandom(200_000)
    with run_server(app, ssl_context=make_ssl_context(*cert), send_timeout=1.0) as srv:
        stalled = RawClient(srv.port)
        stalled.sock = client_ctx.wrap_socket(stalled.sock, server_hostname="localhost")
        stalled.handshake()
        stalled_conn = app.opened.get(timeout=TIMEOUT)
        viewers = []
        for _ in range(2):
            viewers.append(
                websocket.create_connection(
                    f"wss://127.0.0.1:{srv.port}/", sslopt={"ca_certs": cert[0]}, timeout=TIMEOUT
                )
            )
        conns = [stalled_conn] + [app.opened.get(timeout=TIMEOUT) for _ in viewers]
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

        feeders = [threading.Thread(target=feed, args=(conn, 1 / 30)) for conn in conns]
        t0 = time.monotonic()
        for t in feeders:
            t.start()
        received = 0
        try:  # the viewers read on until half a second after the stalled one was shed
            while not shed_at or time.monotonic() < shed_at[0] + 0.5:
                assert time.monotonic() - t0 < 3 * TIMEOUT, "the stalled reader was never shed"
                for ws in viewers:
                    assert ws.recv() == payload
                received += 1
            window = time.monotonic() - t0
        finally:
            stop.set()
            for t in feeders:
                t.join(TIMEOUT)
        # buffers fill in well under a second at 30 fps x 200 KB, then send_timeout (1 s)
        assert shed_at[0] - t0 < (1.0 + 2.5) * SLACK, shed_at
        assert app.closed.get(timeout=TIMEOUT) is stalled_conn
        # loose: a 2-core machine, 3 TLS streams
        assert received >= 0.8 * 30 * window / SLACK, (received, window)
        for ws in viewers:
            ws.close()
        stalled.close()


def test_stop_closes_tls_viewers_with_1001(
    streamer_factory: Any, cert: tuple[str, str], client_ctx: ssl.SSLContext, quiet: None
) -> None:
    """A TLS Streamer end to end: wss viewers and HTTPS snapshot/MJPEG get whole JPEGs through
    the channel, and stop() closes every wss viewer with 1001 at once."""
    streamer = streamer_factory("test", certfile=cert[0], keyfile=cert[1], fps=30)
    assert streamer.url.startswith("wss://")
    base = f"https://127.0.0.1:{streamer.port}"
    with urllib.request.urlopen(f"{base}/snapshot.jpg", context=client_ctx, timeout=TIMEOUT) as r:
        assert cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR) is not None
    with contextlib.ExitStack() as stack:
        mjpeg = stack.enter_context(
            urllib.request.urlopen(f"{base}/stream.mjpg", context=client_ctx, timeout=TIMEOUT)
        )
        viewers = [
            stack.enter_context(ws_connect(streamer.url, ssl=client_ctx, open_timeout=TIMEOUT))
            for _ in range(3)
        ]
        for ws in viewers:
            assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "metadata"
            while isinstance(message := ws.recv(timeout=TIMEOUT), str):
                pass
            assert cv2.imdecode(np.frombuffer(message, np.uint8), cv2.IMREAD_COLOR) is not None
        head = mjpeg.read(65536)
        assert b"\xff\xd8" in head  # a JPEG part arrived over the same channel
        started = time.monotonic()
        streamer.stop()
        for ws in viewers:
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    ws.recv(timeout=TIMEOUT)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert time.monotonic() - started < 1.5 * SLACK


def test_tls_channel_write_waits_bounded_and_never_follows_a_cut_stream(
    cert: tuple[str, str], client_ctx: ssl.SSLContext
) -> None:
    """TlsChannel alone: behind a stalled write, another write gives up after wait_limit (the
    watchdog must never wait forever); after a failed write, every write fails at once."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client_raw = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        server_raw, _ = listener.accept()
    channel = TlsChannel(server_raw, make_ssl_context(*cert), wait_limit=0.3)
    handshake = threading.Thread(target=channel.handshake)
    handshake.start()
    client = client_ctx.wrap_socket(client_raw, server_hostname="localhost")
    handshake.join(TIMEOUT)
    failures: list[BaseException] = []

    def stalled_write() -> None:
        try:
            channel.sendall(os.urandom(1 << 20) * 16)  # the client reads nothing
        except OSError as exc:
            failures.append(exc)

    writer = threading.Thread(target=stalled_write)
    try:
        writer.start()
        assert wait_until(
            lambda: channel.write_started is not None
            and time.monotonic() - channel.write_started > 0.2
        )
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            channel.sendall(b"behind a stalled write")
        assert 0.25 < time.monotonic() - started < 0.3 + 1.0 * SLACK
        server_raw.shutdown(socket.SHUT_RDWR)  # what the watchdog does: the stalled write fails
        writer.join(TIMEOUT)
        assert failures and isinstance(failures[0], OSError)
        with pytest.raises(OSError):
            channel.sendall(b"never after a cut record stream")
    finally:
        with contextlib.suppress(OSError):
            server_raw.shutdown(socket.SHUT_RDWR)
        writer.join(TIMEOUT)
        client.close()
        server_raw.close()
