"""Any JSON in any field of any control message gets an answer, never a traceback: the parser
(property-based, hypothesis) returns a usable message or explains why not; a live server answers
every message (an ``error`` for a bad one, a ``pong`` for the ping after it) and never closes
the connection with 1011 or logs a warning.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from conftest import TIMEOUT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from camstream import protocol

pytestmark = pytest.mark.timeout(120)

_FIELDS = ["type", "fps", "quality", "width", "height", "max_bytes", "frame_info", "t", "x"]

# JSON texts json.dumps cannot make: out-of-range numbers, Python's non-JSON constants.
_ODD_LITERALS = ["1e309", "-1e309", "1e-400", "NaN", "Infinity", "-Infinity", "9" * 400,
                 "-0", "0.0", "1E2", "123456789012345678901234567890"]

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6,
)
_value_texts = st.one_of(
    _json_values.map(json.dumps),
    st.sampled_from(_ODD_LITERALS),
)
_type_texts = st.one_of(
    st.sampled_from(sorted(protocol.CONTROL_TYPES)).map(json.dumps), _value_texts
)


@st.composite
def _messages(draw: Any) -> str:
    """A JSON object text: a ``type`` (usually a real one), then any of the known fields."""
    parts = [f'"type": {draw(_type_texts)}'] if draw(st.integers(0, 9)) else []
    for name in draw(st.lists(st.sampled_from(_FIELDS[1:]), max_size=4, unique=True)):
        parts.append(f"{json.dumps(name)}: {draw(_value_texts)}")
    return "{" + ", ".join(parts) + "}"


@given(st.one_of(_messages(), _value_texts))
def test_parse_control_accepts_or_explains_every_message(text: str) -> None:
    """The parser's contract: a usable message or ProtocolInputError, nothing else."""
    try:
        message = protocol.parse_control(text)
    except protocol.ProtocolInputError as exc:
        assert str(exc) and "None" not in str(exc)
        return
    assert message["type"] in protocol.CONTROL_TYPES
    protocol.encode_message({"type": "pong", "t": message.get("t")})  # never raises
    if message["type"] == "config":
        settings_, problems = protocol.parse_config(message)
        assert all(isinstance(p, str) for p in problems)
        protocol.encode_message(settings_)


def _exchange(url: str, texts: list[str]) -> None:
    """Send ``texts`` on one connection, then a ping; every reply must arrive, no 1011."""
    with connect(url, open_timeout=TIMEOUT, max_size=None) as ws:
        for text in texts:
            ws.send(text)
        ws.send(json.dumps({"type": "ping", "t": "end"}))
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                message = ws.recv(timeout=max(deadline - time.monotonic(), 0.001))
            except ConnectionClosed as exc:
                raise AssertionError(f"closed by the server: {exc.rcvd}") from exc
            if isinstance(message, str):
                reply = json.loads(message)
                if reply["type"] == "error":
                    assert "Traceback" not in reply["message"]
                if reply == {**reply, "type": "pong", "t": "end"}:
                    break


def test_any_json_in_any_field_gets_an_answer_never_a_traceback(streamer_factory, caplog) -> None:
    streamer = streamer_factory("test", fps=30, width=64, height=48)
    caplog.set_level(logging.DEBUG, logger="camstream")

    @settings(max_examples=120, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_messages(), min_size=1, max_size=5))
    def run(texts: list[str]) -> None:
        _exchange(streamer.url, texts)

    run()
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.parametrize(
    "text",
    ['{"type": []}', '{"type": {}}', '{"type": "ping", "t": 1e309}', '{"type": "ping", "t": [1]}',
     '{"type": "config", "fps": 1e400}', '{"type": "config", "quality": ' + "9" * 400 + "}",
     '{"type": "snapshot", "quality": "high"}'],
)
def test_malformed_control_messages_get_an_error_not_1011(
    streamer_factory, caplog, text: str
) -> None:
    streamer = streamer_factory("test", fps=30, width=64, height=48)
    caplog.set_level(logging.DEBUG, logger="camstream")
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        ws.send(text)
        deadline = time.monotonic() + TIMEOUT
        while True:
            message = ws.recv(timeout=max(deadline - time.monotonic(), 0.001))
            if isinstance(message, str) and json.loads(message)["type"] == "error":
                break
        ws.send(json.dumps({"type": "ping", "t": 7}))  # still served
        while True:
            message = ws.recv(timeout=max(deadline - time.monotonic(), 0.001))
            if isinstance(message, str) and json.loads(message)["type"] == "pong":
                break
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


