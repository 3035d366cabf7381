"""The camstream command, run as a real subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from typing import Iterator

import pytest
from conftest import TIMEOUT, stop_process
from helpers import read_line
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

URL = re.compile(r"ws://127\.0\.0\.1:(\d+)/")


def run_cli(*args: str, timeout: float = TIMEOUT * 3) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "camstream", *args], capture_output=True, text=True,
        timeout=timeout,
    )


def assert_one_clear_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("camstream: error:")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], errors[0]


@pytest.fixture
def cli_server() -> Iterator[tuple[subprocess.Popen, str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "camstream", "--source", "test", "--port", "0",
         "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = read_line(process.stdout)
        match = URL.search(line)
        assert match, f"no URL in {line!r}"
        yield process, match.group(0)
    finally:
        stop_process(process)


def test_bad_source_is_one_line_and_nonzero_exit() -> None:
    assert_one_clear_error(run_cli("--source", "/no/such/file.mp4", "--port", "0"), "no such file")


def test_missing_camera_suggests_the_test_pattern() -> None:
    assert_one_clear_error(run_cli("--source", "5", "--port", "0"), "camera 5", "test")


def test_port_in_use_is_one_line_and_nonzero_exit() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_clear_error(run_cli("--source", "test", "--port", str(port)), str(port))


def test_bad_option_values_are_usage_errors() -> None:
    result = run_cli("--source", "test", "--quality", "500", "--port", "0")
    assert_one_clear_error(result, "quality")
    result = run_cli("--fps", "abc")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_serves_the_test_pattern_and_stops_cleanly_on_ctrl_c(cli_server) -> None:
    process, url = cli_server
    with connect(url, open_timeout=TIMEOUT) as ws:
        metadata = json.loads(ws.recv(timeout=TIMEOUT))
        assert metadata["type"] == "metadata" and metadata["width"] == 640
        assert isinstance(ws.recv(timeout=TIMEOUT), bytes)
        process.send_signal(signal.SIGINT)
        with pytest.raises(ConnectionClosed) as info:
            while True:
                ws.recv(timeout=TIMEOUT)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert process.wait(TIMEOUT) == 0
    assert "Traceback" not in process.stderr.read()  # type: ignore[union-attr]


def test_sigterm_stops_cleanly_too(cli_server) -> None:
    process, url = cli_server
    process.send_signal(signal.SIGTERM)
    assert process.wait(TIMEOUT) == 0


@pytest.mark.skipif(os.path.exists("/dev/video0"), reason="this machine has a camera")
def test_default_source_falls_back_to_the_test_pattern_without_a_camera() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "camstream", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = read_line(process.stdout)
        assert URL.search(line), line
        process.send_signal(signal.SIGINT)
        assert process.wait(TIMEOUT) == 0
        assert "test pattern" in process.stderr.read()  # type: ignore[union-attr]
    finally:
        stop_process(process)


def test_source_push_is_refused_on_the_command_line() -> None:
    result = run_cli("--source", "push", "--port", "0")
    assert result.returncode == 2, result.stderr
    assert_one_clear_error(result, "--source push", "publish")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--max-clients", "-1"), ("--max-clients must be at least 1 (0: no limit)",)),
        (("--max-bytes", "100"), ("--max-bytes must be 0 (no limit) or 4096",)),
        (("--quality", "0"), ("--quality must be 1-100",)),
    ],
)
def test_errors_name_the_options_not_the_library_arguments(args, words) -> None:
    result = run_cli("--source", "test", "--port", "0", *args)
    assert_one_clear_error(result, *words)
    assert "max_clients" not in result.stderr and "max_bytes must" not in result.stderr


def test_every_option_has_help() -> None:
    from camstream.cli import build_parser

    missing = [a.dest for a in build_parser()._actions if not a.help]
    assert not missing, missing


def test_max_bytes_option_sets_the_default_for_silent_clients() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "camstream", "--source", "test", "--port", "0",
         "--max-bytes", "0", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        match = URL.search(read_line(process.stdout))
        assert match
        with connect(match.group(0), open_timeout=TIMEOUT) as ws:
            assert json.loads(ws.recv(timeout=TIMEOUT))["max_bytes"] is None
        with connect(match.group(0) + "?max_bytes=65535", open_timeout=TIMEOUT) as ws:
            assert json.loads(ws.recv(timeout=TIMEOUT))["max_bytes"] == 65535
    finally:
        stop_process(process)


def test_warns_when_two_opencv_wheels_write_cv2(tmp_path) -> None:
    """A second OpenCV distribution (its real dist-info on the path) next to this one's."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        ours = distribution("opencv-python").metadata["Name"]
    except PackageNotFoundError:
        ours = distribution("opencv-python-headless").metadata["Name"]
    other = "opencv-python-headless" if ours == "opencv-python" else "opencv-python"
    info = tmp_path / f"{other.replace('-', '_')}-4.99.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {other}\nVersion: 4.99.0\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    process = subprocess.Popen(
        [sys.executable, "-m", "camstream", "--source", "test", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert URL.search(read_line(process.stdout))
        process.send_signal(signal.SIGINT)
        assert process.wait(TIMEOUT) == 0
        stderr = process.stderr.read()  # type: ignore[union-attr]
    finally:
        stop_process(process)
    assert "several OpenCV wheels are installed" in stderr, stderr
    assert other in stderr and ours in stderr, stderr
