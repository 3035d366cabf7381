"""The per-connection budget counts messages, not fragments (issue 22 item 3), and bytes.

Autobahn cannot run here, so the cases of its sections 1-7 and 10 that fragmentation, control
frames and big messages touch are played with the raw-frame client (``wsraw.py``) against an
echo application on the transport, with the message budget the Streamer uses (20 a second,
bursts of 40): each case must pass as Autobahn scores it (the echo, then a clean close). Then the
budget must still close floods with 1008, and the Streamer's own defaults (4 KiB messages, the
byte budgets) must let a fragmented control message through.
"""

from __future__ import annotations

import json
import struct
import threading
import time

import pytest
from conftest import TIMEOUT, wait_until
from test_transport import run_server
from wsraw import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawClient, build_frame

from camstream.ws import AddressRates, BaseApplication, Connection
from camstream.ws.budget import AddressBudget, ConnectionBudget, frame_cost
from camstream.ws.limits import Limits

pytestmark = pytest.mark.timeout(120)

STREAMER_BUDGET = {"message_rate": 20.0, "message_burst": 40.0}  # as Streamer passes it


class Echo(BaseApplication):
    """Autobahn's test subject: every message comes back as it came."""

    def __init__(self) -> None:
        self.closed: list[Connection] = []
        self.done = threading.Event()

    def on_text(self, conn: Connection, text: str) -> None:
        conn.send_text(text)

    def on_binary(self, conn: Connection, data: bytes) -> None:
        conn.send_binary(data)

    def on_close(self, conn: Connection) -> None:
        self.closed.append(conn)
        self.done.set()


def _fragments(opcode: int, payload: bytes, size: int) -> list[bytes]:
    """``payload`` as frames of ``size`` bytes (Autobahn's autoFragmentSize)."""
    chunks = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
    return [
        build_frame(opcode if i == 0 else OP_CONT, chunk, fin=i == len(chunks) - 1)
        for i, chunk in enumerate(chunks)
    ]


def _chopped(client: RawClient, data: bytes, size: int) -> None:
    """Write ``data`` in ``size``-byte TCP writes (Autobahn's "chopped" variants)."""
    for i in range(0, len(data), size):
        client.send(data[i:i + size])


_UTF8 = "Hello-µ@ßöäüàá-UTF-8!!".encode()
_KOSME = "κόσμε".encode()
_CASES: dict[str, tuple[list[bytes | tuple[bytes, int]], list[tuple[int, bytes]]]] = {
    # 1.1.x / 1.2.x: text and binary messages up to 64 KiB, whole
    **{f"1.1 text {n}": ([build_frame(OP_TEXT, b"*" * n)], [(OP_TEXT, b"*" * n)])
       for n in (0, 125, 126, 127, 128, 65535, 65536)},
    "1.1.8 text 65536 chopped 997": (
        [(build_frame(OP_TEXT, b"*" * 65536), 997)], [(OP_TEXT, b"*" * 65536)]
    ),
    **{f"1.2 binary {n}": ([build_frame(OP_BINARY, b"\xfe" * n)], [(OP_BINARY, b"\xfe" * n)])
       for n in (0, 125, 126, 65535, 65536)},
    # 2.x: pings and pongs
    "2.1 ping": ([build_frame(OP_PING)], [(OP_PONG, b"")]),
    "2.3 ping binary": ([build_frame(OP_PING, b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff")],
                        [(OP_PONG, b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff")]),
    "2.4 ping 125": ([build_frame(OP_PING, b"\xfe" * 125)], [(OP_PONG, b"\xfe" * 125)]),
    "2.6 ping 125 chopped 1": ([(build_frame(OP_PING, b"\xfe" * 125), 1)],
                               [(OP_PONG, b"\xfe" * 125)]),
    "2.9 unsolicited pong then ping": (
        [build_frame(OP_PONG, b"unsolicited"), build_frame(OP_PING, b"solicited")],
        [(OP_PONG, b"solicited")],
    ),
    "2.10 ten pings": ([build_frame(OP_PING, b"p%d" % i) for i in range(10)],
                       [(OP_PONG, b"p%d" % i) for i in range(10)]),
    "2.11 ten pings chopped 1": ([(build_frame(OP_PING, b"p%d" % i), 1) for i in range(10)],
                                 [(OP_PONG, b"p%d" % i) for i in range(10)]),
    # 5.x: fragmentation, control frames in between
    "5.3 text in 2 fragments": (_fragments(OP_TEXT, b"fragment1fragment2", 9),
                                [(OP_TEXT, b"fragment1fragment2")]),
    "5.6 text, ping in between": (
        [build_frame(OP_TEXT, b"fragment1", fin=False), build_frame(OP_PING, b"ping"),
         build_frame(OP_CONT, b"fragment2")],
        [(OP_PONG, b"ping"), (OP_TEXT, b"fragment1fragment2")],
    ),
    "5.8 text, ping in between, chopped 1": (
        [(build_frame(OP_TEXT, b"fragment1", fin=False) + build_frame(OP_PING, b"ping")
          + build_frame(OP_CONT, b"fragment2"), 1)],
        [(OP_PONG, b"ping"), (OP_TEXT, b"fragment1fragment2")],
    ),
    "5.19 five fragments, two pings": (
        [build_frame(OP_TEXT, b"f1", fin=False), build_frame(OP_CONT, b"f2", fin=False),
         build_frame(OP_PING, b"p1"), build_frame(OP_CONT, b"f3", fin=False),
         build_frame(OP_CONT, b"f4", fin=False), build_frame(OP_PING, b"p2"),
         build_frame(OP_CONT, b"f5")],
        [(OP_PONG, b"p1"), (OP_PONG, b"p2"), (OP_TEXT, b"f1f2f3f4f5")],
    ),
    "5.x binary in 1000 fragments": (_fragments(OP_BINARY, bytes(range(250)) * 4, 1),
                                     [(OP_BINARY, bytes(range(250)) * 4)]),
    # 6.2.x: valid UTF-8 split anywhere, down to one octet a fragment
    "6.2.2 utf-8 split in two": (_fragments(OP_TEXT, _UTF8, 7), [(OP_TEXT, _UTF8)]),
    "6.2.3 utf-8 one octet a fragment": (_fragments(OP_TEXT, _UTF8, 1), [(OP_TEXT, _UTF8)]),
    "6.2.4 kosme one octet a fragment": (_fragments(OP_TEXT, _KOSME, 1), [(OP_TEXT, _KOSME)]),
    # 10.1.1: 64 KiB of text, auto-fragmented by 1300 octets: 51 frames, one message
    "10.1.1 text 65536 in 51 fragments": (_fragments(OP_TEXT, b"*" * 65536, 1300),
                                          [(OP_TEXT, b"*" * 65536)]),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_autobahn_cases_pass_with_the_streamers_message_budget(case: str) -> None:
    sends, expected = _CASES[case]
    if case.startswith("10.1.1"):
        assert sum(len(s) > 0 for s in sends) == 51  # type: ignore[arg-type]
    app = Echo()
    with run_server(app, **STREAMER_BUDGET) as server, RawClient(server.port, timeout=TIMEOUT) as c:
        c.handshake()
        for item in sends:
            if isinstance(item, tuple):
                _chopped(c, *item)
            else:
                c.send(item)
        for opcode, payload in expected:
            assert c.recv_frame() == (True, opcode, payload), case
        c.send_frame(OP_CLOSE, struct.pack("!H", 1000))  # a clean close, as Autobahn scores it
        assert c.recv_frame() == (True, OP_CLOSE, struct.pack("!H", 1000))
        assert c.expect_eof()
    assert app.closed[0].close_code == 1000 and app.closed[0].sent_close_code is None


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000,
                                  3999, 4000, 4999])
def test_autobahn_7_7_valid_close_codes_are_echoed(code: int) -> None:
    with run_server(Echo(), **STREAMER_BUDGET) as server, RawClient(server.port) as c:
        c.handshake()
        c.send_frame(OP_CLOSE, struct.pack("!H", code) + b"reason")
        assert c.recv_frame() == (True, OP_CLOSE, struct.pack("!H", code))


# -- Floods are still closed ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["messages", "fragmented messages", "pings"])
def test_a_message_flood_is_closed_with_1008(kind: str) -> None:
    with run_server(Echo(), **STREAMER_BUDGET) as server, RawClient(server.port) as c:
        c.handshake()
        if kind == "messages":
            flood = build_frame(OP_BINARY, b"x") * 100
        elif kind == "pings":
            flood = build_frame(OP_PING, b"x") * 100
        else:
            flood = b"".join(build_frame(OP_BINARY, b"a", fin=False) + build_frame(OP_CONT, b"b")
                             for _ in range(100))
        c.send(flood)  # 2.5 times the burst at once
        assert c.recv_close() == (1008, b"too many messages")


def test_a_flood_of_fragments_is_closed_by_the_byte_budget() -> None:
    """Fragments cost no message, but each costs at least 64 bytes of the byte budget."""
    with run_server(Echo(), **STREAMER_BUDGET, byte_rate=16384.0, byte_burst=65536.0,
                    max_message_size=4096) as server, RawClient(server.port) as c:
        c.handshake()
        one = build_frame(OP_BINARY, b"", fin=False) + build_frame(OP_CONT, b"", fin=False) * 998
        c.send(one + build_frame(OP_CONT, b""))  # one message of 1000 empty frames: 64,000 bytes
        assert c.recv_frame() == (True, OP_BINARY, b"")
        c.send(one + build_frame(OP_CONT, b""))
        assert c.recv_close() == (1008, b"too much data")


def test_the_connections_of_one_address_wait_their_turn_and_are_not_closed() -> None:
    """The shared budget of an address slows its readers (TCP backpressure), never closes."""
    app = Echo()
    rates = AddressRates(message_rate=10.0, message_burst=5.0)
    with run_server(app, address_rates=rates) as server:
        clients = [RawClient(server.port, timeout=TIMEOUT) for _ in range(3)]
        try:
            for c in clients:
                c.handshake()
            started = time.monotonic()
            for c in clients:
                c.send(build_frame(OP_TEXT, b"m") * 10)  # 30 messages, 5 in the burst
            for c in clients:
                assert [c.recv_frame() for _ in range(10)] == [(True, OP_TEXT, b"m")] * 10
            took = time.monotonic() - started
        finally:
            for c in clients:
                c.close()
        assert wait_until(lambda: len(app.closed) == 3)
    assert all(conn.sent_close_code is None for conn in app.closed)
    assert took >= (30 - 5) / 10 * 0.9, took  # the address's rate, not more


# -- The Streamer's defaults ----------------------------------------------------------------------


def test_the_streamer_takes_a_fragmented_4_kib_control_message(streamer_factory) -> None:
    streamer = streamer_factory("test", fps=5, width=64, height=48)
    text = json.dumps({"type": "config", "quality": 55, "pad": "x" * 4000}).encode()
    assert 4000 < len(text) <= 4096
    with RawClient(streamer.port, timeout=TIMEOUT) as c:
        c.handshake(extra={"Host": "127.0.0.1"})
        for frame in _fragments(OP_TEXT, text, 80):  # 52 frames, one message
            c.send(frame)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            _, opcode, payload = c.recv_frame()
            if opcode == OP_TEXT and json.loads(payload).get("quality") == 55:
                break
        else:
            raise AssertionError("no metadata with the new quality")


@pytest.mark.parametrize("size", [4097, 64_000])
def test_the_streamer_closes_bigger_messages_with_1009(streamer_factory, size: int) -> None:
    streamer = streamer_factory("test", fps=5, width=64, height=48)
    ping = b'{"type": "ping", "t": "' + b"x" * (size - 25) + b'"}'
    assert len(ping) == size
    with RawClient(streamer.port, timeout=TIMEOUT) as c:
        c.handshake(extra={"Host": "127.0.0.1"})
        c.send_frame(OP_TEXT, ping)
        assert c.recv_close() == (1009, b"message exceeds 4096 bytes")


def test_the_streamer_closes_a_big_ping_flood_with_1008(streamer_factory) -> None:
    """19 pings a second with a 4 KB ``t`` (under the cap, under the message rate): the byte
    budget (16 KiB/s, bursts of 64 KiB) closes the connection within seconds."""
    streamer = streamer_factory("test", fps=5, width=64, height=48)
    ping = build_frame(OP_TEXT, b'{"type": "ping", "t": "' + b"x" * 3970 + b'"}')
    with RawClient(streamer.port, timeout=TIMEOUT) as c:
        c.handshake(extra={"Host": "127.0.0.1"})
        for _ in range(19 * 3):  # three seconds of it, sent at once
            c.send(ping)
        assert c.recv_close() == (1008, b"too much data")


# -- The budgets without sockets ------------------------------------------------------------------


@pytest.mark.parametrize("mix", ["pings", "pings-and-texts", "pongs"])
def test_control_frames_count_against_the_message_budget(streamer_factory, mix: str) -> None:
    """Pings and unsolicited pongs cost a message each, like text messages (issue #11 item 3)."""
    streamer = streamer_factory("test", fps=5, width=64, height=48)
    with RawClient(streamer.port) as c:
        c.handshake(extra={"Host": "127.0.0.1"})
        for i in range(100):  # 2.5 times the burst, far faster than 20/s
            if mix == "pongs":
                c.send_frame(OP_PONG, b"unsolicited")
            elif mix == "pings-and-texts" and i % 2:
                c.send_frame(OP_TEXT, b'{"type": "pause"}')
            else:
                c.send_frame(OP_PING, b"p")
        assert c.recv_close() == (1008, b"too many messages")


def test_budget_units() -> None:
    budget = ConnectionBudget(Limits(message_rate=1.0, message_burst=3.0), None)
    assert [budget.charge(OP_TEXT, 10)[0] for _ in range(3)] == [None] * 3
    assert budget.charge(OP_CONT, 10) == (None, 0.0)  # continuations: no message
    assert budget.charge(OP_CLOSE, 10) == (None, 0.0)  # Close: free
    assert budget.charge(OP_PING, 10)[0] == "too many messages"  # control frames count
    assert frame_cost(0) == 64 and frame_cost(200) == 208 and frame_cost(70000) == 70014
    shared = AddressBudget(AddressRates(byte_rate=1000.0, byte_burst=1000.0))
    assert shared.reserve(1, 1000) == 0.0
    assert 0.49 < shared.reserve(1, 500) <= 0.5  # in debt: wait until it is paid for
    assert ConnectionBudget(Limits(), shared).charge(OP_TEXT, 0)[1] > 0.5
