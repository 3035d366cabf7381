extends RefCounted
## Decodes CamstreamClient's JPEG frames off the main thread, newest first, in bounded memory.
##
## All methods are called from the main thread. [method push_frame] hands over each frame as it
## arrives; [method service], called once per game frame, collects the decodes that finished,
## starts waiting ones while fewer than [member max_in_flight] run, and returns what is ready:
## snapshots, and the newest decoded frame if it is newer than the last one returned.
##
## Frames never pile up: one frame waits at most, and a newer one replaces it (the older is
## never decoded); a decode that finishes after a newer frame was returned is thrown away. Both
## count in [member dropped]. So however long the main thread stalls, at most
## [member max_in_flight] decodes run and one frame waits.
##
## Pictures no longer shown are freed on a worker too ([method retire]): freeing a 1080p
## [Image] (6 MB) takes the main thread 0.3 ms to several ms, as long as a busy machine takes
## to unmap it.
##
## Decodes run as [WorkerThreadPool] tasks (low priority). Where the engine has no threads
## (feature [code]nothreads[/code]: a Web export without thread support, Godot 4.3+; every
## 4.0-4.2 build has threads) or with [member threaded] off, [method service] decodes on the
## calling thread instead, the newest waiting frame only.


## One JPEG and its result. A worker thread writes [member image] and [member error]; the main
## thread reads them only once the task has completed.
class Job:
	extends RefCounted
	## Order of arrival (frames only; increases by one per pushed frame).
	var seq: int = 0
	## The frame's [code]frame[/code] info message ({} without frame_info), or the snapshot's
	## [code]snapshot[/code] message.
	var info: Dictionary = {}
	var snapshot: bool = false
	var jpeg: PackedByteArray = PackedByteArray()
	var image: Image = null
	var error: Error = OK
	var task_id: int = -1
	## Pictures to free on the worker thread (the last references to them, see [method retire]).
	var retired: Array[Image] = []

	func _init(data: PackedByteArray, message: Dictionary, is_snapshot: bool) -> void:
		jpeg = data
		info = message
		snapshot = is_snapshot

	## Runs on a worker thread (or on the main thread without threads).
	func decode() -> void:
		var decoded: Image = Image.new()
		error = decoded.load_jpg_from_buffer(jpeg)
		jpeg = PackedByteArray()  # not needed any more: free it on this thread
		image = decoded
		retired.clear()


## Most decodes running at once (frames and snapshots together). At least 1.
var max_in_flight: int = 2
## Decode on [WorkerThreadPool] threads. False: on the thread calling [method service].
var threaded: bool = true
## Frames pushed but never returned: replaced while waiting, or decoded after a newer one
## (not counting those in [member errors]).
var dropped: int = 0
## JPEGs that failed to decode (frames and snapshots).
var errors: int = 0
## Decodes started (frames and snapshots): frames pushed minus those dropped while waiting.
var started: int = 0

var _running: Array[Job] = []
var _retired: Array[Image] = []
var _waiting_frame: Job = null
var _waiting_snapshots: Array[Job] = []
var _pushed: int = 0
var _returned_seq: int = 0


## Whether this engine build can decode off the main thread.
static func threads_available() -> bool:
	return not OS.has_feature("nothreads")


## Hands over a frame's JPEG bytes (not copied). A frame still waiting is dropped for it.
func push_frame(jpeg: PackedByteArray, info: Dictionary) -> void:
	if _waiting_frame != null:
		dropped += 1
	_pushed += 1
	_waiting_frame = Job.new(jpeg, info, false)
	_waiting_frame.seq = _pushed


## Hands over a snapshot's JPEG bytes; snapshots are never dropped.
func push_snapshot(jpeg: PackedByteArray, info: Dictionary) -> void:
	_waiting_snapshots.append(Job.new(jpeg, info, true))


## Hands over a picture that is no longer shown, to be freed by the next decode task on its
## worker thread rather than on the main thread (without threads it is freed now). Pass only
## the last reference you hold.
func retire(old: Image) -> void:
	if threaded and old != null and not old.is_empty():
		_retired.append(old)


## Decodes running now.
func in_flight() -> int:
	return _running.size()


## Whether anything is running or waiting (false: [method service] has nothing to do).
func is_busy() -> bool:
	return not _running.is_empty() or _waiting_frame != null or not _waiting_snapshots.is_empty()


## Collects finished decodes, starts waiting ones, and returns the jobs to deliver, in order:
## finished snapshots, then at most one frame (the newest one decoded, if newer than the
## last frame returned). A job's [member Job.error] says whether its [member Job.image] holds
## a picture. Never waits for a worker; without threads it decodes here.
func service() -> Array[Job]:
	var finished: Array[Job] = []
	for job in _running:
		if WorkerThreadPool.is_task_completed(job.task_id):
			finished.append(job)
	for job in finished:
		WorkerThreadPool.wait_for_task_completion(job.task_id)  # completed: returns at once
		_running.erase(job)
	if threaded:
		_start_tasks()
	else:
		finished.append_array(_decode_here())
	return _deliverable(finished)


## Waits for the running decodes (blocks for at most one decode each), throws away their
## results and the waiting frames. Idempotent; call it before dropping the decoder.
func clear() -> void:
	for job in _running:
		WorkerThreadPool.wait_for_task_completion(job.task_id)
	_running.clear()
	_waiting_frame = null
	_waiting_snapshots.clear()
	_retired.clear()


## Resets [member dropped], [member errors] and [member started].
func reset_counters() -> void:
	dropped = 0
	errors = 0
	started = 0


func _next_waiting() -> Job:
	if not _waiting_snapshots.is_empty():
		return _waiting_snapshots.pop_front()
	var job: Job = _waiting_frame
	_waiting_frame = null
	return job


func _start_tasks() -> void:
	while _running.size() < maxi(max_in_flight, 1):
		var job: Job = _next_waiting()
		if job == null:
			return
		job.retired = _retired
		_retired = []
		job.task_id = WorkerThreadPool.add_task(job.decode, false, "camstream JPEG decode")
		_running.append(job)
		started += 1


func _decode_here() -> Array[Job]:
	var done: Array[Job] = []
	var job: Job = _next_waiting()
	while job != null:
		job.decode()
		started += 1
		done.append(job)
		job = _next_waiting()
	return done


func _deliverable(finished: Array[Job]) -> Array[Job]:
	var ready: Array[Job] = []
	var newest: Job = null
	for job in finished:
		if job.error != OK:
			errors += 1
		elif job.snapshot:
			ready.append(job)
		elif job.seq <= _returned_seq or (newest != null and job.seq < newest.seq):
			dropped += 1  # a newer frame was (or is being) returned
			retire(job.image)
		else:
			if newest != null:
				dropped += 1
				retire(newest.image)
			newest = job
	if newest != null:
		_returned_seq = newest.seq
		ready.append(newest)
	return ready
