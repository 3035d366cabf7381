"""CORS for allowed origins (issue 22 item 7) and the refusal log lines (item 2), in a real
headless Chromium: a page of another origin (a second HTTP server, on 127.0.0.2) can
``fetch()`` ``/snapshot.jpg`` and ``/stats.json`` when ``allowed_origins`` lists it, and cannot
when it does not. The headers themselves are checked on the wire too.
"""

from __future__ import annotations

import http.client
import logging
from typing import Any

import pytest
from conftest import TIMEOUT
from helpers import Response, get
from test_browser import WAIT_MS, browser, foreign_site  # noqa: F401 - the fixture is used

BLANK = "<!doctype html><title>another origin</title><p>a web app"

FETCH = """async ({port, token}) => {
    const out = {};
    for (const path of ["/snapshot.jpg", "/stats.json"]) {
        const headers = token ? {Authorization: "Bearer " + token} : {};
        try {
            const response = await fetch(`http://127.0.0.1:${port}${path}`, {headers});
            const body = await response.arrayBuffer();
            out[path] = {status: response.status, bytes: body.byteLength,
                         type: response.headers.get("content-type")};
        } catch (error) {
            out[path] = {error: String(error)};
        }
    }
    return out;
}"""


def origin_of(url: str) -> str:
    return url.rstrip("/")


def fetch_from_another_origin(chromium: Any, streamer: Any, url: str, token: str = "") -> dict:
    tab = chromium.new_page()  # not the `page` fixture: refused fetches log console errors
    try:
        tab.goto(url, timeout=WAIT_MS)
        return tab.evaluate(FETCH, {"port": streamer.port, "token": token})  # type: ignore
    finally:
        tab.close()


def test_an_allowed_origin_can_fetch_snapshots_and_stats(
    streamer_factory, browser  # noqa: F811 - the fixture
) -> None:
    with foreign_site(BLANK) as url:
        streamer = streamer_factory("test", width=160, height=120, allowed_origins=[origin_of(url)])
        got = fetch_from_another_origin(browser, streamer, url)
    assert got["/snapshot.jpg"]["status"] == 200 and got["/snapshot.jpg"]["bytes"] > 500, got
    assert got["/snapshot.jpg"]["type"] == "image/jpeg"
    assert got["/stats.json"]["status"] == 200 and got["/stats.json"]["bytes"] > 100, got


def test_with_a_token_the_preflight_lets_the_bearer_header_through(
    streamer_factory, browser  # noqa: F811 - the fixture
) -> None:
    with foreign_site(BLANK) as url:
        streamer = streamer_factory(
            "test", width=160, height=120, allowed_origins=[origin_of(url)], token="s3cret"
        )
        with_token = fetch_from_another_origin(browser, streamer, url, token="s3cret")
        without = fetch_from_another_origin(browser, streamer, url)
    assert with_token["/snapshot.jpg"]["status"] == 200, with_token
    assert with_token["/stats.json"]["status"] == 200, with_token
    # A refusal is readable too: the page learns it needs the token, not a network error.
    assert without["/snapshot.jpg"]["status"] == 401, without


@pytest.mark.parametrize("listed", [None, ["http://example.com"]], ids=["none", "another"])
def test_an_origin_not_allowed_cannot_fetch(
    streamer_factory, browser, caplog, listed  # noqa: F811 - the fixture
) -> None:
    caplog.set_level(logging.WARNING, logger="camstream")
    with foreign_site(BLANK) as url:
        streamer = streamer_factory("test", width=160, height=120, allowed_origins=listed)
        got = fetch_from_another_origin(browser, streamer, url)
    for path in ("/snapshot.jpg", "/stats.json"):
        assert "error" in got[path] and "Failed to fetch" in got[path]["error"], got
    assert streamer.stats()["http"]["refused"] >= 2  # refused by the server, too
    # The log names the page's origin and the option that admits it.
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any(f"--allow-origin {origin_of(url)}" in line for line in lines), lines


# -- On the wire ----------------------------------------------------------------------------


def request(port: int, method: str, target: str, headers: dict[str, str]) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, target, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


def test_cors_headers_name_only_an_allowed_origin(streamer_factory) -> None:
    streamer = streamer_factory("test", width=64, height=48, allowed_origins=["https://app.example"])
    for path in ("/snapshot.jpg", "/stats.json", "/healthz"):
        allowed = get(streamer.port, path, {"Origin": "https://app.example"})
        assert allowed.status == 200, (path, allowed)
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "Origin" in allowed.headers["vary"]
        plain = get(streamer.port, path)  # no Origin: no CORS header, still Vary
        assert "access-control-allow-origin" not in plain.headers and plain.headers["vary"]
    other = get(streamer.port, "/snapshot.jpg", {"Origin": "https://evil.example"})
    assert other.status == 403 and "access-control-allow-origin" not in other.headers


def test_without_allowed_origins_no_response_carries_cors(streamer_factory) -> None:
    streamer = streamer_factory("test", width=64, height=48)
    origin = f"http://127.0.0.1:{streamer.port}"  # same-origin: needs none
    same = get(streamer.port, "/stats.json", {"Origin": origin})
    assert same.status == 200 and "access-control-allow-origin" not in same.headers


def test_preflight(streamer_factory) -> None:
    streamer = streamer_factory("test", width=64, height=48, allowed_origins=["https://app.example"])
    asks = {"Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"}
    ok = request(streamer.port, "OPTIONS", "/snapshot.jpg",
                 {"Origin": "https://app.example", **asks})
    assert ok.status == 204, ok
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    assert "GET" in ok.headers["access-control-allow-methods"]
    assert ok.headers["access-control-allow-headers"].lower() == "authorization"
    refused = request(streamer.port, "OPTIONS", "/stats.json",
                      {"Origin": "https://evil.example", **asks})
    assert refused.status == 403 and "access-control-allow-origin" not in refused.headers
    elsewhere = request(streamer.port, "OPTIONS", "/", {"Origin": "https://app.example", **asks})
    assert elsewhere.status == 405
