"""Tests of the Godot 4 client (addons/camstream) and the example project (examples/godot).

Three layers:

* Lint: ``gdlint`` and ``gdformat --check`` (gdtoolkit, from PyPI) on every ``.gd`` file.
  Skipped if gdtoolkit is not installed.
* Engine parse check: ``godot --headless --check-only`` on every script.
* End to end: a real :class:`camstream.Streamer` on 127.0.0.1 (test pattern), and a real Godot 4
  running headless: the example project, the ``test_websocket.tscn`` debugging scene, and two
  small SceneTree scripts written by these tests that drive the addon directly.

The Godot binary comes from ``$GODOT_BIN`` or ``~/.cache/godot-sid/godot`` (made by
``.ci/install_godot.sh``). Without it the Godot tests are skipped, never faked.

Every subprocess has a timeout and every server is stopped. Timeouts scale with
``CAMSTREAM_TEST_TIMEOUT`` (default 5), like the rest of the suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from camstream import Streamer

ROOT = Path(__file__).resolve().parent.parent
ADDON_DIR = ROOT / "addons" / "camstream"
EXAMPLE_DIR = ROOT / "examples" / "godot"
# The example's own scripts; its addons/ folder is a symlink to ADDON_DIR, linted once.
GD_FILES = sorted(ADDON_DIR.glob("*.gd")) + sorted(EXAMPLE_DIR.glob("*.gd"))

# The suite's time unit (tests/conftest.py): 5 s by default; raise it on a slow machine.
from conftest import SLACK, TIMEOUT, wait_until  # noqa: E402

GODOT_TIMEOUT = 30 * SLACK  # hard limit for one Godot run (a normal run takes 1-4 s)
RUN_TIMEOUT = 15 * SLACK  # the --timeout given to the example: it gives up by itself first

SMOKE_RE = re.compile(r"^CAMSTREAM_SMOKE (?P<outcome>\w+) (?P<fields>.*)$", re.MULTILINE)
NOT_FOUND = "Godot 4 not found: run .ci/install_godot.sh or set GODOT_BIN"


# Finding the tools


def _godot_candidates() -> list[str]:
    env = os.environ.get("GODOT_BIN", "").strip()
    if env:
        return [env]
    return [str(Path.home() / ".cache" / "godot-sid" / "godot")]


@pytest.fixture(scope="session")
def godot() -> str:
    """Path of a working Godot 4 binary, or skip."""
    for candidate in _godot_candidates():
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        try:
            result = subprocess.run(
                [candidate, "--headless", "--version"],
                check=False,
                capture_output=True,
                text=True,
                timeout=GODOT_TIMEOUT,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        version = result.stdout.strip().splitlines()[-1:] or [""]
        if result.returncode == 0 and version[0].startswith("4."):
            return candidate
        pytest.skip(f"{NOT_FOUND} ({candidate} reports {version[0]!r}, not Godot 4)")
    pytest.skip(NOT_FOUND)


def _gdtoolkit_command(tool: str) -> list[str]:
    """``gdlint``/``gdformat`` next to this Python, on PATH, or skip."""
    beside_python = Path(sys.executable).with_name(tool)
    if beside_python.is_file():
        return [str(beside_python)]
    on_path = shutil.which(tool)
    if on_path:
        return [on_path]
    pytest.skip(f"gdtoolkit not installed ({tool} not found): pip install 'gdtoolkit>=4.5,<5'")


# Running Godot


@pytest.fixture(scope="session")
def godot_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for Godot with its user:// data, config and cache in a temporary folder."""
    home = tmp_path_factory.mktemp("godot-home")
    env = dict(os.environ)
    env.update(
        XDG_DATA_HOME=str(home / "data"),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
    )
    return env


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example project with the addon symlink resolved.

    Godot may write a .godot/ cache into a project, and some tests add scripts to it, so the
    tests never run the one in the repository.
    """
    copy = tmp_path_factory.mktemp("project") / "godot"
    shutil.copytree(EXAMPLE_DIR, copy, symlinks=False, ignore=shutil.ignore_patterns(".godot"))
    assert (copy / "addons" / "camstream" / "camstream_client.gd").is_file()
    return copy


def run_godot(
    godot: str, env: dict[str, str], args: list[str], timeout: float = GODOT_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run Godot headless to completion; output is stdout and stderr interleaved."""
    return subprocess.run(
        [godot, "--headless", *args],
        check=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=timeout,
        env=env,
    )


class GodotProcess:
    """A Godot run in the background whose output lines can be waited for."""

    def __init__(self, godot: str, env: dict[str, str], args: list[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [godot, "--headless", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> str:
        """Return the first new output line matching ``pattern``; fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout * SLACK
        regex = re.compile(pattern)
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.output}") from None
            if line is None:
                self._queue.put(None)
                raise AssertionError(f"Godot exited before {pattern!r}:\n{self.output}")
            self.lines.append(line)
            if regex.search(line):
                return line

    def finish(self, timeout: float = GODOT_TIMEOUT) -> int:
        """Wait for the exit (killing it after ``timeout`` s) and collect the rest of the output."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(timeout=TIMEOUT)
        assert not self._reader.is_alive(), "Godot's output reader did not finish"
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@contextlib.contextmanager
def godot_process(godot: str, env: dict[str, str], args: list[str]) -> Iterator[GodotProcess]:
    process = GodotProcess(godot, env, args)
    try:
        yield process
    finally:
        if process.proc.poll() is None:
            process.proc.kill()
        process.finish(timeout=TIMEOUT)


# The server


@contextlib.contextmanager
def streamer(**options: Any) -> Iterator[Streamer]:
    """A real camstream server with the test pattern on 127.0.0.1, stopped on exit."""
    from camstream import Streamer

    options.setdefault("port", 0)
    options.setdefault("fps", 30)
    with Streamer(source="test", **options) as server:
        yield server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def smoke(output: str) -> tuple[str, dict[str, str]]:
    """The outcome and fields of the example's CAMSTREAM_SMOKE line."""
    match = SMOKE_RE.search(output)
    assert match, f"no CAMSTREAM_SMOKE line in the output:\n{output}"
    fields = dict(re.findall(r"(\w+)=('[^']*'|\S+)", match["fields"]))
    return match["outcome"], fields


def run_example(
    godot: str, env: dict[str, str], project: Path, url: str, *args: str
) -> tuple[subprocess.CompletedProcess[str], str, dict[str, str]]:
    result = run_godot(
        godot,
        env,
        ["--path", str(project), "--", f"--url={url}", f"--timeout={RUN_TIMEOUT}", *args],
    )
    outcome, fields = smoke(result.stdout)
    return result, outcome, fields


# 1. Lint


def test_gdlint() -> None:
    command = _gdtoolkit_command("gdlint")
    result = subprocess.run(
        [*command, *map(str, GD_FILES)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_gdformat_check() -> None:
    command = _gdtoolkit_command("gdformat")
    result = subprocess.run(
        [*command, "--check", *map(str, GD_FILES)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_uses_the_addon_through_a_symlink() -> None:
    """examples/godot runs the repository's addon, not a copy that could drift.

    An sdist stores the link as a copy (setuptools follows links): then the copy must be equal.
    """
    link = EXAMPLE_DIR / "addons" / "camstream"
    if not (ROOT / ".git").exists() and not link.is_symlink():  # unpacked from an sdist
        for original in sorted(ADDON_DIR.iterdir()):
            assert (link / original.name).read_bytes() == original.read_bytes(), original.name
        return
    assert link.is_symlink(), f"{link} should be a symlink to ../../../addons/camstream"
    assert link.resolve() == ADDON_DIR.resolve()


# 2. The engine's own parser and type checker


# Each script's res:// path inside the example project.
RES_PATHS = [
    str(f.relative_to(EXAMPLE_DIR)) if f.parent == EXAMPLE_DIR else f"addons/camstream/{f.name}"
    for f in GD_FILES
]


@pytest.mark.parametrize("script", RES_PATHS)
def test_check_only(godot: str, godot_home: dict[str, str], project: Path, script: str) -> None:
    result = run_godot(
        godot, godot_home, ["--path", str(project), "--check-only", "--script", f"res://{script}"]
    )
    assert result.returncode == 0, result.stdout
    assert "SCRIPT ERROR" not in result.stdout, result.stdout
    assert "Parse Error" not in result.stdout, result.stdout


# 3. The addon's logic without a server

UNIT_SCRIPT = """\
extends SceneTree
# Calls CamstreamClient's message and close handling directly; prints UNIT lines.

const Client: GDScript = preload("res://addons/camstream/camstream_client.gd")

var metadata: Array = []
var events: Array = []
var closes: Array = []


func _initialize() -> void:
	var c: Node = Client.new()
	c.autostart = false
	root.add_child(c)
	c.metadata_received.connect(func(m: Dictionary) -> void: metadata.append(m))
	c.event_received.connect(func(e: Dictionary) -> void: events.append(e))
	c.connection_closed.connect(func(code: int, r: String) -> void: closes.append(code))

	c._handle_text('{"type":"metadata","protocol":1,"width":640,"height":480,"new_field":1}')
	c._handle_text('{"width":320,"height":240,"fps":30,"format":"MJPEG"}')
	c._handle_text('{"type":"camera_lost","reason":"unplugged"}')
	c._handle_text('{"type":"something_new"}')
	c._handle_text("not json")
	print("UNIT metadata=%d last=%dx%d" % [metadata.size(), c.metadata.width, c.metadata.height])
	print("UNIT events=%s" % ",".join(events.map(func(e: Dictionary) -> String: return e.type)))

	var adaptive: String = (
		'{"type":"metadata","width":640,"height":480,"adapt":true,"rung":1,"rungs":4,'
		+ '"link_kbps":2400.4,"rtt_ms":35,"adapt_reason":"link"}')
	c._handle_text(adaptive)
	print("UNIT adapt %s %d/%d %.1f %.1f %s" % [c.adapt, c.rung, c.rungs, c.link_kbps, c.rtt_ms, c.adapt_reason])
	print("UNIT adapt_text " + load("res://main.gd").adapt_text(c))
	c._handle_text('{"type":"metadata","width":640,"height":480,"adapt":"yes","rung":null,"link_kbps":null,"rtt_ms":"x","adapt_reason":7}')
	print("UNIT malformed %s %d/%d %.1f %.1f '%s'" % [c.adapt, c.rung, c.rungs, c.link_kbps, c.rtt_ms, c.adapt_reason])
	c._handle_text('{"type":"metadata","width":320,"height":240,"adapt":false,"rungs":3,"link_kbps":null}')
	print("UNIT adapt_off " + load("res://main.gd").adapt_text(c))

	print("UNIT query=" + c._with_query("ws://h:1/", {"fps": 15.0, "frame_info": true, "token": "a b"}))
	print("UNIT query2=" + c._with_query("ws://h:1/?x=1", {"width": 320}))
	c.set_config({"width": 320, "height": 240, "fps": 15})
	c.set_config({"width": null, "height": null})
	print("UNIT config=%s" % JSON.stringify(c.config))

	c.inbound_buffer_size = 65535
	c._finish_connection(1009, "Message too big")
	print("UNIT after1009 inbound=%d state=%s" % [c.inbound_buffer_size, c.State.keys()[c.state]])
	c.inbound_buffer_size = 48 * 1024 * 1024
	c._finish_connection(1009, "Message too big")
	print("UNIT cap inbound=%d" % c.inbound_buffer_size)
	c._finish_connection(1008, "bad token")
	print("UNIT after1008 state=%s" % c.State.keys()[c.state])
	var before: int = Time.get_ticks_msec()
	c._finish_connection(1013, "server full")
	var wait_s: float = (c._retry_at_ms - before) / 1000.0
	print("UNIT after1013 state=%s wait_ok=%s" % [c.State.keys()[c.state], wait_s >= 10.0])
	print("UNIT closes=%s" % str(closes))
	quit(0)
"""


def test_client_logic_offline(godot: str, godot_home: dict[str, str], project: Path) -> None:
    script = project / "unit_test.gd"
    script.write_text(UNIT_SCRIPT)
    result = run_godot(
        godot, godot_home, ["--path", str(project), "--script", "res://unit_test.gd"]
    )
    out = result.stdout
    assert result.returncode == 0, out
    assert "SCRIPT ERROR" not in out, out
    # Metadata with and without "type" (servers written from the original protocol).
    assert "UNIT metadata=2 last=320x240" in out, out
    # Adaptive delivery (issue 18's metadata fields): parsed when present, defaults otherwise.
    assert "UNIT adapt true 1/4 2400.4 35.0 link" in out, out
    assert "UNIT adapt_text adapting: rung 1 of 4 (link), link 2400 kbit/s, rtt 35 ms" in out, out
    assert "UNIT malformed false 0/0 -1.0 -1.0 ''" in out, out
    assert "UNIT adapt_off not adapting" in out, out
    assert "UNIT events=camera_lost,something_new,invalid" in out, out
    assert "UNIT query=ws://h:1/?fps=15&frame_info=true&token=a%20b" in out, out
    assert "UNIT query2=ws://h:1/?x=1&width=320" in out, out
    assert 'UNIT config={"fps":15}' in out, out  # null clears a setting
    assert "UNIT after1009 inbound=131070 state=WAITING" in out, out
    assert f"UNIT cap inbound={64 * 1024 * 1024}" in out, out
    assert "UNIT after1008 state=STOPPED" in out, out
    assert "UNIT after1013 state=WAITING wait_ok=true" in out, out
    assert "UNIT closes=[1009, 1009, 1008, 1013]" in out, out


# 4. End to end against a real server


def test_example_streams_640x480(godot: str, godot_home: dict[str, str], project: Path) -> None:
    with streamer(width=640, height=480) as server:
        result, outcome, fields = run_example(
            godot, godot_home, project, server.url, "--quit-after-frames=30"
        )
    assert result.returncode == 0, result.stdout
    assert outcome == "OK", result.stdout
    assert fields["size"] == "640x480", result.stdout
    assert fields["metadata"] == fields["size"], result.stdout
    assert fields["format"] == "RGB8", result.stdout
    assert int(fields["frames"]) == 30 and fields["decode_errors"] == "0", result.stdout
    assert '"type":"metadata"' in result.stdout, result.stdout


def test_frames_larger_than_godot_default_buffer(
    godot: str, godot_home: dict[str, str], project: Path
) -> None:
    """Frames > 65535 bytes: Godot's default inbound_buffer_size fails, the client's works.

    The built-in test pattern compresses well (1280x720 at quality 95 is ~50 KB), so this uses
    1920x1080 at quality 95 (~100 KB per frame).
    """
    with streamer(width=1920, height=1080, quality=95) as server:
        full = server.url + "?max_bytes=0"  # the full frames; by default they fit in 65535
        # The debugging scene shows the packet sizes: proof the frames really are that big.
        debug = run_godot(
            godot,
            godot_home,
            ["--path", str(project), "res://test_websocket.tscn", "--", f"--url={full}"]
            + ["--quit-after-packets=4", f"--timeout={RUN_TIMEOUT}"],
        )
        assert debug.returncode == 0, debug.stdout
        sizes = [
            int(s)
            for s in re.findall(r"^packet \d+ binary (\d+) bytes$", debug.stdout, re.MULTILINE)
        ]
        assert sizes and min(sizes) > 65535, debug.stdout

        # With Godot's default limit the connection dies with 1009 before anything arrives.
        too_small = run_godot(
            godot,
            godot_home,
            ["--path", str(project), "res://test_websocket.tscn", "--", f"--url={full}"]
            + ["--inbound=65535", "--quit-after-packets=4", f"--timeout={RUN_TIMEOUT}"],
        )
        assert "closed code=1009 reason='Message too big'" in too_small.stdout, too_small.stdout
        assert too_small.returncode == 1, too_small.stdout

        # The addon sets its 4 MiB inbound_buffer_size before connecting, and asks for max_bytes=0
        # (and, with --full-size, not for the Video rect's size: 960x928 headless).
        result, outcome, fields = run_example(
            godot, godot_home, project, server.url, "--quit-after-frames=10", "--full-size"
        )
    assert result.returncode == 0 and outcome == "OK", result.stdout
    assert fields["size"] == fields["metadata"] == "1920x1080", result.stdout
    assert "1009" not in result.stdout, result.stdout


def test_1009_doubles_inbound_buffer_and_reconnects(
    godot: str, godot_home: dict[str, str], project: Path
) -> None:
    with streamer(width=1920, height=1080, quality=95) as server:
        result, outcome, fields = run_example(
            godot,
            godot_home,
            project,
            server.url,
            "--inbound=65535",
            "--quit-after-frames=5",
            "--full-size",
        )
    assert result.returncode == 0 and outcome == "OK", result.stdout
    assert "code 1009" in result.stdout, result.stdout
    assert fields["inbound"] == "131070", result.stdout  # doubled once: enough for ~100 KB
    assert fields["size"] == fields["metadata"] == "1920x1080", result.stdout


def test_config_in_url_query(godot: str, godot_home: dict[str, str], project: Path) -> None:
    config = '{"width":320,"height":240,"fps":15,"quality":60}'
    with streamer(width=640, height=480) as server:
        result, outcome, fields = run_example(
            godot, godot_home, project, server.url, f"--config={config}", "--quit-after-frames=5"
        )
    assert result.returncode == 0 and outcome == "OK", result.stdout
    assert fields["size"] == fields["metadata"] == "320x240", result.stdout


@pytest.mark.parametrize("how", ["header", "query"])
def test_token(godot: str, godot_home: dict[str, str], project: Path, how: str) -> None:
    extra = ["--token-in-query"] if how == "query" else []
    with streamer(width=320, height=240, token="s3cret") as server:
        result, outcome, fields = run_example(
            godot,
            godot_home,
            project,
            server.url,
            "--token=s3cret",
            "--quit-after-frames=5",
            *extra,
        )
    assert result.returncode == 0 and outcome == "OK", result.stdout
    assert fields["size"] == "320x240", result.stdout


def test_bad_token_stops_with_1008(godot: str, godot_home: dict[str, str], project: Path) -> None:
    with streamer(width=320, height=240, token="s3cret") as server:
        result, outcome, fields = run_example(
            godot, godot_home, project, server.url, "--token=wrong", "--quit-after-frames=5"
        )
    assert result.returncode == 1, result.stdout
    assert outcome == "STOPPED", result.stdout  # no reconnect loop: retrying cannot help
    assert fields["close"] == "1008", result.stdout
    assert fields["frames"] == "0", result.stdout


def test_reconnects_with_backoff_and_reports_1001(
    godot: str, godot_home: dict[str, str], project: Path
) -> None:
    """Client first (refused, backs off), then the server; then the server goes away."""
    port = free_port()
    args = ["--path", str(project), "--", f"--url=ws://127.0.0.1:{port}/", "--timeout=20"]
    with godot_process(godot, godot_home, args) as proc:
        proc.wait_for(r"code -1.*retrying in", timeout=TIMEOUT * 2)
        proc.wait_for(r"code -1.*retrying in", timeout=TIMEOUT * 2)  # a second, longer wait
        with streamer(port=port, width=320, height=240):
            proc.wait_for(r"^camstream: connected to", timeout=TIMEOUT * 3)
            proc.wait_for(r"^camstream: metadata .*\"width\":320", timeout=TIMEOUT * 2)
        # Leaving the block stopped the server: the client must see 1001 and plan a retry.
        line = proc.wait_for(r"^camstream: closed \(code", timeout=TIMEOUT * 2)
        assert "code 1001" in line, proc.output
        assert "retrying in 0." in line, proc.output  # backoff was reset when the connection opened
        proc.proc.kill()
    delays = [float(d) for d in re.findall(r"code -1.*retrying in ([\d.]+) s", proc.output)]
    assert len(delays) >= 2 and delays[1] > delays[0], proc.output


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (made with the openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl command not found (apt-get install openssl)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_wss_with_trusted_certificate(
    godot: str, godot_home: dict[str, str], project: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    with streamer(width=320, height=240, certfile=str(cert), keyfile=str(key)) as server:
        assert server.url.startswith("wss://"), server.url
        result, outcome, fields = run_example(
            godot, godot_home, project, server.url, f"--ca={cert}", "--quit-after-frames=5"
        )
        assert result.returncode == 0 and outcome == "OK", result.stdout
        assert fields["size"] == "320x240", result.stdout
        # Without the CA the certificate is not trusted: no frames, close code -1.
        untrusted = run_godot(
            godot,
            godot_home,
            ["--path", str(project), "--", f"--url={server.url}", "--timeout=2"],
        )
    outcome, fields = smoke(untrusted.stdout)
    assert outcome == "TIMEOUT" and fields["frames"] == "0", untrusted.stdout
    assert fields["close"] == "-1", untrusted.stdout


CONTROL_SCRIPT = """\
extends SceneTree
# Drives CamstreamClient's control methods against a live server; prints CONTROL lines.

const Client: GDScript = preload("res://addons/camstream/camstream_client.gd")

var c: Node
var metadata: Array = []
var events: Array = []
var snapshots: Array = []
var frames: int = 0
var opened: int = 0


func _initialize() -> void:
	_run.call_deferred()


func _run() -> void:
	c = Client.new()
	c.autostart = false
	c.url = OS.get_cmdline_user_args()[0]
	c.heartbeat_interval_s = 0.25  # a server that ignored pings would be dropped (code -1)
	root.add_child(c)
	c.metadata_received.connect(func(m: Dictionary) -> void: metadata.append(m))
	c.event_received.connect(func(e: Dictionary) -> void: events.append(e))
	c.frame_received.connect(func(_t: ImageTexture) -> void: frames += 1)
	c.connection_opened.connect(func() -> void: opened += 1)
	c.snapshot_received.connect(func(i: Image, info: Dictionary) -> void: snapshots.append(i))
	c.start()

	await _until(func() -> bool: return frames > 0, "first frame")
	var texture: ImageTexture = c.texture
	print("CONTROL first %dx%d" % [texture.get_width(), texture.get_height()])

	c.set_config({"width": 320, "height": 240})
	await _until(func() -> bool: return c.image.get_width() == 320, "320x240 frame")
	print("CONTROL resized %dx%d same_texture=%s metadata=%dx%d" % [
		c.texture.get_width(), c.texture.get_height(), c.texture == texture,
		metadata[-1].width, metadata[-1].height])

	c.ping()
	await _until(func() -> bool: return c.last_rtt_s >= 0.0, "pong")
	print("CONTROL pong rtt=%.3f" % c.last_rtt_s)

	c.request_snapshot(95)
	await _until(func() -> bool: return snapshots.size() > 0, "snapshot")
	print("CONTROL snapshot %dx%d" % [snapshots[0].get_width(), snapshots[0].get_height()])

	var announced: int = metadata.size()
	c.pause()
	# The server confirms with metadata (paused: true) after any frame already on the way.
	await _until(func() -> bool: return metadata.size() > announced and metadata[-1].paused,
		"paused metadata")
	# Counted as they arrive (frames_received): a frame that came before the confirmation may
	# still be decoding on a worker and be shown in the window.
	var paused_at: int = c.frames_received
	await _sleep(1.0)  # the observation window: no frame may arrive in it
	print("CONTROL paused frames_during_pause=%d" % (c.frames_received - paused_at))
	c.resume()
	var shown_at: int = frames
	await _until(func() -> bool: return frames > shown_at + 2, "frames after resume")
	print("CONTROL resumed")

	c.stop()
	await _until(func() -> bool: return c.state == Client.State.STOPPED, "stopped")
	print("CONTROL stopped code=%d connections=%d" % [c.last_close_code, opened])
	quit(0)


func _until(condition: Callable, what: String, timeout_s: float = 8.0) -> void:
	var deadline: int = Time.get_ticks_msec() + int(timeout_s * 1000)
	while not condition.call():
		if Time.get_ticks_msec() > deadline:
			print("CONTROL FAILED waiting for %s; status: %s" % [what, c.status])
			quit(1)
			return
		await process_frame


func _sleep(seconds: float) -> void:
	await create_timer(seconds).timeout
"""


def test_control_messages(godot: str, godot_home: dict[str, str], project: Path) -> None:
    """set_config (resize in place), ping/pong, snapshot, pause/resume, heartbeat, stop."""
    script = project / "control_test.gd"
    script.write_text(CONTROL_SCRIPT)
    with streamer(width=640, height=480) as server:
        result = run_godot(
            godot,
            godot_home,
            ["--path", str(project), "--script", "res://control_test.gd", "--", server.url],
        )
    out = result.stdout
    assert "CONTROL FAILED" not in out, out
    assert result.returncode == 0, out
    assert "CONTROL first 640x480" in out, out
    assert "CONTROL resized 320x240 same_texture=true metadata=320x240" in out, out
    rtt = re.search(r"CONTROL pong rtt=([\d.]+)", out)
    assert rtt and float(rtt.group(1)) < 1.0 * SLACK, out
    assert re.search(r"CONTROL snapshot \d+x\d+", out), out
    assert "CONTROL paused frames_during_pause=0" in out, out
    assert "CONTROL resumed" in out, out
    assert "CONTROL stopped code=1000 connections=1" in out, out  # heartbeat answered


def test_debug_scene_prints_states_packets_and_close(
    godot: str, godot_home: dict[str, str], project: Path
) -> None:
    """test_websocket.tscn prints states, packets and the close, and nothing else."""
    server_context: contextlib.AbstractContextManager[Streamer] | None
    server_context = streamer(width=320, height=240)
    server = server_context.__enter__()
    try:
        args = ["--path", str(project), "res://test_websocket.tscn", "--", f"--url={server.url}"]
        with godot_process(godot, godot_home, args) as proc:
            proc.wait_for(r"^packet 3 binary \d+ bytes$", timeout=TIMEOUT * 2)
            server_context.__exit__(None, None, None)  # stop the server: close 1001
            server_context = None
            proc.wait_for(r"^closed code=", timeout=TIMEOUT * 2)
    finally:
        if server_context is not None:
            server_context.__exit__(None, None, None)
    lines = [line for line in proc.lines if line and not line.startswith("Godot Engine v4")]
    assert lines[:3] == ["state CONNECTING", "state OPEN", lines[2]], proc.output
    assert re.fullmatch(r"packet 1 text \d+ bytes", lines[2]), proc.output  # the metadata
    assert re.fullmatch(r"packet 2 binary \d+ bytes", lines[3]), proc.output  # a JPEG
    assert re.fullmatch(r"closed code=1001 reason='.*'", lines[-1]), proc.output
    assert lines[-2] == "state CLOSED", proc.output
    allowed = re.compile(
        r"state (CONNECTING|OPEN|CLOSING|CLOSED)|packet \d+ (text|binary) \d+ bytes"
        r"|closed code=-?\d+ reason='.*'"
    )
    assert all(allowed.fullmatch(line) for line in lines), proc.output


# 5. The seed document's minimal client, run as written

# /work/shared/seed/websocket-protocol.md, "Minimal WebSocket Client", copied verbatim. The only
# change, made by seed_client_script(): the URL's port, because the tests serve on a free port
# (8765 may be taken) and never on a fixed one. Nothing else: no inbound_buffer_size, no query.
SEED_CLIENT = """\
extends Control

var websocket = WebSocketPeer.new()
@onready var texture_rect = $TextureRect

func _ready():
    websocket.connect_to_url("ws://localhost:8765")

func _process(_delta):
    websocket.poll()
    if websocket.get_ready_state() == WebSocketPeer.STATE_OPEN:
        while websocket.get_available_packet_count():
            var packet = websocket.get_packet()
            var image = Image.new()
            if image.load_jpg_from_buffer(packet) == OK:
                var texture = ImageTexture.new()
                texture.set_image(image)
                texture_rect.texture = texture
"""

# What running it headless needs around it, without touching it: the scene it expects (a
# Control with a TextureRect child) and a sibling node that watches it: it counts the textures
# the client shows, reports how its connection ended, and quits (the seed client never quits).
SEED_SCENE = """\
[gd_scene load_steps=3 format=3]

[ext_resource type="Script" path="res://seed_client.gd" id="1"]
[ext_resource type="Script" path="res://seed_probe.gd" id="2"]

[node name="SeedClient" type="Control"]
script = ExtResource("1")

[node name="TextureRect" type="TextureRect" parent="."]

[node name="Probe" type="Node" parent="."]
script = ExtResource("2")
"""

SEED_PROBE = """\
extends Node
# Watches the seed client (the parent) from outside; prints one SEED line and quits.

var want: int = 60  # pictures shown, then OK
var timeout_s: float = 20.0
var frames: int = 0
var last: Texture2D = null
var first_ms: int = -1
var started_ms: int = 0


func _ready() -> void:
	for arg in OS.get_cmdline_user_args():
		var parts: PackedStringArray = arg.trim_prefix("--").split("=", true, 1)
		if parts[0] == "frames":
			want = int(parts[1])
		elif parts[0] == "timeout":
			timeout_s = float(parts[1])
	started_ms = Time.get_ticks_msec()


func _process(_delta: float) -> void:
	var client: Node = get_parent()
	var now: int = Time.get_ticks_msec()
	var shown: Texture2D = client.texture_rect.texture
	if shown != null and shown != last:
		last = shown
		frames += 1
		if first_ms < 0:
			first_ms = now
	var ws: WebSocketPeer = client.websocket
	if ws.get_ready_state() == WebSocketPeer.STATE_CLOSED:
		_finish("CLOSED", 1, now)
	elif frames >= want:
		_finish("OK", 0, now)
	elif now - started_ms >= timeout_s * 1000:
		_finish("TIMEOUT", 1, now)


func _finish(outcome: String, code: int, now: int) -> void:
	var ws: WebSocketPeer = get_parent().websocket
	var size: String = "0x0" if last == null else "%dx%d" % [last.get_width(), last.get_height()]
	var span: float = 0.0 if first_ms < 0 else (now - first_ms) / 1000.0
	print("SEED %s frames=%d seconds=%.3f size=%s close=%d reason='%s'" % [
		outcome, frames, span, size, ws.get_close_code(), ws.get_close_reason()])
	set_process(false)
	get_tree().quit(code)
"""


def seed_client_script(port: int) -> str:
    """The seed client, pointed at ``port``: the one change it needs to run in the tests."""
    assert SEED_CLIENT.count('"ws://localhost:8765"') == 1
    return SEED_CLIENT.replace('"ws://localhost:8765"', f'"ws://localhost:{port}"')


def webcam_like_frames(count: int = 6, seed: int = 7) -> list[Any]:
    """1280x720 pictures with sensor-like noise: each is ~120 KB as a JPEG at quality 80."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:720, 0:1280]
    base = np.dstack([x * 255 // 1280, y * 255 // 720, (x + y) * 255 // 2000]).astype(np.int16)
    base[200:600, 800:1100] = (200, 50, 50)
    return [
        np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
        for _ in range(count)
    ]


@contextlib.contextmanager
def push_streamer(
    frames: Sequence[Any], fps: float = 30.0, *, jpeg: bool = False, **options: Any
) -> Iterator[Streamer]:
    """A Streamer in push mode fed ``frames`` in a loop at ``fps`` by a thread: images, or
    with ``jpeg`` JPEG files (``publish_jpeg``: passed through untouched)."""
    from camstream import Streamer

    stop = threading.Event()
    with Streamer("push", port=0, fps=fps, **options) as server:
        send = server.publish_jpeg if jpeg else server.publish

        def publish() -> None:
            i = 0
            while not stop.wait(1 / fps):
                send(frames[i % len(frames)])
                i += 1

        publisher = threading.Thread(target=publish, name="test-publisher")
        publisher.start()
        try:
            yield server
        finally:
            stop.set()
            publisher.join(TIMEOUT)
            assert not publisher.is_alive(), "publisher did not finish"


def noisy_webcam(fps: float = 30.0, **options: Any) -> contextlib.AbstractContextManager[Streamer]:
    """A Streamer in push mode fed webcam-like 1280x720 frames at ``fps`` by a thread."""
    return push_streamer(webcam_like_frames(), fps, **options)


def test_seed_client_streams_a_noisy_720p_webcam_with_the_defaults(
    godot: str, godot_home: dict[str, str], project: Path
) -> None:
    """The protocol document's own client, unchanged, keeps streaming with the defaults.

    Every JPEG of this source is ~120 KB at quality 80, nearly twice Godot's default limit of
    65535 bytes: without the server's default max_bytes, Godot closes with 1009 at once.
    """
    import cv2

    frames = webcam_like_frames(1)
    assert len(cv2.imencode(".jpg", frames[0], [cv2.IMWRITE_JPEG_QUALITY, 80])[1]) > 100_000
    (project / "seed_scene.tscn").write_text(SEED_SCENE)
    (project / "seed_probe.gd").write_text(SEED_PROBE)
    with noisy_webcam() as server:
        (project / "seed_client.gd").write_text(seed_client_script(server.port))
        args = ["--max-fps", "120", "--path", str(project), "res://seed_scene.tscn", "--"]
        with godot_process(godot, godot_home, args + [f"--timeout={RUN_TIMEOUT}"]) as proc:
            seen: dict[str, Any] = {}  # the server's view of the client, while it streams

            def streamed() -> bool:
                clients = server.stats()["clients"]
                if not clients:
                    return bool(seen) or proc.proc.poll() is not None  # it came and went
                seen.update(clients[0])
                return seen["frames_sent"] >= 30

            wait_until(streamed, timeout=RUN_TIMEOUT)
            line = proc.wait_for(r"^SEED ", timeout=RUN_TIMEOUT)
            returncode = proc.finish()
    out = proc.output
    match = re.search(r"^SEED (\w+) frames=(\d+) seconds=([\d.]+) size=(\S+) close=(-?\d+)", line)
    assert match, out
    outcome, shown, seconds, size, close = match.groups()
    assert outcome == "OK" and returncode == 0, out
    assert close != "1009" and "1009" not in out, out
    assert int(shown) >= 60 and size == "1280x720", out
    # Continuously: 60 new pictures (2 s of the 30 fps camera) at 20 a second or more. (Not
    # 25: each frame is a byte-limit search of 1280x720 encodes in the server and a 1280x720
    # decode in Godot, on 2 cores that the suite's other process shares; 23.7 was seen in CI.
    # What this guards against is a close (1009) or a slideshow, not the last few fps.)
    assert int(shown) / float(seconds) >= 20 / SLACK, out
    assert seen["max_bytes"] == 65535, seen
    assert 0 < seen["bytes_sent"] <= 65535 * seen["frames_sent"], seen


def test_a_client_that_says_max_bytes_0_gets_the_large_frames() -> None:
    """The same source: the default client gets frames that fit Godot; ``max_bytes=0`` the
    full ~120 KB ones (the bundled clients ask for that)."""
    from websockets.sync.client import connect

    def sizes(url: str) -> list[int]:
        with connect(url, open_timeout=TIMEOUT, max_size=2**24) as ws:
            first = json.loads(ws.recv(timeout=TIMEOUT))
            assert first["type"] == "metadata", first
            got: list[int] = []
            while len(got) < 5:
                message = ws.recv(timeout=TIMEOUT)
                if isinstance(message, bytes):
                    got.append(len(message))
            return got

    with noisy_webcam() as server:
        default = sizes(server.url)
        unlimited = sizes(server.url + "?max_bytes=0")
        assert max(default) <= 65535, default
        assert min(unlimited) > 100_000, unlimited
