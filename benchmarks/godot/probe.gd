extends Control
## Frame-time probe: a 60 fps "game" that hosts a CamstreamClient showing a stream in a
## full-window TextureRect, and measures what that costs the main thread.
##
## Run by benchmarks/godot_frame_time.py (which copies an addon next to this file). Arguments
## after [code]--[/code]:
## - [code]--url=URL[/code]: the server; without it the client is never started (the idle cost).
## - [code]--warmup=S[/code] (default 3), [code]--seconds=S[/code] (default 10): the window.
## - [code]--set=NAME:VALUE[/code] (repeatable): set a client property, if this addon has it
##   (so one probe runs old and new addons). [code]match_target_size[/code] is false unless set
##   here: the probe measures the stream at the source's size (and a headless window is 64x64
##   pixels, so the full-window target would ask for 64x36).
##
## Per game frame it records [code]Performance.TIME_PROCESS[/code] (Godot updates it once a
## second with the longest process step of that second) and its own measure of the frame's
## process step: from [signal SceneTree.process_frame] (emitted before any node's
## [code]_process[/code]) to this node's [code]_process[/code], which runs last
## ([member Node.process_priority] is the highest). With [code]--waits[/code], on Linux, it
## also records how long the main thread waited for a core during that span
## ([code]run_delay[/code] in [code]/proc/<pid>/task/<pid>/schedstat[/code], brought up to
## date whenever the thread gets a core back): on a machine busy with other work, that is the
## part of a long frame the game did not spend working (reading the file twice a frame adds
## ~0.1 ms of its own). It prints one line, [code]PROBE_RESULT {json}[/code], and quits.

const Client: GDScript = preload("res://addons/camstream/camstream_client.gd")

var _client: Node
var _url: String = ""
var _warmup_s: float = 3.0
var _seconds: float = 10.0
var _started_ms: int = 0
var _window_start_ms: int = -1
var _step_start_us: int = 0
var _wait_start_ns: int = 0
var _schedstat_path: String = ""
var _monitor_ms: PackedFloat32Array = PackedFloat32Array()
var _step_ms: PackedFloat32Array = PackedFloat32Array()
var _wait_ms: PackedFloat32Array = PackedFloat32Array()
var _at_start: Dictionary = {}
var _done: bool = false

@onready var _video: TextureRect = $Video


func _ready() -> void:
	Engine.max_fps = 60
	process_priority = 1000000  # this node's _process runs after every other node's
	var settings: Dictionary = {"match_target_size": false}
	for arg in OS.get_cmdline_user_args():
		var parts: PackedStringArray = arg.trim_prefix("--").split("=", true, 1)
		var value: String = parts[1] if parts.size() > 1 else ""
		match parts[0]:
			"url":
				_url = value
			"warmup":
				_warmup_s = float(value)
			"seconds":
				_seconds = float(value)
			"waits":
				var pid: int = OS.get_process_id()  # the main thread's id, on Linux
				_schedstat_path = "/proc/%d/task/%d/schedstat" % [pid, pid]
			"set":
				var pair: PackedStringArray = value.split(":", true, 1)
				settings[pair[0]] = str_to_var(pair[1]) if pair.size() > 1 else true
	_client = Client.new()
	_client.set("autostart", false)
	_client.set("target", _video)
	for key in settings:
		if key in _client:
			_client.set(key, settings[key])
		elif key != "match_target_size":
			print("PROBE note: this addon has no property %s" % key)
	add_child(_client)
	get_tree().process_frame.connect(_on_process_frame)
	_started_ms = Time.get_ticks_msec()
	if not _url.is_empty():
		_client.call("start", _url)


func _on_process_frame() -> void:
	_wait_start_ns = _run_delay_ns()
	_step_start_us = Time.get_ticks_usec()


func _process(_delta: float) -> void:
	if _done or _step_start_us == 0:
		return
	var now_ms: int = Time.get_ticks_msec()
	if _window_start_ms < 0:
		if now_ms - _started_ms >= _warmup_s * 1000.0:
			_window_start_ms = now_ms
			_at_start = _counters()
			print("PROBE_WINDOW")  # the driver samples the machine's CPU counters now
		return
	_step_ms.append((Time.get_ticks_usec() - _step_start_us) / 1000.0)
	_wait_ms.append((_run_delay_ns() - _wait_start_ns) / 1e6)
	_monitor_ms.append(Performance.get_monitor(Performance.TIME_PROCESS) * 1000.0)
	if now_ms - _window_start_ms >= _seconds * 1000.0:
		_finish(now_ms)


## Nanoseconds the main thread has spent waiting for a core so far (0 without --waits or
## /proc). The file is opened each time: a FileAccess kept open returns its first contents.
func _run_delay_ns() -> int:
	if _schedstat_path.is_empty():
		return 0
	var file: FileAccess = FileAccess.open(_schedstat_path, FileAccess.READ)
	return 0 if file == null else file.get_line().get_slice(" ", 1).to_int()


func _counters() -> Dictionary:
	var counters: Dictionary = {"static_memory": OS.get_static_memory_usage()}
	for key in ["frames_received", "frames_decoded", "frames_dropped", "decode_errors"]:
		counters[key] = int(_client.get(key))
	return counters


func _finish(now_ms: int) -> void:
	_done = true
	var at_end: Dictionary = _counters()
	var deltas: Dictionary = {}
	for key in at_end:
		deltas[key] = at_end[key] - _at_start[key]
	var texture: Texture2D = _video.texture
	var shown: Vector2i = Vector2i.ZERO if texture == null else Vector2i(texture.get_size())
	var result: Dictionary = {
		"window_s": (now_ms - _window_start_ms) / 1000.0,
		"game_frames": _step_ms.size(),
		"step_ms": Array(_step_ms),
		"monitor_ms": Array(_monitor_ms),
		"wait_ms": Array(_wait_ms),
		"counters": deltas,
		"static_memory_end": at_end["static_memory"],
		"shown": "%dx%d" % [shown.x, shown.y],
		"target": "%dx%d" % [int(_video.size.x), int(_video.size.y)],
		"status": str(_client.get("status")),
		"version": Engine.get_version_info()["string"],
	}
	print("PROBE_RESULT " + JSON.stringify(result))
	if not _url.is_empty():
		_client.call("stop")
	get_tree().quit(0)
