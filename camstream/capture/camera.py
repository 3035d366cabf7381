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

Only the newest frame is kept (no queue): readers ask for "a frame newer than the one I had"
and always get the latest, so a slow reader skips frames instead of falling behind.
"""

from __future__ import annotations

import enum
import threading
import time
from typing import Callable, Iterable, Mapping

import numpy as np

from .. import logs
from ..errors import ConfigError, SourceError
from .controls import ControlResult, ControlValue
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
from .testpattern import TestPattern

__all__ = ["CameraThread", "CameraState", "Frame", "Source", "describe_source"]

logger = logs.get_logger(__name__)

_DEFAULT_SIZE = (640, 480)

class CameraState(str, enum.Enum):
    """Where a :class:`CameraThread` is in its life."""

    NEW = "new"
    STREAMING = "streaming"
    LOST = "lost"  # the source stopped delivering; it is being reopened with backoff
    ENDED = "ended"  # a file that does not loop reached its end
    FAILED = "failed"  # the camera thread crashed (a bug): see CameraThread.failure_reason
    STOPPED = "stopped"


CameraListener = Callable[[str, dict], None]
"""Called from the camera thread with ``(event, details)``: ``camera_lost`` (details has a
``reason``), ``camera_restored`` or ``source_ended``."""


class CameraThread:
    """Reads a frame source in its own thread and keeps the latest frame.

    Use as ``cam = CameraThread("test").start()`` ... ``cam.stop()``, or as a context manager.
    :meth:`start` opens the source in the calling thread, so a source that cannot be opened
    raises :class:`~camstream.errors.SourceError` right there. After that, a source that stops
    delivering (a camera unplugged, a stream that drops) is reopened with backoff while the
    thread keeps running; listeners hear ``camera_lost`` and ``camera_restored``.

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
    ) -> None:
        self._kind, self._target = classify(source)
        self.source = source
        check_request(width, height, fps)
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

    # Lifecycle

    def start(self) -> CameraThread:
        """Open the source and start the reader thread; returns ``self``.

        Raises:
            SourceError: the source cannot be opened (the message says what to try).
            RuntimeError: already started.
        """
        if self._state is not CameraState.NEW:
            raise RuntimeError("a CameraThread can be started only once")
        if self._kind is SourceKind.PUSH:
            self._set_state(CameraState.STREAMING)
            return self
        if self._kind is SourceKind.AUTO:
            self._open_auto()
        if self._kind is SourceKind.TEST:
            self._pattern = TestPattern(self.width, self.height)
        elif self._capture is None:
            self._capture = self._open_capture(first_time=True)
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
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("camera thread did not stop within %.1f s", timeout)
        if thread is None and self._capture is not None:
            self._capture.release()
        self._set_state(CameraState.STOPPED)

    def __enter__(self) -> CameraThread:
        return self.start() if self._state is CameraState.NEW else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def state(self) -> CameraState:
        return self._state

    def add_listener(self, listener: CameraListener) -> None:
        """Call ``listener(event, details)`` on ``camera_lost`` / ``camera_restored``.

        Listeners run in the camera thread and must return quickly.
        """
        self._listeners.append(listener)

    def add_frame_listener(self, listener: Callable[[Frame], None]) -> None:
        """Call ``listener(frame)`` for every new frame, in the thread that stored it.

        Meant for waking readers; it must return at once and never raise.
        """
        self._frame_listeners.append(listener)

    # Readers

    def latest(self, wait: float = 0.0) -> Frame | None:
        """The newest frame; before the first one, wait up to ``wait`` s for it (else None)."""
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

    def publish(self, image: np.ndarray, *, copy: bool = True) -> Frame:
        """Hand in a frame (push mode only). Thread-safe; returns the stored :class:`Frame`.

        Args:
            image: an 8-bit (``uint8``) numpy array: BGR (H x W x 3), BGRA (H x W x 4; the
                alpha channel is dropped when encoding) or grayscale (H x W or H x W x 1), at
                most 65500 pixels a side.
            copy: copy the array, so the caller may keep drawing into its own buffer. Pass
                ``False`` only if the caller never touches the array again.

        Raises:
            ConfigError: not a push source, or not such an image (the message says what it got).
        """
        if self._kind is not SourceKind.PUSH:
            raise ConfigError("publish() works only with source='push'")
        check_pushed_image(image)
        if self._stopping.is_set():
            raise ConfigError("publish() after stop()")
        return self._store(image.copy() if copy else image)

    def publish_jpeg(self, data: bytes) -> Frame | None:
        """Hand in a JPEG file (push mode only). Thread-safe.

        Viewers that take frames as the source makes them get these exact bytes; the pixels are
        decoded only if a viewer, a snapshot or a listener needs another size or quality.

        Returns:
            The stored :class:`Frame`, or None if ``data`` is not one whole JPEG file (it is
            dropped and counted in :attr:`frames_dropped_corrupt`).

        Raises:
            ConfigError: not a push source, or ``data`` is not bytes.
        """
        if self._kind is not SourceKind.PUSH:
            raise ConfigError("publish_jpeg() works only with source='push'")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ConfigError(f"publish_jpeg() takes bytes, not {type(data).__name__}")
        if self._stopping.is_set():
            raise ConfigError("publish_jpeg() after stop()")
        return self._store_jpeg(bytes(data))

    # Internals

    def _store(self, image: np.ndarray) -> Frame:
        image.flags.writeable = False
        with self._cond:
            self._seq += 1
            frame = Frame(self._seq, image, time.time(), time.monotonic())
            self._publish_locked(frame)
        self._notify_frame(frame)
        return frame

    def _store_jpeg(self, data: bytes) -> Frame | None:
        """Store a JPEG file from the source as the latest frame; None if it is corrupt."""
        try:
            info = inspect_jpeg(data)
        except CorruptJpeg as exc:
            self._count_dropped()
            logger.debug("dropped a corrupt JPEG from %s: %s", describe_source(self.source), exc)
            return None
        with self._cond:
            self._seq += 1
            frame = Frame(
                self._seq, None, time.time(), time.monotonic(), jpeg=data,
                width=info.width, height=info.height, on_decode=self._count_decode,
            )
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
        event = None
        description = describe_source(self.source)
        if state is CameraState.LOST:
            event = "camera_lost"
            reason = reason or "the source stopped delivering frames"
            logger.warning("%s stopped delivering frames; reopening", description)
        elif state is CameraState.FAILED:
            event = "camera_lost"
            logger.error("%s: the camera thread failed (%s); no more frames", description, reason)
        elif state is CameraState.ENDED:
            event = "source_ended"
            logger.info("%s ended (no loop): no more frames", description)
        elif state is CameraState.STREAMING and previous is CameraState.LOST:
            event = "camera_restored"
            logger.info("%s is back", description)
        if event is not None:
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
            self._capture = self._open_capture(first_time=True)
        except SourceError:
            logger.warning("no camera found at index 0: streaming the built-in test pattern")
            self._kind, self._target, self.source = SourceKind.TEST, "test", "test"

    def _open_capture(self, first_time: bool) -> VideoCaptureLike:
        """Open the capture (see :class:`~camstream.capture.opener.CaptureOpener`) and take on the
        mode, size, rate and camera settings it was granted."""
        capture, mode, controls = self._opener.open(
            self.source, self._kind, self._target, first_time=first_time, previous=self.mode
        )
        if controls is not None:
            self.controls = controls
        previous, self.mode = self.mode, mode
        self.fps = mode.fps
        requested = self._opener.requested_size
        if self._kind is not SourceKind.DEVICE and requested[0] is not None:
            self.width, self.height = requested  # type: ignore[assignment]
        elif mode.width and mode.height:
            self.width, self.height = mode.width, mode.height
        if first_time or mode != previous:
            logger.info("opened %s: %s", describe_source(self.source), mode.describe())
        return capture

    def _run(self) -> None:
        try:
            if self._kind is SourceKind.TEST:
                self._run_test_pattern()
            else:
                self._run_capture()
        except Exception as exc:
            # A bug, not a source failure (those are handled in the loop): keep it visible, and
            # tell viewers there will be no more frames.
            logger.exception("camera thread crashed")
            self.failure_reason = f"camera thread crashed: {type(exc).__name__}: {exc}"[:200]
            self._set_state(CameraState.FAILED, self.failure_reason)
        finally:
            if self._capture is not None:
                self._capture.release()
                self._capture = None

    def _run_test_pattern(self) -> None:
        assert self._pattern is not None
        period = 1.0 / self.fps
        deadline = time.monotonic()
        index = 0
        while not self._stopping.is_set():
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
        while not self._stopping.is_set():
            ok, payload = reader.read(self._capture, self.mode)
            if ok and payload is not None:
                if self._state is not CameraState.STREAMING:
                    self._set_state(CameraState.STREAMING)
                if isinstance(payload, bytes):
                    self._store_jpeg(payload)  # a corrupt one is dropped and counted
                else:
                    self._store(payload)
                self._retry_delay = 0.25
                frames_since_open += 1
                if paced:
                    deadline = self._next_deadline(deadline, 1.0 / self.fps)
                continue
            if self._capture is not None:
                self._capture.release()
                self._capture = None
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
        """Reopen the source with backoff until it works or stop() is called.

        Args:
            wait_first: the last open gave no frame, so back off before trying again.
            quietly: the source is a file at its end; reopening it is not a loss. Only if that
                fails (the file was removed or broken) is the source lost.
        """
        delay = self._retry_delay if wait_first else 0.0
        if not quietly:
            self._set_state(CameraState.LOST)
        while not self._stopping.wait(delay):
            delay = min(max(delay * 2, 0.25), self._reconnect_delay_max)
            self._retry_delay = delay
            try:
                self._capture = self._open_capture(first_time=False)
                return True
            except SourceError as exc:
                self._set_state(CameraState.LOST)
                logger.debug("reopen failed: %s", exc)
        return False
