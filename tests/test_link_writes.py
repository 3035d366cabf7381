"""Bytes in flight belong to the Link (camstream.ws.link): a message a non-blocking write began
is finished before anything else goes out, whoever writes next; a cut message is followed by
nothing; a rest nobody writes is bounded by the watchdog.

Real TCP sockets on 127.0.0.1 (plain and TLS), small buffers so that big messages are always
written in part; the peer parses what arrives message by message.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import TIMEOUT, wait_until
from test_transport_tls import self_signed_cert

from camstream.errors import ConnectionClosedError
from camstream.ws import Connection, Link, TlsChannel, make_ssl_context
from camstream.ws.watchdog import Watchdog

BIG = 2_000_000  # far more than the socket buffers below: a non-blocking write ends part-way


def payload(index: int, size: int) -> bytes:
    """Message ``index``'s payload: its number, then a pattern that shows any foreign bytes."""
    head = struct.pack("!I", index)
    body = (head * (size // 4 + 1))[: max(size - 4, 0)]
    return head + body


def message(index: int, size: int) -> bytes:
    return Connection.binary_message(payload(index, size))


class Peer(threading.Thread):
    """The far end: reads everything until EOF (slowly, in small pieces, if asked), then
    parses it into messages."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket, slow: bool = False) -> None:
        super().__init__(name="test-peer", daemon=True)
        self.sock, self.slow = sock, slow
        self.data = bytearray()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                chunk = self.sock.recv(16384 if self.slow else 262144)
                if not chunk:
                    return
                self.data += chunk
                if self.slow:
                    time.sleep(0.0005)
        except (OSError, ssl.SSLError) as exc:  # a reset after an abort
            self.error = exc

    def messages(self) -> tuple[list[bytes], bytes]:
        """The whole messages received, and the bytes after the last whole one."""
        found, tail = split_messages(bytes(self.data))
        for i, (opcode, _) in enumerate(found):
            assert opcode == 0x2, f"message {i}: not a binary message: {opcode:#x}"
        return [payload for _, payload in found], tail


def split_messages(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """A server's unmasked, unfragmented messages in ``data`` as (opcode, payload), and the
    bytes after the last whole one."""
    found, at = [], 0
    while at + 2 <= len(data):
        opcode, n, head = data[at] & 0x0F, data[at + 1] & 0x7F, 2
        assert data[at] & 0xF0 == 0x80 and opcode in (0x1, 0x2), (
            f"message {len(found)}: not a frame header: {data[at]:#x}"
        )
        if n == 126:
            n, head = struct.unpack_from("!H", data, at + 2)[0], 4
        elif n == 127:
            n, head = struct.unpack_from("!Q", data, at + 2)[0], 10
        if at + head + n > len(data):
            break
        found.append((opcode, data[at + head : at + head + n]))
        at += head + n
    return found, data[at:]


def check_whole(messages: list[bytes], sizes: dict[int, int]) -> list[int]:
    """Every message is one of ours, whole and untouched; returns their numbers in order."""
    numbers = []
    for got in messages:
        (index,) = struct.unpack_from("!I", got)
        assert index in sizes, f"message with foreign bytes at its start: {got[:8]!r}"
        assert got == payload(index, sizes[index]), f"message {index} is damaged"
        numbers.append(index)
    return numbers


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=["plain", "tls"])
def link_and_peer(
    request: pytest.FixtureRequest, cert: tuple[str, str]
) -> Iterator[tuple[Link, socket.socket | ssl.SSLSocket]]:
    """A server-side Link on an accepted TCP socket (TLS or not) and the client's socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    client.settimeout(3 * TIMEOUT)
    server.settimeout(3 * TIMEOUT)
    link = Link(server, time.monotonic() + 3 * TIMEOUT)
    link.deadline = None
    peer: socket.socket | ssl.SSLSocket = client
    if request.param == "tls":
        channel = TlsChannel(server, make_ssl_context(*cert), wait_limit=3 * TIMEOUT)
        handshake = threading.Thread(target=channel.handshake, name="test-tls-handshake")
        handshake.start()
        context = ssl.create_default_context(cafile=cert[0])
        peer = context.wrap_socket(client, server_hostname="localhost")
        handshake.join(3 * TIMEOUT)
        assert not handshake.is_alive()
        link.tls = channel
    try:
        yield link, peer
    finally:
        link.abort()
        link.close_fd(server.close)
        peer.close()


def test_a_begun_message_is_finished_before_the_next_writers_message(link_and_peer) -> None:
    """The planted bug this catches: a rest left for later while another writer goes first."""
    link, sock = link_and_peer
    left = link.try_send(message(1, BIG))
    assert left is not None and left > 0 and link.pending == left  # part-way: the link's rest
    assert link.send_lock.acquire(blocking=False)  # and the lock is free
    link.send_lock.release()
    peer = Peer(sock)
    peer.start()
    link.send(message(2, 100))  # another writer: the rest of message 1 must go first
    assert link.pending == 0
    link.half_close()
    peer.join(3 * TIMEOUT)
    assert not peer.is_alive()
    messages, tail = peer.messages()
    assert check_whole(messages, {1: BIG, 2: 100}) == [1, 2] and tail == b""


def test_no_second_message_is_begun_while_a_rest_is_pending(link_and_peer) -> None:
    link, sock = link_and_peer
    assert link.try_send(message(1, BIG))  # (a positive number: bytes kept)
    assert link.pending > 0
    assert link.try_send(message(2, 100)) is None  # not idle: nothing written
    assert not link.writable_now()  # (a keepalive ping or a Close waits for the rest too)
    peer = Peer(sock)
    peer.start()
    link.flush()  # what a viewer's thread does first thing
    assert link.pending == 0 and link.send_started is None
    assert wait_until(lambda: link.try_send(message(3, 100)) is not None, 3 * TIMEOUT)
    link.flush()
    link.half_close()
    peer.join(3 * TIMEOUT)
    assert not peer.is_alive()
    messages, tail = peer.messages()
    assert check_whole(messages, {1: BIG, 3: 100}) == [1, 3] and tail == b""


def test_text_and_binary_go_as_one_write(link_and_peer) -> None:
    """The fast path's "frame text + JPEG": one non-blocking write of two messages."""
    link, sock = link_and_peer
    peer = Peer(sock)
    peer.start()
    first, second = message(1, 40), message(2, BIG // 4)
    assert wait_until(lambda: link.try_send(first, second) is not None, 3 * TIMEOUT)
    link.flush()
    link.half_close()
    peer.join(3 * TIMEOUT)
    messages, tail = peer.messages()
    assert check_whole(messages, {1: 40, 2: BIG // 4}) == [1, 2] and tail == b""


def test_many_writers_never_interleave(link_and_peer) -> None:
    """A fan-out thread writing without blocking (leaving rests it never writes itself), a
    viewer's thread writing its own messages, a reader thread's small messages (pongs), a slow
    peer: every message arrives whole, each writer's in its own order."""
    link, sock = link_and_peer
    sizes: dict[int, int] = {}
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = {"begun": 0, "rests": 0}

    def fanout(index: int, size: int) -> None:
        while not stop.is_set():
            sizes[index] = size
            left = link.try_send(message(index, size))
            if left is not None:
                counts["begun"] += 1
                counts["rests"] += left > 0
                index += 1
            time.sleep(0.001)

    def sender(index: int, size: int, period: float) -> None:
        try:
            while not stop.is_set():
                sizes[index] = size
                link.send(message(index, size))  # a rest of the fan-out's goes first
                index += 1
                time.sleep(period)
        except ConnectionClosedError as exc:
            errors.append(exc)

    peer = Peer(sock, slow=True)
    peer.start()
    threads = [
        threading.Thread(target=fanout, args=(1_000_000, 150_000), name="test-fanout"),
        threading.Thread(target=sender, args=(2_000_000, 30_000, 0.003), name="test-sender"),
        threading.Thread(target=sender, args=(3_000_000, 20, 0.001), name="test-reader"),
    ]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: counts["rests"] >= 20 and len(peer.data) > 4 * BIG, 6 * TIMEOUT)
    stop.set()
    for thread in threads:
        thread.join(3 * TIMEOUT)
        assert not thread.is_alive()
    assert not errors, errors
    link.flush()
    link.half_close()
    peer.join(3 * TIMEOUT)
    assert not peer.is_alive()
    messages, tail = peer.messages()
    numbers = check_whole(messages, sizes)
    assert tail == b""
    for first in (1_000_000, 2_000_000, 3_000_000):
        mine = [n for n in numbers if first <= n < first + 1_000_000]
        assert mine == list(range(first, first + len(mine))), "a writer's messages reordered"
        assert len(mine) >= 2


def test_a_cut_message_is_followed_by_nothing(link_and_peer) -> None:
    link, sock = link_and_peer
    assert link.try_send(message(1, BIG))
    assert link.pending > 0
    link.abort()  # what the watchdog does to a drain that takes too long
    with pytest.raises(ConnectionClosedError):
        link.send(message(2, 10))
    with pytest.raises(ConnectionClosedError):
        link.flush()
    assert link.try_send(message(3, 10)) is None
    peer = Peer(sock)
    peer.start()
    peer.join(3 * TIMEOUT)
    assert not peer.is_alive()
    messages, tail = peer.messages()
    assert messages == [] and message(1, BIG).startswith(bytes(tail))  # a prefix of message 1


def test_the_watchdog_sheds_a_rest_nobody_writes(link_and_peer) -> None:
    """A rest left in the link counts as a write in progress: with no writer to finish it, the
    watchdog drops the link after send_timeout, as it would a blocked write."""
    link, _sock = link_and_peer
    assert link.send_started is None
    before = time.monotonic()
    assert link.try_send(message(1, BIG))
    started = link.send_started
    assert started is not None and before <= started <= time.monotonic()
    watchdog = Watchdog(
        lambda: [(link, None)], send_timeout=0.2, ping_interval=None, ping_timeout=1.0,
        name="camstream-test-watchdog",
    )
    watchdog.start()
    try:
        assert wait_until(lambda: link.timed_out, 3 * TIMEOUT)
    finally:
        watchdog.stop()
    assert not link.writable and link.send_started is None
    with pytest.raises(ConnectionClosedError):
        link.flush()
