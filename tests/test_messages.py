"""The server's text messages: one builder each in camstream.protocol, used everywhere.

Each builder gives the fields PROTOCOL.md documents; no module builds a message dict in place
(the AST of every server module is read), and no internal command travels as a message.
"""

from __future__ import annotations

import ast
import json
import re
import time
from pathlib import Path

import pytest

import camstream
from camstream import protocol
from camstream.capture.states import CameraState, announce

ROOT = Path(camstream.__file__).parent
PROTOCOL_MD = ROOT.parent / "PROTOCOL.md"


def roundtrip(message: dict) -> dict:
    parsed: dict = json.loads(protocol.encode_message(message))
    return parsed


def test_metadata() -> None:
    message = roundtrip(protocol.metadata_message(width=640, height=480, fps=30.0, quality=None,
                                                  paused=False))
    assert message["type"] == "metadata" and message["protocol"] == protocol.PROTOCOL_VERSION
    assert (message["width"], message["height"], message["fps"]) == (640, 480, 30)
    assert message["quality"] is None and message["format"] == "MJPEG"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", message["timestamp"])
    assert message["paused"] is False


def test_frame_info() -> None:
    before = time.time()
    message = roundtrip(protocol.frame_message(
        seq=7, captured_at=1700000000.1234567, skipped=2, size=1234, width=320, height=240,
        quality=80,
    ))
    assert message == {
        "type": "frame", "seq": 7, "captured_at": 1700000000.123457, "sent_at": message["sent_at"],
        "skipped": 2, "bytes": 1234, "width": 320, "height": 240, "quality": 80,
    }
    assert before - 1 <= message["sent_at"] <= time.time() + 1


def test_snapshot() -> None:
    message = roundtrip(protocol.snapshot_message(
        seq=3, width=64, height=48, quality=None, size=999, captured_at=5.5,
    ))
    assert message == {"type": "snapshot", "seq": 3, "width": 64, "height": 48, "quality": None,
                       "bytes": 999, "captured_at": 5.5}


@pytest.mark.parametrize("t", [12.5, "abc", None])
def test_pong_echoes_the_clients_t(t: float | str | None) -> None:
    message = roundtrip(protocol.pong_message(t))
    assert message["type"] == "pong" and message["t"] == t
    assert abs(message["server_time"] - time.time()) < 60


def test_camera_events() -> None:
    for event in sorted(protocol.CAMERA_EVENTS):
        message = roundtrip(protocol.event_message(event, {"source": "camera 0"}))
        assert message["type"] == event and message["source"] == "camera 0"
        assert message["timestamp"].endswith("Z")
    with pytest.raises(ValueError, match="unknown camera event"):
        protocol.event_message("_snapshot", {})


def test_every_event_the_camera_sends_has_its_message() -> None:
    """The camera's state changes name their events (capture.states.announce); each is one the
    builder knows, so none is lost on its way to the viewers."""
    sent = {
        announce(previous, state, "why", "camera 0")[0]
        for previous in CameraState
        for state in CameraState
    }
    assert {"camera_lost", "camera_restored", "source_ended"} <= sent
    assert sent - {None} <= protocol.CAMERA_EVENTS, sent - protocol.CAMERA_EVENTS


def test_error() -> None:
    assert roundtrip(protocol.error_message("bad")) == {"type": "error", "message": "bad"}


def test_every_documented_server_message_has_a_builder() -> None:
    """PROTOCOL.md's "Server → client" headings name the messages; each has a builder."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    section = text.split("## Server → client", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"^### .*?`(\w+)`", section, re.MULTILINE))
    names |= set(re.findall(r"^### `\w+` / `(\w+)`", section, re.MULTILINE))
    assert {"metadata", "frame", "pong", "snapshot", "error", "camera_lost"} <= names, names
    builders = {"camera_lost": "event_message", "camera_restored": "event_message",
                "source_ended": "event_message", "frame": "frame_message",
                "data": "data_message_text", "app": "app_message_text"}  # (issue 20: text)
    for name in names:
        builder = builders.get(name, f"{name}_message")
        assert callable(getattr(protocol, builder, None)), f"no builder for {name}: {builder}"
        if builder == "event_message":
            assert name in protocol.CAMERA_EVENTS


def message_dicts(path: Path) -> list[int]:
    """Lines of ``path`` where a dict literal with a ``"type"`` key is written."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        and any(isinstance(k, ast.Constant) and k.value == "type" for k in node.keys)
    ]


def test_no_message_is_built_in_place() -> None:
    """Server messages come from protocol.py's builders. (The Python client's requests to the
    server are the client's own: client.py is left out.)"""
    places = {
        str(path.relative_to(ROOT)): lines
        for path in sorted(ROOT.rglob("*.py"))
        if path.name not in ("protocol.py", "client.py") and (lines := message_dicts(path))
    }
    assert places == {}, places
    assert message_dicts(ROOT / "protocol.py")  # (the finder finds them where they are)
