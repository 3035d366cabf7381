extends Node
## Connection debugging scene: prints every WebSocket state change, the type (text/binary) and
## size of every packet, and the close code and reason. Nothing else: no decoding, no
## reconnecting. It uses a bare WebSocketPeer, not the addon, to take the client out of the
## picture when something does not work.
## [codeblock]
## godot --headless --path examples/godot res://test_websocket.tscn -- --url=ws://127.0.0.1:8765/
## [/codeblock]
## Optional: [code]--inbound=BYTES[/code] (inbound_buffer_size; try 65535, Godot's default,
## with [code]?max_bytes=0[/code] in the URL and a large picture to see a 1009 close: without
## it the server keeps frames within 65535 bytes), [code]--quit-after-packets=N[/code] (close
## with 1000 after N packets),
## [code]--timeout=S[/code]. With either, the scene quits once the connection is closed:
## exit code 0 if it was closed after N packets, 1 otherwise.

const STATE_NAMES: PackedStringArray = ["CONNECTING", "OPEN", "CLOSING", "CLOSED"]

@export var url: String = "ws://127.0.0.1:8765/"
## Godot's default of 65535 bytes is too small for most full-size JPEG frames (close code 1009)
## once a client asks for them with [code]max_bytes=0[/code].
@export var inbound_buffer_size: int = 4 * 1024 * 1024

var _ws: WebSocketPeer = WebSocketPeer.new()
var _last_state: int = -1
var _packets: int = 0
var _quit_after_packets: int = 0
var _quit_when_closed: bool = false
var _done: bool = false


func _ready() -> void:
	for arg in OS.get_cmdline_user_args():
		var parts: PackedStringArray = arg.trim_prefix("--").split("=", true, 1)
		var value: String = parts[1] if parts.size() > 1 else ""
		match parts[0]:
			"url":
				url = value
			"inbound":
				inbound_buffer_size = int(value)
			"quit-after-packets":
				_quit_after_packets = int(value)
				_quit_when_closed = true
			"timeout":
				get_tree().create_timer(float(value)).timeout.connect(_on_timeout)
				_quit_when_closed = true
	_ws.inbound_buffer_size = inbound_buffer_size  # must be set before connecting
	var err: Error = _ws.connect_to_url(url)
	if err != OK:
		print("connect_to_url(%s) failed: %s" % [url, error_string(err)])
		if _quit_when_closed:
			get_tree().quit(1)


func _process(_delta: float) -> void:
	if _done:
		return
	_ws.poll()
	var state: int = _ws.get_ready_state()
	if state != _last_state:
		print("state %s" % STATE_NAMES[state])
		_last_state = state
	while (
		_ws.get_ready_state() == WebSocketPeer.STATE_OPEN and _ws.get_available_packet_count() > 0
	):
		var packet: PackedByteArray = _ws.get_packet()
		_packets += 1
		var kind: String = "text" if _ws.was_string_packet() else "binary"
		print("packet %d %s %d bytes" % [_packets, kind, packet.size()])
		if _quit_after_packets > 0 and _packets >= _quit_after_packets:
			_ws.close(1000, "debug scene done")
			break
	if state == WebSocketPeer.STATE_CLOSED:
		print("closed code=%d reason='%s'" % [_ws.get_close_code(), _ws.get_close_reason()])
		_done = true
		if _quit_when_closed:
			var reached: bool = _quit_after_packets > 0 and _packets >= _quit_after_packets
			get_tree().quit(0 if reached else 1)


func _on_timeout() -> void:
	if not _done:
		print("timeout after %d packets" % _packets)
		_done = true
		get_tree().quit(1)
