extends Control
## camstream example: the live stream in a TextureRect, with a status line on top.
##
## The CamstreamClient node does all the work (its [code]target[/code] is the Video
## TextureRect); this script only shows its status and offers command-line hooks for tests.
## Arguments go after [code]--[/code]:
## [codeblock]
## godot --path examples/godot -- --url=ws://127.0.0.1:8765/
## godot --headless --path examples/godot -- --url=ws://... --quit-after-frames=30 --timeout=10
## [/codeblock]
## - [code]--url=URL[/code]: the server (default: the node's url, ws://127.0.0.1:8765/).
## - [code]--token=SECRET[/code], [code]--token-in-query[/code]: access token, as an
##   Authorization header (default) or as the ?token= query parameter.
## - [code]--config=JSON[/code]: stream settings, e.g. [code]{"fps":15,"width":320}[/code]
##   (frame_info is on unless it says [code]"frame_info":false[/code]: the status line shows
##   the latency).
## - [code]--full-size[/code]: the source's full size, not the Video rect's size on screen.
## - [code]--main-thread[/code]: read the socket and decode on the main thread (to compare).
## - [code]--inbound=BYTES[/code]: inbound_buffer_size (default 4 MiB).
## - [code]--ca=PEM[/code]: CA to trust for wss; [code]--insecure-tls[/code]: trust any
##   certificate (testing only).
## - [code]--quit-after-frames=N[/code]: after N decoded frames print
##   [code]CAMSTREAM_SMOKE OK ...[/code] and exit 0; if the client gives up (e.g. a 1008 close)
##   print [code]CAMSTREAM_SMOKE STOPPED ...[/code] and exit 1.
## - [code]--timeout=S[/code]: print [code]CAMSTREAM_SMOKE TIMEOUT ...[/code], exit 1.
## - [code]--screenshot=PATH.png[/code]: save the window before quitting (needs a display).
## - [code]--data[/code]: receive the application's data with each frame and draw its boxes over
##   the video (run [code]python examples/detector.py[/code]); [kbd]D[/kbd] toggles the
##   detector. [code]--toggle-after-frames=N[/code] toggles it once N frames with data were
##   shown; with [code]--quit-after-frames[/code] the run then also waits for the detector's
##   answer and a frame it sent with the detector off.

# The addon's script by path rather than by its global name CamstreamClient: the global name is
# registered by the editor's first scan of the project, so `godot --path examples/godot` on a
# fresh clone (no .godot/ folder yet) could not resolve it. Your own scripts can just use
# CamstreamClient once the project has been opened in the editor.
const Client: GDScript = preload("res://addons/camstream/camstream_client.gd")
const Overlay: GDScript = preload("res://box_overlay.gd")
const SMOKE_PREFIX: String = "CAMSTREAM_SMOKE"
const FORMAT_NAMES: PackedStringArray = ["L8", "LA8", "R8", "RG8", "RGB8", "RGBA8"]

var _quit_after_frames: int = 0
var _screenshot_path: String = ""
var _started_ms: int = 0
var _first_frame_ms: int = 0
var _rate_frames: int = 0
var _rate_since_ms: int = 0
var _rate_fps: float = 0.0
var _finishing: bool = false
var _toggle_after_frames: int = 0
var _toggled: bool = false
var _data_frames: int = 0
var _app_messages: int = 0
var _max_boxes: int = 0
var _off_seen: bool = false  # a frame sent with the detector off, after our toggle

@onready var _status: Label = %Status
@onready var _client: Client = $CamstreamClient
@onready var _overlay: Overlay = %Overlay


func _ready() -> void:
	_started_ms = Time.get_ticks_msec()
	var args: Dictionary = _parse_user_args()
	# The client connects one frame after _ready, so its settings can still be changed here.
	_client.url = str(args.get("url", _client.url))
	_client.token = str(args.get("token", _client.token))
	_client.token_in_query = args.has("token-in-query") or _client.token_in_query
	if args.has("config"):
		var parsed: Variant = JSON.parse_string(str(args["config"]))
		if parsed is Dictionary:
			_client.config = parsed
		else:
			push_error("--config is not a JSON object: %s" % args["config"])
	if not _client.config.has("frame_info"):
		_client.config["frame_info"] = true  # a frame message before each JPEG: the latency
	_client.match_target_size = not args.has("full-size")
	_client.use_thread = not args.has("main-thread")
	if args.has("inbound"):
		_client.inbound_buffer_size = int(args["inbound"])
	if args.has("ca"):
		_client.trusted_ca_path = str(args["ca"])
	if args.has("insecure-tls"):
		_client.tls_options = TLSOptions.client_unsafe()
	_client.receive_data = args.has("data") or _client.receive_data
	_toggle_after_frames = int(args.get("toggle-after-frames", 0))
	_quit_after_frames = int(args.get("quit-after-frames", 0))
	_screenshot_path = str(args.get("screenshot", ""))
	var timeout_s: float = float(args.get("timeout", 0.0))
	if timeout_s > 0.0:
		get_tree().create_timer(timeout_s).timeout.connect(_on_timeout)

	_client.status_changed.connect(_on_status_changed)
	_client.metadata_received.connect(_on_metadata_received)
	_client.frame_received.connect(_on_frame_received)
	_client.event_received.connect(_on_event_received)
	_client.connection_closed.connect(_on_connection_closed)
	_client.frame_data_received.connect(_on_frame_data_received)
	_client.app_message_received.connect(_on_app_message_received)
	_update_label()


func _process(_delta: float) -> void:
	var now_ms: int = Time.get_ticks_msec()
	if now_ms - _rate_since_ms >= 1000:
		_rate_fps = _rate_frames * 1000.0 / (now_ms - _rate_since_ms)
		_rate_frames = 0
		_rate_since_ms = now_ms
		_update_label()


func _on_status_changed(text: String) -> void:
	print("camstream: ", text)
	_update_label()


func _on_metadata_received(metadata: Dictionary) -> void:
	print("camstream: metadata ", JSON.stringify(metadata))
	_update_label()


func _on_event_received(event: Dictionary) -> void:
	if event.get("type") != "frame":  # one before every JPEG: too many to print
		print("camstream: event ", JSON.stringify(event))


func _on_connection_closed(code: int, reason: String) -> void:
	print("camstream: connection closed, code %d, reason '%s'" % [code, reason])
	# The client gave up (e.g. 1008 bad token): in test mode, report it now.
	if _quit_after_frames > 0 and _client.state == Client.State.STOPPED:
		_finish("STOPPED")


func _on_frame_received(_texture: ImageTexture) -> void:
	_rate_frames += 1
	if _first_frame_ms == 0:
		_first_frame_ms = Time.get_ticks_msec()
	if _client.last_frame_data == null:
		_overlay.show_data(null)  # boxes belong to their frame: none on this one
	var toggle_done: bool = _toggle_after_frames == 0 or (_app_messages > 0 and _off_seen)
	if _quit_after_frames > 0 and _client.frames_decoded >= _quit_after_frames and toggle_done:
		_finish("OK")


## The application's data of the frame about to be shown: its boxes go over it.
func _on_frame_data_received(value: Variant, _seq: int) -> void:
	_data_frames += 1
	_overlay.show_data(value)
	_max_boxes = maxi(_max_boxes, _overlay.boxes.size())
	if _toggled and _app_messages > 0 and not _overlay.detecting:
		_off_seen = true
	if _toggle_after_frames > 0 and not _toggled and _data_frames >= _toggle_after_frames:
		_toggled = true
		toggle_detection()


func _on_app_message_received(value: Variant) -> void:
	_app_messages += 1
	print("camstream: app ", JSON.stringify(value))
	_update_label()


## Asks the detector (examples/detector.py) to switch on or off; every viewer hears the answer.
func toggle_detection() -> Error:
	return _client.send_app({"toggle": "detect"})


func _unhandled_input(event: InputEvent) -> void:
	var key: InputEventKey = event as InputEventKey
	if key != null and key.pressed and not key.echo and key.keycode == KEY_D:
		toggle_detection()


func _on_timeout() -> void:
	_finish("TIMEOUT")


func _update_label() -> void:
	var text: String = _client.status
	var meta: Dictionary = _client.metadata
	if not meta.is_empty():
		var stream: String = (
			"stream %dx%d @ %s fps, quality %s"
			% [
				int(meta.get("width", 0)),
				int(meta.get("height", 0)),
				_number(meta.get("fps", 0)),
				_quality(meta.get("quality"))
			]
		)
		var shown: String = (
			"shown %.1f fps, %d frames, %d skipped"
			% [_rate_fps, _client.frames_decoded, _client.frames_dropped]
		)
		text += "\n%s | %s\n%s" % [stream, shown, delivery_text(_client)]
	if _client.receive_data:
		var boxes: int = _overlay.boxes.size()
		text += (
			"\ndetector %s, %d box%s (D toggles)"
			% ["on" if _overlay.detecting else "off", boxes, "" if boxes == 1 else "es"]
		)
	_status.text = text


## The status line's third line: where frames are decoded, the size asked for, the latency,
## and the adaptive state, e.g. [code]own thread | asked for 960x544 | latency 42 ms |
## adapting: rung 1 of 4 (link), link 2400 kbit/s, rtt 35 ms[/code].
static func delivery_text(client: Client) -> String:
	var parts: PackedStringArray = []
	parts.append("own thread" if client.using_thread else "main thread only")
	var asked: Vector2i = client.requested_size
	parts.append("full size" if asked == Vector2i.ZERO else "asked for %dx%d" % [asked.x, asked.y])
	if client.latency_ms >= 0.0:
		parts.append("latency %d ms" % roundi(client.latency_ms))
	if client.rungs > 0 or client.metadata.has("adapt"):
		parts.append(adapt_text(client))
	return " | ".join(parts)


## The adaptive state from the metadata, e.g. [code]adapting: rung 1 of 4 (link), link
## 2400 kbit/s, rtt 35 ms[/code] or [code]not adapting[/code].
static func adapt_text(client: Client) -> String:
	if not client.adapt:
		return "not adapting"
	var text: String = "adapting: rung %d of %d" % [client.rung, client.rungs]
	if not client.adapt_reason.is_empty():
		text += " (%s)" % client.adapt_reason
	if client.link_kbps >= 0.0:
		text += ", link %d kbit/s" % roundi(client.link_kbps)
	if client.rtt_ms >= 0.0:
		text += ", rtt %d ms" % roundi(client.rtt_ms)
	return text


## Prints the CAMSTREAM_SMOKE line, saves the screenshot if asked, closes and quits
## (exit code 0 for "OK", 1 otherwise).
func _finish(outcome: String) -> void:
	if _finishing:
		return
	_finishing = true
	var elapsed_s: float = (Time.get_ticks_msec() - _started_ms) / 1000.0
	var streaming_s: float = 0.0
	if _first_frame_ms > 0:
		streaming_s = (Time.get_ticks_msec() - _first_frame_ms) / 1000.0
	var size: Vector2i = _client.image.get_size()
	var format: int = _client.image.get_format()
	var format_name: String = FORMAT_NAMES[format] if format < FORMAT_NAMES.size() else str(format)
	if _client.image.is_empty():
		format_name = "none"
	var meta: Dictionary = _client.metadata
	var fps_in: float = (_client.frames_decoded - 1) / streaming_s if streaming_s > 0.0 else 0.0
	var fields: PackedStringArray = [
		SMOKE_PREFIX,
		outcome,
		"frames=%d" % _client.frames_decoded,
		"received=%d" % _client.frames_received,
		"dropped=%d" % _client.frames_dropped,
		"decode_errors=%d" % _client.decode_errors,
		"size=%dx%d" % [size.x, size.y],
		"format=%s" % format_name,
		"metadata=%dx%d" % [int(meta.get("width", 0)), int(meta.get("height", 0))],
		"fps_in=%.1f" % fps_in,
		"elapsed=%.2f" % elapsed_s,
		"inbound=%d" % _client.inbound_buffer_size,
		"thread=%s" % str(_client.using_thread).to_lower(),
		"requested=%dx%d" % [_client.requested_size.x, _client.requested_size.y],
		"latency_ms=%d" % roundi(_client.latency_ms),
		"close=%d" % _client.last_close_code,
		"data_frames=%d" % _data_frames,
		"boxes_max=%d" % _max_boxes,
		"app_messages=%d" % _app_messages,
		"detector_off_seen=%s" % str(_off_seen).to_lower(),
		"status='%s'" % _client.status,
	]
	print(" ".join(fields))
	if not _screenshot_path.is_empty():
		await _save_screenshot()
	# Close politely (code 1000) and give the server up to a second to confirm.
	if _client.is_open():
		_client.stop()
		var deadline_ms: int = Time.get_ticks_msec() + 1000
		while _client.state != Client.State.STOPPED and Time.get_ticks_msec() < deadline_ms:
			await get_tree().process_frame
	get_tree().quit(0 if outcome == "OK" else 1)


func _save_screenshot() -> void:
	_update_label()
	# Let the renderer draw the newest frame and label first.
	for i in 3:
		await RenderingServer.frame_post_draw
	var shot: Image = get_viewport().get_texture().get_image()
	if shot == null or shot.is_empty():
		printerr("camstream: no screenshot: run with a display (e.g. xvfb-run), not --headless")
		return
	var err: Error = shot.save_png(_screenshot_path)
	print("camstream: screenshot %s (%s)" % [_screenshot_path, error_string(err)])


## 30.0 -> "30", 7.5 -> "7.5".
## The metadata's quality: null means the camera's own JPEGs, passed through untouched.
static func _quality(value: Variant) -> String:
	return "as the source" if value == null else str(int(value))


static func _number(value: Variant) -> String:
	var number: float = float(value)
	return str(int(number)) if is_equal_approx(number, roundf(number)) else str(number)


## Arguments after "--" as a dictionary: "--name=value" -> {"name": "value"},
## "--flag" -> {"flag": ""}.
static func _parse_user_args() -> Dictionary:
	var args: Dictionary = {}
	for arg in OS.get_cmdline_user_args():
		var text: String = arg.trim_prefix("--")
		var eq: int = text.find("=")
		if eq >= 0:
			args[text.substr(0, eq)] = text.substr(eq + 1)
		else:
			args[text] = ""
	return args
