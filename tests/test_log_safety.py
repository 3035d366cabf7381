"""Log safety (issue 22 items 11 and 12): no forged lines, no terminal escapes, no log flood.

Everything a client sent that the transport logs goes through ``logs.printable()``, and the
per-connection lines of one address go through a budget (a burst, then a summary).
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from typing import Any

import pytest
from conftest import TIMEOUT, wait_until
from test_transport import Recorder, run_server
from wsraw import OP_BINARY, OP_CLOSE, RawClient, upgrade_request

pytestmark = pytest.mark.timeout(120)

FORGED = "/x\r2026-12-03\t...\tforged\tline\x1b[2K"  # the target (its spaces as tabs)


def _records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("camstream")]


def _assert_printable(messages: list[str]) -> None:
    """No CR, LF, ESC, C1 control or other invisible character in any camstream log line."""
    bad = [m for m in messages if not m.isprintable()]
    assert not bad, bad


def _request(port: int, raw: bytes) -> int:
    with RawClient(port, timeout=TIMEOUT) as c:
        c.send(raw)
        return c.read_http()[0]


def test_a_forged_request_target_is_refused_and_never_logged_raw(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="camstream")
    with run_server(Recorder()) as server:
        assert _request(server.port, upgrade_request(FORGED)) == 400
        raw = f"GET {FORGED} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode("latin-1")
        assert _request(server.port, raw) == 400
    messages = _records(caplog)
    assert any("control character in the request target" in m for m in messages)
    _assert_printable(messages)


def test_a_404_target_is_logged_escaped(streamer_factory, caplog) -> None:
    """Bytes the request parser lets through (C1 controls such as CSI, a right-to-left override
    in UTF-8) reach the 404 of a WebSocket upgrade, whose refusal is logged at INFO."""
    caplog.set_level(logging.DEBUG, logger="camstream")
    streamer = streamer_factory("test", fps=5, width=64, height=48)
    target = "/x\x9b2K\u202eforged".encode().decode("latin-1")
    request = upgrade_request(target, extra={"Host": "127.0.0.1"})
    assert _request(streamer.port, request) == 404
    messages = _records(caplog)
    [line] = [m for m in messages if "refused with 404" in m]
    assert "\\x9b2K" in line  # the CSI byte, escaped
    _assert_printable(messages)


def test_header_values_with_cr_or_nul_are_refused(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="camstream")
    with run_server(Recorder()) as server:
        for value in ("a\rInjected: 1", "a\x00b"):
            assert _request(server.port, upgrade_request("/", extra={"Origin": value})) == 400
    _assert_printable(_records(caplog))


def test_a_close_reason_with_control_characters_is_logged_escaped(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="camstream")
    app = Recorder()
    with run_server(app) as server, RawClient(server.port, timeout=TIMEOUT) as c:
        c.handshake()
        reason = b"bye\r\n2026-12-03 ERROR forged\x1b[2K\x1b]0;owned\x07"
        c.send_frame(OP_CLOSE, struct.pack("!H", 4000) + reason)
        assert c.recv_frame()[1] == OP_CLOSE
        conn = app.closed.get(timeout=TIMEOUT)
    assert conn.close_reason == reason.decode()  # the application gets it as it came
    messages = _records(caplog)
    assert any("bye\\r\\n2026-12-03 ERROR forged\\x1b[2K" in m for m in messages), messages
    _assert_printable(messages)


def test_a_forwarded_address_is_logged_escaped(caplog) -> None:
    """A trusted proxy's forwarded client that is refused (per address) is named escaped."""

    class Proxy(Recorder):
        def is_trusted_proxy(self, address: str) -> bool:
            return True

        def client_address(self, request: Any) -> str | None:
            return request.headers.get("x-forwarded-for")

    caplog.set_level(logging.DEBUG, logger="camstream")
    with run_server(Proxy(), max_connections_per_address=1) as server:
        evil = {"X-Forwarded-For": "evil\x1b[2K\x9b"}
        with RawClient(server.port, timeout=TIMEOUT) as first:
            first.handshake(extra=evil)
            assert _request(server.port, upgrade_request("/", extra=evil)) == 503
    messages = _records(caplog)
    assert any("evil\\x1b[2K\\x9b" in m for m in messages), messages
    _assert_printable(messages)


# -- Item 12: a connect/close storm from one address ---------------------------------------------


def _storm(port: int, source: str, seconds: float) -> int:
    """Connect, upgrade and close from ``source`` for ``seconds``; returns the connections."""
    deadline, count = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        sock = socket.create_connection(("127.0.0.1", port), TIMEOUT, source_address=(source, 0))
        with RawClient.__new__(RawClient) as c:
            c.sock, c.buf = sock, b""
            c.handshake(extra={"Host": "127.0.0.1"})
            c.send_frame(OP_CLOSE, struct.pack("!H", 1000))
            while c.recv_frame()[1] != OP_CLOSE:
                pass
        count += 1
    return count


def test_a_connect_close_storm_from_one_address_writes_a_bounded_log(
    streamer_factory, caplog
) -> None:
    """16,014 INFO lines for 8,007 connections in 10 s before; now a burst of 10 connections,
    then about one a second, each logged whole (connected and left) or not at all, and the
    lines that come through say how many were left out. Another address is not affected."""
    caplog.set_level(logging.INFO, logger="camstream")
    streamer = streamer_factory("test", fps=5, width=64, height=48)
    started = time.monotonic()
    connections = _storm(streamer.port, "127.0.0.7", 2.0)
    elapsed = time.monotonic() - started

    def lines(kind: str) -> list[str]:
        return [m for m in _records(caplog) if m.startswith("client ") and kind in m]

    assert wait_until(lambda: len(lines(" left (")) == len(lines(" connected from ")))
    bound = 2 * (10 + elapsed + 2)
    print(f"{connections} connections in {elapsed:.1f} s: {len(_records(caplog))} lines")
    assert connections > bound, "the storm was too slow to tell anything"
    assert len(lines(" connected from ")) + len(lines(" left (")) <= bound
    assert any("more connections from 127.0.0.7 not logged" in m for m in lines("connected"))
    caplog.clear()
    with RawClient(streamer.port, timeout=TIMEOUT) as other:
        other.handshake(extra={"Host": "127.0.0.1"})
        while other.recv_frame()[1] != OP_BINARY:
            pass
        assert wait_until(lambda: len(lines(" connected from 127.0.0.1")) == 1)
