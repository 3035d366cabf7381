"""``camstream --source NAME=SOURCE`` (issue 21): several cameras from the command, as a real
subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import TIMEOUT, stop_process
from helpers import get, next_binary, next_text, read_line
from websockets.sync.client import connect

LINE = re.compile(r"streaming 2 cameras on ws://127\.0\.0\.1:(\d+)/NAME \((.*)\) \(Ctrl")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "camstream", *args], capture_output=True,
                          text=True, timeout=TIMEOUT * 3)


def test_named_sources_are_served_under_their_names() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "camstream", "--source", "front=test", "--source", "rear=test",
         "--camera-option", "rear:width=320", "--camera-option", "rear:fps=10",
         "--on-demand", "5", "--port", "0", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = read_line(process.stdout)
        match = LINE.search(line)
        assert match, line
        assert match.group(2) == ("front: test pattern 640x480 at 30 fps, on demand; "
                                  "rear: test pattern 320x240 at 10 fps, on demand")
        port = int(match.group(1))
        listed = json.loads(get(port, "/cameras.json").body)
        assert [(c["name"], c["state"]) for c in listed["cameras"]] == [
            ("front", "idle"), ("rear", "idle")]
        with connect(f"ws://127.0.0.1:{port}/rear", open_timeout=TIMEOUT) as ws:
            metadata = next_text(ws, "metadata")
            assert (metadata["camera_name"], metadata["source_width"]) == ("rear", 320)
            next_binary(ws)
    finally:
        stop_process(process)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--source", "front=test", "--source", "test"], "name every --source"),
        (["--source", "a=test", "--source", "a=test"], "two cameras named 'a'"),
        (["--source", "ws=test"], "server's own paths"),
        (["--source", "a=test", "--camera-option", "b:width=320"], "no camera named 'b'"),
        (["--source", "a=test", "--camera-option", "a:colour=red"], "KEY is one of"),
        (["--source", "a=test", "--camera-option", "a:width=big"], "width takes a number"),
        (["--source", "a=test", "--camera-option", "a:on-demand=-1"], "on-demand takes"),
        (["--source", "a=test", "--camera-option", "a:width=1"], "camera 'a': --width must"),
        (["--source", "test", "--camera-option", "a:width=320"], "for named cameras"),
        (["--source", "a=push"], "--source push"),
        (["--on-demand", "-3"], "--on-demand"),
        (["--source", "front.cam=0"], "is no camera name"),
        (["--source", "a=test", "--source", "A=test"], "two cameras named 'A'"),
    ],
)
def test_bad_camera_lists_are_one_clear_line(args: list[str], words: str) -> None:
    for checked in ([], ["--check-config"]):
        result = run_cli(*checked, *args, "--port", "0")
        assert result.returncode != 0, result
        lines = result.stderr.strip().splitlines()
        assert lines and lines[-1].startswith("camstream: error:"), result.stderr
        assert "Traceback" not in result.stderr
        assert words in lines[-1], lines[-1]


def test_check_config_accepts_a_list_of_cameras() -> None:
    result = run_cli("--check-config", "--source", "front=0", "--source",
                     "bench=http://127.0.0.1:9/stream.mjpg", "--camera-option",
                     "bench:on-demand=on", "--camera-option", "front:camera-set=exposure=100")
    assert (result.returncode, result.stdout.strip()) == (0, "camstream: configuration OK"), (
        result.stderr)


def test_an_abbreviated_option_is_refused_not_guessed() -> None:
    """argparse would take "--check" for "--check-config"'s prefix only sometimes: camstream
    takes no abbreviation, so "--check" is an error instead of a server started for real."""
    result = run_cli("--check", "--source", "test", "--port", "0")
    assert result.returncode == 2, result
    assert "unrecognized arguments: --check" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
