"""The access policy on its own: token, Host (DNS rebinding), Origin, cross-site embedding,
trusted proxies, and how a refusal maps to a close code and an HTTP status. No sockets: the
same rules are exercised end to end in test_control.py, test_http.py and test_proxy.py."""

from __future__ import annotations

import pytest

from camstream import CloseCode
from camstream.web.policy import AccessPolicy, Refusal, is_loopback_name
from camstream.web.proxy import parse_trusted_proxies
from camstream.ws import Request


def request(
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    peer: str = "127.0.0.1",
) -> Request:
    """A parsed request as the transport hands it over (header names lower-case)."""
    head = {"host": "127.0.0.1:8765", **(headers or {})}
    return Request("GET", "/", dict(query or {}), head, (peer, 40000))  # type: ignore[arg-type]


def test_without_a_token_a_plain_client_may_watch() -> None:
    policy = AccessPolicy()
    assert policy.refusal(request()) is None
    assert not policy.authenticated(request(query={"token": "x"}))
    assert not policy.has_token


@pytest.mark.parametrize(
    ("query", "headers", "reason"),
    [
        ({}, {}, "token required"),
        ({"token": "wrong"}, {}, "invalid token"),
        ({"token": ""}, {}, "invalid token"),
        ({}, {"authorization": "Bearer wrong"}, "invalid token"),
        ({}, {"authorization": "Basic s3cret"}, "token required"),
    ],
)
def test_a_missing_or_wrong_token_is_refused_as_unauthenticated(
    query: dict[str, str], headers: dict[str, str], reason: str
) -> None:
    refusal = AccessPolicy(token="s3cret").refusal(request(headers, query))
    assert refusal == Refusal(reason, unauthenticated=True)
    assert (refusal.close_code, refusal.http_status) == (CloseCode.POLICY_VIOLATION, 401)


@pytest.mark.parametrize(
    ("query", "headers"),
    [({"token": "s3cret"}, {}), ({}, {"authorization": "bearer  s3cret "})],
)
def test_the_token_in_the_query_or_a_bearer_header_admits(
    query: dict[str, str], headers: dict[str, str]
) -> None:
    policy = AccessPolicy(token="s3cret")
    assert policy.refusal(request(headers, query)) is None
    assert policy.authenticated(request(headers, query))


def test_the_token_rule_comes_before_the_others() -> None:
    refusal = AccessPolicy(token="t").refusal(
        request({"origin": "http://evil.example", "host": "evil.example"})
    )
    assert refusal is not None and refusal.reason == "token required"


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("localhost:8765", False), ("127.0.0.1:8765", False), ("127.9.9.9", False),
        ("[::1]:8765", False), ("LOCALHOST", False), ("evil.example:8765", True),
        ("192.168.1.5:8765", True), ("localhost.evil.example", True),
    ],
)
def test_on_loopback_only_names_of_this_machine_are_accepted(host: str, refused: bool) -> None:
    refusal = AccessPolicy().refusal(request({"host": host}))
    assert (refusal == Refusal("host not allowed")) is refused
    if refused:
        assert refusal is not None and refusal.http_status == 403


def test_off_loopback_any_host_name_is_accepted() -> None:
    policy = AccessPolicy(listen_host="0.0.0.0")
    assert not policy.loopback
    assert policy.refusal(request({"host": "camera.lan:8765"})) is None


@pytest.mark.parametrize(
    ("origin", "allowed", "refused"),
    [
        ("http://127.0.0.1:8765", None, False),  # same origin
        ("http://127.0.0.1:8765/", None, False),
        ("http://127.0.0.1:9999", None, True),  # another port is another origin
        ("https://example.com", None, True),
        ("https://example.com", ["https://EXAMPLE.com/"], False),
        ("https://other.example", ["https://example.com"], True),
        ("https://anything.example", ["*"], False),
        ("null", None, True),
    ],
)
def test_a_page_of_another_origin_is_refused_unless_listed(
    origin: str, allowed: list[str] | None, refused: bool
) -> None:
    refusal = AccessPolicy(allowed_origins=allowed).refusal(request({"origin": origin}))
    assert (refusal == Refusal("origin not allowed")) is refused


@pytest.mark.parametrize(
    ("site", "allowed", "refused"),
    [
        ("cross-site", None, True), ("same-site", None, True), ("same-origin", None, False),
        ("none", None, False), ("cross-site", ["https://example.com"], False),
    ],
)
def test_an_embedding_without_origin_is_refused_by_its_sec_fetch_site(
    site: str, allowed: list[str] | None, refused: bool
) -> None:
    policy = AccessPolicy(allowed_origins=allowed)
    refusal = policy.refusal(request({"sec-fetch-site": site}))
    assert (refusal == Refusal("cross-site request not allowed")) is refused
    assert policy.other_origins_allowed is (allowed is not None)


def test_behind_a_trusted_proxy_the_forwarded_client_and_host_count() -> None:
    policy = AccessPolicy(trusted_proxies=parse_trusted_proxies(["127.0.0.1"]))
    forwarded = request({
        "x-forwarded-for": "203.0.113.9", "x-forwarded-host": "cam.example.com",
        "x-forwarded-proto": "https", "origin": "https://cam.example.com",
        "host": "localhost",
    })
    client = policy.client_of(forwarded)
    assert (client.address, client.host, client.secure) == ("203.0.113.9", "cam.example.com", True)
    assert policy.describe(forwarded) == "203.0.113.9 via 127.0.0.1"
    assert policy.refusal(forwarded) is None  # same origin as the host the client asked for
    # The same headers from an untrusted peer prove nothing.
    untrusted = AccessPolicy()
    assert untrusted.describe(forwarded) == "127.0.0.1"
    assert untrusted.refusal(forwarded) == Refusal("origin not allowed")
    assert policy.is_trusted_proxy("127.0.0.1") and not untrusted.is_trusted_proxy("127.0.0.1")


@pytest.mark.parametrize(
    ("name", "loopback"),
    [("localhost", True), ("127.0.0.1:80", True), ("[::1]", True), ("::1", True),
     ("[::2]:80", False), ("10.0.0.1", False), ("", False)],
)
def test_is_loopback_name(name: str, loopback: bool) -> None:
    assert is_loopback_name(name) is loopback


# -- What a refusal says in the server's log (issue 22 item 2) ----------------------------------


def test_an_origin_refusal_names_the_origin_escaped_and_the_option() -> None:
    origin = "http://evil.example\r\n2026-12-03 INFO forged\x1b[2K"
    refusal = AccessPolicy().refusal(request({"origin": origin}))
    assert refusal is not None and refusal.reason == "origin not allowed"  # what the client gets
    text = refusal.log_text
    assert "\r" not in text and "\n" not in text and "\x1b" not in text
    assert "http://evil.example\\r\\n2026-12-03 INFO forged\\x1b[2K" in text
    assert "--allow-origin" in text and "allowed_origins" in text


@pytest.mark.parametrize("offered", [{}, {"token": "GUESS-1234"},
                                     {"authorization": "Bearer GUESS-1234"}])
def test_a_token_refusal_names_the_option_never_a_token(offered: dict[str, str]) -> None:
    query = {k: v for k, v in offered.items() if k == "token"}
    headers = {k: v for k, v in offered.items() if k != "token"}
    refusal = AccessPolicy(token="s3cret").refusal(request(headers, query))
    assert refusal is not None
    assert "--token" in refusal.log_text
    assert "s3cret" not in refusal.log_text and "GUESS" not in refusal.log_text


def test_host_and_cross_site_refusals_say_what_lifts_them() -> None:
    host = AccessPolicy().refusal(request({"host": "rebind.example:8765"}))
    assert host is not None and "rebind.example" in host.log_text and "--host" in host.log_text
    site = AccessPolicy().refusal(request({"sec-fetch-site": "cross-site"}))
    assert site is not None and "--allow-origin" in site.log_text


def test_cors_origin_is_named_only_for_an_allowed_origin() -> None:
    policy = AccessPolicy(allowed_origins=["https://app.example"])
    assert policy.cors_origin(request({"origin": "https://app.example"})) == "https://app.example"
    assert policy.cors_origin(request({"origin": "https://evil.example"})) is None
    assert policy.cors_origin(request()) is None
    assert AccessPolicy().cors_origin(request({"origin": "https://app.example"})) is None
    anyone = AccessPolicy(allowed_origins=["*"])
    assert anyone.cors_origin(request({"origin": "https://x.example"})) == "https://x.example"
