"""CameraThread: one frame source, read continuously, the latest frame kept under a lock.

Sources (see :func:`describe_source`):

* ``"auto"`` (the default) — camera 0, or the built-in test pattern (with one WARNING) if there
  is no camera;
* a device index (``0`` or ``"0"``, strict: no fallback), a device path (``/dev/video2``) or a
  stable name (``/dev/v4l/by-id/...``) — a webcam through OpenCV, in MJPEG mode when it has it
  (see :mod:`camstream.capture.devices`);
* a file path or stream URL — files play at their own frame rate and loop by default; MJPEG
  files and MJPEG streams (another camstream's ``/stream.mjpg``, mjpg-streamer, ustreamer, IP
  cameras) are read as raw JPEG files and passed through untouched;
* ``"test"`` — the built-in animated test pattern, needing no camera;
* ``"push"`` — the application hands frames in with :meth:`CameraThread.publish`.

On demand (``on_demand=``), the source is opened only while a viewer holds a
:class:`~camstream.capture.demand.CameraLease` (:meth:`CameraThread.acquire`) and released a
grace period after the last one lets go; see :class:`CameraThread`.

Only the newest frame is kept (no queue): readers ask for "a frame newer than the one I had"
and always get the latest, so a slow reader skips frames instead of falling behind.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .. import logs, protocol
from ..checks import check_int
from ..errors import ConfigError, SourceError
from .annotate import AnnotateHook, Annotator
from .controls import ControlResult, ControlValue
from .demand import CameraLease, Demand, OpenCounters, check_on_demand
from .devices import CaptureFactory, CaptureMode, VideoCaptureLike
from .frame import Frame
from .framereader import FrameReader
from .jpeg import CorruptJpeg, inspect_jpeg
from .opener import CaptureOpener
from .sources import (
    AUTO,
    Source,
    SourceKind,
    check_pushed_image,
    check_request,
    classify,
    describe_source,
)
from .states import CameraListener, CameraState, announce
from .testpattern import TestPattern

__all__ = [
    "CameraLease", "CameraListener", "CameraState", "CameraThread", "Frame", "Source",
    "describe_source",
]

logger = logs.get_logger(__name__)

_DEFAULT_SIZE = (640, 480)


class CameraThread:
    """Reads a frame source in its own thread and keeps the latest frame.

    Use as ``cam = CameraThread("test").start()`` ... ``cam.stop()``, or as a context manager.
    :meth:`start` opens the source in the calling thread, so a source that cannot be opened
    raises :class:`~camstream.errors.SourceError` right there (on demand, the camera thread
    opens it when a viewer comes: see ``on_demand``). After that, a source that stops
    delivering (a camera unplugged, a stream that drops) is reopened with backoff while the
    thread keeps running; listeners hear ``camera_lost`` and ``camera_restored``. Viewers say
    that they want frames with :meth:`acquire` (a lease each); the events are in
    :data:`~camstream.capture.states.CameraListener`, the states in :class:`CameraState`.

    Args:
        source: see :data:`Source`. ``"auto"`` (default): camera 0, else the test pattern.
        width, height: requested frame size, 16 to 8192 (:data:`camstream.protocol.MAX_SIDE`).
            Applied to devices (the device may choose another size: :attr:`width` /
            :attr:`height` report what it really gives, and a WARNING says so); files and
            streams are scaled to it; the test pattern is drawn at it (default 640x480). One
            side alone keeps the source's aspect ratio (4:3 where it is not known in advance).
        fps: requested frame rate. Applied to devices (:attr:`fps` reports what they give);
            the test pattern runs at it; files play at their own rate unless it is unknown.
        loop: files start again at their end (default); otherwise the state becomes ENDED and
            listeners hear ``source_ended``.
        reconnect_delay_max: the longest wait, in seconds, between two attempts to reopen a lost
            source (the wait starts at a quarter second and doubles).
        pixel_format: for devices, the format to ask for: ``"auto"`` (MJPEG if the camera has it,
            else what it gives), ``"mjpeg"``, ``"yuyv"``, ``"native"`` (ask for nothing), or a
            FOURCC. See :data:`camstream.capture.devices.PIXEL_FORMATS`.
        backend: the OpenCV backend: ``"auto"`` (V4L2 on Linux, DirectShow on Windows,
            AVFoundation on macOS; FFmpeg for files and URLs) or a name from
            :data:`camstream.capture.devices.BACKENDS`.
        camera_settings: camera controls applied after every (re)open, as ``{"exposure": 100}``
            or ``["exposure=100", "autofocus=off"]``; names in
            :data:`camstream.capture.controls.CONTROLS`.
        capture_factory: ``factory(target, api_preference)`` returning a
            ``cv2.VideoCapture``-like object (see
            :class:`camstream.capture.devices.VideoCaptureLike`);
            for tests (a fake camera) and unusual backends. Default: ``cv2.VideoCapture``.
        on_demand: open the source only while viewers want frames: a grace period in seconds
            (0 to 86400; 0 releases at once), ``True`` for
            :data:`~camstream.capture.demand.DEFAULT_GRACE_S` (10 s), or ``None``/``False``
            (default: always open). :meth:`start` then opens nothing
            (state IDLE); the first :meth:`acquire` has the camera thread open the source
            (STARTING, then STREAMING from the first frame); once no lease has been held for
            the grace period, the source is released (the device closed, its light off, free
            for other programs) and the camera is IDLE again. A viewer back within the grace
            period costs no close and no open. An open that fails while viewers wait is
            reported (``camera_lost`` with the reason) and retried with backoff until it
            works or nobody waits (then IDLE; the backoff carries over to the next acquire).
            The test pattern is on demand too (it stops drawing); push sources ignore it
            (they are never closed). ``"auto"`` still decides at :meth:`start` between camera 0
            and the test pattern, which opens camera 0 once there and releases it at once.
        annotate: ``annotate(frame)`` is called in the camera thread with every frame it reads
            (not with pushed frames: ``publish(..., data=)``), before the frame is published;
            it returns the frame's data (a JSON value; None: none). See
            :mod:`camstream.capture.annotate`: keep it fast, a slow one lowers the camera's
            rate; its failures cost the frame its data, never the camera.
        max_data_bytes: the largest frame data, as compact JSON in bytes (default 16384, at
            most 61440); larger data raises :class:`~camstream.errors.DataTooLargeError` from
            ``publish``, or is dropped and counted for ``annotate``.

    Raises:
        ConfigError: an argument is out of range (checked here, before anything is opened).
    """

    def __init__(
        self,
        source: Source = AUTO,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float = 30.0,
        loop: bool = True,
        reconnect_delay_max: float = 1.0,
        pixel_format: str = "auto",
        backend: str = "auto",
        camera_settings: Mapping[str, ControlValue] | Iterable[str] | None = None,
        capture_factory: CaptureFactory | None = None,
        on_demand: bool | float | None = None,
        annotate: AnnotateHook | None = None,
        max_data_bytes: int = protocol.DEFAULT_MAX_DATA_BYTES,
    ) -> None:
        self._kind, self._target = classify(source)
        check_int("max_data_bytes", max_data_bytes, 1, protocol.MAX_DATA_BYTES)
        self._max_data_bytes = max_data_bytes
        if annotate is not None and self._kind is SourceKind.PUSH:
            raise ConfigError(
                "annotate is for camera, file and test sources; with source='push' pass the "
                "frame's data to publish(image, data=...)"
            )
        if annotate is not None and not callable(annotate):
            raise ConfigError(f"annotate must be a callable, not {type(annotate).__name__}")
        self.annotator = Annotator(annotate, max_data_bytes) if annotate is not None else None
        """The ``annotate`` hook and its counters (None without one)."""
        self.source = source
        check_request(width, height, fps)
        grace = check_on_demand(on_demand)
        self._on_demand = None if self._kind is SourceKind.PUSH else grace
        self._demand = Demand()
        self._counters = OpenCounters()
        self._next_attempt_at = 0.0  # monotonic: no open attempt before (backoff after a failure)
        self._opener = CaptureOpener(
            pixel_format=pixel_format, backend=backend, camera_settings=camera_settings,
            capture_factory=capture_factory, size=(width, height), fps=float(fps),
        )
        self._loop = loop
        self._reconnect_delay_max = reconnect_delay_max
        self._retry_delay = 0.25

        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._seq = 0
        self._state = CameraState.NEW
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._capture: VideoCaptureLike | None = None
        self._pattern: TestPattern | None = None
        self._listeners: list[CameraListener] = []
        self._frame_listeners: list[Callable[[Frame], None]] = []
        self.width = self._opener.requested_size[0] or _DEFAULT_SIZE[0]
        self.height = self._opener.requested_size[1] or _DEFAULT_SIZE[1]
        self.fps = float(fps)
        self.mode: CaptureMode | None = None
        """What the source granted at the last open (format, size, fps, passthrough, backend);
        None for the test pattern and pushed frames."""
        self.controls: list[ControlResult] = []
        """The camera settings as applied at the last open, each granted or refused."""
        self.failure_reason: str | None = None
        """Why the camera thread stopped, if it crashed (state FAILED)."""
        self.frames_captured = 0
        self.frames_dropped_corrupt = 0
        """JPEG frames from the source that were not whole JPEG files: dropped, never sent."""
        self.decodes = 0
        """JPEG frames decoded to pixels (only when something needed the pixels)."""

    @property
    def source_kind(self) -> str:
        """What the source is: ``device``, ``file``, ``url``, ``test`` or ``push`` (``auto``
        until :meth:`start` has decided between a camera and the test pattern)."""
        return str(self._kind.value)

    @property
    def pixel_format(self) -> str | None:
        """The pixel format the source delivers (``"MJPG"``, ``"YUYV"``, ...), if known."""
        if self.mode is not None:
            return self.mode.pixel_format or None
        return "BGR" if self._kind is SourceKind.TEST else None

    @property
    def backend(self) -> str | None:
        """The OpenCV backend reading the source (``"V4L2"``, ``"FFMPEG"``, ...), if any."""
        return self.mode.backend if self.mode is not None else None

    @property
    def jpeg_passthrough(self) -> bool:
        """Whether frames are the source's own JPEG files (not decoded to be stored)."""
        return self.mode is not None and self.mode.jpeg_passthrough

    # On demand, and the open/close counters (read from any thread)

    @property
    def on_demand(self) -> float | None:
        """The grace period in seconds if the source is opened on demand, else None (always
        open; also for push sources, which are never closed)."""
        return self._on_demand

    @property
    def demand(self) -> int:
        """How many leases (:meth:`acquire`) are held now: the viewers that want frames."""
        return self._demand.count

    @property
    def opens(self) -> int:
        """Successful opens of the source (a looping file's reopen at its end counts too)."""
        return self._counters.opens

    @property
    def closes(self) -> int:
        """Releases of the open source (a loss, an on-demand release, stop)."""
        return self._counters.closes

    @property
    def open_failures(self) -> int:
        """Attempts to open the source that failed."""
        return self._counters.open_failures

    @property
    def last_open_at(self) -> float | None:
        """``time.monotonic()`` when the last successful open finished, or None."""
        return self._counters.last_open_at

    @property
    def last_open_duration(self) -> float | None:
        """How long the last successful open took, in seconds, or None."""
        return self._counters.last_open_duration

    def acquire(self) -> CameraLease:
        """Say that a viewer wants frames; returns the lease to release when it leaves.

        Any thread; returns at once (it never opens anything in the caller's thread). On an
        on-demand camera the first lease wakes the camera thread, which opens the source
        (state STARTING; wait for frames with :meth:`wait_for_frame`); the source is released
        once no lease has been held for the grace period. On an always-open camera or a push
        source it only counts (:attr:`demand`). Works before :meth:`start` (the source opens
        when it starts) and after :meth:`stop` (it does nothing).
        """
        return self._demand.acquire()

    # Lifecycle

    def start(self) -> CameraThread:
        """Open the source (on demand: open nothing) and start the camera thread; returns
        ``self``. The caller's thread.

        Raises:
            SourceError: the source cannot be opened (the message says what to try). On demand,
                only a file that does not exist (nothing is opened).
            RuntimeError: already started.
        """
        if self._state is not CameraState.NEW:
            raise RuntimeError("a CameraThread can be started only once")
        if self._kind is SourceKind.PUSH:
            self._set_state(CameraState.STREAMING)
            return self
        if self._kind is SourceKind.AUTO:
            self._open_auto()
        if self._on_demand is not None:
            self._close_source()  # "auto" opened camera 0 to decide: release it
            self._opener.check_exists(self.source, self._kind, self._target)
            self._set_state(CameraState.IDLE)
            logger.info("%s opens on demand: at the first viewer, released %g s after the last",
                        describe_source(self.source), self._on_demand)
        else:
            if self._capture is None:
                self._open_source()
            self._set_state(CameraState.STREAMING)
        # Daemon: a thread blocked in a driver's read() must not keep the interpreter alive
        # if the application forgets stop(); stop() itself joins it.
        self._thread = threading.Thread(
            target=logs.thread_target(self._run),
            name=f"camstream-camera({describe_source(self.source)})",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading, release the device and join the thread. Idempotent.

        Readers blocked in :meth:`wait_for_frame` wake up and get ``None``.
        """
        self._stopping.set()
        self._demand.close()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("camera thread did not stop within %.1f s", timeout)
        if thread is None:
            self._close_source()
        self._set_state(CameraState.STOPPED)

    def __enter__(self) -> CameraThread:
        return self.start() if self._state is CameraState.NEW else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def state(self) -> CameraState:
        """Where the camera is (see :class:`CameraState`); any thread."""
        return self._state

    def add_listener(self, listener: CameraListener) -> None:
        """Call ``listener(event, details)`` on the events of :data:`CameraListener`.

        Listeners run in the camera thread and must return quickly. Add them before
        :meth:`start`.
        """
        self._listeners.append(listener)

    def add_frame_listener(self, listener: Callable[[Frame], None]) -> None:
        """Call ``listener(frame)`` for every new frame, in the thread that stored it.

        Meant for waking readers; it must return at once and never raise.
        """
        self._frame_listeners.append(listener)

    # Readers

    def latest(self, wait: float = 0.0) -> Frame | None:
        """The newest frame; before the first one, wait up to ``wait`` s for it (else None).

        None too while an on-demand camera is IDLE (its last frame is dropped at the release,
        so a viewer coming back never gets a stale picture) and until its first new frame.
        """
        with self._cond:
            latest = self._latest
        return latest if latest is not None or wait <= 0 else self.wait_for_frame(0, wait)

    def wait_for_frame(self, after_seq: int, timeout: float | None) -> Frame | None:
        """Wait for a frame whose ``seq`` is greater than ``after_seq`` and return the newest.

        Returns ``None`` on timeout or once the camera is stopped.
        """
        def ready() -> bool:
            latest = self._latest
            return self._stopping.is_set() or (latest is not None and latest.seq > after_seq)

        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                return None
            latest = self._latest
            if self._stopping.is_set() or latest is None or latest.seq <= after_seq:
                return None
            return latest

    # Push mode

    def publish(self, image: np.ndarray, *, copy: bool = True, data: Any = None) -> Frame:
        """Hand in a frame (push mode only). Thread-safe; returns the stored :class:`Frame`.

        Args:
            image: an 8-bit (``uint8``) numpy array: BGR (H x W x 3), BGRA (H x W x 4; the
                alpha channel is dropped when encoding) or grayscale (H x W or H x W x 1), at
                most 65500 pixels a side.
            copy: copy the array, so the caller may keep drawing into its own buffer. Pass
                ``False`` only if the caller never touches the array again.
            data: this frame's data for viewers that asked for it (a JSON value, serialized
                here, once); None (the default): none.

        Raises:
            ConfigError: not a push source, or not such an image (the message says what it got).
            DataError: ``data`` is not JSON; :class:`~camstream.errors.DataTooLargeError`:
                larger than ``max_data_bytes`` (both are a ``ConfigError``). Nothing is
                published then.
        """
        if self._kind is not SourceKind.PUSH:
            raise ConfigError("publish() works only with source='push'")
        check_pushed_image(image)
        data_json = self._encode_data(data)
        if self._stopping.is_set():
            raise ConfigError("publish() after stop()")
        return self._store(image.copy() if copy else image, data_json)

    def publish_jpeg(self, jpeg: bytes, *, data: Any = None) -> Frame | None:
        """Hand in a JPEG file (push mode only). Thread-safe.

        Viewers that take frames as the source makes them get these exact bytes; the pixels are
        decoded only if a viewer, a snapshot or a listener needs another size or quality.

        ``data``: this frame's data, as for :meth:`publish`.

        Returns:
            The stored :class:`Frame`, or None if ``jpeg`` is not one whole JPEG file (it is
            dropped and counted in :attr:`frames_dropped_corrupt`).

        Raises:
            ConfigError: not a push source, or ``jpeg`` is not bytes.
            DataError: ``data`` is not JSON or too large (as for :meth:`publish`).
        """
        if self._kind is not SourceKind.PUSH:
            raise ConfigError("publish_jpeg() works only with source='push'")
        if not isinstance(jpeg, (bytes, bytearray, memoryview)):
            raise ConfigError(f"publish_jpeg() takes bytes, not {type(jpeg).__name__}")
        data_json = self._encode_data(data)
        if self._stopping.is_set():
            raise ConfigError("publish_jpeg() after stop()")
        return self._store_jpeg(bytes(jpeg), data_json)

    # Internals

    def _encode_data(self, data: Any) -> str | None:
        """A pushed frame's data as JSON text (None: none); raises ``DataError``."""
        return None if data is None else protocol.encode_value(data, self._max_data_bytes)

    def _store(self, image: np.ndarray, data_json: str | None = None) -> Frame:
        image.flags.writeable = False
        if self.annotator is not None:
            return self._store_annotated(
                lambda seq: Frame(seq, image, time.time(), time.monotonic())
            )
        with self._cond:
            self._seq += 1
            frame = Frame(self._seq, image, time.time(), time.monotonic(), data_json=data_json)
            self._publish_locked(frame)
        self._notify_frame(frame)
        return frame

    def _store_jpeg(self, data: bytes, data_json: str | None = None) -> Frame | None:
        """Store a JPEG file from the source as the latest frame; None if it is corrupt."""
        try:
            info = inspect_jpeg(data)
        except CorruptJpeg as exc:
            self._count_dropped()
            logger.debug("dropped a corrupt JPEG from %s: %s", describe_source(self.source), exc)
            return None

        def make(seq: int) -> Frame:
            return Frame(
                seq, None, time.time(), time.monotonic(), jpeg=data, width=info.width,
                height=info.height, on_decode=self._count_decode, data_json=data_json,
            )

        if self.annotator is not None:
            return self._store_annotated(make)
        with self._cond:
            self._seq += 1
            frame = make(self._seq)
            self._publish_locked(frame)
        self._notify_frame(frame)
        return frame

    def _store_annotated(self, make: Callable[[int], Frame]) -> Frame:
        """Store a frame the camera thread read, with the ``annotate`` hook's data.

        The hook runs before the frame is published and outside the lock (readers never wait
        for it). The camera thread alone makes frames of a source that is not ``push`` (the only
        kind with a hook), so the next ``seq`` is its own to give.
        """
        assert self.annotator is not None
        frame = make(self._seq + 1)  # captured now: the hook's time is not the frame's
        frame.data_json = self.annotator(frame)
        with self._cond:
            self._seq = frame.seq
            self._publish_locked(frame)
        self._notify_frame(frame)
        return frame

    def _count_dropped(self) -> None:
        with self._cond:
            self.frames_dropped_corrupt += 1

    def _count_decode(self) -> None:
        with self._cond:
            self.decodes += 1

    def _publish_locked(self, frame: Frame) -> None:
        """Make ``frame`` the latest (the caller holds the condition)."""
        self._latest = frame
        self.frames_captured += 1
        self.width, self.height = frame.width, frame.height
        self._cond.notify_all()

    def _notify_frame(self, frame: Frame) -> None:
        for listener in self._frame_listeners:
            listener(frame)

    def _set_state(self, state: CameraState, reason: str | None = None) -> None:
        previous = self._state
        if previous is state or previous is CameraState.STOPPED:  # stopped is final
            return
        self._state = state
        description = describe_source(self.source)
        event, reason = announce(previous, state, reason, description)
        if event is None:
            return
        details = {"source": description}
        if reason is not None:
            details["reason"] = reason
        for listener in list(self._listeners):
            try:
                listener(event, details)
            except Exception:
                logger.exception("camera listener failed on %s", event)

    def _open_auto(self) -> None:
        """Source ``"auto"``: camera 0 if it opens, else the test pattern (one WARNING)."""
        try:
            self._kind, self._target, self.source = SourceKind.DEVICE, 0, 0
            self._open_source()
        except SourceError:
            logger.warning("no camera found at index 0: streaming the built-in test pattern")
            self._kind, self._target, self.source = SourceKind.TEST, "test", "test"

    def _open_source(self, reason: str | None = None) -> None:
        """Open the source (the test pattern: make it) and take on the mode, size, rate and
        camera settings it was granted (see :class:`~camstream.capture.opener.CaptureOpener`);
        counted in :attr:`opens` / :attr:`open_failures`.

        Args:
            reason: why it opens (on demand: ``"first viewer"``), logged with the time it took.

        Raises:
            SourceError: it cannot be opened.
        """
        first_time = self._counters.opens == 0
        started = time.monotonic()
        previous = self.mode
        if self._kind is SourceKind.TEST:
            self._pattern = TestPattern(self.width, self.height)
        else:
            try:
                self._capture, self.mode, controls = self._opener.open(
                    self.source, self._kind, self._target, first_time=first_time,
                    previous=previous,
                )
            except SourceError:
                self._counters.open_failures += 1
                raise
            self._take_mode(self.mode, controls)
        self._counters.opened(started, time.monotonic())
        described = describe_source(self.source)
        mode = f": {self.mode.describe()}" if self.mode is not None else ""
        if reason is not None:
            logger.info("opened %s (%s) in %.2f s%s", described, reason,
                        self._counters.last_open_duration, mode)
        elif self.mode is not None and (first_time or self.mode != previous):
            logger.info("opened %s%s", described, mode)

    def _take_mode(self, mode: CaptureMode, controls: list[ControlResult] | None) -> None:
        """Take on the rate, size and camera settings an open was granted."""
        if controls is not None:
            self.controls = controls
        self.fps = mode.fps
        requested = self._opener.requested_size
        if self._kind is not SourceKind.DEVICE and requested[0] is not None:
            self.width, self.height = requested  # type: ignore[assignment]
        elif mode.width and mode.height:
            self.width, self.height = mode.width, mode.height

    def _close_source(self) -> None:
        """Release the capture (drop the test pattern), counted in :attr:`closes`. Idempotent."""
        capture, self._capture = self._capture, None
        pattern, self._pattern = self._pattern, None
        if capture is not None:
            capture.release()
        if capture is not None or pattern is not None:
            self._counters.closes += 1

    def _run(self) -> None:
        try:
            if self._on_demand is None:
                self._stream()
            else:
                self._run_on_demand()
        except Exception as exc:
            # A bug, not a source failure (those are handled in the loop): keep it visible, and
            # tell viewers there will be no more frames.
            logger.exception("camera thread crashed")
            self.failure_reason = f"camera thread crashed: {type(exc).__name__}: {exc}"[:200]
            self._set_state(CameraState.FAILED, self.failure_reason)
        finally:
            self._close_source()

    def _run_on_demand(self) -> None:
        """Idle until a viewer acquires the camera; open it, stream while anyone watches and
        through the grace period; release it; idle again. Until stop() or a file's end."""
        assert self._on_demand is not None
        while self._demand.wait_wanted():  # False once stop() is called
            self._set_state(CameraState.STARTING, "first viewer")
            backoff_left = self._next_attempt_at - time.monotonic()
            if self._open_with_backoff(max(backoff_left, 0.0), "first viewer"):
                self._stream()
            if self._stopping.is_set() or self._state is CameraState.ENDED:
                return
            if self._state is CameraState.LOST:
                reason = "no viewer waits any more: stopped retrying"
            else:
                reason = f"no viewer for {self._on_demand:g} s"
            self._close_source()
            with self._cond:
                self._latest = None  # a viewer coming back must not get a stale picture
            self._set_state(CameraState.IDLE, reason)

    def _stream(self) -> None:
        """Read the open source until stop(), a file's end, or (on demand) its release."""
        if self._kind is SourceKind.TEST:
            self._run_test_pattern()
        else:
            self._run_capture()

    def _grace_over(self) -> bool:
        """On demand: nobody has wanted frames for the whole grace period."""
        if self._on_demand is None:
            return False
        unwanted = self._demand.unwanted_for(time.monotonic())
        return unwanted is not None and unwanted >= self._on_demand

    def _run_test_pattern(self) -> None:
        assert self._pattern is not None
        period = 1.0 / self.fps
        deadline = time.monotonic()
        index = 0
        while not self._stopping.is_set() and not self._grace_over():
            if self._state is not CameraState.STREAMING:
                self._set_state(CameraState.STREAMING)
            self._store(self._pattern.render(index, self.fps))
            index += 1
            deadline = self._next_deadline(deadline, period)

    def _next_deadline(self, deadline: float, period: float) -> float:
        """Wait until ``deadline + period`` (or stop); skip ahead if we fell behind."""
        deadline += period
        now = time.monotonic()
        if deadline < now - period:  # fell more than a frame behind (machine was busy)
            deadline = now
        self._stopping.wait(max(deadline - now, 0.0))
        return deadline

    def _run_capture(self) -> None:
        paced = self._kind is SourceKind.FILE  # devices and live streams pace themselves
        reader = FrameReader(self._kind, lambda: self._opener.requested_size, self._count_dropped)
        deadline = time.monotonic()
        frames_since_open = 0
        while not self._stopping.is_set() and not self._grace_over():
            ok, payload = reader.read(self._capture, self.mode)
            if ok and payload is not None:
                if self._state is not CameraState.STREAMING:
                    self._set_state(CameraState.STREAMING)
                if isinstance(payload, bytes):
                    self._store_jpeg(payload)  # a corrupt one is dropped and counted
                else:
                    self._store(payload)
                self._retry_delay, self._next_attempt_at = 0.25, 0.0
                frames_since_open += 1
                if paced:
                    deadline = self._next_deadline(deadline, 1.0 / self.fps)
                continue
            self._close_source()
            # A file that played to its end starts again (or ends) without fuss; anything else,
            # including a file that opened but gave no frame, is a lost source.
            at_end_of_file = self._kind is SourceKind.FILE and frames_since_open > 0
            if at_end_of_file and not self._loop:
                self._set_state(CameraState.ENDED)
                return
            if not self._reopen(wait_first=frames_since_open == 0, quietly=at_end_of_file):
                return
            frames_since_open = 0
            deadline = time.monotonic()

    def _reopen(self, wait_first: bool, quietly: bool) -> bool:
        """Reopen the source with backoff until it works, stop() is called or (on demand)
        nobody waits any more.

        Args:
            wait_first: the last open gave no frame, so back off before trying again.
            quietly: the source is a file at its end; reopening it is not a loss. Only if that
                fails (the file was removed or broken) is the source lost.
        """
        if not quietly:
            self._set_state(CameraState.LOST)
        return self._open_with_backoff(self._retry_delay if wait_first else 0.0)

    def _open_with_backoff(self, delay: float, reason: str | None = None) -> bool:
        """Open the source after ``delay`` s, doubling the wait after each failure (up to
        ``reconnect_delay_max``); True once open, False on stop() or when (on demand) nobody
        waits any more. A failed first open on demand reports its error (``camera_lost``)."""
        while self._pause(delay):
            delay = min(max(delay * 2, 0.25), self._reconnect_delay_max)
            self._retry_delay = delay
            try:
                self._open_source(reason)
                return True
            except SourceError as exc:
                self._next_attempt_at = time.monotonic() + delay
                starting = self._state is CameraState.STARTING
                self._set_state(CameraState.LOST, str(exc) if starting else None)
                logger.debug("open failed: %s", exc)
        return False

    def _pause(self, delay: float) -> bool:
        """Wait ``delay`` s before an attempt to open; False: give up (stop(), or on demand
        nobody waits any more; a zero wait is no wait, the attempt is made)."""
        if self._on_demand is None:
            return not self._stopping.wait(delay)
        if delay > 0 and not self._demand.sleep_while_wanted(delay):
            return False
        return not self._stopping.is_set()
