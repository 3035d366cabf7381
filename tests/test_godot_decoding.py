"""The Godot addon keeps the game's main thread free: decoding on worker threads, stale frames
never decoded, bounded work and memory when the game stalls, the size asked for following the
target on screen.

Real headless Godot 4 (as in ``test_godot.py``, whose fixtures and helpers these tests use)
against a real ``Streamer("push")`` fed pre-encoded, webcam-like 1920x1080 JPEGs at 30 fps by a
thread. The GDScript drivers print lines the tests wait for; where the server's view matters
(the size it sends), the test reads ``Streamer.stats()`` while the driver waits for a go-ahead
file the test writes.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conftest import SLACK, wait_until
from test_godot import (  # noqa: F401 (fixtures)
    RUN_TIMEOUT,
    godot,
    godot_home,
    godot_process,
    project,
    push_streamer,
    run_example,
)

if TYPE_CHECKING:
    from camstream import Streamer

# Decodes while the game stalls: the one running when it began, and the one whose picture
# waits for the game when it ends.
MAX_DECODES_PER_STALL = 2


def noisy_jpegs(width: int, height: int, count: int = 6) -> list[bytes]:
    """Quality-80 JPEGs of a gradient with sensor-like noise, like a webcam's (~270 KB at
    1920x1080), each one different."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(19)
    y, x = np.mgrid[0:height, 0:width]
    base = np.dstack([x * 255 // width, y * 255 // height, (x + y) * 127 // width])
    frames = [np.clip(base + rng.normal(0, 8, base.shape), 0, 255) for _ in range(count)]
    return [
        cv2.imencode(".jpg", f.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
        for f in frames
    ]


def jpeg_camera(
    width: int = 1920, height: int = 1080, fps: float = 30.0
) -> contextlib.AbstractContextManager[Streamer]:
    """A push-mode Streamer fed pre-encoded JPEGs (passed through untouched) at ``fps``."""
    return push_streamer(noisy_jpegs(width, height), fps, jpeg=True)


def fields_of(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


# The drivers' wait: each script sets `tag` (its output prefix), `c` (the client) and
# `wait_s` (the last command-line argument: the test's timeout, scaled like the suite's).
UNTIL = """

func _until(condition: Callable, what: String) -> void:
	var deadline: int = Time.get_ticks_msec() + int(wait_s * 1000)
	while not condition.call():
		if Time.get_ticks_msec() > deadline:
			print("%s FAILED waiting for %s; status: %s" % [tag, what, c.status])
			quit(1)
			return
		await process_frame
"""


# 1. A 1080p30 stream: decoded off the main thread, in order, and a stalled game

DECODE_SCRIPT = (
    """\
extends SceneTree
# Watches a 1080p30 stream through CamstreamClient, then stalls the game three times
# for a second (OS.delay_msec on the main thread). Prints DECODE lines.

const Client: GDScript = preload("res://addons/camstream/camstream_client.gd")

var tag: String = "DECODE"
var wait_s: float = float(OS.get_cmdline_user_args()[-1])
var c: Node
var seqs: Array[int] = []


func _initialize() -> void:
	_run.call_deferred()


func _run() -> void:
	c = Client.new()
	c.autostart = false
	c.url = OS.get_cmdline_user_args()[0]
	c.config = {"frame_info": true}
	root.add_child(c)
	c.frame_received.connect(_on_frame)
	c.start()
	await _until(func() -> bool: return c.frames_decoded >= 60, "60 frames")
	var size: Vector2i = c.texture.get_size()
	print("DECODE streamed frames=%d size=%dx%d errors=%d thread=%s latency_ms=%d" % [
		c.frames_decoded, size.x, size.y, c.decode_errors, c.using_thread,
		roundi(c.latency_ms)])
	for i in 3:
		await process_frame
		var before: Array[int] = _counters()
		OS.delay_msec(1000)  # the game stalls; the client's thread does not
		await process_frame  # the client takes what its thread did meanwhile
		var after: Array[int] = _counters()
		print("DECODE stall=%d received=%d decodes=%d dropped=%d static_kb=%d" % [
			i + 1, after[0] - before[0], after[1] - before[1], after[2] - before[2],
			OS.get_static_memory_usage() / 1024])
		await _until(func() -> bool: return c.frames_decoded > after[3] + 15, "recovery")
	var in_order: bool = true
	for i in range(1, seqs.size()):
		in_order = in_order and seqs[i] > seqs[i - 1]
	print("DECODE done shown=%d in_order=%s errors=%d" % [seqs.size(), in_order, c.decode_errors])
	c.stop()
	await _until(func() -> bool: return c.state == Client.State.STOPPED, "stopped")
	quit(0)


func _on_frame(_texture: ImageTexture) -> void:
	seqs.append(int(c.last_frame_info.seq))


func _counters() -> Array[int]:
	return [c.frames_received, c._decodes, c.frames_dropped, c.frames_decoded]

"""
    + UNTIL
)


def test_1080p30_decoded_off_the_main_thread_in_order_and_stalls_stay_bounded(
    godot: str, godot_home: dict[str, str], project: Path  # noqa: F811
) -> None:
    """No decode errors, frames shown in order, stale frames dropped without being decoded,
    and three one-second stalls of the game neither queue decodes nor grow memory."""
    (project / "decode_test.gd").write_text(DECODE_SCRIPT)
    with jpeg_camera() as server:
        args = ["--path", str(project), "--script", "res://decode_test.gd", "--", server.url]
        args.append(str(RUN_TIMEOUT))
        with godot_process(godot, godot_home, args) as proc:
            streamed = fields_of(proc.wait_for(r"^DECODE (streamed|FAILED)", RUN_TIMEOUT))
            stalls, rss = [], []
            for _ in range(3):
                stalls.append(fields_of(proc.wait_for(r"^DECODE (stall|FAILED)", RUN_TIMEOUT)))
                rss.append(rss_kb(proc.proc.pid))
            done = fields_of(proc.wait_for(r"^DECODE (done|FAILED)", RUN_TIMEOUT))
            assert proc.finish() == 0, proc.output
    out = proc.output
    assert "DECODE FAILED" not in out and "SCRIPT ERROR" not in out, out
    assert streamed["size"] == "1920x1080" and streamed["errors"] == "0", out
    assert streamed["thread"] == "true", out
    # Frame info and the pong's server clock give the capture-to-upload latency (same machine).
    assert -100 < int(streamed["latency_ms"]) < 10_000 * SLACK, out
    for stall in stalls:
        # The client's thread kept reading during the stall (so nothing piled up in the socket)
        # but decoded one frame at most: the last one it decoded waits for the game, and no
        # other decode starts meanwhile. Every other frame was dropped before any decode.
        received, decodes = int(stall["received"]), int(stall["decodes"])
        assert received >= 10 / SLACK, out  # ~30 in the 1 s stall on an idle machine
        assert decodes <= MAX_DECODES_PER_STALL, out
        assert int(stall["dropped"]) >= received - decodes - 1, out
    # Memory: no growth from stall to stall beyond a few 1080p pictures' worth (6 MB each).
    static = [int(stall["static_kb"]) for stall in stalls]
    assert static[2] - static[0] < 24 * 1024, (static, out)
    assert rss[2] - rss[0] < 48 * 1024, (rss, out)
    assert done["in_order"] == "true" and done["errors"] == "0", out


# 2. The size asked for follows the target on screen

RESIZE_SCRIPT = (
    """\
extends SceneTree
# CamstreamClient with a 640x360 target, shrunk to 320x180 in 12 steps, grown to nearly the
# source's size (full size asked for), then back to 640x360 with match_target_size off.
# Prints RESIZE lines; after each "ready" it waits for the file <dir>/next<N>.

const Client: GDScript = preload("res://addons/camstream/camstream_client.gd")

var tag: String = "RESIZE"
var wait_s: float = float(OS.get_cmdline_user_args()[-1])
var c: Node
var rect: TextureRect
var metadata: int = 0
var folder: String = ""


func _initialize() -> void:
	_run.call_deferred()


func _run() -> void:
	folder = OS.get_cmdline_user_args()[1]
	rect = TextureRect.new()
	rect.expand_mode = TextureRect.EXPAND_IGNORE_SIZE
	rect.size = Vector2(640, 360)
	root.add_child(rect)
	c = Client.new()
	c.autostart = false
	c.url = OS.get_cmdline_user_args()[0]
	c.target = rect
	c.resize_debounce_s = 1.0  # long enough that a slow frame cannot end the resize early
	root.add_child(c)
	c.metadata_received.connect(func(_m: Dictionary) -> void: metadata += 1)
	c.start()
	await _until(func() -> bool: return _shown() == Vector2i(640, 360), "640x360 frames")
	await _ready_then_wait(1)

	var announced: int = metadata
	for i in 12:  # the window is being dragged: a new size every frame
		rect.size = Vector2(640 - i * 320 / 11.0, 360 - i * 180 / 11.0)
		await process_frame
	await _until(func() -> bool: return _shown() == Vector2i(320, 180), "320x180 frames")
	await create_timer(1.0).timeout  # a late config would show up here
	print("RESIZE metadata_during_resize=%d" % (metadata - announced))
	await _ready_then_wait(2)

	rect.size = Vector2(1760, 990)  # 92 % of the source: its own JPEGs, untouched
	await _until(func() -> bool: return _shown() == Vector2i(1920, 1080), "full-size frames")
	await _ready_then_wait(3)

	rect.size = Vector2(640, 360)
	c.match_target_size = false  # full size is one property away
	await create_timer(1.5).timeout  # (past the debounce: no box may be asked for now)
	await _ready_then_wait(4)
	c.stop()
	await _until(func() -> bool: return c.state == Client.State.STOPPED, "stopped")
	quit(0)


func _shown() -> Vector2i:
	return Vector2i.ZERO if c.texture == null else Vector2i(c.texture.get_size())


func _ready_then_wait(step: int) -> void:
	var shown: Vector2i = _shown()
	print("RESIZE ready=%d shown=%dx%d requested=%dx%d" % [
		step, shown.x, shown.y, c.requested_size.x, c.requested_size.y])
	await _until(func() -> bool: return FileAccess.file_exists(folder + "/next%d" % step),
		"the test's go-ahead %d" % step)

"""
    + UNTIL
)


def test_resizing_the_target_changes_the_size_the_server_sends(
    godot: str, godot_home: dict[str, str], project: Path, tmp_path: Path  # noqa: F811
) -> None:
    """The box asked for is the target's size rounded up to 16 px, sent once per resize (after
    the debounce); a target of nearly the source's size asks for the full size (the camera's
    own JPEGs, no encode), and so does ``match_target_size = false``."""
    (project / "resize_test.gd").write_text(RESIZE_SCRIPT)

    def server_box(server: Streamer) -> tuple[Any, Any]:
        clients = server.stats()["clients"]
        return (clients[0]["width"], clients[0]["height"]) if clients else ("none", "none")

    with jpeg_camera() as server:
        args = ["--path", str(project), "--script", "res://resize_test.gd", "--"]
        args += [server.url, str(tmp_path), str(RUN_TIMEOUT)]
        with godot_process(godot, godot_home, args) as proc:
            seen = []
            boxes = [(640, 368), (320, 192), (None, None), (None, None)]
            for step, box in enumerate(boxes, start=1):
                line = proc.wait_for(rf"^RESIZE (ready={step}|FAILED)", RUN_TIMEOUT)
                seen.append(fields_of(line))
                assert wait_until(lambda box=box: server_box(server) == box), (
                    server_box(server), box, proc.output)
                (tmp_path / f"next{step}").touch()
            assert proc.finish() == 0, proc.output
    out = proc.output
    assert "RESIZE FAILED" not in out and "SCRIPT ERROR" not in out, out
    assert seen[0]["shown"] == "640x360" and seen[0]["requested"] == "640x368", out
    assert seen[1]["shown"] == "320x180" and seen[1]["requested"] == "320x192", out
    assert seen[2]["shown"] == "1920x1080" and seen[2]["requested"] == "0x0", out
    assert seen[3]["shown"] == "1920x1080" and seen[3]["requested"] == "0x0", out
    # Twelve sizes in twelve frames, then still: one config, so one metadata answer.
    assert "RESIZE metadata_during_resize=1" in out, out


# 3. Without worker threads (as on a Web export without thread support)


def test_main_thread_fallback_still_streams(
    godot: str, godot_home: dict[str, str], project: Path  # noqa: F811
) -> None:
    """``use_thread = false`` (what a build without threads gets): same stream, read
    and decoded in ``_process``. A real no-threads build is not available to the tests."""
    with jpeg_camera(640, 480) as server:
        result, outcome, fields = run_example(
            godot, godot_home, project, server.url, "--main-thread", "--quit-after-frames=20"
        )
    assert result.returncode == 0 and outcome == "OK", result.stdout
    assert fields["thread"] == "false", result.stdout
    assert fields["size"] == "640x480" and fields["decode_errors"] == "0", result.stdout
