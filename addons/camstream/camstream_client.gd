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
## Everything runs in [method Node._process] on the main thread: [method WebSocketPeer.poll],
## then all waiting packets are read and only the newest frame is decoded (older ones are
## counted in [member frames_dropped]), so a slow frame rate never builds up latency.
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
## A snapshot requested with [method request_snapshot] arrived, decoded into a new [Image].
signal snapshot_received(image: Image, info: Dictionary)
## Any other JSON message from the server: [code]camera_lost[/code],
## [code]camera_restored[/code], [code]error[/code], [code]frame[/code], [code]pong[/code] and
## types this client does not know yet. The dictionary is the parsed message; a text message
## that is not a JSON object arrives as [code]{"type": "invalid", "text": ...}[/code].
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

## Server address, [code]ws://host:port/[/code] or [code]wss://host:port/[/code].
@export var url: String = "ws://127.0.0.1:8765/"
## Connect automatically when the node enters the tree (deferred by one frame, so a parent's
## [code]_ready()[/code] can still change [member url]). Otherwise call [method start].
@export var autostart: bool = true
## If set, its [member TextureRect.texture] is set to [member texture] on the first frame.
@export var target: TextureRect
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
## The last decoded frame. Reused for every frame: copy it if you keep it.
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
## Frames skipped because a newer one arrived in the same [method Node._process] call.
var frames_dropped: int = 0
## Binary messages that were not valid JPEG files.
var decode_errors: int = 0
## Close code of the last connection (-1 if refused, dropped or timed out; 0 before any).
var last_close_code: int = 0
## Close reason of the last connection, as sent by the server or written by this client.
var last_close_reason: String = ""
## Round-trip time in seconds measured by the last [method ping] (negative before one).
var last_rtt_s: float = -1.0

var _ws: WebSocketPeer = WebSocketPeer.new()
var _backoff_s: float = 0.5
var _state_since_ms: int = 0
var _retry_at_ms: int = 0
var _timed_out: bool = false
var _stopping: bool = false
var _paused: bool = false
var _snapshot_info: Dictionary = {}
var _snapshot_pending: bool = false
var _texture_size: Vector2i = Vector2i.ZERO
var _texture_format: Image.Format = Image.FORMAT_MAX


func _ready() -> void:
	if autostart:
		_autostart.call_deferred()


func _process(_delta: float) -> void:
	poll()


func _notification(what: int) -> void:
	# On deletion (not on leaving the tree, so reparenting keeps the stream): say goodbye, so
	# the server frees this client's slot now rather than at its next failed send.
	if what == NOTIFICATION_PREDELETE and state == State.OPEN:
		_ws.close(1001, "client going away")
		_ws.poll()


## Connects to [param new_url] (or [member url]); if already connected, drops that connection
## first. Resets the frame counters.
func start(new_url: String = "") -> void:
	if not new_url.is_empty():
		url = new_url
	if _ws.get_ready_state() != WebSocketPeer.STATE_CLOSED:
		_ws.close(-1)  # negative code: drop at once, no close handshake
	frames_received = 0
	frames_decoded = 0
	frames_dropped = 0
	decode_errors = 0
	_stopping = false
	_backoff_s = reconnect_min_s
	_connect()


## Closes the connection (code 1000) and stops reconnecting. Idempotent.
func stop() -> void:
	_stopping = true
	match state:
		State.OPEN:
			_ws.close(1000, "client stop")
			_set_state(State.CLOSING, "closing")
		State.CONNECTING:
			_ws.close(-1)
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
	if state != State.OPEN:
		return OK
	var message: Dictionary = changes.duplicate()
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


## Sends [param message] as a JSON text message. Never sends binary: servers refuse it (1003).
func send_message(message: Dictionary) -> Error:
	if state != State.OPEN:
		return ERR_UNAVAILABLE
	return _ws.send_text(JSON.stringify(message))


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
	}


## Advances the connection: called every frame from [method Node._process]. Call it yourself
## if you disable processing for this node.
func poll() -> void:
	if state == State.STOPPED:
		return
	if state == State.WAITING:
		if Time.get_ticks_msec() >= _retry_at_ms:
			_connect()
		return
	_ws.poll()
	var ws_state: WebSocketPeer.State = _ws.get_ready_state()
	if ws_state == WebSocketPeer.STATE_CONNECTING and _elapsed_s() > connect_timeout_s:
		_timed_out = true
		_ws.close(-1)
		ws_state = _ws.get_ready_state()
	elif state == State.CLOSING and _elapsed_s() > connect_timeout_s:
		_ws.close(-1)  # the server never confirmed our close
		ws_state = _ws.get_ready_state()
	if ws_state == WebSocketPeer.STATE_OPEN:
		if state == State.CONNECTING:
			_on_open()
		_read_packets()
	elif ws_state == WebSocketPeer.STATE_CLOSED:
		_on_closed()


func _autostart() -> void:
	if state == State.STOPPED and not _stopping:  # unless a script already started or stopped it
		start()


func _connect() -> void:
	# Both settings apply when the handshake completes, so they must be set before connecting.
	_ws.inbound_buffer_size = inbound_buffer_size
	if "heartbeat_interval" in _ws:  # Godot 4.4+; a typed access would not parse on 4.3
		_ws.set("heartbeat_interval", heartbeat_interval_s)
	var use_query_token: bool = token_in_query or OS.has_feature("web")
	var headers: PackedStringArray = PackedStringArray()
	if not token.is_empty() and not use_query_token:
		headers.append("Authorization: Bearer " + token)
	_ws.handshake_headers = headers
	var query: Dictionary = config.duplicate()
	if not query.has("max_bytes"):
		# This client takes frames up to inbound_buffer_size (and grows it after a 1009), so it
		# asks for the source's full frames; servers send clients that say nothing at most
		# 65535-byte frames, Godot's default limit.
		query["max_bytes"] = 0
	if not token.is_empty() and use_query_token:
		query["token"] = token
	_timed_out = false
	_snapshot_pending = false
	var err: Error = _ws.connect_to_url(_with_query(url, query), _tls_options())
	if err != OK:
		_set_state(State.CONNECTING, "connecting to " + url)
		_finish_connection(-1, "cannot connect: " + error_string(err))
		return
	_set_state(State.CONNECTING, "connecting to " + url)


func _on_open() -> void:
	_backoff_s = reconnect_min_s
	_set_state(State.OPEN, "connected to " + url)
	if _paused:
		send_message({"type": "pause"})
	connection_opened.emit()


func _on_closed() -> void:
	var code: int = _ws.get_close_code()
	var reason: String = _ws.get_close_reason()
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


func _read_packets() -> void:
	var newest: PackedByteArray = PackedByteArray()
	var have_frame: bool = false
	while _ws.get_available_packet_count() > 0:
		var packet: PackedByteArray = _ws.get_packet()
		if _ws.was_string_packet():
			_handle_text(packet.get_string_from_utf8())
		elif _snapshot_pending:
			_snapshot_pending = false
			_handle_snapshot(packet)
		else:
			frames_received += 1
			if have_frame:
				frames_dropped += 1
			newest = packet
			have_frame = true
	if have_frame:
		_show_frame(newest)


func _handle_text(text: String) -> void:
	var json: JSON = JSON.new()
	if json.parse(text) != OK or not json.data is Dictionary:
		event_received.emit({"type": "invalid", "text": text})
		return
	var message: Dictionary = json.data
	var type: String = str(message.get("type", ""))
	# Servers written from the original protocol send metadata without a "type" field.
	if type == "metadata" or (type.is_empty() and message.has("width") and message.has("height")):
		metadata = message
		metadata_received.emit(message)
		return
	if type == "snapshot":
		_snapshot_info = message
		_snapshot_pending = true
	elif type == "pong" and message.get("t") is float:
		last_rtt_s = Time.get_ticks_usec() / 1e6 - float(message["t"])
	event_received.emit(message)


func _show_frame(jpeg: PackedByteArray) -> void:
	if image.load_jpg_from_buffer(jpeg) != OK:
		decode_errors += 1
		return
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
	frame_received.emit(texture)


func _handle_snapshot(jpeg: PackedByteArray) -> void:
	var snapshot: Image = Image.new()
	if snapshot.load_jpg_from_buffer(jpeg) != OK:
		decode_errors += 1
		return
	snapshot_received.emit(snapshot, _snapshot_info)


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
