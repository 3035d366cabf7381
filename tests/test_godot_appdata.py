"""Issue 20 in real headless Godot 4: the addon's ``frame_data_received`` with the frame it
belongs to, ``send_app`` and ``app_message_received``.

A push Streamer publishes frames whose grey level says which frame each is, with data saying
the same (as ``tests/test_app_data.py``); Godot clients of different rates and sizes check, for
every frame they show, that its data came right before it (same seq, same level), and a client
that did not ask gets none. Uses ``test_godot.py``'s fixtures (the Godot binary, its home, a
copy of the example project).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import TIMEOUT
from helpers import running
from test_app_data import DataPublisher
from test_detector_example import detector
from test_godot import (  # noqa: F401 (fixtures)
    godot,
    godot_home,
    project,
    run_example,
    run_godot,
)
from test_godot_decoding import UNTIL

from camstream import AppClient, Streamer

APPDATA_SCRIPT = (
    """\
extends SceneTree
# Three CamstreamClients on one server: "full" (data, frame_info), "small" (data, 10 fps,
# 80 px wide: its own encode), "plain" (no data). Checks each shown frame against its data and
# prints APPDATA lines.

const Client: GDScript = preload("res://addons/camstream/camstream_client.gd")

var tag: String = "APPDATA"
var wait_s: float = float(OS.get_cmdline_user_args()[-1])
var c: Node
var stats: Dictionary = {}
var announced: Dictionary = {}  # name -> [value, seq] from frame_data_received, not shown yet
var replies: Array = []


func _initialize() -> void:
	_run.call_deferred()


func _run() -> void:
	var url: String = OS.get_cmdline_user_args()[0]
	c = _add("full", url, {"frame_info": true}, true)
	_add("small", url, {"fps": 10, "width": 80}, true)
	_add("plain", url, {"frame_info": true}, false)
	await _until(
		func() -> bool: return (
			stats["full"]["frames"] >= 40
			and stats["small"]["frames"] >= 8
			and stats["plain"]["frames"] >= 20
		),
		"frames"
	)
	c.send_app({"toggle": "detector"})
	await _until(func() -> bool: return replies.size() > 0, "the application's answer")
	for name in ["full", "small", "plain"]:
		var s: Dictionary = stats[name]
		var counts: Array = [s.frames, s.with_data, s.data_signals, s.mismatch, s.unannounced]
		print(
			(
				"APPDATA %s frames=%d with_data=%d data_signals=%d mismatch=%d unannounced=%d"
				% ([name] + counts)
			)
			+ " missing=%d" % s.missing
		)
	print("APPDATA reply " + JSON.stringify(replies[0]))
	quit(0)


func _add(name: String, url: String, config: Dictionary, data: bool) -> Node:
	var client: Node = Client.new()
	client.autostart = false
	client.url = url
	client.config = config
	client.receive_data = data
	client.match_target_size = false
	root.add_child(client)
	stats[name] = {
		"frames": 0, "with_data": 0, "data_signals": 0, "mismatch": 0, "unannounced": 0,
		"missing": 0
	}
	client.frame_data_received.connect(
		func(value: Variant, seq: int) -> void: _on_data(name, value, seq)
	)
	client.frame_received.connect(func(_t: ImageTexture) -> void: _on_frame(name, client))
	client.app_message_received.connect(func(value: Variant) -> void: replies.append(value))
	client.start()
	return client


func _on_data(name: String, value: Variant, seq: int) -> void:
	stats[name]["data_signals"] += 1
	announced[name] = [value, seq]


func _on_frame(name: String, client: Node) -> void:
	var s: Dictionary = stats[name]
	s["frames"] += 1
	var size: Vector2i = client.image.get_size()
	var level: float = client.image.get_pixel(size.x / 2, size.y / 2).r * 255.0
	var signal_args: Variant = announced.get(name)
	announced.erase(name)
	if client.last_frame_data == null:
		if signal_args != null:
			s["mismatch"] += 1
		if posmod(roundi((level - 20.0) / 4.0), 50) % 5 != 4:
			s["missing"] += 1  # a frame published with data arrived without it
		return
	s["with_data"] += 1
	var data: Dictionary = client.last_frame_data
	if signal_args == null or signal_args[1] != client.last_frame_data_seq:
		s["unannounced"] += 1
	elif signal_args[0] != data:
		s["mismatch"] += 1
	if absf(level - float(data["level"])) > 3.0:
		s["mismatch"] += 1
	var info: Dictionary = client.last_frame_info
	if not info.is_empty() and int(info["seq"]) != client.last_frame_data_seq:
		s["mismatch"] += 1
"""
    + UNTIL  # test_godot_decoding's wait: it reads tag, c and wait_s
)

LINE = re.compile(
    r"APPDATA (\w+) frames=(\d+) with_data=(\d+) data_signals=(\d+) mismatch=(\d+) "
    r"unannounced=(\d+) missing=(\d+)"
)


@pytest.mark.parametrize("fast", [True, False], ids=["fanout", "own-thread"])
def test_godot_clients_get_each_frames_data_with_that_frame(
    godot: str, godot_home: dict[str, str], project: Path, fast: bool  # noqa: F811
) -> None:
    script = project / "appdata_test.gd"
    script.write_text(APPDATA_SCRIPT)

    def on_message(client: AppClient, value: object) -> None:
        client.send({"echo": value})

    with Streamer("push", port=0, fps=30, fast_fanout=fast, on_message=on_message) as server:
        with running(DataPublisher(server, 30.0, pad=200)):
            result = run_godot(
                godot, godot_home,
                ["--path", str(project), "--script", "res://appdata_test.gd", "--",
                 server.url, str(12 * TIMEOUT)],
            )
    out = result.stdout
    assert "APPDATA FAILED" not in out, out
    assert result.returncode == 0, out
    assert "SCRIPT ERROR" not in out, out
    found = {m[0]: [int(n) for n in m[1:]] for m in LINE.findall(out)}
    assert set(found) == {"full", "small", "plain"}, out
    for name in ("full", "small"):
        frames, with_data, signals, mismatch, unannounced, missing = found[name]
        assert with_data >= frames // 2 and signals == with_data, (name, out)
        assert mismatch == unannounced == missing == 0, (name, out)
    frames, with_data, signals, *_ = found["plain"]
    assert frames >= 20 and with_data == signals == 0, out
    reply = re.search(r"APPDATA reply (.*)", out)
    assert reply and json.loads(reply[1]) == {"echo": {"toggle": "detector"}}, out


OVERLAY_SCRIPT = """\
extends SceneTree
# box_overlay.gd's mapping from the frame's pixels to the shown picture, without a server.

const Overlay: GDScript = preload("res://box_overlay.gd")


func _initialize() -> void:
	print("OVERLAY fitted " + _r(Overlay.fitted_rect(Vector2(640, 480), Vector2(1000, 500))))
	print("OVERLAY tall " + _r(Overlay.fitted_rect(Vector2(640, 480), Vector2(320, 600))))
	var overlay: Control = Overlay.new()
	overlay.show_data({
		"boxes": [{"x": 320, "y": 240, "w": 64, "h": 48, "label": "moving"}, {"x": "bad"}, 7],
		"detecting": true, "width": 640, "height": 480
	})
	var shown: Rect2 = Overlay.fitted_rect(Vector2(320, 240), Vector2(1000, 500))
	var rects: Array = overlay.box_rects(shown)
	print("OVERLAY boxes %s detecting=%s" % [",".join(rects.map(_r)), overlay.detecting])
	overlay.show_data(null)
	print("OVERLAY cleared %d" % overlay.box_rects(shown).size())
	overlay.free()
	quit(0)


func _r(rect: Rect2) -> String:
	return "(%.1f %.1f %.1f %.1f)" % [rect.position.x, rect.position.y, rect.size.x, rect.size.y]
"""


def test_the_overlay_maps_boxes_to_the_shown_picture(
    godot: str, godot_home: dict[str, str], project: Path  # noqa: F811
) -> None:
    (project / "overlay_test.gd").write_text(OVERLAY_SCRIPT)
    result = run_godot(godot, godot_home, ["--path", str(project), "--script",
                                           "res://overlay_test.gd"])
    out = result.stdout
    assert result.returncode == 0 and "SCRIPT ERROR" not in out, out
    # 640x480 in 1000x500: 666.7x500, centred (x from 166.7).
    assert "OVERLAY fitted (166.7 0.0 666.7 500.0)" in out, out
    assert "OVERLAY tall (0.0 180.0 320.0 240.0)" in out, out
    # The box is in the 640x480 frame's pixels, whatever size the client receives (320x240
    # here): its centre maps to the centre of the shown picture; bad boxes are left out.
    assert "OVERLAY boxes (500.0 250.0 66.7 50.0) detecting=true" in out, out
    assert "OVERLAY cleared 0" in out, out


def test_the_godot_example_draws_the_detector_boxes_and_toggles_it(
    godot: str, godot_home: dict[str, str], project: Path  # noqa: F811
) -> None:
    """examples/detector.py and examples/godot -- --data, as the README runs them."""
    with detector() as url:
        result, outcome, fields = run_example(
            godot, godot_home, project, url, "--data", "--quit-after-frames=60",
            "--toggle-after-frames=45",
        )
    assert outcome == "OK" and result.returncode == 0, result.stdout
    assert int(fields["data_frames"]) >= 45, fields
    assert int(fields["boxes_max"]) == 1, fields  # the ball
    assert fields["detector_off_seen"] == "true", fields
    assert int(fields["app_messages"]) >= 2, fields  # the broadcast and the answer
    assert 'camstream: app {"detecting":false,"ok":true}' in result.stdout, result.stdout
