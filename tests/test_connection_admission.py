"""Connection admission: limits that fit the bind, refusals answered, the places kept for
clients with the credential, the deadlines of a request.

Real servers on port 0 and real clients. Distinct client addresses are played by binding source
addresses in 127.0.0.0/8; since loopback clients are not counted against the per-address limit
by default, the tests of that limit turn the exemption off (``exempt_loopback=False``) or go
through a trusted proxy that names remote clients. Attacks of hundreds of sockets run in a
process of their own (``tests/attackers.py``).
"""

from __future__ import annotations

import json
import logging
import select
import shutil
import socket
import ssl
import subprocess
import time
from typing import Any, Iterator

import pytest
import websocket  # websocket-client
from conftest import SLACK, TIMEOUT, stop_process, wait_until
from helpers import attack
from test_transport import Recorder, run_server
from test_transport_tls import self_signed_cert
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect
from wsraw import OP_BINARY, RawClient, upgrade_request

from camstream.ws import Request, make_ssl_context
from camstream.ws.admission import ANSWER_PLACES, EVICTION_SLACK, Admission, is_loopback

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


# -- The places kept for clients with the credential ----------------------------------------------

# Streamer(token=..., max_clients=1) caps connections at 2 * 1 + 64 and keeps the last quarter
# for requests with the token (camstream/server.py); the default cap is 512.
CAP, KEPT = 66, 66 // 4
DEFAULT_CAP = 512


class Tokened(Recorder):
    """Requests with ``?token=t`` carry the credential; any other WebSocket is served too."""

    def authenticated(self, request: Request) -> bool:
        return request.query.get("token") == "t"


def _watch_one_frame(url: str) -> None:
    with ws_connect(url, open_timeout=TIMEOUT, max_size=None) as ws:
        deadline = time.monotonic() + TIMEOUT
        assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "metadata"
        while not isinstance(ws.recv(timeout=max(deadline - time.monotonic(), 0.001)), bytes):
            pass


def test_silent_sockets_never_lock_out_the_token(streamer_factory) -> None:
    """Sockets that never send their request can fill every place, but each new socket past
    the cap sheds the stalest of them, so a client with the token always gets in (the kept
    places are for requests that came without it: see the next tests)."""
    streamer = streamer_factory("test", width=32, height=24, fps=5, token="s3cret",
                                max_clients=1, first_line_timeout=3 * TIMEOUT,
                                handshake_timeout=3 * TIMEOUT)

    def counts() -> dict[str, int]:
        return streamer.stats()["connections"]

    def shed() -> int:
        return counts()["evicted"] + counts()["refused_full"]

    silent = [RawClient(streamer.port) for _ in range(CAP)]
    try:
        assert wait_until(lambda: counts()["open"] == CAP), counts()
        assert shed() == 0 and counts()["anonymous"] == 0, counts()  # no request read yet
        for extra in range(1, 4):
            silent.append(RawClient(streamer.port))
            assert wait_until(lambda n=extra: shed() == n), counts()
        _watch_one_frame(streamer.url + "?token=s3cret")  # and one with the token gets in
    finally:
        for client in silent:
            client.close()


@pytest.fixture
def anonymous_websockets() -> Iterator[Any]:
    """A server with 8 places, the last 2 kept for ``?token=t``; 6 WebSockets without it."""
    with run_server(Tokened(), max_connections=8, reserved_connections=2) as server:
        anonymous = [RawClient(server.port) for _ in range(6)]
        try:
            for client in anonymous:
                client.handshake()
            yield server
        finally:
            for client in anonymous:
                client.close()


def test_websockets_without_the_credential_cannot_take_the_kept_places(
    anonymous_websockets: Any,
) -> None:
    with RawClient(anonymous_websockets.port) as seventh:  # two places left, both kept
        status, _, body = _refused(seventh)
    assert status == 503 and b"server busy" in body
    assert anonymous_websockets.admission_stats()["refused_full"] == 1


def test_a_client_with_the_credential_gets_a_kept_place(anonymous_websockets: Any) -> None:
    with RawClient(anonymous_websockets.port) as tokened:
        tokened.handshake("/?token=t")


def _read_counters(process: subprocess.Popen, key: str, at_least: int) -> dict[str, int]:
    """Read the attacker's ``key=N ...`` lines until ``key`` reaches ``at_least`` (bounded)."""
    deadline = time.monotonic() + 3 * TIMEOUT
    last: dict[str, int] = {}
    while time.monotonic() < deadline:
        if not select.select([process.stdout], [], [], TIMEOUT)[0]:
            break
        line = process.stdout.readline()
        if not line:
            break
        last = {k: int(v) for k, v in (item.split("=") for item in line.split())}
        if last.get(key, 0) >= at_least:
            return last
    raise AssertionError(f"the attack never reached {key}={at_least}: {last}")


def test_a_tokened_viewer_gets_in_while_600_anonymous_sockets_hold_connections(
    streamer_factory,
) -> None:
    """300 sockets dribbling a request byte by byte plus 300 opening WebSockets without the
    token (refused, then idle), each from its own address (so no per-address limit helps),
    against the default 512-connection cap."""
    streamer = streamer_factory("test", fps=15, width=160, height=120, token="s3cret")
    dribblers = attack("hold", str(streamer.port), "30", "300", "127.0.4.1", "dribble")
    idlers = attack("hold", str(streamer.port), "30", "300", "127.0.6.1", "idle")
    try:
        _read_counters(dribblers, "held", 250)
        _read_counters(idlers, "held", 1)
        for _ in range(3):
            _watch_one_frame(streamer.url + "?token=s3cret")
        counts = streamer.stats()["connections"]
        print(f"admitted 3 of 3 tokened viewers during the attack; admission: {counts}")
        # Sockets never exceed the cap (shed ones may overlap new ones by the slack until they
        # are gone), and requests without the token stay out of the kept quarter.
        assert counts["open"] <= DEFAULT_CAP + EVICTION_SLACK, counts
        assert counts["anonymous"] <= DEFAULT_CAP - DEFAULT_CAP // 4, counts
    finally:
        stop_process(dribblers)
        stop_process(idlers)


# -- The deadlines of a request -------------------------------------------------------------------


def test_silent_and_slow_requests_are_cut_at_their_deadlines(streamer_factory) -> None:
    first_line, handshake = 0.3 * SLACK, 1.0 * SLACK
    streamer = streamer_factory("test", fps=5, width=64, height=48,
                                first_line_timeout=first_line, handshake_timeout=handshake)
    with RawClient(streamer.port) as silent, RawClient(streamer.port) as slow:
        started = time.monotonic()
        slow.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
        assert silent.expect_eof()
        silent_s = time.monotonic() - started
        assert slow.expect_eof()
        slow_s = time.monotonic() - started
    # The silent one at the first-line deadline, the slow one (its first line was in) at the
    # deadline of the whole request head.
    assert 0.9 * first_line <= silent_s < 0.9 * handshake <= slow_s < handshake + 2 * SLACK, (
        silent_s, slow_s)


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
