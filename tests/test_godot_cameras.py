"""The Godot addon on a server of several cameras (issue 21): a real headless Godot 4 with the
addon's ``camera`` property, and with the camera's path in the URL.

Two fake webcams (tests/fake_capture.py) with differently coloured corners at different sizes:
each client must show its own camera's picture, checked by the size and the corner's colour of
the picture Godot decoded.
"""

from __future__ import annotations

import re
from pathlib import Path

from conftest import TIMEOUT
from fake_capture import MARKS, FakeWebcam
from test_godot import godot, godot_home, project, run_godot  # noqa: F401 - fixtures

from camstream import CameraConfig, Streamer

SCRIPT = """\
extends SceneTree
# Three CamstreamClients on one server: by the camera property, by the URL's path, and the
# bare URL (the first camera). Prints one CAMERAS line each.

const Client: GDScript = preload("res://addons/camstream/camstream_client.gd")

var clients: Array = []
var names: Array = []


func _initialize() -> void:
	_run.call_deferred()


func _run() -> void:
	var base: String = OS.get_cmdline_user_args()[0]
	var timeout_s: float = float(OS.get_cmdline_user_args()[1])
	for how in ["property", "path", "bare"]:
		var c: Node = Client.new()
		c.autostart = false
		c.match_target_size = false
		c.url = base + ("rear?fps=10" if how == "path" else "")
		if how == "property":
			c.camera = "rear"
		root.add_child(c)
		var got: Array = [""]
		c.metadata_received.connect(
			func(m: Dictionary) -> void: got[0] = str(m.get("camera_name", ""))
		)
		clients.append(c)
		names.append(got)
		c.start()
	var deadline: int = Time.get_ticks_msec() + int(timeout_s * 1000)
	for i in clients.size():
		var c: Node = clients[i]
		while c.frames_received < 3:
			if Time.get_ticks_msec() > deadline:
				print("CAMERAS FAILED %d: %s" % [i, c.status])
				quit(1)
				return
			await process_frame
		var corner: Color = c.image.get_pixel(24, 24)
		print("CAMERAS %d name=%s size=%dx%d corner=%d,%d,%d url=%s" % [
			i, names[i][0], c.image.get_width(), c.image.get_height(),
			roundi(corner.r8 / 64.0), roundi(corner.g8 / 64.0), roundi(corner.b8 / 64.0),
			Client.camera_url(c.url, c.camera)])
		c.stop()
	quit(0)
"""


def test_the_addon_takes_a_camera_by_name_or_by_path(
    godot: str, godot_home: dict[str, str], project: Path,  # noqa: F811 - fixtures
) -> None:
    webcams = {name: FakeWebcam(mark=mark, dht_less_every=0, truncated_every=0)
               for mark, name in enumerate(("front", "rear"))}
    (project / "cameras_test.gd").write_text(SCRIPT)
    with Streamer(
        sources={
            "front": CameraConfig(0, capture_factory=webcams["front"].factory),
            "rear": CameraConfig(0, capture_factory=webcams["rear"].factory, width=1280,
                                 height=720),
        },
        port=0,
    ) as server:
        result = run_godot(godot, godot_home, [
            "--path", str(project), "--script", "res://cameras_test.gd", "--", server.url,
            str(TIMEOUT * 2)])
    out = result.stdout
    assert "CAMERAS FAILED" not in out and result.returncode == 0, out
    lines = dict(re.findall(r"^CAMERAS (\d) (.*)$", out, re.MULTILINE))

    def corner(mark: int) -> str:  # MARKS are BGR; Godot reads RGB, in quarters of 255
        b, g, r = MARKS[mark]
        return f"{round(r / 64)},{round(g / 64)},{round(b / 64)}"

    port = server.port
    assert lines["0"] == (f"name=rear size=1280x720 corner={corner(1)} "
                          f"url=ws://127.0.0.1:{port}/rear"), out
    assert lines["1"] == (f"name=rear size=1280x720 corner={corner(1)} "
                          f"url=ws://127.0.0.1:{port}/rear?fps=10"), out
    assert lines["2"] == (f"name=front size=640x480 corner={corner(0)} "
                          f"url=ws://127.0.0.1:{port}/"), out
