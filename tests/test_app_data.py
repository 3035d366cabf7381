"""Issue 20: the application's data with each frame (``publish(..., data=)``, ``annotate``).

Every frame's picture says which frame it is (a flat grey level), and so does its data: a
viewer that asked for data must get, right before each JPEG, the ``data`` message of exactly
that frame (same ``seq``, same level), whatever its rate, size or delivery path (the fan-out's
single write or the viewer's own thread); never data for a frame it skipped; and a viewer that
did not ask gets none. Real servers on port 0, real ``websockets`` and ``websocket-client``
viewers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import websocket
from conftest import SLACK, TIMEOUT
from helpers import MjpegReader, decode_jpeg, next_text, running
from websockets.sync.client import connect

from camstream import ConfigError, DataError, DataTooLargeError, Streamer, protocol
from camstream.delivery.session import ClientSession

LEVELS = 50  # distinct grey levels: frame i is level 20 + 4 * (i % LEVELS)


def level_of(i: int) -> int:
    return 20 + 4 * (i % LEVELS)


def index_of(level: float) -> int:
    """The frame number (mod LEVELS) whose grey level is nearest ``level``."""
    return round((level - 20) / 4) % LEVELS


def without_data(i: int) -> bool:
    """Every fifth frame is published without data (LEVELS is a multiple of 5)."""
    return i % 5 == 4


class DataPublisher(threading.Thread):
    """Publishes frame i (a flat grey of ``level_of(i)``) with ``{"level", "i", "pad"}`` as its
    data (none for :func:`without_data` frames), at ``fps``; remembers each frame's seq."""

    def __init__(
        self, streamer: Streamer, fps: float, *, jpeg: bool = False, pad: int = 1000,
        size: tuple[int, int] = (160, 120),
    ) -> None:
        super().__init__(name="test-data-publisher", daemon=True)
        self.streamer, self.period, self.jpeg, self.pad = streamer, 1.0 / fps, jpeg, pad
        self.size = size
        self.levels: dict[int, int] = {}  # seq -> level
        self.with_data: dict[int, bool] = {}  # seq -> published with data
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic()
        i = 0
        while not self.stop.is_set():
            image = np.full((self.size[1], self.size[0], 3), level_of(i), np.uint8)
            data = None if without_data(i) else {
                "level": level_of(i), "i": i, "pad": "x" * self.pad
            }
            if self.jpeg:
                ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
                assert ok
                frame = self.streamer.publish_jpeg(encoded.tobytes(), data=data)
                assert frame is not None
            else:
                frame = self.streamer.publish(image, copy=False, data=data)
            self.levels[frame.seq] = level_of(i)
            self.with_data[frame.seq] = data is not None
            i += 1
            deadline = max(deadline + self.period, time.monotonic() - self.period)
            self.stop.wait(max(deadline - time.monotonic(), 0.0))


def collect_websockets(ws: Any, seconds: float) -> list[Any]:
    """Every message a ``websockets`` client receives for ``seconds``, in order."""
    messages: list[Any] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            messages.append(ws.recv(timeout=left))
        except TimeoutError:
            break
    return messages


def collect_websocket_client(ws: Any, seconds: float) -> list[Any]:
    """The same for a ``websocket-client`` connection."""
    messages: list[Any] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ws.settimeout(left)
        try:
            opcode, payload = ws.recv_data()
        except websocket.WebSocketTimeoutException:
            break
        if opcode == websocket.ABNF.OPCODE_BINARY:
            messages.append(bytes(payload))
        elif opcode == websocket.ABNF.OPCODE_TEXT:
            messages.append(payload.decode())
    return messages


def check_stream(
    messages: list[Any], publisher: DataPublisher, *, wants_data: bool, frame_info: bool = False
) -> int:
    """Check a viewer's messages: each JPEG preceded by its own frame's data (or none, as
    published / asked); returns the number of JPEGs that came with data."""
    data: dict[str, Any] | None = None
    info: dict[str, Any] | None = None
    last_seq = 0
    with_data = 0
    for message in messages:
        if isinstance(message, str):
            parsed = json.loads(message)
            kind = parsed["type"]
            if kind == "data":
                assert wants_data, f"data for a viewer that did not ask: {message[:80]}"
                assert data is None, "two data messages without a frame between them"
                data = parsed
            elif kind == "frame":
                assert data is None, "the data message must come after the frame message"
                info = parsed
            else:
                assert data is None and info is None, f"{kind} between a frame's texts and JPEG"
                assert kind in ("metadata", "app"), parsed
            continue
        level = float(decode_jpeg(message).mean())
        i = index_of(level)
        if data is not None:
            seq = data["seq"]
            assert seq > last_seq, (seq, last_seq)
            last_seq = seq
            value = data["value"]
            # The data is that of this very frame: the seq the application's frame had, and
            # the level both the data and the picture say.
            assert publisher.levels[seq] == value["level"], (seq, value["level"])
            assert abs(level - value["level"]) <= 3, (level, value)
            assert value["pad"] == "x" * publisher.pad
            if info is not None:
                assert info["seq"] == seq
            with_data += 1
        elif wants_data:
            # No data: only for the frames published without (a skipped frame's data never
            # comes alone, it would have failed above).
            assert without_data(i), f"a frame (level {level:.0f}) arrived without its data"
        if frame_info:
            assert info is not None, "frame_info viewer: a JPEG without its frame message"
            if data is None and wants_data:
                assert not publisher.with_data[info["seq"]], info
        data = info = None
    return with_data


def sessions(streamer: Streamer) -> list[ClientSession]:
    return streamer._viewers.sessions()


# The value and its limit


def test_a_value_is_encoded_once_as_compact_json_and_measured_in_utf8_bytes() -> None:
    assert protocol.encode_value({"b": [1, 2.5, None, True]}, 100) == '{"b":[1,2.5,null,true]}'
    text = protocol.encode_value("é" * 10, 22)  # 20 bytes of UTF-8 plus the quotes
    assert text == '"' + "é" * 10 + '"'
    with pytest.raises(DataTooLargeError) as info:
        protocol.encode_value("é" * 10, 21)
    assert (info.value.size, info.value.limit) == (22, 21)
    assert "over the limit of 21 bytes" in str(info.value)
    assert "max_data_bytes" in str(info.value)


@pytest.mark.parametrize(
    "value", [np.int64(3), float("nan"), float("inf"), {1, 2}, b"bytes", object()]
)
def test_a_value_that_is_not_json_is_refused_with_what_is_wrong(value: Any) -> None:
    with pytest.raises(DataError, match="must be a JSON value"):
        protocol.encode_value(value, 1000)


def test_a_circular_value_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(DataError):
        protocol.encode_value(loop, 1000)


def test_the_largest_data_message_stays_under_godots_default_inbound_limit() -> None:
    value = protocol.encode_value("x" * (protocol.MAX_DATA_BYTES - 2), protocol.MAX_DATA_BYTES)
    text = protocol.data_message_text(2**53, value)  # the largest seq JSON carries exactly
    assert len(text.encode()) + 4 < 65535 - 3000  # with its WebSocket header, room to spare
    assert len(protocol.app_message_text(value).encode()) + 4 < 65535 - 3000


def test_bad_data_fails_at_publish_time_and_publishes_nothing(streamer_factory) -> None:
    streamer = streamer_factory("push", max_data_bytes=1024)
    image = np.zeros((24, 32, 3), np.uint8)
    with pytest.raises(DataTooLargeError, match="over the limit of 1024 bytes"):
        streamer.publish(image, data={"pad": "x" * 1024})
    with pytest.raises(DataError):
        streamer.publish(image, data={"n": np.float32(1.5)})
    ok, jpeg = cv2.imencode(".jpg", image)
    with pytest.raises(ConfigError):  # DataError is a ConfigError (and a ValueError)
        streamer.publish_jpeg(jpeg.tobytes(), data=[float("nan")])
    assert streamer.stats()["frames_captured"] == 0
    frame = streamer.publish(image, data={"ok": True})
    assert frame.data_json == '{"ok":true}'
    assert streamer.publish(image).data_json is None


def test_annotate_is_refused_for_push_sources_and_must_be_callable() -> None:
    with pytest.raises(ConfigError, match="publish\\(image, data=...\\)"):
        Streamer("push", annotate=lambda frame: None)
    with pytest.raises(ConfigError, match="annotate must be a callable"):
        Streamer("test", annotate="boxes")  # type: ignore[arg-type]


# Data with the exact frame, for every kind of viewer


@pytest.mark.parametrize("fast", [True, False], ids=["fanout", "own-thread"])
@pytest.mark.parametrize("jpeg", [False, True], ids=["pixels", "jpeg"])
def test_each_viewer_that_asked_gets_each_frames_own_data_right_before_it(
    streamer_factory, fast: bool, jpeg: bool
) -> None:
    streamer = streamer_factory("push", fps=30, fast_fanout=fast)
    urls = {
        "full": streamer.url + "?data=1",  # the default variant: the fan-out's
        "info": streamer.url + "?data=true&frame_info=1",
        "slow": streamer.url + "?data=on&fps=5",  # skips most frames
        "small": streamer.url + "?data=1&width=48",  # its own encode
        "none": streamer.url,  # did not ask: no data
        "off": streamer.url + "?data=0&frame_info=1",
    }
    with contextlib.ExitStack() as stack:
        clients = {
            name: stack.enter_context(connect(url, open_timeout=TIMEOUT))
            for name, url in urls.items()
        }
        low_level = websocket.create_connection(streamer.url + "?quality=40&data=1",
                                                timeout=TIMEOUT)
        stack.callback(low_level.close)
        for ws in clients.values():
            assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "metadata"
        assert json.loads(low_level.recv())["data"] is True
        publisher = DataPublisher(streamer, 30.0, jpeg=jpeg)
        results: dict[str, list[Any]] = {}

        def read(name: str) -> None:
            if name == "low_level":
                results[name] = collect_websocket_client(low_level, 2.5)
            else:
                results[name] = collect_websockets(clients[name], 2.5)

        readers = [threading.Thread(target=read, args=(name,), name=f"test-reader-{name}")
                   for name in [*clients, "low_level"]]
        with running(publisher):
            for reader in readers:
                reader.start()
            for reader in readers:
                reader.join(2.5 + 3 * TIMEOUT)
        stats = {s.connection.id: s.stats for s in sessions(streamer)}
    counts = {
        name: check_stream(
            results[name], publisher, wants_data=name not in ("none", "off"),
            frame_info=name in ("info", "off"),
        )
        for name in results
    }
    for name in ("full", "info", "small", "low_level"):
        assert counts[name] >= 10 / SLACK, (name, counts)  # (2.5 s at 30 fps: 60)
    assert 1 <= counts["slow"] <= 20, counts
    assert counts["none"] == counts["off"] == 0
    assert not any(isinstance(m, str) and '"data"' in m and '"seq"' in m
                   for m in results["none"] + results["off"])
    skipped = [s.frames_skipped for s in stats.values()]
    assert max(skipped) > 0, "the slow viewer skipped frames (and their data)"
    fast_frames = sum(s.fast_frames for s in stats.values())
    assert (fast_frames > 0) is fast, fast_frames


def test_a_viewer_can_turn_data_on_and_off_with_a_config_message(streamer_factory) -> None:
    streamer = streamer_factory("push", fps=30)
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        assert next_text(ws, "metadata")["data"] is False
        ws.send(json.dumps({"type": "config", "data": True}))
        assert next_text(ws, "metadata")["data"] is True
        with running(DataPublisher(streamer, 30.0)):
            assert next_text(ws, "data")["value"]["pad"] == "x" * 1000
            ws.send(json.dumps({"type": "config", "data": False}))
            assert next_text(ws, "metadata")["data"] is False  # in force from here on
            after = collect_websockets(ws, 0.5)
        assert sum(isinstance(m, bytes) for m in after) >= 3 / SLACK
        assert not [m for m in after if isinstance(m, str) and json.loads(m)["type"] == "data"]
        ws.send(json.dumps({"type": "config", "data": "yes"}))
        assert "expected true or false" in next_text(ws, "error")["message"]


def test_data_of_the_largest_size_reaches_a_client_with_godots_default_limit(
    streamer_factory,
) -> None:
    """max_data_bytes at its top still fits the 65535-byte messages a default Godot accepts."""
    streamer = streamer_factory("push", max_data_bytes=protocol.MAX_DATA_BYTES)
    value = "x" * (protocol.MAX_DATA_BYTES - 2)
    with connect(streamer.url + "?data=1", open_timeout=TIMEOUT, max_size=65535) as ws:
        next_text(ws, "metadata")
        frame = streamer.publish(np.full((120, 160, 3), 99, np.uint8), data=value)
        assert next_text(ws, "data") == {"type": "data", "seq": frame.seq, "value": value}
        assert decode_jpeg(ws.recv(timeout=TIMEOUT)).mean() == pytest.approx(99, abs=3)


def test_mjpeg_viewers_get_the_frames_without_the_data(streamer_factory) -> None:
    """Data is WebSocket-only: an MJPEG part is the JPEG and its usual headers."""
    streamer = streamer_factory("push", fps=30)
    publisher = DataPublisher(streamer, 30.0)
    with running(publisher), MjpegReader(streamer.port) as reader:
        assert reader.status == 200
        for _ in range(3):
            headers, body = reader.next_part()
            decode_jpeg(body)
            assert not any("data" in name for name in headers), headers


# annotate: the camera thread's hook


def grey_video(path: Path, frames: int = 30, size: tuple[int, int] = (96, 72)) -> Path:
    """An MJPG AVI whose frame i is a flat grey of level_of(i)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, size)
    assert writer.isOpened()
    try:
        for i in range(frames):
            writer.write(np.full((size[1], size[0], 3), level_of(i), np.uint8))
    finally:
        writer.release()
    return path


def test_annotate_data_goes_with_the_frame_it_was_computed_from(
    streamer_factory, tmp_path: Path
) -> None:
    calls: list[int] = []

    def annotate(frame: Any) -> Any:
        calls.append(frame.seq)
        return {"seq": frame.seq, "level": round(float(frame.image.mean()))}

    streamer = streamer_factory(str(grey_video(tmp_path / "grey.avi")), annotate=annotate)
    with connect(streamer.url + "?data=1&frame_info=1", open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        messages = collect_websockets(ws, 1.5)
    pairs = 0
    for i, message in enumerate(messages):
        if isinstance(message, bytes):
            data = json.loads(messages[i - 1])
            info = json.loads(messages[i - 2])
            assert (info["type"], data["type"]) == ("frame", "data")
            assert data["seq"] == info["seq"] == data["value"]["seq"]
            assert abs(decode_jpeg(message).mean() - data["value"]["level"]) <= 3
            pairs += 1
    assert pairs >= 5 / SLACK, pairs
    report = streamer.stats()["app"]["annotate"]
    assert report["calls"] >= pairs and report["failures"] == 0
    assert report["mean_ms"] is not None


def test_a_failing_annotate_costs_frames_their_data_never_the_camera(
    streamer_factory, caplog
) -> None:
    caplog.set_level(logging.ERROR, logger="camstream")

    def annotate(frame: Any) -> Any:
        if frame.seq % 3 == 0:
            raise RuntimeError("detector exploded")
        if frame.seq % 3 == 1:
            return {"not json": np.int64(frame.seq)}
        return {"seq": frame.seq}

    streamer = streamer_factory("test", fps=30, width=64, height=48, annotate=annotate)
    with connect(streamer.url + "?data=1&frame_info=1", open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        messages = collect_websockets(ws, 2.0)
    seqs_with_data = [json.loads(m)["seq"] for m in messages
                      if isinstance(m, str) and json.loads(m)["type"] == "data"]
    frames = [json.loads(m)["seq"] for m in messages
              if isinstance(m, str) and json.loads(m)["type"] == "frame"]
    assert len(frames) >= 20 / SLACK, "the camera goes on"
    assert seqs_with_data and all(seq % 3 == 2 for seq in seqs_with_data)
    assert any(seq % 3 != 2 for seq in frames), "frames without data still went"
    report = streamer.stats()["app"]["annotate"]
    assert report["failures"] >= 10 / SLACK, report
    assert report["last_error"].startswith(("RuntimeError", "DataError")), report
    assert streamer.camera.state.value == "streaming"
    logged = [r for r in caplog.records if "annotate() failed" in r.getMessage()]
    assert 1 <= len(logged) <= 5, "rate-limited"
    assert logged[0].exc_info is not None, "with the traceback"


def test_a_slow_annotate_lowers_the_camera_rate_and_nothing_else(streamer_factory) -> None:
    """What the docs say a slow hook costs: the camera's rate, no error, no dropped viewer."""
    seen = threading.Event()

    def annotate(frame: Any) -> Any:
        seen.set()
        time.sleep(0.1)  # the hook's own work, 3 frame periods at 30 fps
        return {"seq": frame.seq}

    streamer = streamer_factory("test", fps=30, width=64, height=48, annotate=annotate)
    with connect(streamer.url + "?data=1", open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        assert seen.wait(TIMEOUT)
        started = streamer.camera.frames_captured
        messages = collect_websockets(ws, 1.0)
        captured = streamer.camera.frames_captured - started
        assert streamer.client_count == 1, "the viewer stays"
    assert captured <= 15, f"{captured} frames in 1 s with a 100 ms hook"
    assert sum(isinstance(m, bytes) for m in messages) >= 2 / SLACK
    assert streamer.stats()["app"]["annotate"]["failures"] == 0
