"""Trusted reverse proxies (camstream.web.proxy) and /healthz.

Unit tests of the header rules, then real Streamers on port 0 with real clients that send the
forwarding headers themselves: from a trusted peer they count, from any other they do not.
The whole chain with a real nginx in front is in test_deploy.py.
"""

from __future__ import annotations

import http.client
import ipaddress
import time

import numpy as np
import pytest
from conftest import TIMEOUT, wait_until
from helpers import close_code_of, next_text
from websockets.sync.client import connect
from wsraw import RawClient

from camstream import CloseCode, ConfigError, Streamer
from camstream.web.policy import AccessPolicy
from camstream.web.proxy import ClientView, is_trusted, parse_trusted_proxies, resolve
from camstream.ws import Headers, Request

LOCAL = parse_trusted_proxies(["127.0.0.1", "10.0.0.0/8", "::1"])


class H(dict):
    """Case-insensitive enough for these tests: names are given in lower case."""


# Unit: parse_trusted_proxies


def test_trusted_proxies_parse_addresses_and_networks() -> None:
    nets = parse_trusted_proxies(["127.0.0.1", " 10.0.0.0/8", "fd00::/8"])
    assert nets == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert parse_trusted_proxies(None) == ()
    assert parse_trusted_proxies("192.168.1.0/24") == (ipaddress.ip_network("192.168.1.0/24"),)


@pytest.mark.parametrize(
    "bad", ["", "nginx", "10.0.0.1/8", "300.1.1.1", "1.2.3.4/33", "1.2.3.4, 5.6.7.8"]
)
def test_bad_trusted_proxy_is_a_config_error_naming_it(bad: str) -> None:
    with pytest.raises(ConfigError, match="trusted proxy"):
        parse_trusted_proxies([bad])


def test_trusted_proxy_of_the_wrong_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="trusted proxy"):
        parse_trusted_proxies([12345])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="trusted proxy"):
        Streamer("push", trusted_proxies=["not-an-address"])


def test_is_trusted_handles_mapped_ipv6_and_garbage() -> None:
    assert is_trusted("127.0.0.1", LOCAL)
    assert is_trusted("::ffff:10.1.2.3", LOCAL)
    assert is_trusted("::1", LOCAL)
    assert not is_trusted("127.0.0.2", LOCAL)
    assert not is_trusted("garbage", LOCAL)
    assert not is_trusted("", LOCAL)


# Unit: resolve


def test_untrusted_peer_headers_are_ignored() -> None:
    headers = H({"host": "Cam.Local:8765", "x-forwarded-for": "1.2.3.4",
                 "x-forwarded-proto": "https", "x-forwarded-host": "evil.example",
                 "forwarded": "for=5.6.7.8;proto=https;host=evil.example"})
    view = resolve("192.168.1.9", headers, LOCAL)
    assert view == ClientView("192.168.1.9", "http", "cam.local:8765", via_proxy=False)
    assert resolve("192.168.1.9", headers, (), tls=True).scheme == "https"


def test_x_forwarded_from_a_trusted_proxy() -> None:
    headers = H({"host": "localhost", "x-forwarded-for": "203.0.113.7",
                 "x-forwarded-proto": "https", "x-forwarded-host": "Camera.Example.com:8443"})
    view = resolve("127.0.0.1", headers, LOCAL)
    assert view == ClientView("203.0.113.7", "https", "camera.example.com:8443", via_proxy=True)
    assert view.secure


def test_rightmost_untrusted_address_wins_over_what_the_client_wrote() -> None:
    # The client wrote "6.6.6.6, 10.0.0.5"; our proxy appended the address it saw.
    headers = H({"x-forwarded-for": "6.6.6.6, 10.0.0.5, 198.51.100.2, 10.9.9.9"})
    assert resolve("127.0.0.1", headers, LOCAL).address == "198.51.100.2"
    # Every hop trusted: the leftmost.
    assert resolve("127.0.0.1", H({"x-forwarded-for": "10.0.0.1, 10.0.0.2"}),
                   LOCAL).address == "10.0.0.1"
    # Ports and brackets, as some proxies write them.
    assert resolve("127.0.0.1", H({"x-forwarded-for": "[2001:db8::5]:4711"}),
                   LOCAL).address == "2001:db8::5"
    assert resolve("127.0.0.1", H({"x-forwarded-for": "198.51.100.3:5555"}),
                   LOCAL).address == "198.51.100.3"


@pytest.mark.parametrize("chain, expected", [
    ("", "127.0.0.1"),                      # empty: the proxy itself
    ("not-an-ip", "127.0.0.1"),             # garbage stops the walk at the last known hop
    ("1.2.3.4, unknown", "127.0.0.1"),
    ("garbage, 10.0.0.3", "10.0.0.3"),
    ("1.2.3.4" + ", 10.0.0.1" * 5000, "10.0.0.1"),  # a flood is cut, not walked to the end
    (",,, ,", "127.0.0.1"),
    ("\x00\xff", "127.0.0.1"),
])
def test_hostile_x_forwarded_for(chain: str, expected: str) -> None:
    assert resolve("127.0.0.1", H({"x-forwarded-for": chain}), LOCAL).address == expected


@pytest.mark.parametrize("proto, scheme", [
    ("https", "https"), ("HTTPS", "https"), ("wss", "https"), ("ws", "http"),
    ("http, https", "https"), ("https, http", "http"), ("gopher", "http"), ("", "http"),
    ("x" * 10000, "http"),
])
def test_forwarded_proto_takes_the_proxy_s_own_value(proto: str, scheme: str) -> None:
    headers = H({"x-forwarded-for": "1.2.3.4", "x-forwarded-proto": proto})
    assert resolve("127.0.0.1", headers, LOCAL).scheme == scheme


@pytest.mark.parametrize("forwarded_host, host", [
    ("cam.example", "cam.example"),
    ("[::1]:8443", "[::1]:8443"),
    ("a.example, b.example", "b.example"),
    ("evil.example/path", "localhost"),      # not a host: the Host header stays
    ("evil.example\r\nX: y", "localhost"),
    ("", "localhost"),
    ("x" * 300, "localhost"),
])
def test_forwarded_host_must_be_a_plain_host(forwarded_host: str, host: str) -> None:
    headers = H({"host": "localhost", "x-forwarded-host": forwarded_host})
    assert resolve("127.0.0.1", headers, LOCAL).host == host


def test_rfc7239_forwarded() -> None:
    headers = H({
        "host": "localhost",
        "forwarded": 'for=6.6.6.6;host=evil.example, for="[2001:db8:cafe::17]:4711";'
                     'proto=https;host="cam.example:443";by=10.0.0.1',
    })
    view = resolve("127.0.0.1", headers, LOCAL)
    assert view == ClientView("2001:db8:cafe::17", "https", "cam.example:443", via_proxy=True)
    hidden = H({"forwarded": "for=_hidden;proto=https"})
    assert resolve("127.0.0.1", hidden, LOCAL).address == "127.0.0.1"
    broken = H({"forwarded": 'for="1.2.3.4;proto=https'})  # unterminated quote
    assert resolve("127.0.0.1", broken, LOCAL) == ClientView("127.0.0.1", "http", "", True)


def test_x_forwarded_family_wins_and_is_never_mixed_with_forwarded() -> None:
    headers = H({"x-forwarded-for": "198.51.100.1",
                 "forwarded": "for=6.6.6.6;proto=https;host=evil.example"})
    view = resolve("127.0.0.1", headers, LOCAL)
    assert (view.address, view.scheme, view.host) == ("198.51.100.1", "http", "")


# Streamer: the same rules on real connections


def get(port: int, target: str, headers: dict[str, str] | None = None
        ) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


FORGED = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Host": "cam.example",
          "X-Forwarded-Proto": "https"}


def addresses(streamer: Streamer) -> list[str]:
    return [c["address"] for c in streamer.stats()["clients"]]


def test_stats_show_the_forwarded_address_only_from_a_trusted_peer(streamer_factory) -> None:
    trusting = streamer_factory("test", trusted_proxies=["127.0.0.1"])
    plain = streamer_factory("test")
    for streamer, expected in ((trusting, "203.0.113.9"), (plain, "127.0.0.1")):
        with connect(streamer.url + "?max_bytes=0", open_timeout=TIMEOUT,
                     additional_headers=FORGED) as ws:
            next_text(ws, "metadata")
            assert addresses(streamer) == [expected]


def test_origin_rule_uses_the_forwarded_host_only_from_a_trusted_peer(streamer_factory) -> None:
    trusting = streamer_factory("test", trusted_proxies=["127.0.0.1"])
    plain = streamer_factory("test")
    # The page is served by the proxy at https://cam.example: same origin through the proxy.
    with connect(trusting.url, open_timeout=TIMEOUT, origin="https://cam.example",
                 additional_headers=FORGED) as ws:
        next_text(ws, "metadata")
    # The same headers sent straight to a server that trusts no one gain nothing.
    with connect(plain.url, open_timeout=TIMEOUT, origin="https://cam.example",
                 additional_headers=FORGED) as ws:
        assert close_code_of(ws) == (CloseCode.POLICY_VIOLATION, "origin not allowed")
    # A foreign page is refused through the proxy too.
    with connect(trusting.url, open_timeout=TIMEOUT, origin="https://evil.example",
                 additional_headers=FORGED) as ws:
        assert close_code_of(ws) == (CloseCode.POLICY_VIOLATION, "origin not allowed")


def test_dns_rebinding_rule_still_reads_the_host_header_as_received(streamer_factory) -> None:
    """A page rebound to 127.0.0.1 cannot get in by adding X-Forwarded-Host itself."""
    trusting = streamer_factory("test", trusted_proxies=["127.0.0.1"])
    rebound = {
        "Host": f"attacker.example:{trusting.port}",  # replaces the default Host: exactly one
        "X-Forwarded-Host": "localhost",
        "Origin": "http://localhost",
    }
    with RawClient(trusting.port, timeout=TIMEOUT) as client:
        client.handshake("/", extra=rebound)
        assert client.recv_close() == (CloseCode.POLICY_VIOLATION, b"host not allowed")


def test_token_works_the_same_from_a_trusted_peer(streamer_factory) -> None:
    streamer = streamer_factory("test", token="s3cret", trusted_proxies=["127.0.0.1"])
    with connect(streamer.url, open_timeout=TIMEOUT, additional_headers=FORGED) as ws:
        assert close_code_of(ws) == (CloseCode.POLICY_VIOLATION, "token required")
    status, _, _ = get(streamer.port, "/snapshot.jpg", FORGED)
    assert status == 401
    auth = {**FORGED, "Authorization": "Bearer s3cret"}
    with connect(streamer.url, open_timeout=TIMEOUT, additional_headers=auth) as ws:
        next_text(ws, "metadata")


def test_mjpeg_stream_address_and_ws_hint_follow_the_proxy(streamer_factory) -> None:
    streamer = streamer_factory("test", trusted_proxies=["127.0.0.1"])
    status, body, _ = get(streamer.port, "/ws", FORGED)
    assert status == 426 and b"wss://cam.example/" in body
    status, body, _ = get(streamer.port, "/ws", {"X-Forwarded-For": "1.2.3.4"})
    assert status == 426 and f"ws://127.0.0.1:{streamer.port}/".encode() in body
    conn = http.client.HTTPConnection("127.0.0.1", streamer.port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/stream.mjpg", headers=FORGED)
        response = conn.getresponse()
        assert response.status == 200
        response.read(100)
        streams = streamer.stats()["http"]["mjpeg_streams"]
        assert [s["address"] for s in streams] == ["203.0.113.9"]
    finally:
        conn.close()


def test_log_names_client_and_proxy(streamer_factory, caplog) -> None:
    streamer = streamer_factory("test", trusted_proxies=["127.0.0.1"])
    with caplog.at_level("INFO", logger="camstream.server"):
        with connect(streamer.url, open_timeout=TIMEOUT, additional_headers=FORGED) as ws:
            next_text(ws, "metadata")
    assert any("from 203.0.113.9 via 127.0.0.1" in r.getMessage() for r in caplog.records)


def test_is_trusted_proxy_is_the_accept_time_exemption() -> None:
    policy = AccessPolicy(trusted_proxies=parse_trusted_proxies(["127.0.0.0/8"]))
    assert policy.is_trusted_proxy("127.0.0.5")
    assert not policy.is_trusted_proxy("192.0.2.1")
    assert not AccessPolicy().is_trusted_proxy("127.0.0.1")


# /healthz


def test_healthz_is_200_only_while_frames_flow(streamer_factory) -> None:
    streamer = streamer_factory("push", token="s3cret", fps=30)
    status, body, headers = get(streamer.port, "/healthz")
    assert (status, body) == (503, b"no frames\n")
    assert headers["cache-control"].startswith("no-store")
    streamer.publish(np.zeros((48, 64, 3), np.uint8))
    status, body, _ = get(streamer.port, "/healthz")  # no token needed
    assert (status, body) == (200, b"ok\n")
    published = time.monotonic()
    # Frames stop: within ~2 s the check fails (and not before about 2 s).
    assert wait_until(lambda: get(streamer.port, "/healthz")[0] == 503, 2.0 + TIMEOUT, 0.1)
    assert time.monotonic() - published >= 1.9
    streamer.publish(np.zeros((48, 64, 3), np.uint8))
    assert get(streamer.port, "/healthz")[:2] == (200, b"ok\n")


def test_healthz_ignores_query_and_origin_and_says_nothing_else(streamer_factory) -> None:
    streamer = streamer_factory("test")
    assert wait_until(lambda: streamer.camera.latest() is not None)
    status, body, _ = get(streamer.port, "/healthz?token=x&fps=abc",
                          {"Origin": "https://evil.example"})
    assert (status, body) == (200, b"ok\n")


def test_a_requests_proxy_view_is_parsed_once(monkeypatch) -> None:
    """Issue 23 item 3: logs, stats, limits and the Origin rule all ask; the headers of one
    request are parsed the first time only."""
    import camstream.web.policy as policy_module

    calls = []
    real = policy_module.resolve
    monkeypatch.setattr(policy_module, "resolve", lambda *a, **k: calls.append(1) or real(*a, **k))
    policy = AccessPolicy(trusted_proxies=LOCAL)
    request = Request("GET", "/", {}, Headers([("Host", "x"), ("X-Forwarded-For", "203.0.113.9")]),
                      ("127.0.0.1", 40000))
    first = policy.client_of(request)
    assert first.address == "203.0.113.9" and first.via_proxy
    for _ in range(5):
        assert policy.client_of(request) is first
    policy.describe(request)
    policy.refusal(request)
    assert len(calls) == 1
    other = AccessPolicy()  # another policy does not take this one's view
    assert other.client_of(request).address == "127.0.0.1"
