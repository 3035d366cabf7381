"""Client control messages, per-client variants, and the security rules, with real clients."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
from conftest import SLACK, TIMEOUT, wait_until
from helpers import (
    Counter,
    close_code_of,
    decode_jpeg,
    next_binaries,
    next_binary,
    next_text,
    receive_for,
    running,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from wsraw import RawClient

from camstream import CloseCode

# Control messages


def test_pause_and_resume(streamer_factory) -> None:
    streamer = streamer_factory("test", fps=30)
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        next_binary(ws)
        ws.send(json.dumps({"type": "pause"}))
        assert next_text(ws, "metadata")["paused"] is True
        texts, frames = receive_for(ws, 0.6)
        assert len(frames) <= 1, "frames kept coming while paused"  # one may be in flight
        ws.send(json.dumps({"type": "resume"}))
        assert next_text(ws, "metadata")["paused"] is False
        next_binaries(ws, 10)  # frames flow again (each within TIMEOUT, no fixed window)


def test_snapshot_is_full_resolution_while_the_stream_stays_small(streamer_factory) -> None:
    streamer = streamer_factory("test", width=640, height=480, fps=30)
    with connect(streamer.url + "?width=160&quality=50", open_timeout=TIMEOUT) as ws:
        assert next_text(ws, "metadata")["width"] == 160
        assert decode_jpeg(next_binary(ws)).shape == (120, 160, 3)
        ws.send(json.dumps({"type": "snapshot", "quality": 95}))
        announced = next_text(ws, "snapshot")
        assert (announced["width"], announced["height"], announced["quality"]) == (640, 480, 95)
        snapshot = ws.recv(timeout=TIMEOUT)  # the very next message is the snapshot JPEG
        assert len(snapshot) == announced["bytes"]
        assert decode_jpeg(snapshot).shape == (480, 640, 3)
        assert decode_jpeg(next_binary(ws)).shape == (120, 160, 3)  # the live stream is unchanged


def test_ping_pong(streamer_factory) -> None:
    streamer = streamer_factory("test")
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        sent = time.time()
        ws.send(json.dumps({"type": "ping", "t": 1234.5}))
        pong = next_text(ws, "pong")
        assert pong["t"] == 1234.5
        assert sent - 1 <= pong["server_time"] <= time.time() + 1


def test_frame_info_precedes_each_frame(streamer_factory) -> None:
    streamer = streamer_factory("test", fps=30)
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        ws.send(json.dumps({"type": "config", "frame_info": True}))
        assert next_text(ws, "metadata")["frame_info"] is True
        info = next_text(ws, "frame")
        frame = ws.recv(timeout=TIMEOUT)
        assert isinstance(frame, bytes) and len(frame) == info["bytes"]
        assert info["sent_at"] >= info["captured_at"]
        following = next_text(ws, "frame")  # the very next frame's info (each has one)
        assert following["skipped"] == following["seq"] - info["seq"] - 1 >= 0


@pytest.mark.parametrize(
    ("message", "words"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"type": "dance"}', "unknown message type"),
        ('{"type": "config", "fps": "fast"}', "fps"),
        ('{"type": "config", "quality": 0}', "quality"),
        ('{"type": "config", "width": 3.5}', "width"),
        ('{"type": "config", "frame_info": "yes"}', "frame_info"),
        ('{"type": "snapshot", "quality": 500}', "quality"),
    ],
)
def test_bad_input_gets_an_error_and_the_stream_goes_on(streamer_factory, message, words) -> None:
    streamer = streamer_factory("test")
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        ws.send(message)
        error = next_text(ws, "error")
        assert words in error["message"]
        decode_jpeg(next_binary(ws))  # still streaming


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ('{"kind": "ping"}', 'message has no "type"; known types: app, config, pause, ping, '
         "resume, snapshot"),
        ('{"type": null}', 'message has no "type"'),
        ('{"type": true}', "unknown message type true;"),
        ('{"type": "dance"}', 'unknown message type "dance";'),
        ('{"type": "config", "frame_info": 1}', "frame_info: expected true or false, not 1"),
        ('{"type": "config", "fps": true}', "fps: expected a number, not true"),
        ('{"type": "config", "fps": null}', "fps: a value is required"),
        ('{"type": "config", "quality": "high"}', 'quality: expected a number, not "high"'),
    ],
)
def test_error_texts_speak_json_not_python(streamer_factory, message, expected) -> None:
    streamer = streamer_factory("test")
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        ws.send(message)
        assert next_text(ws, "error")["message"].startswith(expected)


def test_unknown_config_keys_are_ignored(streamer_factory) -> None:
    """PROTOCOL.md: a newer client's fields must not be errors on an older server."""
    streamer = streamer_factory("test", fps=30)
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        ws.send(json.dumps({"type": "config", "colour": "blue", "fps": 10}))
        reply = next_text(ws)
        assert reply["type"] == "metadata" and reply["fps"] == 10


@pytest.mark.parametrize(
    "message", ['{"type": "ping", "t": NaN}', "[" * 4_000], ids=["nan", "deep"]  # 4 KiB cap
)
def test_json_python_accepts_but_json_does_not_is_an_error_not_a_crash(
    streamer_factory, message
) -> None:
    streamer = streamer_factory("test")
    with connect(streamer.url, open_timeout=TIMEOUT, max_size=None) as ws:
        next_text(ws, "metadata")
        ws.send(message)
        assert "not valid JSON" in next_text(ws, "error")["message"]
        decode_jpeg(next_binary(ws))  # still streaming


def test_raising_the_rate_takes_effect_at_once(streamer_factory) -> None:
    streamer = streamer_factory("test", fps=30)
    with connect(streamer.url + "?fps=0.1", open_timeout=TIMEOUT) as ws:
        next_binary(ws)  # the first frame; the next would be 10 s away at 0.1 fps (the minimum)
        ws.send(json.dumps({"type": "config", "fps": 30}))
        assert next_text(ws, "metadata")["fps"] == 30
        started = time.monotonic()
        next_binary(ws)
        assert time.monotonic() - started < 0.5 * SLACK


def test_snapshot_respects_max_bytes(streamer_factory) -> None:
    streamer = streamer_factory("push")
    rng = np.random.default_rng(5)
    with connect(streamer.url + "?max_bytes=65535", open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        streamer.publish(rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8))
        next_binary(ws)
        ws.send(json.dumps({"type": "snapshot", "quality": 95}))
        announced = next_text(ws, "snapshot")
        snapshot = ws.recv(timeout=TIMEOUT)
        assert len(snapshot) == announced["bytes"] <= 65535


def test_bad_query_values_are_reported_and_ignored(streamer_factory) -> None:
    streamer = streamer_factory("test", fps=30)
    with connect(streamer.url + "?fps=zero&width=320", open_timeout=TIMEOUT) as ws:
        first = [next_text(ws), next_text(ws)]
        kinds = {m["type"] for m in first}
        assert kinds == {"metadata", "error"}
        metadata = next(m for m in first if m["type"] == "metadata")
        assert metadata["width"] == 320 and metadata["fps"] == 30


def test_control_flood_is_closed_with_1008(streamer_factory) -> None:
    streamer = streamer_factory("test")
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        try:
            for _ in range(200):
                ws.send(json.dumps({"type": "ping", "t": 1}))
        except ConnectionClosed:
            pass  # the server may close before we finish flooding
        assert close_code_of(ws) == (CloseCode.POLICY_VIOLATION, "too many messages")


def test_binary_from_a_client_is_refused_with_1003(streamer_factory) -> None:
    streamer = streamer_factory("test")
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        ws.send(b"\x00\x01binary")
        assert close_code_of(ws)[0] == CloseCode.UNSUPPORTED_DATA


def test_oversized_message_is_refused_with_1009(streamer_factory) -> None:
    streamer = streamer_factory("test", max_message_size=4096)
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        ws.send(json.dumps({"type": "ping", "t": "x" * 10000}))
        assert close_code_of(ws)[0] == CloseCode.MESSAGE_TOO_BIG


# Variants and encodes


def test_clients_on_different_variants_cost_one_encode_each_per_frame(streamer_factory) -> None:
    streamer = streamer_factory("test", width=640, height=480, fps=30)
    urls = [streamer.url + "?width=320&quality=60", streamer.url + "?width=320&quality=60",
            streamer.url + "?fps=10&quality=90", streamer.url]
    # Each viewer reads in its own thread to the end: one left unread would fill its receive
    # queue, and its close would then wait out websockets' close timeout (10 s each).
    a, b, c, d = viewers = [Counter(url) for url in urls]
    with running(*viewers):
        for viewer in viewers:
            assert viewer.ready.wait(TIMEOUT) and viewer.error is None, viewer.error
        before = streamer.stats()
        counts = [len(viewer.arrivals) for viewer in viewers]
        wanted = [10, 10, 3, 10]  # c runs at 10 fps, a third of the others
        assert wait_until(lambda: all(
            len(v.arrivals) >= n + w for v, n, w in zip(viewers, counts, wanted)
        )), [len(v.arrivals) - n for v, n in zip(viewers, counts)]
        after = streamer.stats()
        assert decode_jpeg(a.last).shape == (240, 320, 3)
        assert decode_jpeg(c.last).shape == (480, 640, 3)
    by_variant = {(v["width"], v["quality"]): v["encodes"] for v in after["variants"]}
    captured = after["frames_captured"]
    # a and b share one variant; c (10 fps) encodes only the frames it sends; d its own
    assert by_variant[(320, 60)] <= captured + 1
    assert by_variant[(None, 90)] <= captured // 3 + 3
    assert by_variant[(None, 80)] <= captured + 1
    encoded = after["frames_encoded"] - before["frames_encoded"]
    frames = after["frames_captured"] - before["frames_captured"]
    assert encoded <= 2 * frames + frames // 3 + 4, (encoded, frames)


def test_max_bytes_respected_on_a_detailed_1080p_source(streamer_factory) -> None:
    streamer = streamer_factory("push", fps=30)
    rng = np.random.default_rng(3)
    with connect(streamer.url + "?max_bytes=65535", open_timeout=TIMEOUT,
                 max_size=2**22) as small, \
            connect(streamer.url + "?max_bytes=0", open_timeout=TIMEOUT, max_size=2**24) as full:
        next_text(small, "metadata")
        next_text(full, "metadata")
        sizes = []
        for _ in range(5):
            streamer.publish(rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8))
            data = next_binary(small)
            sizes.append(len(data))
            assert len(data) <= 65535
            assert len(next_binary(full)) > 65535  # the same frames, unlimited
        image = decode_jpeg(data)
        assert abs(image.shape[1] / image.shape[0] - 16 / 9) < 0.02


def test_a_frame_jpeg_cannot_hold_is_refused_at_publish_and_streaming_goes_on(
    streamer_factory,
) -> None:
    from camstream import ConfigError

    streamer = streamer_factory("push")
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        next_text(ws, "metadata")
        with pytest.raises(ConfigError, match="65500"):
            streamer.publish(np.zeros((16, 70000, 3), np.uint8))  # wider than JPEG allows
        with pytest.raises(ConfigError, match="non-empty"):
            streamer.publish(np.zeros((0, 10, 3), np.uint8))
        streamer.publish(np.zeros((48, 64, 3), np.uint8))
        assert decode_jpeg(next_binary(ws)).shape == (48, 64, 3)


# Security


def test_token_required(streamer_factory) -> None:
    streamer = streamer_factory("test", token="s3cret")
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:
        assert close_code_of(ws) == (CloseCode.POLICY_VIOLATION, "token required")
    with connect(streamer.url + "?token=wrong", open_timeout=TIMEOUT) as ws:
        assert close_code_of(ws) == (CloseCode.POLICY_VIOLATION, "invalid token")
    with connect(streamer.url + "?token=s3cret", open_timeout=TIMEOUT) as ws:
        assert next_text(ws)["type"] == "metadata"
    headers = {"Authorization": "Bearer s3cret"}
    with connect(streamer.url, open_timeout=TIMEOUT, additional_headers=headers) as ws:
        assert next_text(ws)["type"] == "metadata"
        decode_jpeg(next_binary(ws))


def test_other_sites_cannot_watch_by_default(streamer_factory) -> None:
    """Cross-site WebSocket hijacking and DNS rebinding: a page elsewhere, or a page reaching
    127.0.0.1 through another name, is refused; the server's own pages are not."""
    streamer = streamer_factory("test")
    with connect(streamer.url, open_timeout=TIMEOUT, origin="https://evil.example") as ws:
        assert close_code_of(ws) == (CloseCode.POLICY_VIOLATION, "origin not allowed")
    same_origin = f"http://127.0.0.1:{streamer.port}"
    with connect(streamer.url, open_timeout=TIMEOUT, origin=same_origin) as ws:
        assert next_text(ws)["type"] == "metadata"
    rebound = {"Host": f"attacker.example:{streamer.port}",  # one Host: two would be a 400
               "Origin": f"http://attacker.example:{streamer.port}"}
    with RawClient(streamer.port) as raw:
        raw.handshake(extra=rebound)
        assert raw.recv_close() == (CloseCode.POLICY_VIOLATION, b"host not allowed")
    star = streamer_factory("test", allowed_origins=["*"])
    with connect(star.url, open_timeout=TIMEOUT, origin="https://anywhere.example") as ws:
        assert next_text(ws)["type"] == "metadata"


def test_origin_allow_list(streamer_factory) -> None:
    streamer = streamer_factory("test", allowed_origins=["http://good.example"])
    with connect(streamer.url, open_timeout=TIMEOUT, origin="http://evil.example") as ws:
        assert close_code_of(ws) == (CloseCode.POLICY_VIOLATION, "origin not allowed")
    with connect(streamer.url, open_timeout=TIMEOUT, origin="http://good.example") as ws:
        assert next_text(ws)["type"] == "metadata"
    with connect(streamer.url, open_timeout=TIMEOUT) as ws:  # native clients send no Origin
        assert next_text(ws)["type"] == "metadata"


def test_max_clients(streamer_factory) -> None:
    streamer = streamer_factory("test", max_clients=2)
    with connect(streamer.url) as a, connect(streamer.url) as b:
        next_text(a, "metadata")
        next_text(b, "metadata")
        with connect(streamer.url, open_timeout=TIMEOUT) as c:
            assert close_code_of(c) == (CloseCode.TRY_AGAIN_LATER, "server full, try again later")
    with connect(streamer.url, open_timeout=TIMEOUT) as d:  # room again once they left
        assert next_text(d)["type"] == "metadata"


def test_listening_beyond_loopback_without_token_warns(streamer_factory, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="camstream"):
        streamer_factory("test", host="0.0.0.0")
    assert any("without a token" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="camstream"):
        streamer_factory("test")
    assert not any("without a token" in r.getMessage() for r in caplog.records)


def test_wrong_path_is_404(streamer_factory) -> None:
    from websockets.exceptions import InvalidStatus

    streamer = streamer_factory("test")
    with pytest.raises(InvalidStatus) as info:
        with connect(streamer.url + "nope", open_timeout=TIMEOUT):
            pass
    assert info.value.response.status_code == 404

