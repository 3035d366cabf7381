"""A server-side TLS channel on a plain socket, safe for one reader and many writers.

Python's :class:`ssl.SSLSocket` lets one thread sit in ``SSL_read`` while another calls
``SSL_write`` on the same ``SSL`` object. OpenSSL does not support that: when a TLS 1.3 peer
sends a KeyUpdate, the reader writes the answer from inside ``SSL_read`` while a sender is in
``SSL_write``, and the stream breaks ("bad record mac", a reset). :class:`TlsChannel` runs
the TLS state machine on memory buffers (``ssl.MemoryBIO`` + :class:`ssl.SSLObject`) instead:

* Every call into the ``SSLObject`` and its buffers happens under one lock (``_tls_lock``),
  held only while encrypting or decrypting, never during socket I/O. One connection's TLS state
  is driven by one thread at a time.
* The reader receives raw bytes from the socket *outside* that lock, then feeds them in.
* TLS records are written to the socket in the order they were produced. Whatever the TLS
  engine produces (a sender's records, or the reader's KeyUpdate answers, session tickets and
  alerts) is appended to one outgoing buffer, and only the holder of ``_write_lock`` moves bytes
  from that buffer to the socket, holding it until they are written. A thread that releases
  ``_write_lock`` checks the buffer again, so output the reader left while a sender held the
  lock is never stranded. The reader does not wait for a sender, unless its own output has
  backed up beyond ``_MAX_READER_BACKLOG`` (a peer that asks for key updates and never reads).
* A non-blocking write (:meth:`TlsChannel.try_sendall`) that the socket takes only in part
  keeps the rest of its ciphertext (:attr:`TlsChannel.pending`) ahead of that buffer and
  releases the lock; the next blocking writer (:meth:`TlsChannel.sendall`, called with no data
  to write only that) writes it first. The reader leaves it to that writer too, unless its own
  output has backed up as above.
* A write waits at most ``wait_limit`` for another thread's write, so a watchdog that needs to
  write is never stuck behind a stalled one.

The channel knows nothing about WebSocket or HTTP. Thread roles: one reader (the thread that
ran :meth:`handshake`) calls :meth:`recv_into`; any number of threads call :meth:`sendall`
(or :meth:`try_sendall`, which never waits).
Shutting the socket down (``socket.shutdown``) wakes both. :func:`make_ssl_context` builds the
server's context and says in words which certificate or key file is wrong.
"""

from __future__ import annotations

import io
import os
import re
import socket
import ssl
import threading
import time
from typing import cast

from .. import logs
from ..errors import ServerError

__all__ = ["TlsChannel", "make_ssl_context"]

logger = logs.get_logger(__name__)

_RECV_SIZE = 65536  # raw bytes read from the socket at a time
_ENCRYPT_SIZE = 65536  # plaintext encrypted per lock hold: the reader waits at most this long
# The reader's own output (KeyUpdate answers...) waiting behind a blocked sender, beyond which the
# reader stops reading until it is written: a peer cannot grow it by not reading.
_MAX_READER_BACKLOG = 262144
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class TlsChannel:
    """Server-side TLS over the connected plain socket ``sock``.

    Args:
        sock: The accepted TCP socket. Its timeout applies to the channel's socket calls.
        context: A server :class:`ssl.SSLContext`.
        wait_limit: The longest a write waits for another thread's write to finish, in seconds
            (None: no limit). Whoever sheds stalled peers (the caller's watchdog) may itself
            need to write; this keeps it from waiting forever behind a stalled write.
    """

    def __init__(
        self, sock: socket.socket, context: ssl.SSLContext, wait_limit: float | None = None
    ) -> None:
        self.sock = sock
        self._wait_limit = -1.0 if wait_limit is None else wait_limit  # Lock.acquire's timeout
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._tls_lock = threading.Lock()  # guards _tls, _incoming and _outgoing
        self._write_lock = threading.Lock()  # held while moving _outgoing to the socket
        self._broken: BaseException | None = None  # a socket write failed: no more writes
        self._eof = False
        #: ``time.monotonic()`` when the socket write in progress started, or None. A write
        #: blocked for too long means the peer does not read; the caller may shut it down.
        self.write_started: float | None = None
        # Ciphertext a non-blocking write left (it goes before _outgoing), guarded by
        # _write_lock, and when it was left (None: nothing left).
        self._pending: memoryview | None = None
        self.pending_since: float | None = None

    @property
    def backlog(self) -> int:
        """Bytes of TLS records produced but not yet handed to the socket (besides
        :attr:`pending`)."""
        with self._tls_lock:
            return self._outgoing.pending

    @property
    def pending(self) -> int:
        """Bytes of ciphertext a :meth:`try_sendall` left, to be written before anything else
        (0: none). Any thread; a snapshot."""
        rest = self._pending
        return 0 if rest is None else len(rest)

    def handshake(self) -> None:
        """Run the server side of the TLS handshake; the caller bounds it (socket timeout, or
        shutting the socket down at a deadline).

        Raises:
            ssl.SSLError: the peer is not speaking TLS, or the handshake failed (any alert the
                TLS engine produced has been sent, best effort).
            OSError: the socket failed, timed out, or reached EOF (``ConnectionAbortedError``).
        """
        while True:
            failure: ssl.SSLError | None = None
            with self._tls_lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                except ssl.SSLError as exc:
                    failure, done = exc, False
            if failure is not None:
                self._flush_quietly()  # the alert, if any; never plaintext
                raise failure
            self._flush()
            if done:
                return
            data = self.sock.recv(_RECV_SIZE)
            if not data:
                raise ConnectionAbortedError("EOF during the TLS handshake")
            with self._tls_lock:
                self._incoming.write(data)

    def recv_into(self, buffer: bytearray | memoryview) -> int:
        """Reader thread: decrypt into ``buffer``; 0 at EOF (close_notify or TCP EOF).

        Output the TLS engine produces while reading (KeyUpdate answers, alerts) is written to
        the socket in order with the senders' records; it waits for a blocked sender only once
        more than ``_MAX_READER_BACKLOG`` bytes of it are waiting.

        Raises:
            ssl.SSLError: the peer sent a bad record (the connection is unusable).
            OSError: the socket failed or timed out.
        """
        if not len(buffer):
            return 0
        while True:
            failure: ssl.SSLError | None = None
            with self._tls_lock:
                try:
                    # with a buffer, read() returns the count (typeshed says bytes)
                    count: int | None = cast(int, self._tls.read(len(buffer), buffer))
                except ssl.SSLWantReadError:
                    count = None
                except ssl.SSLZeroReturnError:  # close_notify
                    count = 0
                except ssl.SSLError as exc:  # a bad record: the engine queued an alert
                    failure, count = exc, None
                produced = self._outgoing.pending
            if produced:
                self._flush_quietly(wait=produced > _MAX_READER_BACKLOG)
            if failure is not None:
                raise failure
            if count is not None:
                return count
            if self._eof:
                return 0
            data = self.sock.recv(_RECV_SIZE)
            if not data:
                self._eof = True  # a TCP EOF without close_notify ends the stream as well
                return 0
            with self._tls_lock:
                self._incoming.write(data)

    def sendall(self, *chunks: bytes | bytearray | memoryview) -> None:
        """Encrypt ``chunks`` and write them completely, in order, as one unit, after the rest
        of a :meth:`try_sendall` (:attr:`pending`) and any output produced before them; with no
        ``chunks``, write only those.

        Thread-safe. Waits (up to ``wait_limit``) while another thread writes.

        Raises:
            TimeoutError: another thread's write did not finish within ``wait_limit``.
            OSError: the socket write failed (then every later call fails too: a record stream
                cut in the middle cannot continue), or the channel is unusable.
        """
        if not self._write_lock.acquire(timeout=self._wait_limit):
            raise TimeoutError("TLS write: another write is stalled")
        try:
            queued = 0
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                for start in range(0, len(view), _ENCRYPT_SIZE):
                    piece = view[start : start + _ENCRYPT_SIZE]
                    with self._tls_lock:
                        self._check_writable()
                        self._tls.write(piece)  # a memory BIO takes it all at once
                    queued += len(piece)
                    if queued >= _ENCRYPT_SIZE:
                        self._write_outgoing_locked()
                        queued = 0
            self._write_outgoing_locked()
        finally:
            self._write_lock.release()
        self._flush()

    def try_sendall(self, *chunks: bytes | memoryview) -> int | None:
        """Encrypt ``chunks`` (one message) and write them without blocking, if no other write
        is in progress and nothing is :attr:`pending`.

        For the fan-out's fast path. Once encrypted, the records must go out whole and in
        order, so a write that the socket takes only in part (or not at all) is not undone: the
        rest of the ciphertext is kept (:attr:`pending`) and the next :meth:`sendall` writes it
        first. The write lock is released either way.

        Returns:
            None if another thread is writing or a rest is pending (nothing was done); else
            how many bytes of ciphertext are kept (:attr:`pending`; 0: all written).

        Raises:
            OSError: the socket write failed (every later call fails too), or the channel is
                unusable.
        """
        if not self._write_lock.acquire(blocking=False):
            return None
        left = 1  # (nothing to flush after an early return)
        try:
            if self._pending is not None:
                return None
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                for start in range(0, len(view), _ENCRYPT_SIZE):
                    with self._tls_lock:
                        self._check_writable()
                        self._tls.write(view[start : start + _ENCRYPT_SIZE])
            with self._tls_lock:
                out = self._outgoing.read()  # with any output the reader left: in order
            try:
                n = self.sock.send(out, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                n = 0
            except BaseException as exc:
                self._broken = exc
                raise
            left = len(out) - n
            if left:
                self._pending = memoryview(out)[n:]
                self.pending_since = time.monotonic()
        finally:
            self._write_lock.release()
        if not left:
            self._flush()  # output the reader produced meanwhile
        return left

    def _check_writable(self) -> None:
        if self._broken is not None:
            raise BrokenPipeError(f"TLS channel is broken: {self._broken!r}")

    def _write_outgoing_locked(self) -> None:
        """Move the :attr:`pending` rest, then everything produced so far, to the socket; the
        caller holds ``_write_lock``."""
        rest = self._pending
        if rest is not None:
            self._check_writable()
            self._write_raw(rest)
            self._pending = self.pending_since = None
        with self._tls_lock:
            self._check_writable()
            data = self._outgoing.read()
        if data:
            self._write_raw(data)

    def _write_raw(self, data: bytes | memoryview) -> None:
        """Write TLS records to the socket (blocking), stamped for the watchdog; a failure
        breaks the channel for good. The caller holds ``_write_lock``."""
        self.write_started = time.monotonic()
        try:
            self.sock.sendall(data)
        except BaseException as exc:
            self._broken = exc
            raise
        finally:
            self.write_started = None

    def _flush(self, wait: bool = False) -> None:
        """Write pending output unless another thread holds the write lock (it will write it:
        every holder checks again after releasing) or a :meth:`try_sendall` left a rest (the
        next :meth:`sendall` writes it, then this output); with ``wait``, wait for that lock
        and write both."""
        while True:
            with self._tls_lock:
                if not self._outgoing.pending:
                    return
            if self._pending is not None and not wait:
                return
            if not self._write_lock.acquire(timeout=self._wait_limit if wait else 0):
                return
            try:
                self._write_outgoing_locked()
            finally:
                self._write_lock.release()

    def _flush_quietly(self, wait: bool = False) -> None:
        """:meth:`_flush` for the reader: a failed write is remembered, not raised (the reader
        learns of a dead socket from its own recv)."""
        try:
            self._flush(wait)
        except OSError as exc:
            logger.debug("TLS output not sent: %r", exc)

    def makefile(self) -> io.BufferedReader:
        """A buffered binary reader over :meth:`recv_into` (for the reader thread only)."""
        return io.BufferedReader(_TlsRawReader(self))


class _TlsRawReader(io.RawIOBase):
    """Raw stream adapter so ``io.BufferedReader`` (readline, read, read1) works on a channel."""

    def __init__(self, channel: TlsChannel) -> None:
        self._channel = channel

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        return self._channel.recv_into(buffer)


def make_ssl_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """Build the server's single TLS context (TLS 1.2+), loading the certificate chain now.

    Args:
        certfile: PEM file with the certificate (chain), and the private key if ``keyfile``
            is not given.
        keyfile: PEM file with the (unencrypted) private key.

    Raises:
        ServerError: a file is missing or unreadable, holds no PEM certificate / private key,
            the key is encrypted or does not match the certificate; the message names the file
            and says which of these it is.
    """
    for path in (certfile, keyfile):
        if path is not None and not os.path.isfile(path):
            raise ServerError(f"TLS file not found: {path}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # No TLS 1.3 session tickets. They come after the handshake, while the client already
    # writes its request, and a client that reads and writes its TLS socket from two threads
    # (websockets' sync client does) then loses that request now and then: its connect hangs
    # until its own timeout (1 in ~500 in our tests). Resuming a session saves a reconnecting
    # viewer ~2 ms of handshake; streams are long-lived.
    ctx.num_tickets = 0
    try:
        # A password callback that refuses: OpenSSL would otherwise prompt on the terminal.
        ctx.load_cert_chain(certfile, keyfile, password=_refuse_password)
    except (OSError, ValueError, _EncryptedKey) as exc:
        raise ServerError(_tls_file_problem(certfile, keyfile, exc)) from exc
    return ctx


class _EncryptedKey(Exception):
    """Internal: the private key wants a password."""


def _refuse_password() -> str:
    raise _EncryptedKey


def _tls_file_problem(certfile: str, keyfile: str | None, exc: BaseException) -> str:
    """Say which TLS file is bad and why, in words (not ``[SSL] PEM lib (_ssl.c:3905)``)."""
    key_path = keyfile or certfile
    try:
        with open(certfile, "rb") as f:
            cert_text = f.read()
        key_text = cert_text
        if keyfile is not None:
            with open(keyfile, "rb") as f:
                key_text = f.read()
    except OSError as err:
        return f"cannot read TLS file {err.filename}: {err.strerror}"
    if b"-----BEGIN CERTIFICATE-----" not in cert_text:
        return (f"TLS certificate file {certfile} holds no PEM certificate "
                f"(no '-----BEGIN CERTIFICATE-----' line)")
    if not re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", key_text):
        if keyfile is None:
            return (f"TLS certificate file {certfile} holds no PEM private key: give the key "
                    f"file too (keyfile=..., --keyfile)")
        return f"TLS key file {keyfile} holds no PEM private key"
    if isinstance(exc, _EncryptedKey) or b"ENCRYPTED" in key_text:
        return f"TLS private key {key_path} is encrypted: give an unencrypted key"
    try:
        ssl.create_default_context(cafile=certfile)
    except (OSError, ValueError):
        return f"TLS certificate file {certfile} holds a damaged PEM certificate"
    if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
        return f"TLS private key {key_path} does not belong to the certificate in {certfile}"
    return f"TLS private key {key_path} is damaged, or of a kind this OpenSSL cannot use"
