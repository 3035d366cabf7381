"""Issue 20 in the Python client: ``frame.data`` with its own frame, ``send_app`` and the
application's answers (a real Streamer on port 0, the real ``Client``)."""

from __future__ import annotations

import threading
from typing import Any

from conftest import TIMEOUT
from helpers import running
from test_app_data import DataPublisher, index_of, level_of, without_data

from camstream import AppClient
from camstream.client import Client


def test_frame_data_is_the_data_of_that_frame(streamer_factory) -> None:
    streamer = streamer_factory("push", fps=30)
    publisher = DataPublisher(streamer, 30.0, pad=10)
    with running(publisher), Client(streamer.url, data=True, timeout=TIMEOUT) as client:
        checked = 0
        for frame in client.frames():
            i = index_of(float(frame.image.mean()))
            if frame.data is None:
                assert without_data(i) and frame.seq is None
            else:
                assert frame.data["level"] == level_of(i) == publisher.levels[frame.seq]
                checked += 1
            if checked >= 10:
                break
    with running(DataPublisher(streamer, 30.0)), Client(streamer.url, timeout=TIMEOUT) as plain:
        frames = [frame for frame, _ in zip(plain.frames(), range(5))]
        assert all(frame.data is None for frame in frames), "no data unless asked"


def test_send_app_reaches_on_message_and_the_answer_comes_back(streamer_factory) -> None:
    def on_message(client: AppClient, value: Any) -> None:
        client.send({"got": value, "from": client.address})

    streamer = streamer_factory("test", fps=10, width=64, height=48, on_message=on_message)
    answered = threading.Event()
    answers: list[Any] = []

    def on_app(value: Any) -> None:
        answers.append(value)
        answered.set()

    with Client(streamer.url, on_app=on_app, timeout=TIMEOUT) as client:
        client.send_app({"toggle": "detector"})
        for _ in client.frames():
            if answered.is_set():
                break
        assert answers == [{"got": {"toggle": "detector"}, "from": "127.0.0.1"}]
        assert list(client.app_messages) == answers
        assert streamer.broadcast("to everyone in the conversation") == 1
        for _ in client.frames():
            if len(client.app_messages) == 2:
                break
        assert client.app_messages[-1] == "to everyone in the conversation"
