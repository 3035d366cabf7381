"""An open WebSocket connection: sending, the closing handshake, keepalive state.

A :class:`Connection` is given its :class:`~camstream.ws.link.Link`, a frozen
:class:`~camstream.ws.limits.Limits` and its address's shares (budget, log budget), never the
server. Application threads send; the handler thread feeds it what the reader saw
(:meth:`Connection.frame_received`, :meth:`Connection.close_received`, ...); the watchdog calls
:meth:`Connection.keepalive_ping`. The connection owns its close codes (the peer's and ours) and
its closing deadline.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from .. import logs
from ..errors import ConnectionClosedError
from ..ratelimit import KeyedLogBudget
from .budget import AddressBudget, ConnectionBudget
from .frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    close_payload,
    frame_header,
    valid_close_code,
)
from .http import Request
from .limits import Limits
from .link import Link

__all__ = ["Connection"]

_JOIN_LIMIT = 65536  # payloads up to this size are joined with their header: one sendall


class Connection:
    """One open WebSocket connection.

    Created by the server after the 101 response; the application receives it in
    :meth:`Application.on_open` and may keep it until :meth:`Application.on_close`. The send
    methods, :meth:`close` and :meth:`abort` are thread-safe.

    Args:
        address: The client address it counts against (its address budgets and log lines).
        address_budget: What the address's connections may send together (None: no limit).
        client_log: The per-address budget of per-connection log lines (see :meth:`log`).
    """

    def __init__(
        self,
        link: Link,
        request: Request,
        subprotocol: str | None,
        conn_id: int,
        limits: Limits,
        *,
        address: str = "",
        address_budget: AddressBudget | None = None,
        client_log: KeyedLogBudget | None = None,
    ) -> None:
        self.id = conn_id
        self.request = request
        self.subprotocol = subprotocol
        self.remote_address = request.remote_address
        self.address = address
        self.session: object | None = None  # free slot for the application
        self._close_code: int | None = None
        self._close_reason = ""
        self._sent_close_code: int | None = None
        self._link = link
        self._limits = limits
        self._state_lock = threading.Lock()
        self._close_started = False  # a Close was queued/sent by us or received from the peer
        self._closing = threading.Event()  # set with _close_started: wakes a waiting reader
        self._close_frame: bytes | None = None  # queued Close, written by whoever holds send_lock
        self._opened = False  # on_open was called → on_close is owed
        self._last_recv = time.monotonic()
        self._ping_payload: bytes | None = None
        self._ping_sent_at: float | None = None
        self._budget = ConnectionBudget(limits, address_budget)  # the reader thread's only
        self._client_log = client_log
        self._logged: bool | None = None  # decided by the first log() line

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.remote_address} open={self.is_open}>"

    @property
    def close_code(self) -> int | None:
        """The code of the peer's Close (1005 if it had none), or None if none arrived."""
        return self._close_code

    @property
    def close_reason(self) -> str:
        """The reason of the peer's Close ("" if none); client text: log it through
        :func:`camstream.logs.printable`."""
        return self._close_reason

    @property
    def sent_close_code(self) -> int | None:
        """The code of a Close we started (not an echo of the peer's), or None."""
        return self._sent_close_code

    @property
    def is_open(self) -> bool:
        """True until a Close was sent or received, or the socket failed."""
        return not self._close_started and self._link.writable

    def unsent_bytes(self) -> int | None:
        """Bytes written that the peer has not acknowledged yet, plus those the link still holds
        (the rest of a non-blocking write), or None if unknown.

        A sender that wants "latest frame only" semantics looks at this before writing the next
        frame: a large value means the viewer (or its network) is behind, so the frame is better
        skipped than queued. Linux only (``SIOCOUTQ``); None elsewhere or on error.
        """
        return self._link.unsent_bytes()

    # Sending

    def send_text(self, text: str) -> None:
        """Send one TEXT message.

        Raises:
            ConnectionClosedError: the connection is closed, or the send failed or timed out.
        """
        if not isinstance(text, str):
            raise TypeError(f"send_text() needs str, not {type(text).__name__}")
        self._send(OP_TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes | bytearray | memoryview) -> None:
        """Send one BINARY message (e.g. a whole JPEG); same contract as :meth:`send_text`."""
        if isinstance(data, memoryview):
            data = data.cast("B")
        elif not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"send_binary() needs a bytes-like object, not {type(data).__name__}")
        self._send(OP_BINARY, data)

    def send_ping(self, payload: bytes = b"") -> None:
        """Send a PING with ``payload`` (at most 125 bytes); same contract as :meth:`send_text`."""
        if len(payload) > 125:
            raise ValueError("ping payload is limited to 125 bytes")
        self._send(OP_PING, bytes(payload))

    def _send(self, opcode: int, payload: bytes | bytearray | memoryview) -> None:
        header = frame_header(opcode, len(payload))
        chunks = (header + bytes(payload),) if len(payload) <= _JOIN_LIMIT else (header, payload)
        link = self._link
        with link.send_lock:
            try:
                if self._close_started:
                    raise ConnectionClosedError(f"connection {self.id} is closed")
                link.sendall(*chunks)
            finally:
                if self._close_frame is not None:  # close() queued it while we were writing
                    self._flush_close_locked()

    # Sending without blocking (the fan-out's fast path): messages framed once, sent to many

    @staticmethod
    def binary_message(data: bytes | bytearray | memoryview) -> bytes:
        """``data`` as one whole BINARY message on the wire (header and payload).

        A server's frames are not masked, so these bytes are the same for every connection:
        build them once and hand them to any number of :meth:`try_send_messages`.
        """
        return frame_header(OP_BINARY, len(data)) + data

    @staticmethod
    def text_message(text: str) -> bytes:
        """``text`` as one whole TEXT message on the wire (see :meth:`binary_message`)."""
        payload = text.encode("utf-8")
        return frame_header(OP_TEXT, len(payload)) + payload

    def try_send_messages(self, *messages: bytes) -> int | None:
        """Write whole messages (from :meth:`binary_message` / :meth:`text_message`), in
        order and as one write, without blocking, if the connection is idle. Any thread.

        Returns:
            None if nothing was written: another thread is writing, an earlier message's rest
            is still to go, the connection is closing, or the kernel's buffer is full. Else the
            messages were written or begun, and the number is how many bytes the link still
            holds (:attr:`pending`; 0: all written), which the next send or :meth:`flush`
            writes before anything else.

        Raises:
            ConnectionClosedError: the write failed (the connection is then dead).
        """
        if self._close_started:
            return None
        return self._link.try_send(*messages)

    @property
    def pending(self) -> int:
        """Bytes of a message :meth:`try_send_messages` began that are not written yet."""
        return self._link.pending

    def flush(self) -> None:
        """Write what :meth:`try_send_messages` left, if anything (blocking, bounded by
        ``send_timeout``); returns at once if nothing is pending.

        Raises:
            ConnectionClosedError: the write failed or timed out, or the connection is dead.
        """
        self._link.flush()

    # Closing

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake: send a Close frame, then end the connection.

        Thread-safe and idempotent; returns at once. The Close frame is written now if the socket
        can take it, else by the thread currently sending (after its frame) or by a helper
        thread. The reader then waits up to ``close_timeout`` for the peer's Close or EOF; after
        that the watchdog shuts the socket down.

        Args:
            code: 1000-1003, 1007-1011, 1013 or 3000-4999.
            reason: Cut to 123 bytes of UTF-8 on a character boundary.

        Raises:
            ValueError: ``code`` cannot be sent (a programming error); nothing else.
        """
        if not valid_close_code(code, sending=True):
            raise ValueError(f"invalid close code {code}")
        if not self._queue_close(close_payload(code, reason)):
            return
        self._sent_close_code = code
        lock = self._link.send_lock
        if not lock.acquire(blocking=False):
            # Someone is writing (a frame, a pong, a keepalive ping). A frame sender writes the
            # queued Close after its frame; for the others, a helper waits for the lock. Whoever
            # comes second finds nothing queued.
            threading.Thread(
                target=logs.thread_target(self._flush_close),
                name=f"camstream-close-{self.id}",
                daemon=True,
            ).start()
            return
        try:
            if self._close_frame is None or not self._link.writable:
                return
            if self._link.writable_now():
                self._flush_close_locked()
                return
        finally:
            lock.release()
        # The socket buffer is full: write the Close from a helper so the caller does not block;
        # the watchdog bounds that write by send_timeout.
        threading.Thread(
            target=logs.thread_target(self._flush_close),
            name=f"camstream-close-{self.id}",
            daemon=True,
        ).start()

    def abort(self) -> None:
        """Shut the socket down without a Close frame (the peer sees 1006). Never raises."""
        self._close_started = True
        self._closing.set()
        self._link.abort()

    def _queue_close(self, payload: bytes) -> bool:
        """Queue our Close frame and arm the closing deadline; False if closing already began."""
        with self._state_lock:
            if self._close_started:
                return False
            self._close_started = True
            self._close_frame = frame_header(OP_CLOSE, len(payload)) + payload
        self._closing.set()
        self._link.set_deadline(time.monotonic() + self._limits.close_timeout)
        return True

    def _flush_close(self) -> None:
        """Write the queued Close frame, waiting for the send lock (bounded)."""
        limits = self._limits
        if self._link.send_lock.acquire(timeout=limits.send_timeout + limits.close_timeout):
            try:
                self._flush_close_locked()
            finally:
                self._link.send_lock.release()
        else:
            self._link.abort()

    def _flush_close_locked(self) -> None:
        frame, self._close_frame = self._close_frame, None
        if frame is not None and self._link.writable:
            try:
                self._link.sendall(frame)
            except ConnectionClosedError:
                return
            # Nothing may follow a Close: half-close, so the peer sees EOF right after it and
            # no RST from a later close() can destroy the Close frame in its receive buffer.
            self._link.half_close()

    def keepalive_ping(self, now: float) -> None:
        """Watchdog thread: send a keepalive ping if that cannot block; else retry next tick."""
        link = self._link
        if not link.send_lock.acquire(blocking=False):
            return
        try:
            if self._close_started or not link.writable or not link.writable_now():
                return
            self._ping_payload, self._ping_sent_at = os.urandom(4), now
            link.sendall(frame_header(OP_PING, 4) + self._ping_payload)
        except ConnectionClosedError:
            pass
        finally:
            link.send_lock.release()

    # The reader side: called by the connection's handler thread only.

    @property
    def link(self) -> Link:
        """The connection's :class:`~camstream.ws.link.Link` (socket, send lock, TLS channel)."""
        return self._link

    @property
    def limits(self) -> Limits:
        """What this connection may cost (its send and close timeouts, its own budget)."""
        return self._limits

    @property
    def closing(self) -> bool:
        """True once a Close was queued or sent by us, or received from the peer."""
        return self._close_started

    @property
    def opened(self) -> bool:
        """True once :meth:`Application.on_open` was called (then ``on_close`` is owed)."""
        return self._opened

    def mark_opened(self) -> None:
        """Handler thread: ``on_open`` is about to run, so ``on_close`` will be owed."""
        self._opened = True

    @property
    def last_received(self) -> float:
        """When the last frame arrived (``time.monotonic()``); the keepalive's idle clock."""
        return self._last_recv

    @property
    def ping_outstanding(self) -> bool:
        """True while a keepalive ping has not been answered."""
        return self._ping_sent_at is not None

    def frame_received(self, opcode: int, payload_length: int) -> tuple[str | None, float]:
        """Handler thread: note a frame's arrival and charge it to the budgets.

        See :meth:`~camstream.ws.budget.ConnectionBudget.charge`: a message costs one however
        many fragments it comes in, each ping and pong one, every frame its bytes.

        Returns:
            ``(refusal, wait)``: the reason to close with 1008 (this connection's budget is
            spent) or None, and the seconds to :meth:`wait` for the address's turn.
        """
        self._last_recv = time.monotonic()
        return self._budget.charge(opcode, payload_length)

    def wait(self, seconds: float) -> None:
        """Handler thread: wait ``seconds`` (the address budget's turn); returns early once the
        connection is closing."""
        if seconds > 0:
            self._closing.wait(seconds)

    def answer_ping(self, payload: bytes) -> None:
        """Handler thread: PONG with the exact ``payload`` bytes (#4), unless closing.

        Raises:
            ConnectionClosedError: the write failed or timed out.
        """
        if not self._close_started:
            self._link.send(frame_header(OP_PONG, len(payload)) + payload)

    def pong_received(self, payload: bytes) -> None:
        """Handler thread: a PONG arrived; it answers the keepalive ping if the payload matches."""
        if payload == self._ping_payload:
            self._ping_sent_at = self._ping_payload = None

    def close_received(self, code: int, reason: str) -> bool:
        """Handler thread: the peer's Close arrived (``code`` 1005: it had none); record it and
        echo its code (an empty Close empty).

        Returns:
            True if the peer started the closing handshake (we echoed), False if it answered
            our own Close (then the server ends the TCP connection first, RFC 6455 7.1.1).
        """
        self._close_code, self._close_reason = code, reason
        if not self._queue_close(b"" if code == 1005 else close_payload(code, "")):
            return False
        self._flush_close()
        return True

    def fail(self, code: int, reason: str) -> None:
        """Handler thread: fail the connection with a Close ``code`` (unless closing already)."""
        if self._queue_close(close_payload(code, reason)):
            self._sent_close_code = code
            self._flush_close()

    # Log lines about the connection

    def log(self, log: logging.Logger, level: int, msg: str, *args: Any) -> None:
        """``log.log(level, msg, *args)`` through the log budget of the connection's address.

        Any thread. The first line decides for the connection's whole life: when its address
        has used its budget (a burst, then about one connection a second; see
        :class:`~camstream.ratelimit.KeyedLogBudget`) this line and every later one of the
        connection are left out, and the next connection of the address that is logged says
        how many were. A connect/close storm from one address so costs a bounded number of
        lines, and each connection is logged whole (opened and closed) or not at all.
        """
        if not log.isEnabledFor(level):
            return
        with self._state_lock:
            if self._logged is None:
                skipped = 0 if self._client_log is None else self._client_log.admit(self.address)
                self._logged = skipped is not None
                if skipped:
                    msg = msg + " (%d more connections from %s not logged)"
                    args = (*args, skipped, logs.printable(self.address))
            logged = self._logged
        if logged:
            log.log(level, msg, *args, stacklevel=2)
