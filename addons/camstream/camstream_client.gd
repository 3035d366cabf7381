class_name CamstreamClient
extends Node
## Receives a camstream video stream over WebSocket and shows it as a texture.
##
## Add this node to any scene, set [member url] (and optionally [member target]) and run:
## it connects by itself, decodes the JPEG frames into one [ImageTexture] that stays the same
## object for the whole session, and reconnects with exponential backoff when the connection
## drops. Text messages from the server arrive as [signal metadata_received] and
## [signal event_received]; [method set_config], [method pause], [method resume],
## [method request_snapshot] and [method ping] talk back to the server.
##
## The server's application can send data with each frame (boxes a detector found in it, a
## pose, a score): with [member receive_data] on, [signal frame_data_received] carries it right
## before the [signal frame_received] of the frame it belongs to ([member last_frame_data]
## holds it meanwhile). [method send_app] talks to the application, whose answers arrive as
## [signal app_message_received].
##
## The game's main thread only handles the text messages and uploads the newest decoded
## picture ([method ImageTexture.update]: no new allocation while the size stays the same).
## Connecting, reading the socket and decoding the JPEGs run on a thread of the client's own
## (see [code]stream_receiver.gd[/code]), one decode at a time: a frame that is already stale
## when a newer one arrives is never decoded, and while the game has not taken the last decoded
## picture no other decode starts ([member frames_dropped]). So a stalled game or a slow decoder
## never builds up latency, work or memory. Where the engine has no threads (a Web export
## without thread support) all this runs in [method Node._process] instead, and a warning says
## so once.
##
## With a [member target], the client asks the server for frames no larger than the target is
## shown on screen ([member match_target_size]), and follows its size as it changes.
##
## Tested with Godot 4.6; uses only APIs present since 4.0 (the heartbeat needs 4.4 and is
## skipped on older versions).

## The connection opened (the WebSocket handshake completed).
signal connection_opened
## A connection or connection attempt ended. [param code] is the WebSocket close code the
## server sent (1000 normal, 1001 server going away, 1008 policy violation such as a bad token,
## 1009 message too big, 1013 server full, ...) or -1 if the connection was refused, dropped,
## failed TLS, timed out during the handshake or missed a heartbeat.
signal connection_closed(code: int, reason: String)
## The server described the stream (sent first on every connection and again after changes).
signal metadata_received(metadata: Dictionary)
## A new frame was decoded into [member texture] (always the same [ImageTexture] object).
signal frame_received(texture: ImageTexture)
## The application's data for the frame shown now: [param value] (any JSON value: a
## [Dictionary], an [Array], a [String], a [float], a [bool]) and that frame's [param seq].
## Emitted right before that frame's [signal frame_received] (the texture already shows it),
## only for frames that carry data, only with [member receive_data] on. A frame that is never
## shown (a newer one replaced it before its decode) never emits its data either.
signal frame_data_received(value: Variant, seq: int)
## A message from the server's application ([code]{"type": "app", "value": ...}[/code]): an
## answer to [method send_app], or a broadcast to the clients that receive data or have talked
## to it.
signal app_message_received(value: Variant)
## A snapshot requested with [method request_snapshot] arrived, decoded into a new [Image].
signal snapshot_received(image: Image, info: Dictionary)
## Any other JSON message from the server: [code]camera_lost[/code],
## [code]camera_restored[/code], [code]error[/code], [code]pong[/code], [code]snapshot[/code],
## [code]frame[/code] and types this client does not know yet. The dictionary is the parsed
## message; a text message that is not a JSON object arrives as
## [code]{"type": "invalid", "text": ...}[/code]. A [code]frame[/code] message comes with its
## frame, just before its [signal frame_received], and only for frames that are shown.
signal event_received(event: Dictionary)
## [member status] changed: a one-line, human-readable description for a status label.
signal status_changed(text: String)

enum State {
	STOPPED,  ## Not connected and not trying to.
	CONNECTING,  ## Waiting for the WebSocket handshake.
	OPEN,  ## Connected: receiving frames.
	CLOSING,  ## [method stop] was called; waiting for the server to confirm the close.
	WAITING,  ## Connection lost; waiting [member reconnect_min_s]..[member reconnect_max_s].
}

## Upper limit for [member inbound_buffer_size] when it grows after a 1009 close.
const MAX_INBOUND_BUFFER_SIZE: int = 64 * 1024 * 1024
## Descriptions of common close codes, shown in [member status] when the server gave no reason.
const CLOSE_CODE_NAMES: Dictionary = {
	1000: "normal closure",
	1001: "server going away",
	1002: "protocol error",
	1003: "unsupported data",
	1007: "invalid data",
	1008: "policy violation",
	1009: "message too big",
	1011: "server error",
	1013: "server full, try again later",
}
## Close codes that mean "this client is doing something wrong": retrying will not help, so
## the client stops instead of reconnecting (1002 protocol error, 1003 unsupported data,
## 1007 invalid data, 1008 policy violation such as a bad token).
const FATAL_CLOSE_CODES: Array[int] = [1002, 1003, 1007, 1008]
## Sizes asked for with [member match_target_size] are rounded up to a multiple of this (a
## layout change of a few pixels costs no new stream size) and kept within the server's
## 16..8192 range.
const SIZE_STEP: int = 16
const StreamReceiver: GDScript = preload("stream_receiver.gd")

## Server address, [code]ws://host:port/[/code] or [code]wss://host:port/[/code].
@export var url: String = "ws://127.0.0.1:8765/"
## Connect automatically when the node enters the tree (deferred by one frame, so a parent's
## [code]_ready()[/code] can still change [member url]). Otherwise call [method start].
@export var autostart: bool = true
## If set, its [member TextureRect.texture] is set to [member texture] on the first frame, and
## (with [member match_target_size]) its size on screen is the size asked for.
@export var target: TextureRect
## Ask the server for frames that fit the [member target]'s size on screen, in pixels (rounded
## up to [constant SIZE_STEP]), instead of the source's full size: a 320x180 minimap then
## neither downloads nor decodes 1080p. Follows the target's size, [member resize_debounce_s]
## after it stops changing. Has no effect without a target or while [member config] has a
## [code]width[/code] or [code]height[/code]. Set it to false for the full size (sent at once
## when connected). The server never enlarges frames, and a target at least as large as the
## source gets the source's own JPEGs.
@export var match_target_size: bool = true:
	set(value):
		match_target_size = value
		if not value:
			_request_size(Vector2i.ZERO)
## Access token for servers started with one. Sent as an [code]Authorization: Bearer[/code]
## header, or as the [code]token[/code] query parameter if [member token_in_query] is on or on
## the Web, where browsers do not let scripts set WebSocket headers.
@export var token: String = ""
## Send [member token] as a URL query parameter instead of a header (visible in server logs).
@export var token_in_query: bool = false
## Stream settings to request on every connection, sent as URL query parameters, e.g.
## [code]{"fps": 15, "width": 320, "height": 240, "quality": 70, "max_bytes": 65535}[/code].
## Without [code]max_bytes[/code] the client sends [code]max_bytes=0[/code] (no limit: the
## full frames; the server's default for clients that say nothing is 65535 bytes).
## [method set_config] updates it.
@export var config: Dictionary = {}
## Ask for the application's data with each frame ([signal frame_data_received]) and its
## broadcasts ([code]?data=1[/code]). Changing it while connected tells the server at once.
@export var receive_data: bool = false:
	set(value):
		receive_data = value
		if state == State.OPEN:
			send_message({"type": "config", "data": value})

@export_group("Threads and sizes")
## Connect, read the socket and decode JPEG frames on a thread of this client's own: the main
## thread only handles messages and uploads pictures. Off, or where the engine has no threads:
## all in [method Node._process] on the main thread. Applies from the next [method start].
@export var use_thread: bool = true
## Seconds the [member target]'s size must stay the same before a new size is asked for.
@export var resize_debounce_s: float = 0.3

@export_group("Limits and timeouts")
## Largest WebSocket message this client accepts, in bytes; applied before each connection.
## Godot's default is 65535, too small for most JPEG frames: a bigger message makes Godot close
## the connection with code 1009. 4 MiB covers 1080p at high quality. After a 1009 close the
## value doubles (up to [constant MAX_INBOUND_BUFFER_SIZE]) before reconnecting.
## Godot allocates about 3 times this value per connection.
@export var inbound_buffer_size: int = 4 * 1024 * 1024
## Give up a connection attempt after this many seconds without a completed handshake
## ([WebSocketPeer] itself waits forever).
@export var connect_timeout_s: float = 5.0
## Reconnect after the connection drops or cannot be made.
@export var auto_reconnect: bool = true
## First reconnect delay in seconds; it doubles after each failed attempt up to
## [member reconnect_max_s] (each delay gets up to 25 % random jitter) and is reset when a
## connection opens.
@export var reconnect_min_s: float = 0.5
## Longest reconnect delay in seconds; also the delay after a 1013 "try again later" close.
@export var reconnect_max_s: float = 10.0
## Send a WebSocket ping every this many seconds and drop the connection (code -1) if the
## previous one got no answer, so a dead network is noticed. 0 disables. Needs Godot 4.4+
## ([member WebSocketPeer.heartbeat_interval]); ignored on older versions and on the Web.
@export var heartbeat_interval_s: float = 10.0
## Optional PEM file with the CA certificate (or self-signed certificate) to trust for
## [code]wss://[/code] URLs, e.g. [code]res://certs/camstream.crt[/code]. Ignored when
## [member tls_options] is set. Empty: the system's trusted CAs are used.
@export_file("*.crt", "*.pem") var trusted_ca_path: String = ""

## TLS settings for [code]wss://[/code], e.g.
## [code]TLSOptions.client(X509Certificate.load(path))[/code]. Null: [member trusted_ca_path]
## or the system's CA list. [code]TLSOptions.client_unsafe()[/code] skips all checks: testing
## only.
var tls_options: TLSOptions = null

## The texture frames are decoded into. Null until the first frame; then always the same
## object (resized in place when the stream's size changes).
var texture: ImageTexture = null
## The frame shown now (in [member texture]): a new [Image] for each frame, never modified.
var image: Image = Image.new()
## The last metadata message ({} before the first one).
var metadata: Dictionary = {}
## Current state, see [enum State].
var state: State = State.STOPPED
## One-line description of the current state, e.g. for a status label.
var status: String = "stopped"
## Frames received (binary messages) since [method start].
var frames_received: int = 0
## Frames decoded and shown since [method start].
var frames_decoded: int = 0
## Frames received but never shown: each was replaced by a newer frame before a decode started
## on it, so it was never decoded (while the game stalls, all but one or two of the frames
## that arrive meanwhile).
var frames_dropped: int = 0
## Binary messages that were not valid JPEG files.
var decode_errors: int = 0
## Close code of the last connection (-1 if refused, dropped or timed out; 0 before any).
var last_close_code: int = 0
## Close reason of the last connection, as sent by the server or written by this client.
var last_close_reason: String = ""
## Round-trip time in seconds measured by the last [method ping] (negative before one).
var last_rtt_s: float = -1.0
## Whether the socket is read and frames decoded on a thread of this client's own (see
## [member use_thread]).
var using_thread: bool = false
## The size asked for because of [member match_target_size] (zero: none, the full size or the
## [member config]'s).
var requested_size: Vector2i = Vector2i.ZERO
## The [code]frame[/code] info message of the frame shown now ({} unless
## [code]set_config({"frame_info": true})[/code]).
var last_frame_info: Dictionary = {}
## The application's data for the frame shown now (null if it has none; see
## [member receive_data]), and that frame's seq (-1 without data).
var last_frame_data: Variant = null
var last_frame_data_seq: int = -1
## Milliseconds from the capture of the frame shown now to its upload here (its
## [code]captured_at[/code] on the server's clock, corrected by the clock offset measured with
## the last [method ping]; exact for a server on this machine). Negative without frame info.
var latency_ms: float = -1.0

## Adaptive delivery, as the last [member metadata] reports it (read-only; servers that do not
## adapt leave these at their defaults). Whether the server adapts this stream to the link;
## [code]set_config({"adapt": false})[/code] turns it off.
var adapt: bool = false
## The rung of the quality ladder in use: 0 is the top (what this client asked for), k is k
## steps below it.
var rung: int = 0
## How many rungs this client's ladder has (0: unknown).
var rungs: int = 0
## The server's estimate of the rate the link drains, in kbit/s (negative: unknown).
var link_kbps: float = -1.0
## The server's smoothed round-trip time to this client, in ms (negative: unknown).
var rtt_ms: float = -1.0
## Why the last rung change: [code]"link"[/code], [code]"backlog"[/code], [code]"probe"[/code],
## [code]"probe_failed"[/code], [code]"config"[/code] ("" before one).
var adapt_reason: String = ""

var _receiver: StreamReceiver = null  # created by the first start()
var _generation: int = 0  # of the connection; events of older ones are ignored
var _decodes: int = 0  # JPEG decodes done since start() (frames and snapshots)
var _backoff_s: float = 0.5
var _state_since_ms: int = 0
var _retry_at_ms: int = 0
var _timed_out: bool = false
var _close_forced: bool = false
var _stopping: bool = false
var _paused: bool = false
var _texture_size: Vector2i = Vector2i.ZERO
var _texture_format: Image.Format = Image.FORMAT_MAX
var _clock_offset_s: float = 0.0  # server clock minus ours, from the last pong
var _size_candidate: Vector2i = Vector2i.ZERO
var _size_candidate_since_ms: int = 0


func _ready() -> void:
	if autostart:
		_autostart.call_deferred()


func _process(_delta: float) -> void:
	poll()


func _notification(what: int) -> void:
	if what != NOTIFICATION_PREDELETE:
		return
	if _receiver == null:
		return
	# On deletion (not on leaving the tree, so reparenting keeps the stream): say goodbye, so
	# the server frees this client's slot now rather than at its next failed send.
	if state == State.OPEN:
		_receiver.close(1001, "client going away")
	_receiver.shutdown()  # sends that, and waits for the thread (at most one decode)


## Connects to [param new_url] (or [member url]); if already connected, drops that connection
## first. Resets the frame counters.
func start(new_url: String = "") -> void:
	if not new_url.is_empty():
		url = new_url
	frames_received = 0
	frames_decoded = 0
	frames_dropped = 0
	decode_errors = 0
	_decodes = 0
	# Builds without threads (Godot 4.3+ "nothreads", e.g. a Web export without thread support)
	# say so with a feature tag; every 4.0-4.2 build has threads.
	var threads_available: bool = not OS.has_feature("nothreads")
	if _receiver != null and _receiver.threaded != (use_thread and threads_available):
		_receiver.shutdown()  # use_thread changed: a new receiver
		_receiver = null
	if _receiver == null:
		_receiver = StreamReceiver.new()
		_receiver.threaded = use_thread and threads_available
	using_thread = _receiver.threaded
	if use_thread and not threads_available:
		_warn_once(
			"this Godot build has no threads: frames are read and decoded on the main thread"
		)
	_stopping = false
	_backoff_s = reconnect_min_s
	_connect(true)


## Closes the connection (code 1000) and stops reconnecting; frames not shown yet are not
## shown. Idempotent.
func stop() -> void:
	_stopping = true
	match state:
		State.OPEN:
			_receiver.close(1000, "client stop")
			_set_state(State.CLOSING, "closing")
		State.CONNECTING:
			_receiver.close(-1, "")
			_generation += 1  # whatever that connection still reports is ignored
			_set_state(State.STOPPED, "stopped")
		State.WAITING:
			_set_state(State.STOPPED, "stopped")


## Whether the connection is open.
func is_open() -> bool:
	return state == State.OPEN


## Updates the stream settings: sends a [code]config[/code] message now (if connected) and
## remembers the keys for reconnections. Keys: [code]fps[/code], [code]width[/code],
## [code]height[/code], [code]quality[/code], [code]max_bytes[/code], [code]frame_info[/code];
## [code]null[/code] clears [code]width[/code] or [code]height[/code] (the source's size) or
## [code]max_bytes[/code] (no limit, as this client asks by default). The server answers with
## new metadata. Returns the result of sending (OK if not connected).
func set_config(changes: Dictionary) -> Error:
	for key in changes.keys():
		if changes[key] == null:
			config.erase(key)  # null: no box, no byte limit
		else:
			config[key] = changes[key]
	var message: Dictionary = changes.duplicate()
	if requested_size != Vector2i.ZERO and (changes.has("width") or changes.has("height")):
		# An explicit size replaces the target's: both sides of the box must change.
		requested_size = Vector2i.ZERO
		message["width"] = config.get("width")
		message["height"] = config.get("height")
	if state != State.OPEN:
		return OK
	if changes.get("frame_info") == true:
		ping()  # the pong gives the server's clock, for latency_ms
	message["type"] = "config"
	return send_message(message)


## Asks the server to stop sending frames to this client (kept across reconnections).
func pause() -> Error:
	_paused = true
	return send_message({"type": "pause"}) if state == State.OPEN else OK


## Asks the server to send frames again after [method pause].
func resume() -> Error:
	_paused = false
	return send_message({"type": "resume"}) if state == State.OPEN else OK


## Asks for one full-quality frame; it arrives as [signal snapshot_received].
func request_snapshot(quality: int = 95) -> Error:
	return send_message({"type": "snapshot", "quality": quality})


## Sends a ping; the answer updates [member last_rtt_s] and arrives as a [code]pong[/code]
## [signal event_received].
func ping() -> Error:
	return send_message({"type": "ping", "t": Time.get_ticks_usec() / 1e6})


## Sends [param value] (any JSON value) to the server's application as an [code]app[/code]
## message; its answers arrive as [signal app_message_received]. A server without an
## application handler answers with an [code]error[/code] event. Returns ERR_UNAVAILABLE if not
## connected, else OK.
func send_app(value: Variant) -> Error:
	return send_message({"type": "app", "value": value})


## Sends [param message] as a JSON text message (queued: the receiving thread sends it within
## a few milliseconds). Never sends binary: servers refuse it (1003). Returns ERR_UNAVAILABLE
## if not connected, else OK.
func send_message(message: Dictionary) -> Error:
	if state != State.OPEN:
		return ERR_UNAVAILABLE
	_receiver.send_text(JSON.stringify(message))
	return OK


## Counters and connection details as one dictionary, for display or logging.
func get_stats() -> Dictionary:
	return {
		"state": State.keys()[state],
		"frames_received": frames_received,
		"frames_decoded": frames_decoded,
		"frames_dropped": frames_dropped,
		"decode_errors": decode_errors,
		"inbound_buffer_size": inbound_buffer_size,
		"last_close_code": last_close_code,
		"last_close_reason": last_close_reason,
		"last_rtt_s": last_rtt_s,
		"using_thread": using_thread,
		"requested_size": requested_size,
		"latency_ms": latency_ms,
		"adapt": adapt,
		"rung": rung,
		"rungs": rungs,
		"link_kbps": link_kbps,
		"rtt_ms": rtt_ms,
		"adapt_reason": adapt_reason,
	}


## Advances the connection: called every frame from [method Node._process]. Call it yourself
## if you disable processing for this node.
func poll() -> void:
	if _receiver == null:
		return  # never started
	if state == State.WAITING and Time.get_ticks_msec() >= _retry_at_ms:
		_connect(false)
	var timed_out: bool = _elapsed_s() > connect_timeout_s
	if state == State.CONNECTING and timed_out and not _timed_out:
		_timed_out = true
		_receiver.close(-1, "")  # Godot has no handshake timeout of its own
	elif state == State.CLOSING and timed_out and not _close_forced:
		_close_forced = true
		_receiver.close(-1, "")  # the server never confirmed our close
	var taken: Dictionary = _receiver.take()
	for event in taken["events"]:
		if event[0] == _generation:
			_handle_event(event)
	var frame: Array = taken["frame"]
	if not frame.is_empty():
		if frame[0] == _generation and state == State.OPEN:
			_deliver(frame[1], frame[2], frame[3])
		else:
			_receiver.retire(frame[1])
	var counters: Dictionary = taken["counters"]
	frames_received = counters["received"]
	frames_dropped = counters["dropped"]
	decode_errors = counters["errors"]
	_decodes = counters["decodes"]
	if state == State.OPEN and match_target_size:
		_follow_target_size()


## One event of the receiver, [code][generation, kind, ...][/code], of the current connection.
func _handle_event(event: Array) -> void:
	match event[1]:
		StreamReceiver.Event.OPENED:
			if state == State.CONNECTING:
				_on_open()
		StreamReceiver.Event.TEXT:
			if state == State.OPEN or state == State.CLOSING:
				_handle_message(event[2], event[3])
		StreamReceiver.Event.SNAPSHOT:
			snapshot_received.emit(event[2], event[3])
		StreamReceiver.Event.CLOSED:
			_on_closed(event[2], event[3])
		StreamReceiver.Event.CONNECT_FAILED:
			_finish_connection(-1, "cannot connect: " + error_string(event[2]))


func _autostart() -> void:
	if state == State.STOPPED and not _stopping:  # unless a script already started or stopped it
		start()


## Connects (again); [param reset_counters] on [method start], not on reconnections.
func _connect(reset_counters: bool) -> void:
	var use_query_token: bool = token_in_query or OS.has_feature("web")
	var headers: PackedStringArray = PackedStringArray()
	if not token.is_empty() and not use_query_token:
		headers.append("Authorization: Bearer " + token)
	var query: Dictionary = config.duplicate()
	if not query.has("max_bytes"):
		# This client takes frames up to inbound_buffer_size (and grows it after a 1009), so it
		# asks for the source's full frames; servers send clients that say nothing at most
		# 65535-byte frames, Godot's default limit.
		query["max_bytes"] = 0
	if not token.is_empty() and use_query_token:
		query["token"] = token
	if receive_data and not query.has("data"):
		query["data"] = true
	requested_size = Vector2i.ZERO  # a new connection starts with the URL's settings
	var box: Vector2i = _target_box()
	if box != Vector2i.ZERO:
		query["width"] = box.x
		query["height"] = box.y
		requested_size = box
	_size_candidate = requested_size
	_timed_out = false
	_close_forced = false
	_generation += 1
	# Both buffer settings apply when the handshake completes: they go with the connection.
	var options: Dictionary = {
		"url": _with_query(url, query),
		"tls": _tls_options(),
		"headers": headers,
		"inbound_buffer_size": inbound_buffer_size,
		"heartbeat_interval": heartbeat_interval_s,
		"reset_counters": reset_counters,
	}
	_set_state(State.CONNECTING, "connecting to " + url)
	_receiver.connect_to(_generation, options)


func _on_open() -> void:
	_backoff_s = reconnect_min_s
	_set_state(State.OPEN, "connected to " + url)
	if _paused:
		send_message({"type": "pause"})
	if config.get("frame_info") == true:
		ping()  # the pong gives the server's clock, for latency_ms
	connection_opened.emit()


func _on_closed(code: int, reason: String) -> void:
	if _timed_out:
		reason = "no handshake after %.1f s" % connect_timeout_s
	elif code == -1 and reason.is_empty():
		reason = "connection refused or lost"
	_finish_connection(code, reason)


func _finish_connection(code: int, reason: String) -> void:
	last_close_code = code
	last_close_reason = reason
	var shown_reason: String = reason
	if shown_reason.is_empty():
		shown_reason = CLOSE_CODE_NAMES.get(code, "no reason given")
	var description: String = "closed (code %d: %s)" % [code, shown_reason]
	if code == 1009 and inbound_buffer_size < MAX_INBOUND_BUFFER_SIZE:
		inbound_buffer_size = mini(inbound_buffer_size * 2, MAX_INBOUND_BUFFER_SIZE)
		description += ", inbound_buffer_size raised to %d" % inbound_buffer_size
	if _stopping or not auto_reconnect or code in FATAL_CLOSE_CODES:
		_set_state(State.STOPPED, description)
	else:
		var delay_s: float = _backoff_s
		if code == 1013:  # server full: no point in knocking every half second
			delay_s = reconnect_max_s
		delay_s *= randf_range(1.0, 1.25)
		_backoff_s = minf(_backoff_s * 2.0, reconnect_max_s)
		_retry_at_ms = Time.get_ticks_msec() + int(delay_s * 1000.0)
		_set_state(State.WAITING, description + ", retrying in %.1f s" % delay_s)
	connection_closed.emit(code, reason)


## Handles a text message given as text (parses it).
func _handle_text(text: String) -> void:
	var json: JSON = JSON.new()
	_handle_message(text, json.data if json.parse(text) == OK else null)


## Handles a text message: [param parsed] is its JSON value (null if it is not JSON).
func _handle_message(text: String, parsed: Variant) -> void:
	if not parsed is Dictionary:
		event_received.emit({"type": "invalid", "text": text})
		return
	var message: Dictionary = parsed
	var type: String = str(message.get("type", ""))
	# Servers written from the original protocol send metadata without a "type" field.
	if type == "metadata" or (type.is_empty() and message.has("width") and message.has("height")):
		metadata = message
		_read_adaptation(message)
		metadata_received.emit(message)
		return
	if type == "app":
		app_message_received.emit(message.get("value"))
		return
	if type == "pong" and message.get("t") is float:
		last_rtt_s = Time.get_ticks_usec() / 1e6 - float(message["t"])
		var server_time: Variant = message.get("server_time")
		if server_time is float:
			# The server read its clock about halfway through the round trip.
			_clock_offset_s = server_time - (Time.get_unix_time_from_system() - last_rtt_s / 2.0)
	event_received.emit(message)


## The adaptive-delivery fields of a metadata message; a missing or malformed field means
## "unknown" (servers before adaptive delivery send none).
func _read_adaptation(message: Dictionary) -> void:
	var value: Variant = message.get("adapt")
	adapt = value is bool and value
	rung = _int_or(message.get("rung"), 0)
	rungs = _int_or(message.get("rungs"), 0)
	link_kbps = _float_or(message.get("link_kbps"), -1.0)
	rtt_ms = _float_or(message.get("rtt_ms"), -1.0)
	value = message.get("adapt_reason")
	adapt_reason = value if value is String else ""


## Shows a decoded frame; [param info] and [param data] are its [code]frame[/code] and
## [code]data[/code] messages ({} without).
func _deliver(decoded: Image, info: Dictionary, data: Dictionary) -> void:
	_receiver.retire(image)  # freed on the receiving thread, not here
	image = decoded
	last_frame_info = info
	last_frame_data = data.get("value")
	last_frame_data_seq = _int_or(data.get("seq"), -1)
	if not info.is_empty():
		event_received.emit(info)  # frame messages arrive with their frame, if it is shown
	var captured_at: Variant = info.get("captured_at")
	if captured_at is float:
		var now_s: float = Time.get_unix_time_from_system() + _clock_offset_s
		latency_ms = (now_s - captured_at) * 1000.0
	else:
		latency_ms = -1.0
	var size: Vector2i = image.get_size()
	var format: Image.Format = image.get_format()
	if texture == null:
		texture = ImageTexture.create_from_image(image)
	elif size == _texture_size and format == _texture_format:
		texture.update(image)  # same size and format: upload in place, no new allocation
	else:
		texture.set_image(image)  # new size or format: reallocates, same object and RID
	_texture_size = size
	_texture_format = format
	frames_decoded += 1
	if target != null and target.texture != texture:
		target.texture = texture
	if not data.is_empty():
		frame_data_received.emit(last_frame_data, last_frame_data_seq)
	frame_received.emit(texture)


## The [member target]'s size on screen as a box for the server: rounded up to
## [constant SIZE_STEP], within 16..8192 (headless, where there is no screen: its size in the
## viewport). Zero: no box (no target, or [member config] has a
## size). [member requested_size] while the target cannot be measured (hidden, zero-sized).
func _target_box() -> Vector2i:
	if (
		not match_target_size
		or not is_instance_valid(target)
		or not target.is_inside_tree()
		or config.has("width")
		or config.has("height")
	):
		return Vector2i.ZERO
	var to_screen: Transform2D = target.get_global_transform_with_canvas()
	if DisplayServer.get_name() != "headless":  # a headless "window" is 64x64 pixels
		to_screen = target.get_viewport().get_final_transform() * to_screen
	var pixels: Vector2 = to_screen.basis_xform(target.size).abs()
	if not target.is_visible_in_tree() or pixels.x < 1.0 or pixels.y < 1.0:
		return requested_size
	var box: Vector2i = (Vector2i(pixels.ceil()) + Vector2i.ONE * (SIZE_STEP - 1)) / SIZE_STEP
	return (box * SIZE_STEP).clamp(Vector2i(16, 16), Vector2i(8192, 8192))


## Asks for the target's new size once it has stayed the same for [member resize_debounce_s].
func _follow_target_size() -> void:
	var box: Vector2i = _target_box()
	var now_ms: int = Time.get_ticks_msec()
	if box != _size_candidate:
		_size_candidate = box
		_size_candidate_since_ms = now_ms
	elif box != requested_size and now_ms - _size_candidate_since_ms >= resize_debounce_s * 1000:
		_request_size(box)


## Sends [param box] as the stream's size (zero: the full size, or the [member config]'s).
func _request_size(box: Vector2i) -> void:
	if box == requested_size:
		return
	requested_size = box
	_size_candidate = box
	if state != State.OPEN:
		return
	if box == Vector2i.ZERO:
		send_message(
			{"type": "config", "width": config.get("width"), "height": config.get("height")}
		)
	else:
		send_message({"type": "config", "width": box.x, "height": box.y})


func _tls_options() -> TLSOptions:
	if tls_options != null:
		return tls_options
	if trusted_ca_path.is_empty():
		return null
	var ca: X509Certificate = X509Certificate.new()
	if ca.load(trusted_ca_path) != OK:
		push_warning("CamstreamClient: cannot load trusted_ca_path '%s'" % trusted_ca_path)
		return null
	return TLSOptions.client(ca)


func _set_state(new_state: State, text: String) -> void:
	state = new_state
	_state_since_ms = Time.get_ticks_msec()
	if text != status:
		status = text
		status_changed.emit(text)


func _elapsed_s() -> float:
	return (Time.get_ticks_msec() - _state_since_ms) / 1000.0


func _warn_once(text: String) -> void:
	# Once per game, not per client: Engine metadata works on 4.0 (static vars need 4.1).
	var key: StringName = &"camstream_warned_" + text.md5_text()
	if not Engine.has_meta(key):
		Engine.set_meta(key, true)
		push_warning("CamstreamClient: " + text)


static func _int_or(value: Variant, fallback: int) -> int:
	return int(value) if value is int or value is float else fallback


static func _float_or(value: Variant, fallback: float) -> float:
	return float(value) if value is int or value is float else fallback


static func _with_query(base: String, query: Dictionary) -> String:
	if query.is_empty():
		return base
	var parts: PackedStringArray = PackedStringArray()
	for key in query.keys():
		var value: Variant = query[key]
		if value == null:
			continue
		var text: String = str(value).to_lower() if value is bool else str(value)
		if value is float and is_equal_approx(value, roundf(value)):
			text = str(int(value))
		parts.append("%s=%s" % [str(key).uri_encode(), text.uri_encode()])
	var separator: String = "&" if "?" in base else "?"
	return base + separator + "&".join(parts)
