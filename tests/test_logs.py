"""Log lines: the Streamer they are about (when several run), and client text made safe."""

from __future__ import annotations

import logging

import pytest
import websocket
from conftest import TIMEOUT

from camstream import logs
from camstream.logs import printable


def test_printable_escapes_what_could_forge_a_line_or_drive_a_terminal() -> None:
    forged = "/x\r2026-12-03 INFO camstream: forged line\x1b[2K\n\t\u202eevil\x00"
    text = printable(forged)
    assert "\r" not in text and "\n" not in text and "\x1b" not in text and "\x00" not in text
    assert "\u202e" not in text and "\t" not in text
    assert text == (
        "/x\\r2026-12-03 INFO camstream: forged line\\x1b[2K\\n\\t\\u202eevil\\x00"
    )


def test_printable_keeps_ordinary_text_and_caps_length() -> None:
    assert printable("https://example.com:8080/ä") == "https://example.com:8080/ä"
    assert printable(b"GET /\xff") == "GET /\xff"  # bytes read as Latin-1, never raise
    long = printable("a" * 500, limit=10)
    assert long == "aaaaaaaaaa...(+490 chars)"


def test_printable_never_raises() -> None:
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert printable(Hostile()) == "<Hostile>"


def _connect_and_close(url: str) -> None:
    ws = websocket.create_connection(url, timeout=TIMEOUT)
    try:
        ws.recv()  # the metadata: the session is open
    finally:
        ws.close()


def test_two_streamers_in_one_process_name_themselves_in_their_lines(
    streamer_factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="camstream")
    first = streamer_factory("test", fps=10)
    second = streamer_factory("test", fps=10)
    caplog.clear()
    _connect_and_close(second.url)
    _connect_and_close(first.url)
    first.stop()
    second.stop()
    mine = [r for r in caplog.records if r.name.startswith("camstream")]
    labels = {getattr(r, "camstream_label", None) for r in mine}
    assert {f":{first.port}", f":{second.port}"} <= labels, labels
    for record in mine:
        label = getattr(record, "camstream_label", None)
        if label is not None:
            assert record.getMessage().startswith(f"[{label}] ")


def test_one_streamer_alone_logs_without_a_label(
    streamer_factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="camstream")
    streamer = streamer_factory("test", fps=10)
    _connect_and_close(streamer.url)
    streamer.stop()
    mine = [r for r in caplog.records if r.name.startswith("camstream")]
    assert mine, "a connection logs at DEBUG at least"
    assert not any(hasattr(r, "camstream_label") for r in mine)


def test_a_named_label_is_always_shown() -> None:
    label = logs.Label("front", explicit=True)
    label.set(":8765")  # a named label keeps its name
    assert label.text == "front" and label.shown
    anonymous = logs.Label(":9000")
    assert not anonymous.shown  # not activated, and alone
