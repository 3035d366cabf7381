"""TLS: wss streaming with strict clients, start-up errors, and no plaintext fallback (#5, #15)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket  # websocket-client
from test_transport import TIMEOUT, Recorder, run_server
from websockets.sync.client import connect as ws_connect
from wsraw import RawClient, upgrade_request

from camstream.errors import ConfigError, ServerError
from camstream.transport import WebSocketServer, make_ssl_context

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
    with RawClient(srv.port) as silent:  # a TLS handshake that never starts times out
        assert silent.expect_eof()
    with RawClient(srv.port) as slow:  # a ClientHello dribbled in: the deadline still holds
        t0 = time.monotonic()
        with contextlib.suppress(OSError):
            for byte in b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 4:
                slow.send(bytes([byte]))
                time.sleep(0.05)  # pacing the attack (handshake_timeout is 1 s)
        assert slow.expect_eof() and time.monotonic() - t0 < 3
    assert app.opened.empty()
    with ws_connect(f"wss://localhost:{srv.port}/", ssl=client_ctx) as ws:  # still serving wss
        ws.send("echo:alive")
        assert ws.recv(timeout=TIMEOUT) == "alive"


def test_bad_certificate_files(tmp_path: Path, cert: tuple[str, str]) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ServerError, match="missing.pem"):
        make_ssl_context(missing)
    with pytest.raises(ServerError, match="missing.pem"):
        make_ssl_context(cert[0], missing)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ServerError, match="junk.pem"):
        make_ssl_context(str(junk))
    with pytest.raises(ServerError, match="cert.pem"):
        make_ssl_context(cert[0])  # the key is in another file
    with pytest.raises(ConfigError):
        WebSocketServer(Recorder(), port=0, ssl_context="cert.pem")  # type: ignore[arg-type]


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
