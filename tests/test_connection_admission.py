"""Connection admission (issue 22 items 1 and 2): limits that fit the bind, refusals answered.

Real servers on port 0 and real clients. Distinct client addresses are played by binding source
addresses in 127.0.0.0/8; since loopback clients are not counted against the per-address limit
by default, the tests of that limit turn the exemption off (``exempt_loopback=False``) or go
through a trusted proxy that names remote clients.
"""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import time
from typing import Any

import pytest
import websocket  # websocket-client
from conftest import TIMEOUT, wait_until
from test_transport import Recorder, run_server
from test_transport_tls import self_signed_cert
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect
from wsraw import OP_BINARY, RawClient, upgrade_request

from camstream.ws import make_ssl_context
from camstream.ws.admission import ANSWER_PLACES, Admission, is_loopback

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def app() -> Recorder:
    return Recorder()


def _client_from(port: int, source: str) -> RawClient:
    """A :class:`RawClient` whose socket is bound to ``source`` (another loopback address)."""
    client = RawClient.__new__(RawClient)
    client.sock = socket.create_connection(("127.0.0.1", port), TIMEOUT,
                                           source_address=(source, 0))
    client.buf = b""
    return client


def _refused(client: RawClient) -> tuple[int, dict[str, str], bytes]:
    client.send(upgrade_request("/"))
    answer = client.read_http()
    assert client.expect_eof()
    return answer


# -- Item 1: limits that fit the bind --------------------------------------------------------------


def test_200_local_viewers_all_get_frames_with_the_default_limits(streamer_factory) -> None:
    """On the default bind every client is 127.0.0.1: the per-address limit (32) must not be a
    silent global cap of 32 (22.1: 50 local viewers, 18 got a bare reset)."""
    streamer = streamer_factory("test", fps=5, width=64, height=48)
    viewers = [RawClient(streamer.port, timeout=TIMEOUT) for _ in range(200)]
    try:
        for viewer in viewers:
            viewer.handshake(extra={"Host": "127.0.0.1"})
        for viewer in viewers:
            while viewer.recv_frame()[1] != OP_BINARY:
                pass
        assert streamer.stats()["connections"]["refused_per_address"] == 0
    finally:
        for viewer in viewers:
            viewer.close()


def test_loopback_clients_are_not_counted_but_the_cap_in_all_holds(app: Recorder) -> None:
    with run_server(app, max_connections_per_address=2, max_connections=6) as server:
        clients = [_client_from(server.port, "127.0.0.2") for _ in range(6)]
        try:
            for client in clients:
                client.handshake()
            with _client_from(server.port, "127.0.0.2") as seventh:
                status, _, body = _refused(seventh)
            assert status == 503 and b"server busy" in body
            counts = server.admission_stats()
            assert (counts["refused_per_address"], counts["refused_full"]) == (0, 1)
        finally:
            for client in clients:
                client.close()


def test_remote_clients_are_limited_per_address_and_answered_503(app: Recorder, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="camstream")
    with run_server(app, max_connections_per_address=4, exempt_loopback=False) as server:
        held = [_client_from(server.port, "127.0.0.9") for _ in range(4)]
        try:
            for client in held:
                client.handshake()
            with _client_from(server.port, "127.0.0.9") as fifth:
                status, headers, body = _refused(fifth)
            assert (status, headers["retry-after"]) == (503, "5")
            assert body == b"too many connections from your address (4); try again later\n"
            with _client_from(server.port, "127.0.0.8") as other:
                other.handshake()  # another address is not affected
            assert server.admission_stats()["refused_per_address"] == 1
            assert server.admission_stats()["refusals_answered"] == 1
        finally:
            for client in held:
                client.close()
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "127.0.0.9" in line and "--max-connections-per-address" in line and "NAT" in line


def test_trusted_proxies_are_exempt_from_the_per_address_limit() -> None:
    """The application's ``is_trusted_proxy`` (a reverse proxy carries many clients)."""

    class BehindProxy(Recorder):
        def is_trusted_proxy(self, address: str) -> bool:
            return address == "127.0.0.10"

    with run_server(BehindProxy(), max_connections_per_address=2,
                    exempt_loopback=False) as server:
        proxied = [_client_from(server.port, "127.0.0.10") for _ in range(4)]
        direct = [_client_from(server.port, "127.0.0.11") for _ in range(3)]
        try:
            for client in proxied:
                client.handshake()
            direct[0].handshake()
            direct[1].handshake()
            assert _refused(direct[2])[0] == 503  # the third from one ordinary address
        finally:
            for client in proxied + direct:
                client.close()


def test_the_client_a_trusted_proxy_names_is_limited_and_answered_503() -> None:
    class BehindProxy(Recorder):
        def is_trusted_proxy(self, address: str) -> bool:
            return True

        def client_address(self, request: Any) -> str | None:
            return request.headers.get("x-forwarded-for")

    with run_server(BehindProxy(), max_connections_per_address=2) as server:
        clients = [RawClient(server.port, timeout=TIMEOUT) for _ in range(3)]
        try:
            for client in clients[:2]:
                client.handshake(extra={"X-Forwarded-For": "203.0.113.7"})
            clients[2].send(upgrade_request("/", extra={"X-Forwarded-For": "203.0.113.7"}))
            status, headers, body = clients[2].read_http()
            assert (status, headers["retry-after"]) == (503, "5")
            assert body.startswith(b"too many connections from your address")
            with RawClient(server.port, timeout=TIMEOUT) as local:  # proxied loopback: exempt
                local.handshake(extra={"X-Forwarded-For": "127.0.0.1"})
        finally:
            for client in clients:
                client.close()


# -- Item 2: every refusal is answered and visible -------------------------------------------------


@pytest.fixture
def full_server(app: Recorder) -> Any:
    """A server whose one place is taken."""
    with run_server(app, max_connections=1) as server:
        with RawClient(server.port, timeout=TIMEOUT) as holder:
            holder.handshake()
            yield server


def test_websockets_reports_the_503_and_its_reason(full_server: Any) -> None:
    with pytest.raises(InvalidStatus) as info:
        ws_connect(f"ws://127.0.0.1:{full_server.port}/", open_timeout=TIMEOUT)
    response = info.value.response
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.body == b"server busy: too many connections; try again later\n"


def test_websocket_client_reports_the_503_and_its_reason(full_server: Any) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(f"ws://127.0.0.1:{full_server.port}/", timeout=TIMEOUT)
    assert info.value.status_code == 503
    assert info.value.resp_body == b"server busy: too many connections; try again later\n"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_a_tls_client_reads_the_503_too(tmp_path, app: Recorder) -> None:
    cert, key = self_signed_cert(tmp_path)
    with run_server(app, ssl_context=make_ssl_context(cert, key), max_connections=1) as server:
        ctx = ssl.create_default_context(cafile=cert)
        with ws_connect(f"wss://localhost:{server.port}/", ssl=ctx, open_timeout=TIMEOUT):
            with pytest.raises(InvalidStatus) as info:
                ws_connect(f"wss://localhost:{server.port}/", ssl=ctx, open_timeout=TIMEOUT)
    assert info.value.response.status_code == 503


def test_a_refusal_flood_costs_a_bounded_number_of_threads_and_log_lines(
    full_server: Any, caplog
) -> None:
    """Refused sockets that never send a request hold at most ANSWER_PLACES answer places; the
    rest are closed at once, as before the answers existed; the log gets a burst of lines."""
    caplog.set_level(logging.DEBUG, logger="camstream")
    silent = [RawClient(full_server.port, timeout=TIMEOUT) for _ in range(ANSWER_PLACES)]
    try:
        assert wait_until(lambda: full_server.link_count() == 1 + ANSWER_PLACES)
        started = time.monotonic()
        for _ in range(100):
            with RawClient(full_server.port, timeout=TIMEOUT) as extra:
                assert extra.expect_eof()
        elapsed = time.monotonic() - started
        assert full_server.link_count() <= 1 + ANSWER_PLACES
        counts = full_server.admission_stats()
        assert counts["refused_full"] == ANSWER_PLACES + 100
        assert counts["refusals_answered"] == ANSWER_PLACES
    finally:
        for client in silent:
            client.close()
    lines = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 1 <= len(lines) <= 10 + elapsed + 1, len(lines)  # a burst of 10, then 1 a second
    assert "raise max_connections" in lines[0].getMessage()


# -- The rules without sockets ---------------------------------------------------------------------


def _admission(**kwargs: Any) -> Admission:
    options: dict[str, Any] = {
        "max_connections": 4, "max_connections_per_address": 2, "reserved_connections": 0,
        "is_trusted_proxy": lambda address: False,
    }
    return Admission(**{**options, **kwargs})


def test_rules_per_address_loopback_and_ipv6_networks() -> None:
    admission = _admission()
    assert [admission.admit(object(), ("198.51.100.1", 1))[0] for _ in range(3)] == [
        True, True, True  # the third is refused, but answered: its thread sends the 503
    ]
    assert admission.stats()["refused_per_address"] == 1
    assert admission.stats()["open"] == 2
    # One /64 is one client; another /64 is another.
    assert admission.admit(object(), ("2001:db8::1", 1))[0]
    assert admission.admit(object(), ("2001:db8::2", 1))[0]
    assert admission.stats()["refused_per_address"] == 1
    admission.admit(object(), ("2001:db8::3", 1))
    assert admission.stats()["refused_per_address"] == 2
    assert is_loopback("127.0.0.3") and is_loopback("::1") and not is_loopback("10.0.0.1")


def test_rules_refusals_beyond_the_answer_budget_are_not_served() -> None:
    admission = _admission(max_connections=1)
    assert admission.admit(object(), ("127.0.0.1", 1)) == (True, None)
    served = [admission.admit(object(), ("127.0.0.1", 1))[0] for _ in range(ANSWER_PLACES + 5)]
    assert served == [True] * ANSWER_PLACES + [False] * 5
    assert admission.stats()["refused_full"] == ANSWER_PLACES + 5
