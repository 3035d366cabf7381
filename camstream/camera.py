"""CameraThread: one frame source, read continuously, the latest frame kept under a lock.

Sources (see :func:`describe_source`):

* a device index (``0`` or ``"0"``) — a webcam through OpenCV;
* a file path or stream URL — files play at their own frame rate and loop by default;
* ``"test"`` — the built-in animated test pattern, needing no camera;
* ``"push"`` (or ``None``) — the application hands frames in with :meth:`CameraThread.publish`.

Only the newest frame is kept (no queue): readers ask for "a frame newer than the one I had"
and always get the latest, so a slow reader skips frames instead of falling behind.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import threading
import time
from typing import Callable, Iterator, Union

import cv2
import numpy as np

from .errors import ConfigError, SourceError
from .frame import Frame
from .jpeg import CorruptJpeg, inspect_jpeg
from .testpattern import TestPattern

__all__ = ["CameraThread", "CameraState", "Frame", "Source", "describe_source"]

logger = logging.getLogger(__name__)

Source = Union[int, str, None]
"""A device index, a file path or URL, ``"test"``, or ``"push"``/``None``."""

_DEFAULT_SIZE = (640, 480)
_MAX_SIDE = 65500  # the largest picture a JPEG can hold
_URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class CameraState(str, enum.Enum):
    """Where a :class:`CameraThread` is in its life."""

    NEW = "new"
    STREAMING = "streaming"
    LOST = "lost"  # the source stopped delivering; it is being reopened with backoff
    ENDED = "ended"  # a file that does not loop reached its end
    STOPPED = "stopped"


CameraListener = Callable[[str, dict], None]
"""Called from the camera thread with ``("camera_lost" | "camera_restored", details)``."""


class _SourceKind(str, enum.Enum):
    DEVICE = "device"
    FILE = "file"
    URL = "url"
    TEST = "test"
    PUSH = "push"


def _classify(source: Source) -> tuple[_SourceKind, Union[int, str, None]]:
    if source is None or source == "push":
        return _SourceKind.PUSH, None
    if isinstance(source, bool):
        raise ConfigError(f"unknown source {source!r}")
    if isinstance(source, int):
        return _SourceKind.DEVICE, source
    if not isinstance(source, str):
        raise ConfigError(
            f"source must be a device index, a path, a URL, 'test' or 'push', not {source!r}"
        )
    if source.strip().isdigit():
        return _SourceKind.DEVICE, int(source)
    if source == "test":
        return _SourceKind.TEST, source
    if source.lower().startswith(_URL_SCHEMES):
        return _SourceKind.URL, source
    return _SourceKind.FILE, source


def describe_source(source: Source) -> str:
    """A short human description of ``source``, for logs and error messages."""
    kind, value = _classify(source)
    if kind is _SourceKind.DEVICE:
        return f"camera {value}"
    if kind is _SourceKind.TEST:
        return "test pattern"
    if kind is _SourceKind.PUSH:
        return "pushed frames"
    return f"{kind.value} {value}"


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own warnings (e.g. "can't open camera by index") for a moment.

    camstream reports these failures itself, as one clear exception or log line.
    """
    try:
        previous = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # an OpenCV build without the utils.logging module
        yield
        return
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


class CameraThread:
    """Reads a frame source in its own thread and keeps the latest frame.

    Use as ``cam = CameraThread("test").start()`` ... ``cam.stop()``, or as a context manager.
    :meth:`start` opens the source in the calling thread, so a source that cannot be opened
    raises :class:`~camstream.errors.SourceError` right there. After that, a source that stops
    delivering (a camera unplugged, a stream that drops) is reopened with backoff while the
    thread keeps running; listeners hear ``camera_lost`` and ``camera_restored``.

    Args:
        source: see :data:`Source`.
        width, height: requested frame size. Applied to devices (the device may choose another
            size: :attr:`width` / :attr:`height` report what it really gives); files and streams
            are scaled to it; the test pattern is drawn at it (default 640x480).
        fps: requested frame rate. Applied to devices (:attr:`fps` reports what they give);
            the test pattern runs at it; files play at their own rate unless it is unknown.
        loop: files start again at their end (default); otherwise the state becomes ENDED.
        reconnect_delay_max: the longest wait, in seconds, between two attempts to reopen a lost
            source (the wait starts at a quarter second and doubles).
    """

    def __init__(
        self,
        source: Source = 0,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float = 30.0,
        loop: bool = True,
        reconnect_delay_max: float = 1.0,
    ) -> None:
        self._kind, self._target = _classify(source)
        self.source = source
        if fps <= 0:
            raise ConfigError(f"fps must be positive, not {fps}")
        if (width is None) != (height is None) and self._kind is not _SourceKind.DEVICE:
            raise ConfigError("give both width and height, or neither")
        for name, value in (("width", width), ("height", height)):
            if value is not None and value < 16:
                raise ConfigError(f"{name} must be at least 16 pixels, not {value}")
        self._requested_size = (width, height)
        self._requested_fps = float(fps)
        self._loop = loop
        self._reconnect_delay_max = reconnect_delay_max
        self._retry_delay = 0.25

        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._seq = 0
        self._state = CameraState.NEW
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._capture: cv2.VideoCapture | None = None
        self._pattern: TestPattern | None = None
        self._listeners: list[CameraListener] = []
        self._frame_listeners: list[Callable[[Frame], None]] = []
        self.width, self.height = width or _DEFAULT_SIZE[0], height or _DEFAULT_SIZE[1]
        self.fps = self._requested_fps
        self.frames_captured = 0
        self.frames_dropped_corrupt = 0
        """JPEG frames from the source that were not whole JPEG files: dropped, never sent."""
        self.decodes = 0
        """JPEG frames decoded to pixels (only when something needed the pixels)."""

    # Lifecycle

    def start(self) -> CameraThread:
        """Open the source and start the reader thread; returns ``self``.

        Raises:
            SourceError: the source cannot be opened (the message says what to try).
            RuntimeError: already started.
        """
        if self._state is not CameraState.NEW:
            raise RuntimeError("a CameraThread can be started only once")
        if self._kind is _SourceKind.PUSH:
            self._set_state(CameraState.STREAMING)
            return self
        if self._kind is _SourceKind.TEST:
            self._pattern = TestPattern(self.width, self.height)
        else:
            self._capture = self._open_capture(first_time=True)
        self._set_state(CameraState.STREAMING)
        # Daemon: a thread blocked in a driver's read() must not keep the interpreter alive
        # if the application forgets stop(); stop() itself joins it.
        self._thread = threading.Thread(
            target=self._run, name=f"camstream-camera({describe_source(self.source)})", daemon=True
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

    @property
    def is_push(self) -> bool:
        """True for a source fed by :meth:`publish`."""
        return self._kind is _SourceKind.PUSH

    def add_listener(self, listener: CameraListener) -> None:
        """Call ``listener(event, details)`` on ``camera_lost`` / ``camera_restored``.

        Listeners run in the camera thread and must return quickly.
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: CameraListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def add_frame_listener(self, listener: Callable[[Frame], None]) -> None:
        """Call ``listener(frame)`` for every new frame, in the thread that stored it.

        Meant for waking readers; it must return at once and never raise.
        """
        self._frame_listeners.append(listener)

    def remove_frame_listener(self, listener: Callable[[Frame], None]) -> None:
        with contextlib.suppress(ValueError):
            self._frame_listeners.remove(listener)

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
            image: an 8-bit BGR (H x W x 3) or grayscale (H x W) array.
            copy: copy the array, so the caller may keep drawing into its own buffer. Pass
                ``False`` only if the caller never touches the array again.

        Raises:
            ConfigError: not a push source, or not an 8-bit image.
        """
        if self._kind is not _SourceKind.PUSH:
            raise ConfigError("publish() works only with source='push'")
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ConfigError("publish() takes an 8-bit BGR or grayscale numpy array")
        if image.ndim == 3 and image.shape[2] not in (1, 3, 4):
            raise ConfigError("publish() takes 1, 3 or 4 colour channels")
        if image.size == 0 or max(image.shape[:2]) > _MAX_SIDE:
            raise ConfigError(f"publish() takes a non-empty image at most {_MAX_SIDE} px a side")
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
        if self._kind is not _SourceKind.PUSH:
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
            with self._cond:
                self.frames_dropped_corrupt += 1
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

    def _set_state(self, state: CameraState) -> None:
        previous = self._state
        if previous is state or previous is CameraState.STOPPED:  # stopped is final
            return
        self._state = state
        event = None
        if state is CameraState.LOST:
            event = "camera_lost"
            logger.warning("%s stopped delivering frames; reopening", describe_source(self.source))
        elif state is CameraState.STREAMING and previous is CameraState.LOST:
            event = "camera_restored"
            logger.info("%s is back", describe_source(self.source))
        if event is not None:
            details = {"source": describe_source(self.source)}
            for listener in list(self._listeners):
                try:
                    listener(event, details)
                except Exception:
                    logger.exception("camera listener failed on %s", event)

    def _open_capture(self, first_time: bool) -> cv2.VideoCapture:
        """Open the OpenCV capture, apply the requested settings and read them back."""
        target = self._target
        description = describe_source(self.source)
        if self._kind is _SourceKind.FILE and not os.path.exists(str(target)):
            raise SourceError(
                self.source,
                f"cannot open {description}: no such file. Give an existing video file, a "
                f"stream URL, a camera index, or 'test' for the built-in test pattern.",
            )
        with _quiet_opencv():
            capture = cv2.VideoCapture(target)  # type: ignore[arg-type]  # int or str
            if not capture.isOpened():
                capture.release()
                raise SourceError(self.source, self._open_failure_message())
            if self._kind is _SourceKind.DEVICE:
                width, height = self._requested_size
                if width is not None:
                    capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
                if height is not None:
                    capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
                capture.set(cv2.CAP_PROP_FPS, self._requested_fps)
        reported_fps = capture.get(cv2.CAP_PROP_FPS)
        if self._kind is _SourceKind.DEVICE or (self._kind is _SourceKind.FILE and reported_fps):
            self.fps = reported_fps if 0 < reported_fps <= 1000 else self._requested_fps
        if first_time and self._kind is not _SourceKind.DEVICE and self._requested_size[0]:
            self.width, self.height = self._requested_size  # type: ignore[assignment]
        elif first_time:
            self.width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) or self.width
            self.height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) or self.height
        if first_time:
            logger.info(
                "opened %s: %dx%d at %.3g fps", description, self.width, self.height, self.fps
            )
        return capture

    def _open_failure_message(self) -> str:
        description = describe_source(self.source)
        if self._kind is _SourceKind.DEVICE:
            return (
                f"cannot open {description}: no camera there, or it is busy or not permitted. "
                f"Check the index (/dev/video{self._target} on Linux) or use source 'test' "
                f"(camstream --source test) for the built-in test pattern."
            )
        if self._kind is _SourceKind.URL:
            return f"cannot open {description}: the stream did not answer or is not a video."
        return f"cannot open {description}: not a video OpenCV can read."

    def _run(self) -> None:
        try:
            if self._kind is _SourceKind.TEST:
                self._run_test_pattern()
            else:
                self._run_capture()
        except Exception:
            # A bug, not a source failure (those are handled in the loop): keep it visible, and
            # tell viewers there will be no more frames.
            logger.exception("camera thread crashed")
            self._set_state(CameraState.LOST)
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
        paced = self._kind is _SourceKind.FILE  # devices and live streams pace themselves
        deadline = time.monotonic()
        frames_since_open = 0
        while not self._stopping.is_set():
            ok, image = self._read()
            if ok and image is not None:
                if self._state is not CameraState.STREAMING:
                    self._set_state(CameraState.STREAMING)
                self._store(image)
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
            at_end_of_file = self._kind is _SourceKind.FILE and frames_since_open > 0
            if at_end_of_file and not self._loop:
                self._set_state(CameraState.ENDED)
                return
            if not self._reopen(wait_first=frames_since_open == 0, quietly=at_end_of_file):
                return
            frames_since_open = 0
            deadline = time.monotonic()

    def _read(self) -> tuple[bool, np.ndarray | None]:
        """One frame from the capture, scaled; a failing or broken read is (False, None)."""
        capture = self._capture
        if capture is None:
            return False, None
        try:
            ok, image = capture.read()
            if not ok or image is None or image.size == 0:
                return False, None
            return True, self._fit(image)
        except cv2.error as exc:  # a broken stream: treated like any failed read (reopen)
            logger.debug("read failed: %s", exc)
            return False, None

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

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """Scale file and stream frames to the requested size, if one was given."""
        width, height = self._requested_size
        if self._kind is _SourceKind.DEVICE or width is None or height is None:
            return image
        if image.shape[1] == width and image.shape[0] == height:
            return image
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
