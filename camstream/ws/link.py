"""The socket of one connection: whole writes under a lock, stamped for the watchdog.

A :class:`Link` is what the reader, the senders and the watchdog share: every write goes
through :meth:`Link.sendall` with :attr:`Link.send_lock` held; a failed write kills the link and
shuts the socket down; :meth:`Link.abort` and :meth:`Link.half_close` are ordered against the
descriptor's close (:meth:`Link.close_fd`). With TLS the bytes go through a
:class:`~camstream.ws.tls.TlsChannel`; :attr:`Link.sock` stays the plain socket.

Bytes in flight belong to the link. A non-blocking write (:meth:`Link.try_send`, the fan-out's)
that the kernel takes only in part leaves the rest of its message in the link's outgoing buffer
(:attr:`Link.pending`) and releases the lock; whoever takes the lock next writes that rest before
anything else (the rule :class:`~camstream.ws.tls.TlsChannel` follows for its records), and
:meth:`Link.flush` writes it for a thread that has nothing else to send. So a message is never
interleaved with another, and a message cut by a failed write is never followed by anything:
the link is dead from then on.
"""

from __future__ import annotations

import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

try:  # SIOCOUTQ (= TIOCOUTQ on Linux): unacknowledged bytes in a TCP socket's send queue
    import fcntl
    import termios

    _SIOCOUTQ: int | None = termios.TIOCOUTQ if sys.platform.startswith("linux") else None
except (ImportError, AttributeError):  # Windows, or a platform without the ioctl
    _SIOCOUTQ = None

from ..errors import ConnectionClosedError
from .tcpinfo import peer_has_closed
from .tls import TlsChannel

__all__ = ["Link", "writable_now"]

_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)  # 0 where the platform has none: no fast path
_SENDMSG = hasattr(socket.socket, "sendmsg")  # several chunks in one non-blocking write


def writable_now(sock: socket.socket) -> bool:
    """Return whether a small write to ``sock`` would not block (used by non-blocking paths)."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            return any(ev & select.POLLOUT for _, ev in poller.poll(0))
        return bool(select.select([], [sock], [], 0)[1])
    except (OSError, ValueError):
        return False


class Link:
    """The socket of one accepted connection, shared by its reader, its senders and the watchdog.

    Created and registered by the handler thread (:meth:`WebSocketServer.add_link`) before the
    TLS handshake; its :attr:`deadline` bounds the handshake, later the closing handshake.

    Every write goes through :meth:`sendall` with :attr:`send_lock` held, and is stamped so the
    watchdog can shed a write that blocks for longer than ``send_timeout``; or through
    :meth:`try_send`, which never blocks and leaves what the kernel did not take in the link's
    outgoing buffer, written first by the next holder of the lock (or by :meth:`flush`). The
    lock is held only while bytes are being written. Any failed write marks the link dead and
    shuts the socket down, so a half-written frame is never followed by another frame (#2).
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        self._fd_lock = threading.Lock()  # orders shutdown() against close(): no fd-reuse race
        self._send_started: float | None = None
        # The rest of a message try_send began (plain TCP; TLS keeps its ciphertext itself),
        # and when it was left; guarded by send_lock.
        self._pending: bytes | memoryview | None = None
        self._pending_since: float | None = None
        self.tls: TlsChannel | None = None  # set by the handler after the TLS handshake
        self.deadline: float | None = deadline  # handshake or closing deadline (monotonic)
        self.writable = True
        self.timed_out = False
        self._fd_closed = False
        self.done = threading.Event()  # set when the handler thread has cleaned up
        self.owner = threading.current_thread()  # the handler thread (it creates the link)

    def set_deadline(self, when: float | None) -> None:
        """Arm (a ``time.monotonic()`` value) or clear (None) the deadline the watchdog
        enforces: the handshake's, then the closing handshake's. Only the transport's phase
        changes call it (accept, request line, open, Close queued)."""
        self.deadline = when

    def sendall(self, *chunks: bytes | bytearray | memoryview) -> None:
        """Write the rest of a message :meth:`try_send` began, if any, then ``chunks``,
        completely; the caller holds :attr:`send_lock`.

        Raises:
            ConnectionClosedError: the link is dead, or the write failed or timed out (the link
                is then dead).
        """
        if self.tls is not None:
            self._write(self.tls.sendall, *chunks)
        else:
            self._write(self._sendall_plain, *chunks)

    def _sendall_plain(self, *chunks: bytes | bytearray | memoryview) -> None:
        rest = self._pending
        if rest is not None:
            self.sock.sendall(rest)
            self._pending = self._pending_since = None
        for chunk in chunks:
            self.sock.sendall(chunk)

    def _write(
        self, write: Callable[..., None], *chunks: bytes | bytearray | memoryview
    ) -> None:
        """Run one blocking ``write(*chunks)``, stamped for the watchdog; a failure kills the
        link (the caller holds :attr:`send_lock`)."""
        if not self.writable:
            raise ConnectionClosedError("connection is closed")
        self._send_started = time.monotonic()
        try:
            write(*chunks)
        except (OSError, ValueError) as exc:
            self.abort()
            why = "send timed out" if self.timed_out else f"send failed: {exc}"
            raise ConnectionClosedError(why) from exc
        finally:
            self._send_started = None

    @property
    def send_started(self) -> float | None:
        """When the write in progress started (monotonic), or None; the watchdog sheds the
        link when it is older than ``send_timeout``. With TLS this includes the reader's own
        writes (KeyUpdate answers, alerts), which happen outside :meth:`sendall`. With no write
        in progress, bytes left in the outgoing buffer count as a write that started when they
        were left: a rest nobody drains is bounded like a blocked write."""
        started = self._send_started
        tls = self.tls
        if started is None and tls is not None:
            started = tls.write_started
        if started is None and self.writable:
            started = self._pending_since if tls is None else tls.pending_since
        return started

    @property
    def pending(self) -> int:
        """Bytes of a begun message not yet handed to the kernel (0: none). Any thread; a
        snapshot (the sender of a non-blocking write, or the next writer, changes it)."""
        if self.tls is not None:
            return self.tls.pending
        rest = self._pending
        return 0 if rest is None else len(rest)

    def half_close(self) -> None:
        """``shutdown(SHUT_WR)`` on the raw socket (see :meth:`abort`); never raises."""
        self.writable = False
        with self._fd_lock:
            if not self._fd_closed:
                try:
                    socket.socket.shutdown(self.sock, socket.SHUT_WR)
                except OSError:
                    pass

    def unsent_bytes(self) -> int | None:
        """Bytes the peer has not taken yet: those in the kernel's send queue that it has not
        acknowledged (``SIOCOUTQ``, Linux), plus the link's :attr:`pending` bytes; None where
        the kernel cannot tell."""
        if _SIOCOUTQ is None:
            return None
        try:
            raw = fcntl.ioctl(self.sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
        except (OSError, ValueError):
            return None
        queued = int(struct.unpack("i", raw)[0])
        if self.tls is not None:
            return queued + self.tls.pending
        rest = self._pending  # (inline: this runs per viewer-frame)
        return queued if rest is None else queued + len(rest)

    def abort(self) -> None:
        """Mark dead and ``shutdown(SHUT_RDWR)``: wakes the reader and any blocked sender.

        ``sock`` is always the plain TCP socket (TLS runs above it in :attr:`tls`), so this
        wakes a reader in ``recv`` and a sender in ``sendall`` alike. Idempotent, thread-safe,
        never raises.
        """
        self.writable = False
        with self._fd_lock:
            if self._fd_closed:
                return
            try:
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def send(self, *chunks: bytes | bytearray | memoryview) -> None:
        """Take :attr:`send_lock` and :meth:`sendall` ``chunks``; same errors."""
        with self.send_lock:
            self.sendall(*chunks)

    def try_send(self, *chunks: bytes | memoryview) -> int | None:
        """Write one message (``chunks``, in order) without blocking, if the link is idle.

        For the fan-out's fast path. Nothing is written, and None returned, if another thread
        holds :attr:`send_lock`, a message's rest is still :attr:`pending`, the link is dead or
        (plain TCP) the kernel's buffer is full. Else the message is the link's: what the kernel
        did not take now stays in the outgoing buffer, and the next writer (any
        :meth:`sendall`, or :meth:`flush`) writes it before anything else; the lock is released
        either way. On TLS, the message is encrypted once the channel is free, and its records
        then go out whole whatever the kernel takes now.

        Returns:
            None if nothing was written; else how many bytes the link still holds (0: the whole
            message was written; careful, 0 is falsy).

        Raises:
            ConnectionClosedError: the write failed (the link is then dead).
        """
        if not _DONTWAIT or not self.send_lock.acquire(blocking=False):
            return None
        try:
            if not self.writable or self._pending is not None:
                return None
            try:
                if self.tls is not None:
                    return self.tls.try_sendall(*chunks)
                if len(chunks) == 1:  # the common case, kept short: it runs per viewer-frame
                    data = chunks[0]
                    sent = self.sock.send(data, _DONTWAIT)
                    if sent == len(data):
                        return 0
                    return self._keep_rest(chunks, sent)
                return self._send_nowait(chunks)
            except (BlockingIOError, InterruptedError):
                return None
            except (OSError, ValueError) as exc:
                self.abort()
                raise ConnectionClosedError(f"send failed: {exc}") from exc
        finally:
            self.send_lock.release()

    def _send_nowait(self, chunks: tuple[bytes | memoryview, ...]) -> int:
        """One non-blocking write of several ``chunks`` (plain TCP, :attr:`send_lock` held,
        nothing pending); returns the bytes kept. BlockingIOError: nothing was written."""
        if _SENDMSG:
            sent = self.sock.sendmsg(chunks, (), _DONTWAIT)
        else:
            chunks = (b"".join(chunks),)
            sent = self.sock.send(chunks[0], _DONTWAIT)
        return self._keep_rest(chunks, sent)

    def _keep_rest(self, chunks: tuple[bytes | memoryview, ...], sent: int) -> int:
        """Keep what the kernel did not take of ``chunks`` (``sent`` bytes it took); returns
        its length."""
        for i, chunk in enumerate(chunks):
            if sent < len(chunk):
                rest = memoryview(chunk)[sent:]
                later = chunks[i + 1:]
                self._pending = kept = b"".join((rest, *later)) if later else rest
                self._pending_since = time.monotonic()
                return len(kept)
            sent -= len(chunk)
        return 0

    def flush(self) -> None:
        """Write what :meth:`try_send` left of a message, if anything (blocking, bounded by
        ``send_timeout``); takes :attr:`send_lock`. Any thread; returns at once if nothing is
        pending.

        Raises:
            ConnectionClosedError: the write failed or timed out, or the link is dead.
        """
        if self.pending:
            with self.send_lock:
                if self.pending:
                    self.sendall()

    def peer_closed(self) -> bool:
        """Whether the peer is gone (Linux: the connection was reset; elsewhere False: a
        write notices). For connections that never read after the request (an MJPEG stream):
        their peer's leaving shows in no reader. Any thread, never raises."""
        return peer_has_closed(self.sock) is True

    def writable_now(self) -> bool:
        """Whether a small write would not block (for paths that must not block): nothing is
        pending and the kernel's buffer has room."""
        return not self.pending and writable_now(self.sock)

    def close_fd(self, close: Callable[[], None]) -> None:
        """Run ``close()`` (which closes the descriptor) ordered against :meth:`abort` and
        :meth:`half_close`, and mark the descriptor closed: no shutdown of a recycled fd."""
        with self._fd_lock:
            self._fd_closed = True
            close()
