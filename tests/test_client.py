"""The Python client and the example scripts, against real servers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SLACK, TIMEOUT, stop_process
from helpers import read_line

from camstream import CloseCode, ConfigError, ConnectionClosedError
from camstream.client import Client, RequestRefusedError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_client_iterates_decoded_frames_with_metadata(streamer_factory) -> None:
    streamer = streamer_factory("test", width=640, height=480, fps=30)
    with Client(streamer.url, fps=10, width=320, frame_info=True, timeout=TIMEOUT) as client:
        assert client.metadata["width"] == 320 and client.metadata["fps"] == 10
        frames = []
        for frame in client:
            frames.append(frame)
            if len(frames) == 3:
                break
    assert [f.image.shape for f in frames] == [(240, 320, 3)] * 3
    seqs = [f.seq for f in frames]
    assert all(isinstance(s, int) for s in seqs) and seqs == sorted(set(seqs))


def test_client_configure_and_snapshot(streamer_factory) -> None:
    streamer = streamer_factory("test", width=640, height=480)
    with Client(streamer.url, width=160, timeout=TIMEOUT) as client:
        jpeg = client.snapshot(quality=90)
        assert jpeg[:2] == b"\xff\xd8"
        import cv2
        import numpy as np

        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)
        client.configure(width=320)
        for frame in client:
            if frame.width == 320:
                assert frame.image.shape == (240, 320, 3)
                break
        else:
            pytest.fail("the stream ended without a 320-wide frame")


def test_client_token_and_refusal(streamer_factory) -> None:
    streamer = streamer_factory("test", token="abc")
    with Client(streamer.url, token="abc", timeout=TIMEOUT) as client:
        assert next(iter(client)).jpeg[:2] == b"\xff\xd8"
    client = Client(streamer.url, token="nope", timeout=TIMEOUT)
    with pytest.raises(ConnectionClosedError, match="1008"):
        client.connect()
    assert (client.close_code, client.close_reason) == (CloseCode.POLICY_VIOLATION, "invalid token")
    client.close()


def test_client_sees_server_shutdown(streamer_factory) -> None:
    streamer = streamer_factory("test")
    with Client(streamer.url, timeout=TIMEOUT) as client:
        next(iter(client))
        streamer.stop()
        for _ in client:
            pass
        assert client.close_code == CloseCode.GOING_AWAY


def test_viewer_example_headless(streamer_factory) -> None:
    streamer = streamer_factory("test", fps=30)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "viewer.py"), streamer.url, "--headless",
         "--seconds", "2.5"],
        capture_output=True, text=True, timeout=TIMEOUT * 4,
    )
    assert result.returncode == 0, result.stderr
    rates = [float(m) for m in re.findall(r"^([\d.]+) fps", result.stdout, re.MULTILINE)]
    assert rates and max(rates) >= 25 / SLACK, result.stdout


def test_viewer_example_reports_unreachable_server() -> None:
    import socket

    with socket.socket() as s:  # a port with no server behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "viewer.py"), f"ws://127.0.0.1:{port}/", "--headless"],
        capture_output=True, text=True, timeout=TIMEOUT * 4,
    )
    assert result.returncode == 1 and "cannot connect" in result.stderr
    assert "Traceback" not in result.stderr


def test_push_frames_example() -> None:
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "push_frames.py"), "--port", "0", "--seconds", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = read_line(process.stdout)
        url = re.search(r"ws://\S+", line)
        assert url, line
        with Client(url.group(0), timeout=TIMEOUT) as client:
            frame = next(iter(client))
            assert frame.image.shape == (480, 640, 3)
        assert process.wait(TIMEOUT * 2) == 0
        assert "published" in process.stdout.read()  # type: ignore[union-attr]
    finally:
        stop_process(process)


def test_client_raises_on_a_refused_setting_by_default(streamer_factory) -> None:
    streamer = streamer_factory("test", width=320, height=240)
    with Client(streamer.url, fps=0, timeout=TIMEOUT) as client:
        with pytest.raises(RequestRefusedError, match="fps") as refused:
            next(iter(client))
        assert refused.value.message["type"] == "error"
        assert next(iter(client)).jpeg[:2] == b"\xff\xd8"  # the connection is still usable


def test_client_can_warn_about_or_ignore_server_errors(streamer_factory) -> None:
    streamer = streamer_factory("test", width=320, height=240)
    with Client(streamer.url, fps=0, errors="warn", timeout=TIMEOUT) as client:
        with pytest.warns(RuntimeWarning, match="the server refused: fps"):
            assert next(iter(client)).jpeg[:2] == b"\xff\xd8"
    with Client(streamer.url, fps=0, errors="ignore", timeout=TIMEOUT) as client:
        assert next(iter(client)).jpeg[:2] == b"\xff\xd8"
        assert [e["type"] for e in client.events] == ["error"]
    with pytest.raises(ConfigError, match="errors must be one of raise, warn, ignore"):
        Client(streamer.url, errors="loud")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765/", "127.0.0.1:8765", "tcp://h:1/"])
def test_client_says_use_ws_for_other_urls(url: str) -> None:
    with pytest.raises(ConfigError, match=r"use ws:// or wss://"):
        Client(url)
