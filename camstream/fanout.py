"""The fan-out fast path: one thread hands each new frame to the idle WebSocket viewers.

Waking a viewer's sender thread for every frame costs far more CPU than the frame's ``send``
(the wake, the GIL hand-over, the context switch). So one :class:`FanOut` thread, woken once a
frame, walks the WebSocket viewers and offers them the frame
(:meth:`~camstream.session.ClientSession.offer`). A viewer that is due by its own
:class:`~camstream.pacing.Pacer`, idle (nothing queued, no settings change, no ``frame`` info,
not behind, its loop and its send lock free) and on a plain TCP connection gets the whole
WebSocket message in one non-blocking ``send``; nothing is woken. The framed message (header +
JPEG) is built once per JPEG and shared by every viewer of it (server frames are unmasked).

Everything else goes to the viewer's own sender thread exactly as without the fast path: a
viewer that is behind, text messages, metadata, snapshots, TLS, MJPEG streams. A partial write
keeps the connection's send lock held and leaves the rest to that viewer's sender thread, which
finishes it (blocking, under the watchdog's send timeout) before anything else is written, so
messages keep their order.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .camera import CameraThread
from .encoder import EncodeCache, EncodedFrame, Variant
from .errors import ConnectionClosedError
from .frame import Frame
from .ws.frames import OP_BINARY, frame_header

if TYPE_CHECKING:
    from .session import ClientSession
    from .ws import Connection

__all__ = ["FanOut", "FanOutRound"]

logger = logging.getLogger(__name__)

_IDLE_WAKE_S = 1.0  # the thread looks at its stop flag at least this often

_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class FanOutRound:
    """One frame's fan-out: the framed message of each JPEG, built once, and the sends."""

    def __init__(self) -> None:
        self._messages: dict[int, tuple[bytes, bytes]] = {}  # id(jpeg) -> (jpeg, message)
        self._encoded: dict[tuple[int, Variant], tuple[Frame, EncodedFrame]] = {}

    def encoded(self, cache: EncodeCache, frame: Frame, variant: Variant) -> EncodedFrame:
        """``cache.get(frame, variant)``, asked once per round and variant."""
        key = (id(frame), variant)
        entry = self._encoded.get(key)
        if entry is None or entry[0] is not frame:
            entry = self._encoded[key] = (frame, cache.get(frame, variant))
        return entry[1]

    def message(self, data: bytes) -> bytes:
        """The BINARY message (header + ``data``) of ``data``, made once per round."""
        entry = self._messages.get(id(data))
        if entry is None or entry[0] is not data:
            entry = (data, frame_header(OP_BINARY, len(data)) + data)
            self._messages[id(data)] = entry
        return entry[1]

    def send(self, connection: Connection, data: bytes) -> tuple[bool, memoryview | None]:
        """Write ``data`` as one BINARY message without blocking, if the connection is idle.

        Returns:
            ``(sent, rest)``: ``sent`` is True if the message was written, wholly or in part;
            ``rest`` is the part still to write, for which the send lock is left held (the
            caller's sender thread writes it and releases the lock).
        """
        link = connection.link
        if link.tls is not None or not _DONTWAIT:
            return False, None
        if not link.send_lock.acquire(blocking=False):
            return False, None
        rest: memoryview | None = None
        try:
            if connection.closing or not link.writable:
                return False, None
            message = self.message(data)
            try:
                n = link.sock.send(message, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return False, None
            except (OSError, ValueError) as exc:
                link.abort()
                raise ConnectionClosedError(f"send failed: {exc}") from exc
            if n < len(message):
                rest = memoryview(message)[n:]
            return True, rest
        finally:
            if rest is None:
                link.send_lock.release()


class FanOut:
    """The fan-out thread: :meth:`notify` once a frame; :meth:`start`, :meth:`stop` (joins)."""

    def __init__(
        self, camera: CameraThread, sessions: Callable[[], Sequence[ClientSession]]
    ) -> None:
        self._camera = camera
        self._sessions = sessions
        self._event = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camstream-fanout", daemon=True)

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
            fan_out(frame, self._sessions())


def fan_out(frame: Frame, sessions: Sequence[ClientSession]) -> None:
    """Offer ``frame`` to every session; wake the sender of each one that did not take it."""
    round_ = FanOutRound()
    for session in sessions:
        try:
            taken = session.offer(frame, round_)
        except ConnectionClosedError:
            taken = False  # the sender sees the connection closed
        except Exception:
            logger.exception("fan-out to client %s failed", session.connection.id)
            taken = False
        if not taken:
            session.wake()
