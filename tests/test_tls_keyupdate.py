"""TLS 1.3 KeyUpdate during streaming: no corrupted frame, ever (#15, issue 11 item 4).

A TLS 1.3 peer may send a KeyUpdate at any time, and may ask the server to update its own keys
("update requested"). The server's answer is written while its reader thread is inside the
read call, whoever else is writing frames at that moment. Python's ``ssl`` has no KeyUpdate
API, so the client calls libssl's ``SSL_key_update`` through ``ctypes`` on the ``SSL`` object of
an ordinary :class:`ssl.SSLSocket`.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import hashlib
import os
import shutil
import ssl
import struct
import threading
import time
import weakref
from typing import Callable

import pytest
from conftest import wait_until
from test_transport import TIMEOUT, Recorder, run_server
from test_transport_tls import self_signed_cert
from wsraw import RawClient

from camstream.errors import ConnectionClosedError
from camstream.ws import Connection, make_ssl_context
from camstream.ws.frames import OP_BINARY
from camstream.ws.tls import _MAX_READER_BACKLOG

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI"),
]

SSL_KEY_UPDATE_NOT_REQUESTED, SSL_KEY_UPDATE_REQUESTED = 0, 1
TLS1_3_VERSION = 0x0304


def _libssl() -> ctypes.CDLL | None:
    """The libssl that Python's ``_ssl`` uses (already loaded: dlopen returns the same one)."""
    name = ctypes.util.find_library("ssl")
    if name is None:
        return None
    lib = ctypes.CDLL(name)
    try:
        lib.OpenSSL_version.restype = ctypes.c_char_p
        lib.OpenSSL_version.argtypes = [ctypes.c_int]
        if lib.OpenSSL_version(0).decode() != ssl.OPENSSL_VERSION:
            return None
    except AttributeError:
        return None
    for fn in ("SSL_key_update", "SSL_do_handshake", "SSL_version", "SSL_is_server"):
        getattr(lib, fn).restype = ctypes.c_int
    lib.SSL_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.SSL_do_handshake.argtypes = [ctypes.c_void_p]
    lib.SSL_version.argtypes = [ctypes.c_void_p]
    lib.SSL_is_server.argtypes = [ctypes.c_void_p]
    lib.SSL_get_error.restype = ctypes.c_int
    lib.SSL_get_error.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.ERR_get_error.restype = ctypes.c_ulong
    lib.ERR_error_string_n.argtypes = [ctypes.c_ulong, ctypes.c_char_p, ctypes.c_size_t]
    return lib


LIBSSL = _libssl()


def ssl_pointer(sock: ssl.SSLSocket) -> int:
    """The ``SSL *`` inside ``sock`` (CPython's PySSLSocket: PyObject_HEAD, Socket, ssl).

    The field before it is a weak reference to ``sock``: checked before the pointer is used, so a
    different layout fails the test instead of crashing the interpreter.
    """
    obj = sock._sslobj  # type: ignore[attr-defined]
    base = id(obj) + ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
    socket_ref, ssl_ptr = (ctypes.c_void_p * 2).from_address(base)
    assert socket_ref == id(weakref.ref(sock)), "unexpected _ssl._SSLSocket layout"
    assert LIBSSL is not None and ssl_ptr
    assert LIBSSL.SSL_is_server(ssl_ptr) == 0
    assert LIBSSL.SSL_version(ssl_ptr) == TLS1_3_VERSION
    return int(ssl_ptr)


class KeyUpdatingClient(RawClient):
    """A raw WebSocket client over TLS 1.3 that can send KeyUpdate messages."""

    def __init__(self, port: int, cafile: str) -> None:
        super().__init__(port, timeout=TIMEOUT)
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
        self.ssl = ssl_pointer(self.sock)  # type: ignore[arg-type]

    def key_update(self, requested: bool) -> None:
        """Send a KeyUpdate now ("update requested": the server must update its keys too)."""
        assert LIBSSL is not None
        kind = SSL_KEY_UPDATE_REQUESTED if requested else SSL_KEY_UPDATE_NOT_REQUESTED
        if LIBSSL.SSL_key_update(self.ssl, kind) != 1:
            raise ssl.SSLError("SSL_key_update failed")
        ret = LIBSSL.SSL_do_handshake(self.ssl)  # writes the KeyUpdate message
        if ret != 1:
            code = LIBSSL.SSL_get_error(self.ssl, ret)
            buf = ctypes.create_string_buffer(256)
            LIBSSL.ERR_error_string_n(LIBSSL.ERR_get_error(), buf, len(buf))
            raise ssl.SSLError(f"sending the KeyUpdate failed: {code} {buf.value.decode()}")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


BODIES = [os.urandom(size) for size in (20_000, 70_000, 150_000, 3_000)]
FRAMES = [hashlib.sha256(b).digest() + b for b in BODIES]


def feed(conn: Connection, stop: threading.Event) -> None:
    """Send frames back to back until ``stop`` or the connection ends."""
    i = 0
    while not stop.is_set():
        try:
            conn.send_binary(FRAMES[i % len(FRAMES)])
        except ConnectionClosedError:
            return
        i += 1


NONBLOCKING: collections.Counter[str] = collections.Counter()  # how try_send went


def feed_nonblocking(conn: Connection, stop: threading.Event) -> None:
    """Send frames back to back the way the fan-out does: ``Connection.try_send_messages`` of
    the framed message; a rest (ciphertext) the kernel did not take is left with the link and
    written by ``Connection.flush`` before the next frame; a busy link falls back to the
    blocking send."""
    i = 0
    while not stop.is_set():
        frame = FRAMES[i % len(FRAMES)]
        try:
            left = conn.try_send_messages(Connection.binary_message(frame))
            NONBLOCKING["busy" if left is None else "rest" if left else "whole"] += 1
            if left is None:
                conn.send_binary(frame)
            elif left:
                assert conn.pending == left
                conn.flush()
        except ConnectionClosedError:
            return
        i += 1


def check_stream(client: KeyUpdatingClient, frames: int, errors: list[str]) -> None:
    """Receive ``frames`` binary messages, sending a KeyUpdate after each; record any damage."""
    try:
        for i in range(frames):
            fin, opcode, payload = client.recv_frame()
            if (fin, opcode) != (True, OP_BINARY) or payload[32:] not in BODIES:
                errors.append(f"frame {i}: corrupted ({opcode}, {len(payload)} bytes)")
                return
            if hashlib.sha256(payload[32:]).digest() != payload[:32]:
                errors.append(f"frame {i}: digest mismatch")
                return
            client.key_update(requested=i % 2 == 0)
    except (OSError, EOFError) as exc:  # "bad record mac" is an ssl.SSLError
        errors.append(f"after {i} frames: {exc!r}")


@pytest.mark.skipif(LIBSSL is None, reason="libssl not loadable through ctypes")
@pytest.mark.parametrize("feeder", [feed, feed_nonblocking])
@pytest.mark.parametrize("clients", [1, 4])
def test_key_updates_during_streaming_corrupt_nothing(
    cert: tuple[str, str], clients: int, feeder: Callable[[Connection, threading.Event], None]
) -> None:
    app = Recorder()
    stop = threading.Event()
    errors: list[str] = []
    frames = 300 if clients == 1 else 120
    NONBLOCKING.clear()
    with run_server(app, ssl_context=make_ssl_context(*cert)) as srv:
        conns = []
        feeders: list[threading.Thread] = []
        try:
            for _ in range(clients):
                c = KeyUpdatingClient(srv.port, cert[0])
                c.handshake()
                conns.append(c)
                feeders.append(
                    threading.Thread(target=feeder, args=(app.opened.get(timeout=TIMEOUT), stop))
                )
            readers = [
                threading.Thread(target=check_stream, args=(c, frames, errors)) for c in conns
            ]
            for t in feeders + readers:
                t.start()
            for t in readers:
                t.join(TIMEOUT * 6)
                assert not t.is_alive()
        finally:
            stop.set()
            for c in conns:
                c.close()
            for t in feeders:
                t.join(TIMEOUT)
    assert not errors, errors
    if feeder is feed_nonblocking:  # both ways of the fast path were taken
        assert NONBLOCKING["whole"] > 0 and NONBLOCKING["rest"] > 0, NONBLOCKING


@pytest.mark.skipif(LIBSSL is None, reason="libssl not loadable through ctypes")
def test_key_update_flood_from_a_client_that_does_not_read_is_bounded(
    cert: tuple[str, str],
) -> None:
    """A client that reads nothing and asks for a key update with every byte it sends: each
    answer waits behind the blocked sender, and the server stops reading (instead of buffering
    answers without limit) once they reach the reader's backlog limit."""
    app = Recorder()
    stop = threading.Event()
    big = os.urandom(1 << 20)
    # send_timeout is long so the blocked sender stays blocked while we look
    with run_server(app, ssl_context=make_ssl_context(*cert), send_timeout=60) as srv:
        client = KeyUpdatingClient(srv.port, cert[0])
        client.handshake()
        conn = app.opened.get(timeout=TIMEOUT)
        feeder = threading.Thread(target=feed_one, args=(conn, big, stop))
        feeder.start()
        tls = conn.link.tls
        assert tls is not None
        peak = 0
        try:
            def sender_blocked() -> bool:
                started = conn.link.send_started
                return started is not None and time.monotonic() - started > 0.5

            assert wait_until(sender_blocked), "the sender never blocked"
            # A text frame of 65,000 bytes, sent one byte per KeyUpdate: application data keeps
            # OpenSSL's own limit on consecutive key updates from ending the flood.
            client.send(b"\x81\xfe" + struct.pack("!H", 65000) + b"\0\0\0\0")
            for i in range(30_000):
                try:
                    client.key_update(requested=True)
                    client.sock.send(b" ")
                except OSError:
                    break  # the client's own buffers are full: the server stopped reading
                if i % 200 == 0:
                    peak = max(peak, tls.backlog)
            peak = max(peak, tls.backlog)
        finally:
            stop.set()
            conn.abort()
            feeder.join(TIMEOUT)
            client.close()
        assert not feeder.is_alive()
    assert 0 < peak <= _MAX_READER_BACKLOG + 4096, peak


def feed_one(conn: Connection, frame: bytes, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            conn.send_binary(frame)
        except ConnectionClosedError:
            return
