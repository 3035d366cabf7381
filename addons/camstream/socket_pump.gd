extends RefCounted
## Runs CamstreamClient's [WebSocketPeer] I/O off the main thread: one [WorkerThreadPool] task
## per game frame sends what was queued, polls, and reads every waiting packet.
##
## Reading the socket costs about as much as decoding at HD rates (a 270 KB 1080p frame is ~70
## reads of 4 KB through wslay and two copies: about 1 ms of the main thread per frame), so it
## runs on a worker like the decodes. The main thread calls [method begin] to start a step,
## [method collect] to take a finished one, and touches the [WebSocketPeer] itself only after
## [method join] (connecting, dropping a connection), so the peer is never used by two threads
## at once. Without threads ([member threaded] off) a step runs inside [method begin].


## One poll of the socket: what to send first, and what the poll gave.
class Step:
	extends RefCounted
	## Commands run before the poll: a [String] is sent as a text message, an [Array]
	## [code][code, reason][/code] closes the connection.
	var commands: Array = []
	var ready_state: WebSocketPeer.State = WebSocketPeer.STATE_CLOSED
	## The packets read, in order; [member text] says which of them were text messages.
	var packets: Array[PackedByteArray] = []
	var text: Array[bool] = []
	var close_code: int = -1
	var close_reason: String = ""
	## Text messages [method WebSocketPeer.send_text] refused (outbound buffer full).
	var send_errors: int = 0
	var task_id: int = -1
	var _ws: WebSocketPeer

	func _init(peer: WebSocketPeer, queued: Array) -> void:
		_ws = peer
		commands = queued

	## Runs on a worker thread (or on the main thread without threads).
	func run() -> void:
		for command in commands:
			if command is String:
				if _ws.send_text(command) != OK:
					send_errors += 1
			else:
				_ws.close(command[0], command[1])
		_ws.poll()
		ready_state = _ws.get_ready_state()
		if ready_state == WebSocketPeer.STATE_OPEN:
			while _ws.get_available_packet_count() > 0:
				packets.append(_ws.get_packet())
				text.append(_ws.was_string_packet())
		elif ready_state == WebSocketPeer.STATE_CLOSED:
			close_code = _ws.get_close_code()
			close_reason = _ws.get_close_reason()


## Run steps on [WorkerThreadPool] threads (high priority: a step is short, and frames wait for
## it). False: in [method begin], on the calling thread.
var threaded: bool = true

var _ws: WebSocketPeer
var _step: Step = null
var _done: Step = null
var _outbox: Array = []


func _init(peer: WebSocketPeer) -> void:
	_ws = peer


## Queues a text message for the next step.
func send_text(message: String) -> void:
	_outbox.append(message)


## Queues a close ([method WebSocketPeer.close]) for the next step.
func close(code: int, reason: String) -> void:
	_outbox.append([code, reason])


## Whether a step is running.
func is_running() -> bool:
	return _step != null


## Starts a step with the queued commands, unless one is running or finished and not collected.
func begin() -> void:
	if _step != null or _done != null:
		return
	var step: Step = Step.new(_ws, _outbox)
	_outbox = []
	if threaded:
		step.task_id = WorkerThreadPool.add_task(step.run, true, "camstream socket")
		_step = step
	else:
		step.run()
		_done = step


## The finished step, once (null while it runs or if none was started). Never blocks.
func collect() -> Step:
	if _step != null and WorkerThreadPool.is_task_completed(_step.task_id):
		WorkerThreadPool.wait_for_task_completion(_step.task_id)  # completed: returns at once
		_done = _step
		_step = null
	var step: Step = _done
	_done = null
	return step


## Waits for a running step (short: one poll of the socket) and throws its results and the
## queued commands away; then the main thread may use the peer. Idempotent.
func join() -> void:
	if _step != null:
		WorkerThreadPool.wait_for_task_completion(_step.task_id)
		_step = null
	_done = null
	_outbox.clear()
