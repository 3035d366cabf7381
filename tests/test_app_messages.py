"""Issue 20: ``app`` messages between clients and the application (``on_message``,
``AppClient.send``, ``Streamer.broadcast``).

Real servers on port 0, real ``websockets`` and ``websocket-client`` clients, raw sockets where
a test needs a client that stops reading.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from typing import Any

import numpy as np
import pytest
import websocket
from conftest import SLACK, TIMEOUT, wait_until
from helpers import RawViewer, close_code_of, next_text, receive_for
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from wsraw import OP_TEXT, build_frame

from camstream import AppClient, CloseCode, DataError, DataTooLargeError, protocol
from camstream.delivery.session import APP_QUEUE_LIMIT


class Recorder:
    """An ``on_message`` that records ``(client, value)`` and answers each value with
    ``{"echo": value}`` (unless told not to)."""

    def __init__(self, echo: bool = True) -> None:
        self.calls: list[tuple[AppClient, Any]] = []
        self.threads: set[str] = set()
        self.echo = echo
        self._lock = threading.Lock()

    def __call__(self, client: AppClient, value: Any) -> None:
        with self._lock:
            self.calls.append((client, value))
            self.threads.add(threading.current_thread().name)
        if self.echo:
            assert client.send({"echo": value})

    def values_of(self, client_id: int) -> list[Any]:
        with self._lock:
            return [value for client, value in self.calls if client.id == client_id]

    def count(self) -> int:
        with self._lock:
            return len(self.calls)


def app(value: Any) -> str:
    return json.dumps({"type": "app", "value": value})


def ids(streamer: Any) -> list[int]:
    return [client["id"] for client in streamer.stats()["clients"]]


def test_values_reach_on_message_in_order_per_client_with_one_handle_each(
    streamer_factory,
) -> None:
    recorder = Recorder()
    streamer = streamer_factory("test", fps=10, width=64, height=48, on_message=recorder)
    with connect(streamer.url, open_timeout=TIMEOUT) as a:
        next_text(a, "metadata")
        b = websocket.create_connection(streamer.url, timeout=TIMEOUT)
        try:
            assert json.loads(b.recv())["type"] == "metadata"
            for i in range(25):  # interleaved, within the message budget's burst
                a.send(app({"from": "a", "n": i}))
                b.send(app(["b", i]))
            assert wait_until(lambda: recorder.count() == 50)
            id_a, id_b = ids(streamer)
            assert [v["n"] for v in recorder.values_of(id_a)] == list(range(25))
            assert [v[1] for v in recorder.values_of(id_b)] == list(range(25))
            # One handle per connection, the same object each time; the policy's address.
            handles = {id(client) for client, _ in recorder.calls}
            assert len(handles) == 2
            client_a = next(c for c, _ in recorder.calls if c.id == id_a)
            assert client_a.address == "127.0.0.1" and client_a.connected
            assert repr(client_a) == f"<AppClient {id_a} from 127.0.0.1>"
            # In the reader threads (one per connection), not the application's.
            assert len(recorder.threads) == 2
            assert threading.current_thread().name not in recorder.threads
            # The answers come back to each client in order, among its frames.
            echoes_a = [next_text(a, "app")["value"]["echo"]["n"] for _ in range(25)]
            assert echoes_a == list(range(25))
            echoes_b: list[int] = []
            while len(echoes_b) < 25:
                opcode, payload = b.recv_data()
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    message = json.loads(payload)
                    if message["type"] == "app":
                        echoes_b.append(message["value"]["echo"][1])
            assert echoes_b == list(range(25))
        finally:
            b.close()
    assert wait_until(lambda: not client_a.connected)
    assert client_a.send("too late") is False, "a client that left takes nothing"
    report = streamer.stats()["app"]
    assert report["received"] == 50 and report["sent"] == 50 and report["failures"] == 0


def test_without_on_message_an_app_message_gets_an_error(streamer_factory) -> None:
    streamer = streamer_factory("test", fps=10, width=64, height=48)
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        ws.send(app("hello"))
        assert next_text(ws, "error")["message"].startswith("no application handler")
        ws.send(json.dumps({"type": "ping", "t": 1}))
        assert next_text(ws, "pong")["t"] == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("app please", "message is not valid JSON"),
        ('{"type": "app"}', 'app message has no "value"'),
        ('{"type": "app", "value": 1e999}', "number 1e999 is out of range"),
        ('{"type": "app", "value": NaN}', "message is not valid JSON"),
        ('{"type": "app", "value": ' + "[" * 2000 + "]" * 2000 + "}",
         "message is not valid JSON"),
        ('{"type": "apps", "value": 1}', 'unknown message type "apps"'),
    ],
)
def test_bad_app_messages_get_an_error_and_the_session_goes_on(
    streamer_factory, text: str, expected: str
) -> None:
    recorder = Recorder(echo=False)
    streamer = streamer_factory("test", fps=10, width=64, height=48, on_message=recorder)
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        ws.send(text)
        assert next_text(ws, "error")["message"].startswith(expected)
        ws.send(app("fine"))
        assert wait_until(lambda: recorder.count() == 1)
        assert recorder.calls[0][1] == "fine"
        _, frames = receive_for(ws, 0.5 * SLACK)
        assert frames, "frames go on"


def test_hostile_values_reach_the_application_as_data_and_the_log_safely(
    streamer_factory, caplog
) -> None:
    """Whatever JSON a client sends is a value to the application, never code or log lines."""
    caplog.set_level(logging.ERROR, logger="camstream")

    def on_message(client: AppClient, value: Any) -> None:
        raise ValueError(f"cannot use {value!r}")

    streamer = streamer_factory("test", fps=10, width=64, height=48, on_message=on_message)
    hostile = {"__proto__": {"admin": True}, "s": "\x1b[2J\r\nFAKE camstream line\u202e",
               "n": 10**300, "deep": [[[[[[[[[[]]]]]]]]]]}
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        ws.send(app(hostile))
        error = next_text(ws, "error")["message"]
        assert error == "the application could not handle this app message"
        assert "Traceback" not in error and "cannot use" not in error
    (record,) = [r for r in caplog.records if "on_message raised" in r.getMessage()]
    line = record.getMessage()
    assert "\x1b" not in line and "\r" not in line and "\n" not in line and "\u202e" not in line
    assert record.exc_info is not None and record.exc_info[0] is ValueError


def test_an_oversized_app_message_is_closed_with_1009(streamer_factory) -> None:
    recorder = Recorder()
    streamer = streamer_factory("test", fps=10, width=64, height=48, on_message=recorder)
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        ws.send(app("x" * 5000))
        assert close_code_of(ws)[0] == CloseCode.MESSAGE_TOO_BIG
    assert recorder.count() == 0


def test_a_flood_of_app_messages_is_closed_with_1008(streamer_factory) -> None:
    recorder = Recorder(echo=False)
    streamer = streamer_factory("test", fps=10, width=64, height=48, on_message=recorder)
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        with contextlib.suppress(ConnectionClosed):  # (the Close may come before the last)
            for i in range(100):  # 2.5 times the burst at once
                ws.send(app(i))
        assert close_code_of(ws) == (CloseCode.POLICY_VIOLATION, "too many messages")
    assert 0 < recorder.count() < 100
    assert [value for _, value in recorder.calls] == list(range(recorder.count()))


def test_token_and_origin_rules_hold_before_any_app_message(streamer_factory) -> None:
    recorder = Recorder()
    streamer = streamer_factory("test", token="s3cret", on_message=recorder)
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        with contextlib.suppress(ConnectionClosed):  # (the Close may come first)
            ws.send(app("let me in"))
        assert close_code_of(ws) == (CloseCode.POLICY_VIOLATION, "token required")
    with connect(streamer.url + "?token=s3cret", open_timeout=TIMEOUT,
                 origin="https://evil.example") as ws:
        with contextlib.suppress(ConnectionClosed):
            ws.send(app("let me in"))
        assert close_code_of(ws) == (CloseCode.POLICY_VIOLATION, "origin not allowed")
    assert recorder.count() == 0
    with connect(streamer.url + "?token=s3cret", open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        ws.send(app("hello"))
        assert next_text(ws, "app")["value"] == {"echo": "hello"}


def test_a_raising_handler_costs_its_client_an_error_and_the_log_a_few_lines(
    streamer_factory, caplog
) -> None:
    caplog.set_level(logging.ERROR, logger="camstream")
    recorder = Recorder()

    def on_message(client: AppClient, value: Any) -> None:
        if value == "boom":
            raise RuntimeError("bug in the application")
        recorder(client, value)

    streamer = streamer_factory("test", fps=10, width=64, height=48, on_message=on_message)
    with connect(streamer.url, open_timeout=TIMEOUT) as bad, \
            connect(streamer.url, open_timeout=TIMEOUT) as good:
        next_text(bad, "metadata")
        next_text(good, "metadata")
        for _ in range(20):
            bad.send(app("boom"))
        errors = [next_text(bad, "error")["message"] for _ in range(20)]
        assert set(errors) == {"the application could not handle this app message"}
        good.send(app("still here"))
        assert next_text(good, "app")["value"] == {"echo": "still here"}
        bad.send(app("and me"))
        assert next_text(bad, "app")["value"] == {"echo": "and me"}
        _, frames = receive_for(bad, 0.5 * SLACK)
        assert frames, "the session goes on"
    logged = [r for r in caplog.records if "on_message raised" in r.getMessage()]
    assert 1 <= len(logged) <= 5, len(logged)
    assert all(r.exc_info is not None for r in logged)
    assert streamer.stats()["app"]["failures"] == 20


def test_a_blocking_handler_stalls_only_its_own_clients_messages(streamer_factory) -> None:
    """What a slow handler costs (PROTOCOL.md): that client's control messages wait; its
    frames keep coming; every other client is untouched."""
    release = threading.Event()
    blocked = threading.Event()
    recorder = Recorder()

    def on_message(client: AppClient, value: Any) -> None:
        if value == "block":
            blocked.set()
            assert release.wait(3 * TIMEOUT)
        recorder(client, value)

    streamer = streamer_factory("test", fps=20, width=64, height=48, on_message=on_message)
    try:
        with connect(streamer.url, open_timeout=TIMEOUT) as slow, \
                connect(f"{streamer.url}?fps=0.1", open_timeout=TIMEOUT) as other:
            # (other reads no frames: at 0.1 fps none queue up in its client to hold up its
            # close handshake, as a client's full queue stops it reading the server's close)
            next_text(slow, "metadata")
            next_text(other, "metadata")
            slow.send(app("block"))
            assert blocked.wait(TIMEOUT)
            slow.send(json.dumps({"type": "ping", "t": "waiting"}))
            slow.send(app("after"))
            other.send(app("meanwhile"))
            assert next_text(other, "app")["value"] == {"echo": "meanwhile"}
            texts, frames = receive_for(slow, 1.0)
            assert len(frames) >= 3 / SLACK, "frames flow from the sender thread"
            assert not [t for t in texts if t["type"] in ("pong", "app")], texts
            release.set()
            assert next_text(slow, "app")["value"] == {"echo": "block"}
            assert next_text(slow, "pong")["t"] == "waiting"
            assert next_text(slow, "app")["value"] == {"echo": "after"}
    finally:
        release.set()
    assert [v for _, v in recorder.calls] == ["meanwhile", "block", "after"]


def test_a_client_that_does_not_read_gets_a_bounded_queue_and_sends_say_so(
    streamer_factory,
) -> None:
    handles: list[AppClient] = []
    streamer = streamer_factory(
        "test", fps=10, width=64, height=48, on_message=lambda c, v: handles.append(c),
        max_data_bytes=protocol.MAX_DATA_BYTES,
    )
    viewer = RawViewer(streamer.port, rcvbuf=4096)
    try:
        viewer.sock.sendall(build_frame(OP_TEXT, app("hello").encode()))
        assert wait_until(lambda: len(handles) == 1)
        (client,) = handles
        big = "x" * 60000
        results = [client.send(big) for _ in range(400)]  # ~24 MB: far beyond any buffer
        assert results[0] is True
        assert False in results, "the queue is bounded"
        assert results.count(True) >= APP_QUEUE_LIMIT
        assert streamer.stats()["app"]["dropped"] == results.count(False)
        with pytest.raises(DataTooLargeError):
            client.send("x" * protocol.MAX_DATA_BYTES)
        with pytest.raises(DataError):
            client.send({"n": np.int16(1)})
    finally:
        viewer.reset()
    assert wait_until(lambda: not client.connected)
    assert client.send("gone") is False


def test_broadcast_reaches_the_clients_in_the_conversation_only(streamer_factory) -> None:
    recorder = Recorder(echo=False)
    streamer = streamer_factory("test", fps=10, width=64, height=48, on_message=recorder)
    with connect(streamer.url + "?data=1", open_timeout=TIMEOUT) as with_data, \
            connect(streamer.url, open_timeout=TIMEOUT) as talker, \
            connect(streamer.url, open_timeout=TIMEOUT) as seed_like:
        for ws in (with_data, talker, seed_like):
            next_text(ws, "metadata")
        assert streamer.broadcast({"detect": True}) == 1  # only the one that asked for data
        assert next_text(with_data, "app")["value"] == {"detect": True}
        talker.send(app("hi"))
        assert wait_until(lambda: recorder.count() == 1)
        assert streamer.broadcast("second") == 2
        assert next_text(with_data, "app")["value"] == "second"
        assert next_text(talker, "app")["value"] == "second"
        texts, frames = receive_for(seed_like, 0.5 * SLACK)
        assert frames and all(t["type"] == "metadata" for t in texts), texts
        with pytest.raises(DataTooLargeError, match="over the limit of 16384 bytes"):
            streamer.broadcast("x" * 20000)
    assert streamer.stats()["app"]["broadcasts"] == 2  # (the refused one is not counted)


def test_app_messages_and_frame_data_share_one_connection_in_order(streamer_factory) -> None:
    """An app answer never lands between a frame's data and its JPEG."""
    def on_message(client: AppClient, value: Any) -> None:
        for i in range(5):
            client.send({"reply": value, "i": i})

    streamer = streamer_factory("push", fps=30, on_message=on_message)
    stop = threading.Event()

    def publish() -> None:
        n = 0
        while not stop.is_set():
            streamer.publish(np.full((48, 64, 3), n % 200, np.uint8), data={"n": n})
            n += 1
            stop.wait(1 / 60)

    publisher = threading.Thread(target=publish, name="test-publisher")
    with connect(streamer.url + "?data=1", open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        publisher.start()
        try:
            for i in range(5):
                ws.send(app(i))
            messages: list[Any] = []
            deadline = time.monotonic() + TIMEOUT
            while sum('"reply"' in m for m in messages if isinstance(m, str)) < 25:
                assert time.monotonic() < deadline
                messages.append(ws.recv(timeout=TIMEOUT))
        finally:
            stop.set()
            publisher.join(TIMEOUT)
    for i, message in enumerate(messages):
        if isinstance(message, str) and json.loads(message)["type"] == "data":
            assert i + 1 == len(messages) or isinstance(messages[i + 1], bytes)
    replies = [json.loads(m)["value"] for m in messages
               if isinstance(m, str) and json.loads(m)["type"] == "app"]
    assert replies == [{"reply": v, "i": i} for v in range(5) for i in range(5)]
