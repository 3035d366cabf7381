"""Refusals of the access policy are visible (issue 22 item 2, the policy's side): the client
gets the close code or status with a reason as before; the server logs a WARNING, rate-limited,
that names the page's origin (escaped) and the option that admits it, or for a token the
option, never the token's text."""

from __future__ import annotations

import logging

import pytest
from conftest import TIMEOUT, wait_until
from helpers import get
from wsraw import RawClient

import camstream.server
import camstream.web.routes
from camstream.ratelimit import LogBudget

FORGED = "http://evil.example\r\n2026-12-03 08:00:00 INFO forged\x1b[2K"


@pytest.fixture(autouse=True)
def fresh_log_budgets(monkeypatch) -> None:
    """The refusal budgets are per process: other tests' refusals must not use this one's."""
    monkeypatch.setattr(camstream.server, "_refusal_log", LogBudget())
    monkeypatch.setattr(camstream.web.routes, "_refusal_log", LogBudget())


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "refus" in r.getMessage()]


def test_an_origin_refusal_is_a_warning_with_the_origin_and_the_fix(
    streamer_factory, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="camstream")
    streamer = streamer_factory("test", width=32, height=24)
    with RawClient(streamer.port, timeout=TIMEOUT) as client:
        client.handshake("/", extra={"Origin": "https://app.example"})
        assert client.recv_close() == (1008, b"origin not allowed")  # as before
    (line,) = warnings_of(caplog)
    assert "origin not allowed" in line
    assert "--allow-origin https://app.example" in line and "allowed_origins" in line


def test_a_malformed_origin_is_refused_not_a_traceback(streamer_factory, caplog) -> None:
    streamer = streamer_factory("test", width=64, height=48)
    caplog.set_level(logging.DEBUG, logger="camstream")
    with RawClient(streamer.port, timeout=TIMEOUT) as client:
        client.handshake("/", extra={"Origin": "http://[::1"})
        assert client.recv_close() == (1008, b"origin not allowed")
    status = get(streamer.port, "/snapshot.jpg", {"Origin": "http://[::1"}).status
    assert status == 403
    # Refusals are WARNINGs that name the origin: never an error or a traceback.
    assert len(warnings_of(caplog)) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_client_text_in_a_refusal_line_is_escaped(streamer_factory, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="camstream")
    streamer = streamer_factory("test", width=32, height=24)
    with RawClient(streamer.port, timeout=TIMEOUT) as client:
        client.handshake("/", extra={"Origin": FORGED.replace("\r\n", "%0d%0a")})
        client.recv_close()
    assert get(streamer.port, "/stats.json", {"Origin": "http://x\x1b[2K.example"}).status == 403
    lines = warnings_of(caplog)
    assert len(lines) == 2 and all("\x1b" not in line and "\n" not in line for line in lines)
    assert "http://x\\x1b[2K.example" in lines[1]


def test_a_token_refusal_names_the_option_not_the_token(streamer_factory, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="camstream")
    streamer = streamer_factory("test", width=32, height=24, token="s3cret")
    with RawClient(streamer.port, timeout=TIMEOUT) as client:
        client.handshake("/?token=GUESS-1234")
        assert client.recv_close() == (1008, b"invalid token")
    assert get(streamer.port, "/snapshot.jpg?token=GUESS-1234").status == 401
    lines = warnings_of(caplog)
    assert len(lines) == 2 and all("--token" in line for line in lines), lines
    assert not any("GUESS" in line or "s3cret" in line for line in lines)


def test_refusal_lines_are_rate_limited(streamer_factory, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="camstream")
    streamer = streamer_factory("test", width=32, height=24)
    for _ in range(40):
        assert get(streamer.port, "/stats.json", {"Origin": "https://app.example"}).status == 403
    lines = warnings_of(caplog)
    assert len(lines) <= 12, len(lines)  # a burst of about 10, then about one a second
    assert streamer.stats()["http"]["refused"] == 40  # every one counted


def test_a_full_server_says_which_option_makes_room(streamer_factory, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="camstream")
    streamer = streamer_factory("test", width=32, height=24, max_clients=1)
    with RawClient(streamer.port, timeout=TIMEOUT) as first:
        first.handshake("/")
        # Its place is taken once its session is registered (after the 101): wait for it, or
        # the second could take the place first.
        assert wait_until(lambda: streamer.client_count == 1)
        with RawClient(streamer.port, timeout=TIMEOUT) as second:
            second.handshake("/")
            assert second.recv_close() == (1013, b"server full, try again later")
        assert get(streamer.port, "/stream.mjpg").status == 503
    lines = warnings_of(caplog)
    assert len(lines) == 2 and all("--max-clients" in line for line in lines), lines
