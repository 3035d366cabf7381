"""Per-client connection limits hold behind a trusted proxy.

Connections from a trusted proxy are exempt at accept time (they carry many clients); once the
request is read, each counts against the client named in ``X-Forwarded-For``. Any other peer
counts as itself, whatever it forwards.
"""

from __future__ import annotations

from typing import Any

from conftest import TIMEOUT, wait_until
from test_transport import Recorder, run_server
from wsraw import RawClient, upgrade_request


def _upgrade(port: int, forwarded_for: str) -> int:
    with RawClient(port, timeout=TIMEOUT) as client:
        client.send(upgrade_request("/", extra={"X-Forwarded-For": forwarded_for}))
        status, _, _ = client.read_http()
        return status


def test_clients_behind_a_trusted_proxy_are_limited_each_by_their_own_address(
    streamer_factory,
) -> None:
    streamer = streamer_factory(
        "test", width=64, height=48, trusted_proxies=["127.0.0.1"],
        max_connections_per_address=2,
    )
    held: list[RawClient] = []
    try:
        for _ in range(2):  # one client's share, held open
            client = RawClient(streamer.port, timeout=TIMEOUT)
            held.append(client)
            client.send(upgrade_request("/", extra={"X-Forwarded-For": "203.0.113.5"}))
            assert client.read_http()[0] == 101
        # A third from the same client is refused; another client behind the proxy is not.
        assert _upgrade(streamer.port, "203.0.113.5") == 503
        assert _upgrade(streamer.port, "203.0.113.6") == 101
        assert streamer.stats()["connections"]["refused_per_address"] >= 1
    finally:
        for client in held:
            client.close()


def test_an_untrusted_peer_is_limited_by_its_own_address_whatever_it_forwards() -> None:
    """On the transport, with loopback clients counted (a Streamer never counts them): the
    application names the forwarded client, but only a trusted proxy's is believed."""

    class Forwarded(Recorder):
        def is_trusted_proxy(self, address: str) -> bool:
            return address == "127.0.0.10"

        def client_address(self, request: Any) -> str | None:
            return request.headers.get("x-forwarded-for")

    with run_server(Forwarded(), max_connections_per_address=2, exempt_loopback=False) as server:
        held = [RawClient(server.port, source="127.0.0.11") for _ in range(2)]
        try:
            for i, client in enumerate(held):
                client.send(upgrade_request("/", extra={"X-Forwarded-For": f"198.51.100.{i}"}))
                assert client.read_http()[0] == 101
            # Refused at accept, before its request is read: answered 503, then closed.
            with RawClient(server.port, source="127.0.0.11") as third:
                third.send(upgrade_request("/", extra={"X-Forwarded-For": "198.51.100.9"}))
                status, _, body = third.read_http()
                assert status == 503 and b"too many connections from your address" in body
                assert third.expect_eof()
            assert server.admission_stats()["refused_per_address"] == 1
        finally:
            for client in held:
                client.close()


def test_an_http_1_0_health_check_without_host_is_answered(streamer_factory) -> None:
    """HAProxy's ``option httpchk GET /healthz`` sends HTTP/1.0 and no Host."""
    streamer = streamer_factory("test", width=64, height=48)
    assert wait_until(lambda: streamer.stats()["frames_captured"] > 0)
    with RawClient(streamer.port, timeout=TIMEOUT) as client:
        client.send(b"GET /healthz HTTP/1.0\r\n\r\n")
        status, _, body = client.read_http()
    assert (status, body) == (200, b"ok\n")
    # A WebSocket upgrade still needs HTTP/1.1.
    with RawClient(streamer.port, timeout=TIMEOUT) as client:
        client.send(upgrade_request("/", version="HTTP/1.0"))
        assert client.read_http()[0] == 505
