"""The socket of one connection: whole writes under a lock, stamped for the watchdog.

A :class:`Link` is what the reader, the senders and the watchdog share: every write goes
through :meth:`Link.sendall` with :attr:`Link.send_lock` held; a failed write kills the link and
shuts the socket down; :meth:`Link.abort` and :meth:`Link.half_close` are ordered against the
descriptor's close (:meth:`Link.close_fd`). With TLS the bytes go through a
:class:`~camstream.ws.tls.TlsChannel`; :attr:`Link.sock` stays the plain socket.
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
from .tls import TlsChannel

__all__ = ["Link", "writable_now"]

_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)  # 0 where the platform has none: no fast path


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
    watchdog can shed a write that blocks for longer than ``send_timeout`` (or through
    :meth:`try_send`, which never blocks, and :meth:`finish_send` for what it left). Any
    failed write marks the link dead and shuts the socket down, so a half-written frame is never
    followed by another frame (defect #2).
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        self._fd_lock = threading.Lock()  # orders shutdown() against close(): no fd-reuse race
        self._send_started: float | None = None
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
        """Write ``chunks`` completely; the caller holds :attr:`send_lock`.

        Raises:
            ConnectionClosedError: the link is dead, or the write failed or timed out (the link
                is then dead).
        """
        if self.tls is not None:
            self._write(self.tls.sendall, *chunks)
        else:
            self._write(self._sendall_plain, *chunks)

    def _sendall_plain(self, *chunks: bytes | bytearray | memoryview) -> None:
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
        writes (KeyUpdate answers, alerts), which happen outside :meth:`sendall`."""
        started = self._send_started
        if started is None and self.tls is not None:
            started = self.tls.write_started
        return started

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
        """Bytes written that the peer has not acknowledged, or None (``SIOCOUTQ``, Linux)."""
        if _SIOCOUTQ is None:
            return None
        try:
            raw = fcntl.ioctl(self.sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
        except (OSError, ValueError):
            return None
        return int(struct.unpack("i", raw)[0])

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

    def try_send(self, data: bytes) -> tuple[bool, memoryview | None]:
        """Write ``data`` now without blocking, if nothing else is being written.

        For the fan-out's fast path. A busy send lock, a dead link or (plain TCP) a full
        kernel buffer gives ``(False, None)`` and nothing is written. On TLS, ``data`` is
        encrypted once the channel is free, and its records then go out whole whatever the
        kernel takes now.

        Returns:
            ``(sent, rest)``: ``sent`` is True if ``data`` was written (or, on TLS, encrypted),
            wholly or in part; ``rest`` is what is still to write. Then :attr:`send_lock` stays
            held, no other write can come between, and the caller must pass ``rest`` to
            :meth:`finish_send` (or give up with :meth:`abandon_send`).

        Raises:
            ConnectionClosedError: the write failed (the link is then dead).
        """
        if not _DONTWAIT or not self.send_lock.acquire(blocking=False):
            return False, None
        rest: memoryview | None = None
        try:
            if not self.writable:
                return False, None
            try:
                if self.tls is not None:
                    sent, rest = self.tls.try_sendall(data)
                    return sent, rest
                n = self.sock.send(data, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return False, None
            except (OSError, ValueError) as exc:
                self.abort()
                raise ConnectionClosedError(f"send failed: {exc}") from exc
            if n < len(data):
                rest = memoryview(data)[n:]
            return True, rest
        finally:
            if rest is None:
                self.send_lock.release()

    def finish_send(self, rest: memoryview) -> None:
        """Write the ``rest`` :meth:`try_send` left (blocking, bounded by ``send_timeout``) and
        release :attr:`send_lock`; same errors as :meth:`sendall`."""
        try:
            if self.tls is None:
                self.sendall(rest)
            else:
                self._write(self.tls.finish_write, rest)  # ciphertext: not encrypted again
        finally:
            self.send_lock.release()

    def abandon_send(self) -> None:
        """Give up the ``rest`` :meth:`try_send` left: the message is cut, so the link is
        aborted (nothing may follow half a message), and :attr:`send_lock` released."""
        self.abort()
        if self.tls is not None:
            self.tls.abandon_write()
        self.send_lock.release()

    def writable_now(self) -> bool:
        """Whether a small write would not block (for paths that must not block)."""
        return writable_now(self.sock)

    def close_fd(self, close: Callable[[], None]) -> None:
        """Run ``close()`` (which closes the descriptor) ordered against :meth:`abort` and
        :meth:`half_close`, and mark the descriptor closed: no shutdown of a recycled fd."""
        with self._fd_lock:
            self._fd_closed = True
            close()
