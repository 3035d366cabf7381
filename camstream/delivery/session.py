"""One WebSocket viewer: its settings, its sender thread and its control messages.

Each :class:`ClientSession` owns one sender thread running the viewer's
:class:`~camstream.delivery.viewer.ViewerLoop` (the frame clock shared with MJPEG streams),
which wakes on every new camera frame, on control messages and on its own timer, and sends at
most one frame per tick: always the newest frame, never one it already sent, never a backlog. A
slow viewer only slows itself: while its ``send`` is blocked, the camera moves on and the viewer
skips to the newest frame afterwards. The session is the loop's output: before each frame it
sends queued control replies, events, snapshots and (when the size, quality or settings
changed) a fresh ``metadata`` message; with ``frame_info`` on, a ``frame`` message precedes each
JPEG (on the fan-out's path too: both go out in one non-blocking write).

With adaptation on (``adapt``, the default) the loop's controller is a
:class:`~.linkcontrol.LinkController`: each frame goes on the rung of the viewer's quality
ladder its link carries, and every change of rung is announced in ``metadata`` (with the
adaptive fields: ``adapt``, ``rung``, ``rungs``, ``link_kbps``, ``rtt_ms``, ``adapt_reason``)
before the first frame of the new rung.

Application data (issue 20): with ``data`` on, a frame that carries the application's data is
preceded by its ``data`` message (after the ``frame`` message, right before the JPEG; from the
fan-out in the same single write). ``app`` messages from the client go to the Streamer's
handler (``on_app``) in the reader thread; the application's answers are queued with
:meth:`ClientSession.post_app` (bounded: :data:`APP_QUEUE_LIMIT`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Union

from .. import logs, protocol
from ..capture.camera import CameraThread
from ..errors import ConnectionClosedError
from ..protocol import CloseCode, ProtocolInputError
from ..ws import Connection
from .encoder import EncodeCache, EncodedFrame, Variant, fit_size
from .fanout import FanOutRound
from .linkcontrol import LinkController, adapt_fields
from .snapshot import SnapshotFailure, take_snapshot
from .viewer import ViewerLoop, ViewerStats

if TYPE_CHECKING:
    from ..capture.frame import Frame

__all__ = ["APP_QUEUE_LIMIT", "AppHandler", "ClientSettings", "ClientSession", "SnapshotRequest"]

logger = logs.get_logger(__name__)

_OUTBOX_LIMIT = 64  # queued replies beyond this are dropped (events are kept)
APP_QUEUE_LIMIT = 32
"""``app`` messages from the application waiting for one client; beyond, they are refused
(:meth:`ClientSession.post_app` returns False)."""
_NO_APP_HANDLER = "no application handler: this server takes no app messages"
_SNAPSHOT_ERRORS = {  # what a WebSocket client is told when its snapshot fails
    SnapshotFailure.NO_FRAME: "no frame to snapshot yet",
    SnapshotFailure.NO_PLACE: "snapshot refused: server busy, try again",
    SnapshotFailure.BUDGET: "snapshot refused: server busy, try again",
    SnapshotFailure.UNDECODABLE: "snapshot failed: the frame cannot be decoded",
}


@dataclass(frozen=True)
class SnapshotRequest:
    """A client's ``snapshot`` request, queued in order with the text messages; the sender
    thread answers it (a ``snapshot`` message and the JPEG, or an ``error``)."""

    quality: int | None


# What the outbox holds: a message to encode, a snapshot request, or an app message's text.
_Outgoing = Union[dict[str, Any], SnapshotRequest, str]

AppHandler = Callable[["ClientSession", Any], Union[str, None]]
"""The Streamer's handler of ``app`` messages: ``handler(session, value)`` in the reader thread;
returns the text of an ``error`` message for the client, or None."""


def _data_message(encoded: EncodedFrame) -> bytes:
    """The WebSocket message of a frame's ``data`` (the fan-out's wire bytes, made once)."""
    assert encoded.data_json is not None
    return Connection.text_message(protocol.data_message_text(encoded.seq, encoded.data_json))


def _frame_message(encoded: EncodedFrame) -> bytes:
    """The WebSocket message of one JPEG (the fan-out's wire bytes for sessions)."""
    return Connection.binary_message(encoded.data)


@dataclass(frozen=True)
class ClientSettings:
    """What one viewer has chosen (see ``protocol.CONFIG_FIELDS``)."""

    fps: float
    quality: int | None = None  # None: as the source (the server's default when encoding)
    width: int | None = None
    height: int | None = None
    max_bytes: int | None = None
    frame_info: bool = False
    adapt: bool = True  # adaptive delivery (issue 18): the rung of the ladder the link carries
    data: bool = False  # the application's frame data (and its broadcasts)

    @functools.cached_property
    def variant(self) -> Variant:
        """The encode these settings ask for (made once: it is looked up for every frame)."""
        return Variant(self.width, self.height, self.quality, self.max_bytes)


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
        on_app: AppHandler | None = None,
        proxied: bool = False,
    ) -> None:
        self.connection = connection
        self._proxied = proxied  # came through a trusted reverse proxy (adaptation: see adapt)
        self._link = connection.link  # (looked at for every frame)
        self._camera = camera
        self._cache = cache
        self._loop = ViewerLoop(camera, cache, stall_timeout)
        # The adaptive controller while adaptation is on (sender thread; read by stats()).
        self._adaptive: LinkController | None = None
        # _lock guards _outbox and _settings_changed (both threads take and reset them). The
        # reader thread writes _settings and _paused under it too; the sender reads those two
        # unlocked: each is one reference, replaced whole, and a change raises the flag.
        self._lock = threading.Lock()
        self._settings = settings
        self._paused = False
        self._settings_changed = True  # the first thing sent is the metadata
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._describe_camera = describe_camera or (lambda: {})
        self._on_app = on_app
        self._app_queued = 0  # app messages in the outbox (under _lock)
        # Sender thread only:
        self._version = 0  # counts settings changes; metadata is resent when it moves
        # (width, height, quality, _version, rung) last announced in metadata
        self._announced: tuple[int, int, int | None, int, int] | None = None
        self._sending = settings  # the settings of the frame being sent
        self._thread = threading.Thread(
            target=logs.thread_target(self._run), name=f"camstream-sender-{connection.id}",
            daemon=True,
        )  # daemon: a sender blocked on a dead socket must never hold the process open

    # Lifecycle

    def start(self) -> ClientSession:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the sender to finish and join it. Idempotent; safe from any thread."""
        self._loop.stop()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def stats(self) -> ViewerStats:
        return self._loop.stats

    @property
    def settings(self) -> ClientSettings:
        return self._settings

    @property
    def paused(self) -> bool:
        return self._paused

    def info(self, address: str, now: float) -> dict[str, Any]:
        """This viewer in ``stats()["clients"]`` (``address``: as the policy resolved it)."""
        settings, stats = self._settings, self.stats
        return {
            "id": self.connection.id,
            "address": address,
            "fps": settings.fps,
            "width": settings.width,
            "height": settings.height,
            "quality": settings.quality,
            "max_bytes": settings.max_bytes,
            "paused": self._paused,
            **adapt_fields(self._adaptive),
            "data": settings.data,
            "frames_sent": stats.frames_sent,
            "frames_skipped": stats.frames_skipped,
            "bytes_sent": stats.bytes_sent,
            "errors": stats.errors,
            "connected_s": round(now - stats.connected_at, 3),
        }

    @property
    def is_open(self) -> bool:
        return self.connection.is_open

    # Called from other threads

    def wake(self) -> None:
        """A new frame is there (called by the camera for every frame, for every viewer).

        Wakes the sender only if it could use the frame (see :meth:`ViewerLoop.wake`).
        """
        self._loop.wake()

    def __repr__(self) -> str:
        return f"<ClientSession {self.connection.id}>"

    def offer(self, frame: Frame, fanout: FanOutRound) -> bool:
        """The fan-out's fast path (see :mod:`camstream.delivery.fanout`): True if ``frame``
        went out from the calling thread; False if the sender should look at it (then
        :meth:`wake`)."""
        return self._loop.offer(frame, self, fanout)

    def held_until(self) -> float | None:
        """After :meth:`offer` returned False: when to offer again, if the viewer's controller
        held the frame back; None: :meth:`wake` (:meth:`ViewerLoop.held_until`)."""
        return self._loop.held_until()

    def post(self, message: _Outgoing, *, droppable: bool = False) -> None:
        """Queue a text message (built by :mod:`camstream.protocol`) or a
        :class:`SnapshotRequest`; the sender sends it before the next frame.

        ``droppable`` messages (replies to the client's own requests) are dropped when the
        queue is full, so a client that floods requests cannot push out events.
        """
        with self._lock:
            if droppable and len(self._outbox) >= _OUTBOX_LIMIT:
                return
            self._outbox.append(message)
        self._loop.nudge()

    def post_app(self, text: str) -> bool:
        """Queue an ``app`` message (its text, from :func:`protocol.app_message_text`) for
        this client; any thread, never blocks. False if :data:`APP_QUEUE_LIMIT` of them are
        waiting already (the client reads too slowly): this one is dropped."""
        with self._lock:
            if self._app_queued >= APP_QUEUE_LIMIT:
                return False
            self._app_queued += 1
            self._outbox.append(text)
        self._loop.nudge()
        return True

    def update(self, **changes: Any) -> None:
        """Change settings; the viewer gets a new metadata message with the values in force."""
        with self._lock:
            self._settings = dataclasses.replace(self._settings, **changes)
            self._settings_changed = True
        self._loop.nudge()

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
            self.post(protocol.pong_message(message.get("t")), droppable=True)
        elif kind == "snapshot":
            wanted, problems = protocol.parse_config({"quality": message.get("quality", 95)})
            for problem in problems:
                self._refuse(f"snapshot {problem}")
            if wanted:
                self.post(SnapshotRequest(wanted["quality"]), droppable=True)
        elif kind == "app":
            self._handle_app(message["value"])

    def _handle_app(self, value: Any) -> None:
        """An ``app`` message's value to the Streamer's handler (reader thread); a problem it
        reports, or the lack of a handler, goes back as an ``error``."""
        handler = self._on_app
        problem = _NO_APP_HANDLER if handler is None else handler(self, value)
        if problem is not None:
            self._refuse(problem)

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
        self._loop.nudge()

    # The sender thread

    def _run(self) -> None:
        # A message the fan-out began and the link still holds is written before anything
        # else that follows (the Close of a closing connection), or cut with the link.
        try:
            self._loop.run(self)
        except ConnectionClosedError:
            pass  # the connection went away; the transport reports it
        except Exception:
            logger.exception("sender for client %s failed", self.connection.id)
            self.connection.close(CloseCode.INTERNAL_ERROR, "internal error")

    # The loop's output (ViewerOutput; sender thread)

    def unsent_bytes(self) -> int | None:
        return self._link.unsent_bytes()

    def ready(self, may_block: bool) -> tuple[Variant, float] | None:
        if may_block:
            self.connection.flush()  # the rest of a message the fan-out began
            self._flush_control()
            if self._paused:
                return None
            settings = self._settings
        else:
            with self._lock:
                if self._outbox or self._settings_changed or self._paused:
                    return None
                settings = self._settings
            if self._announced is None:
                return None
        self._sending = settings
        return settings.variant, settings.fps

    def send(
        self, encoded: EncodedFrame, variant: Variant, skipped: int, round_: FanOutRound | None
    ) -> int | None:
        settings = self._sending
        quality = self._announced_quality(encoded.passed_through, variant)
        adaptive = self._adaptive
        rung = 0 if adaptive is None else adaptive.rung
        if (encoded.width, encoded.height, quality, self._version, rung) != self._announced:
            if round_ is not None:
                return None  # metadata first: the sender does it
            self._send_metadata((encoded.width, encoded.height), quality, settings)
        connection = self.connection
        with_data = settings.data and encoded.data_json is not None
        if round_ is None:
            if settings.frame_info:
                connection.send_text(protocol.encode_message(self._frame_info(encoded, skipped)))
            if with_data:
                assert encoded.data_json is not None
                connection.send_text(protocol.data_message_text(encoded.seq, encoded.data_json))
            connection.send_binary(encoded.data)
            return 0
        message = round_.wire(_frame_message, encoded)
        if settings.frame_info or with_data:  # the frame's texts and its JPEG in one write
            texts = []
            if settings.frame_info:
                text = protocol.encode_message(self._frame_info(encoded, skipped))
                texts.append(Connection.text_message(text))
            if with_data:
                texts.append(round_.wire(_data_message, encoded))  # made once a round
            return connection.try_send_messages(*texts, message)
        return connection.try_send_messages(message)

    def stalled(self) -> None:
        logger.info("dropping client %s: it stopped reading", self.connection.id)
        self.connection.abort()

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
            if isinstance(message, SnapshotRequest):
                self._send_snapshot(message.quality)
            elif isinstance(message, str):  # an app message, encoded by the application
                with self._lock:
                    self._app_queued -= 1
                self.connection.send_text(message)
            else:
                self.connection.send_text(protocol.encode_message(message))
        self._send_changed_settings()

    def _send_changed_settings(self) -> None:
        with self._lock:
            changed, self._settings_changed = self._settings_changed, False
        if changed:
            self._version += 1
            settings = self._settings
            self._adapt(settings)
            self._loop.restart_clock()
            self._loop.variant(settings.variant)
            variant = self._loop.sending
            assert variant is not None
            latest = self._camera.latest()
            width, height = (
                (latest.width, latest.height) if latest is not None
                else (self._camera.width, self._camera.height)
            )
            if self._adaptive is not None and latest is not None:
                self._adaptive.prepare(
                    self._loop.given or variant, latest, self._effective_fps(settings),
                    time.monotonic(),
                )
            passed = latest is not None and self._cache.passes_through(latest, variant)
            size = fit_size(width, height, variant.width, variant.height)
            self._send_metadata(size, self._announced_quality(passed, variant), settings)

    def _adapt(self, settings: ClientSettings) -> None:
        """Adaptation on or off as ``settings`` say (a controller kept while it stays on)."""
        if not settings.adapt:
            self._adaptive = None
        elif self._adaptive is None:
            self._adaptive = LinkController(
                self._link, default_quality=self._cache.default_quality,
                default_max_bytes=self._cache.default_max_bytes, proxied=self._proxied,
            )
        self._loop.set_controller(self._adaptive)

    def _announced_quality(self, passed_through: bool, variant: Variant) -> int | None:
        """The metadata's ``quality``: None for the source's own JPEGs, else the one used."""
        if passed_through:
            return None
        return self._cache.default_quality if variant.quality is None else variant.quality

    def _effective_fps(self, settings: ClientSettings) -> float:
        return min(settings.fps, self._camera.fps)

    def _send_metadata(
        self, size: tuple[int, int], quality: int | None, settings: ClientSettings
    ) -> None:
        adaptive = self._adaptive
        rung = 0 if adaptive is None else adaptive.rung
        self._announced = (size[0], size[1], quality, self._version, rung)
        given = self._loop.sending
        message = protocol.metadata_message(
            width=size[0],
            height=size[1],
            fps=self._effective_fps(settings),
            quality=quality,
            max_bytes=given.max_bytes if given is not None else settings.max_bytes,
            frame_info=settings.frame_info,
            data=settings.data,
            paused=self._paused,
            **adapt_fields(adaptive),
            **self._describe_camera(),
        )
        self.connection.send_text(protocol.encode_message(message))

    def _frame_info(self, encoded: EncodedFrame, skipped: int) -> dict[str, Any]:
        return protocol.frame_message(
            seq=encoded.seq,
            captured_at=encoded.captured_at,
            skipped=skipped,
            size=len(encoded.data),
            width=encoded.width,
            height=encoded.height,
            quality=encoded.quality,
        )

    def _send_snapshot(self, quality: int | None) -> None:
        variant = Variant(quality=quality, max_bytes=self._settings.max_bytes)
        encoded = take_snapshot(self._camera, self._cache, variant)
        if isinstance(encoded, SnapshotFailure):
            error = protocol.error_message(_SNAPSHOT_ERRORS[encoded])
            self.connection.send_text(protocol.encode_message(error))
            return
        message = protocol.snapshot_message(
            seq=encoded.seq,
            width=encoded.width,
            height=encoded.height,
            quality=encoded.quality,
            size=len(encoded.data),
            captured_at=encoded.captured_at,
        )
        self.connection.send_text(protocol.encode_message(message))
        self.connection.send_binary(encoded.data)
