extends RefCounted
## CamstreamClient's receiving side: owns the [WebSocketPeer] and, on a thread of its own,
## connects, polls, reads every packet and decodes the newest JPEG frame.
##
## The main thread talks to it with commands ([method connect_to], [method send_text],
## [method close], [method retire]) and once a game frame takes what arrived with
## [method take]: events in order (opened, text messages, snapshots, closed) and the newest
## decoded frame with its [code]frame[/code] and [code]data[/code] messages (those travel with
## their frame and are dropped with it). Nothing else is shared, and everything shared is behind
## one [Mutex].
##
## Bounded whatever the game does: frames read while one is decoding wait in one slot (a newer
## one replaces it: the older is never decoded); a decoded frame waits in one slot until the
## main thread takes it, and no other decode starts meanwhile. So during a game stall the thread
## keeps reading the socket (nothing piles up in it) but decodes one frame at most; all others
## count in [code]dropped[/code].
##
## The thread polls every [member poll_interval_usec] while connected and sleeps on a
## [Semaphore] otherwise. It wakes on its own timer, never because the main thread posted work:
## on a busy machine a thread woken by the main thread tends to take the main thread's core,
## which is exactly the frame-time spike this class is there to avoid.
##
## Without threads ([member threaded] false: a Web export without thread support) the main
## thread runs the same work in [method take].

enum Event { OPENED, CLOSED, CONNECT_FAILED, TEXT, SNAPSHOT }
enum Command { CONNECT, SEND, CLOSE, RETIRE }

## Retired pictures are kept this long before this thread drops them: by then the main thread
## has surely dropped its own references (a variable, an argument) to them, so the last one,
## and the freeing, is this thread's.
const RETIRE_GRACE_MSEC: int = 50

## Run on a thread of its own. False: [method take] does the work on the calling thread.
var threaded: bool = true
## Microseconds between polls while connected and idle (it reads again at once after data).
var poll_interval_usec: int = 2000

# Shared between the threads: only under _mutex.
var _mutex: Mutex = Mutex.new()
var _commands: Array = []
var _events: Array = []
var _frame: Array = []  # [generation, Image, info, data]: the newest decoded frame, not taken yet
var _counters: Dictionary = {"received": 0, "dropped": 0, "errors": 0, "decodes": 0}
var _quit: bool = false

# The receiving thread's own (the main thread's without threads).
var _ws: WebSocketPeer = WebSocketPeer.new()
var _generation: int = 0
var _ws_state: WebSocketPeer.State = WebSocketPeer.STATE_CLOSED
var _jpeg: PackedByteArray = PackedByteArray()  # the newest frame waiting for a decode
var _jpeg_info: Dictionary = {}
var _jpeg_data: Dictionary = {}
var _frame_info: Dictionary = {}  # the "frame" message announcing the next binary message
var _frame_data: Dictionary = {}  # the "data" message of the next binary message
var _snapshot_info: Dictionary = {}
var _snapshot_next: bool = false
var _graveyard: Array = []  # [Image, when retired (msec)], oldest first

var _thread: Thread = null
var _wake: Semaphore = Semaphore.new()


## Connects (dropping any connection first). [param generation] tags every later event, so
## events of an older connection can be told apart. [param options]: [code]url[/code],
## [code]tls[/code] ([TLSOptions] or null), [code]headers[/code], [code]inbound_buffer_size[/code],
## [code]heartbeat_interval[/code], [code]reset_counters[/code].
func connect_to(generation: int, options: Dictionary) -> void:
	_post([Command.CONNECT, generation, options])
	if threaded and _thread == null:
		_thread = Thread.new()
		_thread.start(_run, Thread.PRIORITY_LOW)  # where the platform honours priorities


## Queues a text message.
func send_text(text: String) -> void:
	_post([Command.SEND, text])


## Queues a close: [param code] 1000.. with a close handshake, negative drops at once.
func close(code: int, reason: String) -> void:
	_post([Command.CLOSE, code, reason])


## Hands back a picture the main thread no longer uses, to be freed on the receiving thread
## [constant RETIRE_GRACE_MSEC] later (freeing a 6 MB 1080p [Image] can take the main thread
## milliseconds). Keep no reference to it beyond the current function.
func retire(image: Image) -> void:
	if threaded and image != null and not image.is_empty():
		_post([Command.RETIRE, image])


## What arrived since the last call (main thread, once a frame): [code]events[/code] (each an
## Array [code][generation, Event, ...][/code]), [code]frame[/code] ([code][/code] or
## [code][generation, Image, info, data][/code]: [code]info[/code] and [code]data[/code] are the
## frame's [code]frame[/code] and [code]data[/code] messages, or {}) and the counters. Never
## waits for a decode.
func take() -> Dictionary:
	if not threaded:
		_work()
	_mutex.lock()
	var taken: Dictionary = {"events": _events, "frame": _frame, "counters": _counters.duplicate()}
	_events = []
	_frame = []
	_mutex.unlock()
	return taken


## Stops the thread after it has run the queued commands (a close is sent) and waits for it
## (at most one decode). Idempotent. After this only [method take] without threads works.
func shutdown() -> void:
	if _thread == null:
		if not threaded:
			_work()  # run the queued commands, e.g. a goodbye close
		return
	_mutex.lock()
	_quit = true
	_mutex.unlock()
	_wake.post()
	_thread.wait_to_finish()
	_thread = null


func _post(command: Array) -> void:
	_mutex.lock()
	_commands.append(command)
	_mutex.unlock()
	_wake.post()


func _run() -> void:
	while true:
		_mutex.lock()
		var quit: bool = _quit
		var idle: bool = (
			_commands.is_empty()
			and _ws_state == WebSocketPeer.STATE_CLOSED
			and _graveyard.is_empty()
		)
		_mutex.unlock()
		if idle and not quit:
			_wake.wait()  # nothing to do until the main thread queues a command
			continue
		var busy: bool = _work()
		if quit:
			return
		if not busy:
			OS.delay_usec(poll_interval_usec)


## One round: run the commands, poll, read every packet, decode the newest frame if the main
## thread has taken the previous one. Returns whether anything was read or decoded.
func _work() -> bool:
	_mutex.lock()
	var commands: Array = _commands
	_commands = []
	_mutex.unlock()
	for command in commands:
		_run_command(command)
	commands.clear()
	var now_msec: int = Time.get_ticks_msec()
	while not _graveyard.is_empty() and now_msec - _graveyard[0][1] >= RETIRE_GRACE_MSEC:
		_graveyard.pop_front()  # the last reference: the picture is freed here
	if _ws_state == WebSocketPeer.STATE_CLOSED:
		return false
	_ws.poll()
	var ws_state: WebSocketPeer.State = _ws.get_ready_state()
	if ws_state == WebSocketPeer.STATE_OPEN and _ws_state != WebSocketPeer.STATE_OPEN:
		_emit([Event.OPENED])
	_ws_state = ws_state
	var busy: bool = false
	if ws_state == WebSocketPeer.STATE_OPEN:
		while _ws.get_available_packet_count() > 0:
			_read(_ws.get_packet(), _ws.was_string_packet())
			busy = true
	elif ws_state == WebSocketPeer.STATE_CLOSED:
		_emit([Event.CLOSED, _ws.get_close_code(), _ws.get_close_reason()])
		_drop_waiting()
	return _decode_waiting() or busy


func _run_command(command: Array) -> void:
	match command[0]:
		Command.CONNECT:
			if _ws_state != WebSocketPeer.STATE_CLOSED:
				_ws.close(-1)  # drop the old connection, without events: it is forgotten
			_generation = command[1]
			_drop_waiting()
			_frame_info = {}
			_frame_data = {}
			_snapshot_next = false
			var options: Dictionary = command[2]
			if options["reset_counters"]:
				_mutex.lock()
				for key in _counters:
					_counters[key] = 0
				_mutex.unlock()
			_ws.inbound_buffer_size = options["inbound_buffer_size"]
			if "heartbeat_interval" in _ws:  # Godot 4.4+; typed access would not parse on 4.3
				_ws.set("heartbeat_interval", options["heartbeat_interval"])
			_ws.handshake_headers = options["headers"]
			var err: Error = _ws.connect_to_url(options["url"], options["tls"])
			_ws_state = _ws.get_ready_state()
			if err != OK:
				_emit([Event.CONNECT_FAILED, err])
		Command.SEND:
			if _ws_state == WebSocketPeer.STATE_OPEN:
				_ws.send_text(command[1])
		Command.CLOSE:
			if _ws_state != WebSocketPeer.STATE_CLOSED:
				_ws.close(command[1], command[2])
		Command.RETIRE:
			_graveyard.append([command[1], Time.get_ticks_msec()])


func _read(packet: PackedByteArray, is_text: bool) -> void:
	if is_text:
		var text: String = packet.get_string_from_utf8()
		var json: JSON = JSON.new()  # not JSON.parse_string: it logs an error for bad JSON
		var parsed: Variant = json.data if json.parse(text) == OK else null
		var type: Variant = parsed.get("type") if parsed is Dictionary else null
		if type == "frame":
			_frame_info = parsed  # arrives with its frame (or not at all if that is dropped)
			return
		if type == "data":
			_frame_data = parsed  # the same: the application's data goes with its frame
			return
		if type == "snapshot":
			_snapshot_info = parsed
			_snapshot_next = true
		_emit([Event.TEXT, text, parsed])
	elif _snapshot_next:
		_snapshot_next = false
		var snapshot: Image = Image.new()
		var err: Error = snapshot.load_jpg_from_buffer(packet)
		_count("errors" if err != OK else "decodes")
		if err == OK:
			_emit([Event.SNAPSHOT, snapshot, _snapshot_info])
	else:
		_count("received")
		if not _jpeg.is_empty():
			_count("dropped")  # never decoded: a newer frame came first
		_jpeg = packet
		_jpeg_info = _frame_info
		_jpeg_data = _frame_data
		_frame_info = {}
		_frame_data = {}


## Decodes the waiting frame unless the last decoded one is still waiting for the main thread.
func _decode_waiting() -> bool:
	if _jpeg.is_empty():
		return false
	_mutex.lock()
	var slot_full: bool = not _frame.is_empty()
	_mutex.unlock()
	if slot_full and threaded:
		return false
	var jpeg: PackedByteArray = _jpeg
	var info: Dictionary = _jpeg_info
	var data: Dictionary = _jpeg_data
	_jpeg = PackedByteArray()
	var image: Image = Image.new()
	var err: Error = image.load_jpg_from_buffer(jpeg)
	_mutex.lock()
	if err != OK:
		_counters["errors"] += 1
	else:
		_counters["decodes"] += 1
		if not _frame.is_empty():
			_counters["dropped"] += 1  # without threads only: decoded, never shown
		_frame = [_generation, image, info, data]
	_mutex.unlock()
	return true


func _drop_waiting() -> void:
	if not _jpeg.is_empty():
		_count("dropped")
		_jpeg = PackedByteArray()


func _emit(event: Array) -> void:
	event.push_front(_generation)
	_mutex.lock()
	_events.append(event)
	_mutex.unlock()


func _count(key: String) -> void:
	_mutex.lock()
	_counters[key] += 1
	_mutex.unlock()
