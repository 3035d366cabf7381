"""The Godot addon shows a real server's adaptive delivery (issue 18).

Real headless Godot 4 runs a driver script with ``CamstreamClient`` inside a network namespace
behind a real 2 Mbit/s link (``tests/netns.py``), watching a real ``Streamer("push")`` fed
webcam-like 1280x720 JPEGs at 30 fps: the server steps the stream down, and the addon's
properties (``adapt``, ``rung``, ``rungs``, ``link_kbps``, ``rtt_ms``, ``adapt_reason``) must
say what the server's metadata said. Then the driver turns adaptation off with ``set_config``
and the properties follow. Uses the fixtures of ``test_godot.py``; skips where Godot or shaped
links are missing (``CAMSTREAM_REQUIRE_ALL=1`` fails instead).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TIMEOUT
from netns import SlowLinks, shaped_links
from test_adaptive import webcam_jpegs
from test_godot import RUN_TIMEOUT, godot, godot_home, project, push_streamer  # noqa: F401
from test_godot_decoding import UNTIL, fields_of

from camstream.delivery.adapt import REASONS

ADAPT_SCRIPT = (
    """\
extends SceneTree
# Watches a stream behind a slow link until the server steps it down; prints ADAPT lines
# with the addon's adaptive properties, then turns adaptation off.

const Client: GDScript = preload("res://addons/camstream/camstream_client.gd")

var tag: String = "ADAPT"
var wait_s: float = float(OS.get_cmdline_user_args()[-1])
var c: Node


func _initialize() -> void:
	_run.call_deferred()


func _line(what: String) -> String:
	return "ADAPT %s adapt=%s rung=%d rungs=%d link_kbps=%.1f rtt_ms=%.1f reason=%s width=%d" % [
		what, c.adapt, c.rung, c.rungs, c.link_kbps, c.rtt_ms, c.adapt_reason,
		int(c.metadata.get("width", 0))]


func _run() -> void:
	c = Client.new()
	c.autostart = false
	c.url = OS.get_cmdline_user_args()[0]
	root.add_child(c)
	c.start()
	await _until(func() -> bool: return c.frames_decoded >= 1, "a first frame")
	print(_line("first"))
	await _until(func() -> bool: return c.rung > 0 and c.frames_decoded >= 20, "a lower rung")
	print(_line("down"))
	c.set_config({"adapt": false})
	await _until(func() -> bool: return not c.adapt, "adaptation off")
	print(_line("off"))
	c.stop()
	quit(0)
"""
    + UNTIL
)


@pytest.fixture
def slow_links() -> Iterator[SlowLinks]:
    with shaped_links() as links:
        yield links


def test_the_addon_shows_the_servers_adaptation(
    godot: str, godot_home: dict[str, str], project: Path, slow_links: SlowLinks  # noqa: F811
) -> None:
    (project / "adapt_test.gd").write_text(ADAPT_SCRIPT)
    lane = slow_links.lane(2.0)
    host = slow_links.host_address
    with push_streamer(webcam_jpegs(1280, 720, 89), 30.0, jpeg=True, host=host) as server:
        url = f"ws://{host}:{server.port}/"
        args = [godot, "--headless", "--path", str(project), "--script", "res://adapt_test.gd",
                "--", url, str(RUN_TIMEOUT)]
        process = lane.popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=godot_home)
        try:
            out, _ = process.communicate(timeout=RUN_TIMEOUT * 3 + TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate(timeout=TIMEOUT)
        stats = server.stats()
    assert process.returncode == 0 and "SCRIPT ERROR" not in out, out
    lines = {line.split()[1]: fields_of(line) for line in out.splitlines()
             if line.startswith("ADAPT ") and len(line.split()) > 1}
    first, down, off = lines["first"], lines["down"], lines["off"]
    # The first frame: adapting, on a ladder of several rungs; the top rung is the full
    # 1280x720 picture (on a 2 Mbit/s link the first step down may come before the first
    # frame is decoded: then the properties already say so).
    rungs = int(first["rungs"])
    assert first["adapt"] == "true" and rungs >= 2, out
    assert (int(first["width"]) == 1280) == (first["rung"] == "0"), out
    # Stepped down: the rung, why, and the link as the server measured it.
    assert down["adapt"] == "true" and 0 < int(down["rung"]) < rungs, out
    assert down["reason"] in REASONS and down["reason"] != "config", out
    assert 0 < float(down["link_kbps"]) < 4 * 2000, out  # a 2 Mbit/s link
    assert float(down["rtt_ms"]) > 0, out
    assert int(down["width"]) < 1280, out
    # Off: the server says so, back on its only rung; no estimate is reported.
    assert (off["adapt"], off["rung"], off["rungs"], off["link_kbps"]) == (
        "false", "0", "1", "-1.0"), out
    assert stats["clients"] == [] or stats["clients"][0]["adapt"] is False
