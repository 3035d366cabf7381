"""One viewer: its settings, its sender thread and its control messages.

Each :class:`ClientSession` owns one sender thread that wakes on every new camera frame, on
control messages and on its own timer, and sends at most one frame per tick: always the newest
frame, never one it already sent, never a backlog. A slow viewer only slows itself: while its
``send`` is blocked, the camera moves on and the viewer skips to the newest frame afterwards.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from . import protocol
from .camera import CameraThread
from .encoder import EncodeBudgetExceeded, EncodeCache, EncodedFrame, Variant, fit_size
from .errors import ConnectionClosedError
from .pacing import BEHIND_POLL_S, Pacer
from .protocol import CloseCode, ProtocolInputError
from .ratelimit import RateLimiter  # noqa: F401 - public here since 0.1.0; used by transport

if TYPE_CHECKING:
    from .ws import Connection

__all__ = ["ClientSettings", "ClientSession", "RateLimiter"]

logger = logging.getLogger(__name__)

_IDLE_WAKE_S = 1.0  # a sender with nothing to do still looks at its state this often
_OUTBOX_LIMIT = 64  # queued replies beyond this are dropped (events are kept)
_FIRST_FRAME_WAIT_S = 2.0  # a snapshot asked for before the first frame waits this long for it


@dataclass(frozen=True)
class ClientSettings:
    """What one viewer has chosen (see ``protocol.CONFIG_FIELDS``)."""

    fps: float
    quality: int | None = None  # None: as the source (the server's default when encoding)
    width: int | None = None
    height: int | None = None
    max_bytes: int | None = None
    frame_info: bool = False

    @functools.cached_property
    def variant(self) -> Variant:
        """The encode these settings ask for (made once: it is looked up for every frame)."""
        return Variant(self.width, self.height, self.quality, self.max_bytes)


@dataclass
class ClientStats:
    """Counters of one viewer, as reported by ``Streamer.stats()``."""

    frames_sent: int = 0
    frames_skipped: int = 0
    bytes_sent: int = 0
    errors: int = 0  # error messages sent in answer to bad input
    connected_at: float = dataclasses.field(default_factory=time.time)


class ClientSession:
    """The server side of one WebSocket viewer.

    Created by the Streamer when a connection opens; :meth:`start` starts the sender thread,
    :meth:`stop` (idempotent, any thread) ends and joins it. Control messages arrive through
    :meth:`handle_text` in the connection's reader thread; everything the session sends goes
    out from the sender thread, so messages keep their order.
    """

    def __init__(
        self,
        connection: Connection,
        camera: CameraThread,
        cache: EncodeCache,
        settings: ClientSettings,
        *,
        stall_timeout: float = 5.0,
        describe_camera: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.connection = connection
        self.camera = camera
        self.cache = cache
        self.stats = ClientStats()
        self._settings = settings
        self._lock = threading.Lock()  # guards _settings, _paused, _outbox, _settings_changed
        self._paused = False
        self._settings_changed = True  # the first thing sent is the metadata
        self._outbox: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pacer = Pacer(stall_timeout)  # used by the sender thread only
        self._describe_camera = describe_camera or (lambda: {})
        self._version = 0  # counts settings changes; metadata is resent when it moves
        # (width, height, quality, _version) last announced in metadata
        self._announced: tuple[int, int, int | None, int] | None = None
        self._wanted: Variant | None = None  # the variant asked for, and the one given (cache cap)
        self._given: Variant | None = None
        self._wake_after = 0.0  # time.monotonic() from which new frames wake the sender
        self._thread = threading.Thread(
            target=self._run, name=f"camstream-sender-{connection.id}", daemon=True
        )  # daemon: a sender blocked on a dead socket must never hold the process open

    # Lifecycle

    def start(self) -> ClientSession:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the sender to finish and join it. Idempotent; safe from any thread."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def settings(self) -> ClientSettings:
        return self._settings

    @property
    def paused(self) -> bool:
        return self._paused

    # Called from other threads

    def wake(self) -> None:
        """A new frame is there (called by the camera for every frame, for every viewer).

        Wakes the sender only if it could use the frame: a viewer on a slower timer, paused or
        behind is left asleep, which saves most of the thread switches at high viewer counts.
        """
        if time.monotonic() >= self._wake_after:
            self._wake.set()

    def post(self, message: dict[str, Any], *, droppable: bool = False) -> None:
        """Queue a text message; the sender sends it before the next frame.

        ``droppable`` messages (replies to the client's own requests) are dropped when the
        queue is full, so a client that floods requests cannot push out events.
        """
        with self._lock:
            if droppable and len(self._outbox) >= _OUTBOX_LIMIT:
                return
            self._outbox.append(message)
        self._wake.set()

    def update(self, **changes: Any) -> None:
        """Change settings; the viewer gets a new metadata message with the values in force."""
        with self._lock:
            self._settings = dataclasses.replace(self._settings, **changes)
            self._settings_changed = True
        self._wake.set()

    def handle_text(self, text: str) -> None:
        """Act on one control message (reader thread). Bad input gets an ``error`` message.

        The transport has already counted the message against the connection's budget (text
        messages and ping/pong frames alike; 1008 beyond it), see ``WebSocketServer``.
        """
        try:
            message = protocol.parse_control(text)
        except ProtocolInputError as exc:
            self._refuse(str(exc))
            return
        kind = message["type"]
        if kind == "config":
            self.apply_config(message, from_url=False)
        elif kind == "pause":
            self._set_paused(True)
        elif kind == "resume":
            self._set_paused(False)
        elif kind == "ping":
            pong = {"type": "pong", "t": message.get("t"), "server_time": time.time()}
            self.post(pong, droppable=True)
        elif kind == "snapshot":
            wanted, problems = protocol.parse_config({"quality": message.get("quality", 95)})
            for problem in problems:
                self._refuse(f"snapshot {problem}")
            if wanted:
                self.post({"type": "_snapshot", "quality": wanted["quality"]}, droppable=True)

    def apply_config(self, values: dict[str, Any], *, from_url: bool) -> None:
        """Apply settings from a ``config`` message or URL query; report refused values."""
        changes, problems = protocol.parse_config(values, from_url=from_url)
        for problem in problems:
            self._refuse(problem)
        if changes or not from_url:
            self.update(**changes)  # a config message is always answered with metadata

    def _refuse(self, problem: str) -> None:
        """Answer a value the client sent that cannot be used with an ``error`` message.

        Logged at DEBUG only and counted in ``stats.errors``: a client that sends nothing but
        bad messages fills no log (the rate limit ends it long before it could).
        """
        self.stats.errors += 1
        logger.debug("client %s: %s", self.connection.id, problem)
        self.post(protocol.error_message(problem), droppable=True)

    def _set_paused(self, paused: bool) -> None:
        with self._lock:
            self._paused = paused
            self._settings_changed = True
        self._wake.set()

    # The sender thread

    def _run(self) -> None:
        try:
            self._send_loop()
        except ConnectionClosedError:
            pass  # the connection went away; the transport reports it
        except Exception:
            logger.exception("sender for client %s failed", self.connection.id)
            self.connection.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            if self._given is not None:
                self.cache.release(self._given)

    def _send_loop(self) -> None:
        pacer = self._pacer
        behind = False  # the viewer has not taken the previous frames yet
        conn, camera = self.connection, self.camera
        while not self._stopping.is_set() and conn.is_open:
            # Frames wake this thread only once it is due (see wake()); its own timer and the
            # behind-poll cover the rest.
            self._wake_after = math.inf if behind or self._paused else pacer.wake_after(camera.fps)
            wait = BEHIND_POLL_S if behind else pacer.wait_s(time.monotonic(), camera.fps)
            self._wake.wait(min(wait, _IDLE_WAKE_S) if wait > 0 else _IDLE_WAKE_S)
            self._wake.clear()
            if self._stopping.is_set():
                return
            self._flush_control()
            if self._paused:
                continue
            frame = camera.latest()
            if frame is None or not pacer.wants(frame.seq, frame.captured_monotonic, camera.fps):
                behind = False  # nothing to send: look again when a frame is wanted
                continue
            now = time.monotonic()
            behind = pacer.behind(conn.unsent_bytes(), now)
            if behind:
                if pacer.stalled(now):
                    logger.info("dropping client %s: it stopped reading", conn.id)
                    conn.abort()
                    return
                continue
            settings = self._settings
            variant = self._variant(settings)
            try:
                encoded = self.cache.get(frame, variant)
            except EncodeBudgetExceeded:
                continue  # the server's encode budget is spent: skip to a later frame
            quality = self._announced_quality(encoded.passed_through, variant)
            if (encoded.width, encoded.height, quality, self._version) != self._announced:
                self._send_metadata((encoded.width, encoded.height), quality, settings)
            skipped = pacer.sent(frame.seq, len(encoded.data), now, settings.fps, camera.fps)
            if settings.frame_info:
                conn.send_text(protocol.encode_message(self._frame_info(encoded, skipped)))
            conn.send_binary(encoded.data)
            stats = self.stats
            stats.frames_sent += 1
            stats.frames_skipped += skipped
            stats.bytes_sent += len(encoded.data)

    def _flush_control(self) -> None:
        """Send queued text messages and, if settings changed, fresh metadata.

        The metadata goes first on a new connection, before errors about its URL query.
        """
        if self._announced is None:
            self._send_changed_settings()
        while True:
            with self._lock:
                if not self._outbox:
                    break
                message = self._outbox.popleft()
            if message["type"] == "_snapshot":
                self._send_snapshot(message["quality"])
            else:
                self.connection.send_text(protocol.encode_message(message))
        self._send_changed_settings()

    def _send_changed_settings(self) -> None:
        if self._settings_changed:
            self._settings_changed = False
            self._version += 1
            self._pacer.due = 0.0  # a new rate starts now, not when the old timer runs out
            settings = self._settings
            variant = self._variant(settings)
            latest = self.camera.latest()
            width, height = (
                (latest.width, latest.height) if latest is not None
                else (self.camera.width, self.camera.height)
            )
            passed = latest is not None and self.cache.passes_through(latest, variant)
            size = fit_size(width, height, variant.width, variant.height)
            self._send_metadata(size, self._announced_quality(passed, variant), settings)

    def _variant(self, settings: ClientSettings) -> Variant:
        """The variant this viewer gets: what it asked for, unless the cache's variant cap
        gives it the nearest live one (sender thread only)."""
        wanted = settings.variant
        if wanted != self._wanted:
            if self._given is not None:
                self.cache.release(self._given)
            self._given, self._wanted = self.cache.assign(wanted), wanted
        assert self._given is not None
        return self._given

    def _announced_quality(self, passed_through: bool, variant: Variant) -> int | None:
        """The metadata's ``quality``: None for the source's own JPEGs, else the one used."""
        if passed_through:
            return None
        return self.cache.default_quality if variant.quality is None else variant.quality

    def _effective_fps(self, settings: ClientSettings) -> float:
        return min(settings.fps, self.camera.fps)

    def _send_metadata(
        self, size: tuple[int, int], quality: int | None, settings: ClientSettings
    ) -> None:
        self._announced = (size[0], size[1], quality, self._version)
        message = protocol.metadata_message(
            width=size[0],
            height=size[1],
            fps=self._effective_fps(settings),
            quality=quality,
            max_bytes=self._given.max_bytes if self._given is not None else settings.max_bytes,
            frame_info=settings.frame_info,
            paused=self._paused,
            **self._describe_camera(),
        )
        self.connection.send_text(protocol.encode_message(message))

    def _frame_info(self, encoded: EncodedFrame, skipped: int) -> dict[str, Any]:
        return {
            "type": "frame",
            "seq": encoded.seq,
            "captured_at": round(encoded.captured_at, 6),
            "sent_at": round(time.time(), 6),
            "skipped": skipped,
            "bytes": len(encoded.data),
            "width": encoded.width,
            "height": encoded.height,
        }

    def _send_snapshot(self, quality: int | None) -> None:
        frame = self.camera.latest(wait=_FIRST_FRAME_WAIT_S)
        if frame is None:
            self.connection.send_text(
                protocol.encode_message(protocol.error_message("no frame to snapshot yet"))
            )
            return
        variant = Variant(quality=quality, max_bytes=self._settings.max_bytes)
        try:
            encoded = self.cache.get(frame, variant)
        except EncodeBudgetExceeded:
            message = protocol.error_message("snapshot refused: server busy, try again")
            self.connection.send_text(protocol.encode_message(message))
            return
        message = {
            "type": "snapshot",
            "seq": encoded.seq,
            "width": encoded.width,
            "height": encoded.height,
            "quality": encoded.quality,
            "bytes": len(encoded.data),
            "captured_at": round(encoded.captured_at, 6),
        }
        self.connection.send_text(protocol.encode_message(message))
        self.connection.send_binary(encoded.data)
