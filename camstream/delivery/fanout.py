"""The fan-out fast path: one thread hands each new frame to the idle viewers.

Waking a viewer's own thread for every frame costs far more CPU than the frame's ``send`` (the
wake, the GIL hand-over, the context switch). So one :class:`FanOut` thread, woken once a
frame, walks the viewers, WebSocket sessions and MJPEG streams alike, and offers them the frame
(:meth:`~camstream.delivery.session.ClientSession.offer`,
:meth:`~camstream.delivery.mjpeg.MjpegStream.offer`).
A viewer that is due by its own :class:`~camstream.delivery.pacing.Pacer` and idle (nothing queued,
no
settings change, no ``frame`` info, not behind, its loop and its send lock free) gets the whole
message in one non-blocking ``send`` (``Link.try_send``; on TLS, encrypted for that connection
first); nothing is woken. The bytes are built once per JPEG and shared by every viewer of it:
the WebSocket message (header + JPEG; server frames are unmasked) and the MJPEG part
(boundary, headers, JPEG). The fan-out encodes only the default variants and the one most
viewers use; a viewer of another size is encoded for by its own thread, in parallel.

Everything else goes to the viewer's own thread exactly as without the fast path: a viewer
that is behind, text messages, metadata, snapshots. A partial write keeps the connection's
send lock held and leaves the rest to that viewer's thread, which finishes it (blocking, under
the watchdog's send timeout) before anything else is written, so messages keep their order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from .. import logs
from ..capture.camera import CameraThread
from ..capture.frame import Frame
from ..errors import ConnectionClosedError
from ..ws.frames import OP_BINARY, frame_header
from .encoder import EncodeCache, EncodedFrame, Variant
from .mjpeg import part as mjpeg_part

if TYPE_CHECKING:
    from ..ws import Connection

__all__ = ["FanOut", "FanOutRound", "FastViewer"]

logger = logs.get_logger(__name__)

_IDLE_WAKE_S = 1.0  # the thread looks at its stop flag at least this often


class FastViewer(Protocol):
    """A viewer the fan-out serves: a WebSocket session or an MJPEG stream."""

    def offer(self, frame: Frame, round_: FanOutRound) -> bool:
        """Send ``frame`` now if idle and due; False: the viewer's own thread should look."""

    def wake(self) -> None:
        """Wake the viewer's own thread (it takes the frame itself if it wants it)."""


class FanOutRound:
    """One frame's fan-out: each JPEG's encode, WebSocket message and MJPEG part, made once."""

    def __init__(self) -> None:
        self._inline: frozenset[Variant] | None = None  # the variants encoded here if need be
        self._encoded: dict[tuple[int, Variant], tuple[Frame, EncodedFrame]] = {}
        self._messages: dict[int, tuple[bytes, bytes]] = {}  # id(jpeg) -> (jpeg, message)
        self._parts: dict[int, tuple[bytes, bytes]] = {}  # id(jpeg) -> (jpeg, part)

    def encoded(self, cache: EncodeCache, frame: Frame, variant: Variant) -> EncodedFrame | None:
        """The JPEG of ``frame`` for ``variant``, asked of the cache once per round and variant.

        This thread encodes only the default variants and the most used one
        (:meth:`EncodeCache.encodes_inline`); for any other variant not made yet it returns
        None, and that viewer's own thread encodes it, in parallel with the fan-out, so a few
        viewers asking for their own size never delay everyone else's frame.
        """
        key = (id(frame), variant)
        entry = self._encoded.get(key)
        if entry is None or entry[0] is not frame:
            if self._inline is None:
                self._inline = cache.encodes_inline()
            if variant in self._inline:
                result: EncodedFrame | None = cache.get(frame, variant)
            else:
                result = cache.made(frame, variant)
            if result is None:
                return None  # (asked again for the next viewer: its thread may have made it)
            entry = self._encoded[key] = (frame, result)
        return entry[1]

    def message(self, data: bytes) -> bytes:
        """The BINARY message (header + ``data``) of ``data``, made once per round."""
        entry = self._messages.get(id(data))
        if entry is None or entry[0] is not data:
            entry = (data, frame_header(OP_BINARY, len(data)) + data)
            self._messages[id(data)] = entry
        return entry[1]

    def part(self, encoded: EncodedFrame) -> bytes:
        """The MJPEG multipart part of ``encoded``, made once per round."""
        data = encoded.data
        entry = self._parts.get(id(data))
        if entry is None or entry[0] is not data:
            entry = (data, mjpeg_part(data, encoded.captured_at))
            self._parts[id(data)] = entry
        return entry[1]

    def send(self, connection: Connection, data: bytes) -> tuple[bool, memoryview | None]:
        """Write ``data`` as one BINARY message without blocking, if the connection is idle.

        Returns:
            ``(sent, rest)`` as :meth:`camstream.ws.link.Link.try_send` (with ``rest``, the
            send lock is left held for the caller's sender thread, which writes the rest).
        """
        if connection.closing:
            return False, None
        return connection.link.try_send(self.message(data))


class FanOut:
    """The fan-out thread: :meth:`notify` once a frame; :meth:`start`, :meth:`stop` (joins)."""

    def __init__(
        self, camera: CameraThread, viewers: Callable[[], Sequence[FastViewer]]
    ) -> None:
        self._camera = camera
        self._viewers = viewers
        self._event = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=logs.thread_target(self._run), name="camstream-fanout", daemon=True
        )

    def start(self) -> FanOut:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """End the thread and join it. Idempotent; any thread."""
        self._stopping.set()
        self._event.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def notify(self) -> None:
        """A new frame is there (the camera's frame listener)."""
        self._event.set()

    def _run(self) -> None:
        last_seq = 0
        while not self._stopping.is_set():
            self._event.wait(_IDLE_WAKE_S)
            self._event.clear()
            frame = self._camera.latest()
            if self._stopping.is_set() or frame is None or frame.seq == last_seq:
                continue
            last_seq = frame.seq
            fan_out(frame, self._viewers())


def fan_out(frame: Frame, viewers: Sequence[FastViewer]) -> None:
    """Offer ``frame`` to every viewer; wake the thread of each one that did not take it."""
    round_ = FanOutRound()
    for viewer in viewers:
        try:
            taken = viewer.offer(frame, round_)
        except ConnectionClosedError:
            taken = False  # the viewer's own thread sees the connection closed
        except Exception:
            logger.exception("fan-out to %r failed", viewer)
            taken = False
        if not taken:
            viewer.wake()
