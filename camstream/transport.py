"""WebSocket transport: repaired subclasses of PyPI ``websocket-server`` 0.6.4.

camstream's design builds on ``websocket_server.WebsocketServer`` / ``WebSocketHandler``. That
package cannot send binary frames, writes with ``send()`` instead of ``sendall()``, parses only
half of RFC 6455, hijacks logging at import time and falls back to plaintext when TLS fails (see
``research/websocket-server.md``, defects #1-#20). This module keeps its ``socketserver``
plumbing, its thread-per-connection model and its public API names, and replaces everything else.
Nothing outside this module should import ``websocket_server``.

Threads:

* ``serve_forever()`` (the caller's thread) accepts connections.
* One daemon *handler thread* per accepted socket runs the TLS handshake, the HTTP handshake and
  then the frame reader. Every :class:`Application` callback for that connection runs in it.
* Any number of application threads call :meth:`Connection.send_binary` and friends; frames are
  written whole with ``sendall`` under a per-connection lock.
* One *watchdog* thread per server (started by ``__init__``, stopped and joined by
  ``server_close()``) sheds sockets whose ``sendall`` is blocked for longer than
  ``send_timeout``, enforces handshake and closing deadlines, and sends keepalive pings.

Admission (the accepting thread, before a socket costs a thread): a cap on connections in all,
per client address, and on those that have not shown the application's credential; when full, the
connection that has waited longest for its request is shed (see
:meth:`WebSocketServer.verify_request`). The request's first line must arrive within
``first_line_timeout`` of the accept, its whole head within ``handshake_timeout``.

TLS (defect #15): with ``ssl_context``, a connection's TLS runs in a
:class:`~camstream.tlslink.TlsChannel` (``ssl.MemoryBIO`` + ``SSLObject``) above the plain
socket, never in an ``SSLSocket``: an ``SSL`` object driven by a reader in ``SSL_read`` and a
sender in ``SSL_write`` at once corrupts the stream when a TLS 1.3 peer sends a KeyUpdate. The
channel lets one thread at a time touch the TLS state and writes records in the order they were
produced. The handler thread runs the TLS handshake (within the handshake deadline), ``rfile``
decrypts through the channel and :meth:`_Link.sendall` encrypts through it; ``_Link.sock`` stays
the plain socket (shutdown, ``SIOCOUTQ``, the watchdog).
"""

from __future__ import annotations

import base64
import dataclasses
import http
import ipaddress
import logging
import os
import re
import select
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time

try:  # SIOCOUTQ (= TIOCOUTQ on Linux): unacknowledged bytes in a TCP socket's send queue
    import fcntl
    import termios

    _SIOCOUTQ: int | None = termios.TIOCOUTQ if sys.platform.startswith("linux") else None
except (ImportError, AttributeError):  # Windows, or a platform without the ioctl
    _SIOCOUTQ = None
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from .errors import ConfigError, ConnectionClosedError, ServerError
from .frames import (
    CONTROL_OPCODES,
    DATA_OPCODES,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    accept_key,
    close_payload,
    frame_header,
    unmask,
    valid_close_code,
)
from .httpmsg import TOKEN, HandshakeRejected, Headers, Request, http_head
from .ratelimit import LogBudget, RateLimiter
from .tlslink import TlsChannel

# websocket_server calls logging.basicConfig() at import time (defect #17): remember the root
# logger's handlers and level, import, and undo whatever the import added.
_root = logging.getLogger()
_saved_handlers, _saved_level = list(_root.handlers), _root.level
try:
    import websocket_server
finally:
    for _handler in _root.handlers[:]:
        if _handler not in _saved_handlers:
            _root.removeHandler(_handler)
    _root.setLevel(_saved_level)
    del _root, _saved_handlers, _saved_level

__all__ = [
    "Application",
    "BaseApplication",
    "Connection",
    "HandshakeRejected",
    "Headers",
    "HttpExchange",
    "Request",
    "WebSocketHandler",
    "WebSocketServer",
    "make_ssl_context",
]

logger = logging.getLogger(__name__)
_refusal_log = LogBudget()  # handshake refusals and flood closes: hostile clients cause them

_EVICTION_SLACK = 16  # shed connections may overlap new ones by this many until they are gone
_JOIN_LIMIT = 65536  # payloads up to this size are joined with their header: one sendall
_MAX_FRAGMENTS = 1024  # a client message may come in at most this many frames


def _writable_now(sock: socket.socket) -> bool:
    """Return whether a small write to ``sock`` would not block (used by non-blocking paths)."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            return any(ev & select.POLLOUT for _, ev in poller.poll(0))
        return bool(select.select([], [sock], [], 0)[1])
    except (OSError, ValueError):
        return False


class _HTTPError(Exception):
    """Internal: refuse the request with this status (a malformed or unsupported request)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


class _Lost(Exception):
    """Internal: the peer went away (EOF, reset, timeout, or our own shutdown)."""


class _Fail(Exception):
    """Internal: the peer broke RFC 6455; fail the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


_METHODS = ("GET", "HEAD")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+;=]+)(:[0-9]{0,5})?")
"""A ``Host`` value (RFC 9110 section 7.2: uri-host [":" port]); no comma, so two joined values
(``a, b``) are refused, as are spaces and userinfo."""
_ABSOLUTE_SCHEMES = ("http", "https", "ws", "wss")


def _origin_form(
    target: str, items: list[tuple[str, str]]
) -> tuple[str, list[tuple[str, str]]]:
    """Check the request target and the Host header (RFC 9112 section 3.2).

    Returns the target as a path (origin-form) and the header list. An absolute-form target
    (``http://host:port/path``, as sent to proxies) is accepted: its authority replaces the
    ``Host`` header, as RFC 9112 section 3.2.2 requires, so every Host rule applies to it.

    Raises:
        _HTTPError: 400 for no ``Host``, several, an empty or malformed one, or a target that is
            neither a path nor an absolute http(s)/ws(s) URL.
    """
    hosts = [value for name, value in items if name.lower() == "host"]
    if not hosts:
        raise _HTTPError(400, "missing Host header")
    if len(hosts) > 1:
        raise _HTTPError(400, "more than one Host header")
    if not _HOST.fullmatch(hosts[0]):
        raise _HTTPError(400, "invalid Host header" if hosts[0] else "empty Host header")
    if target.startswith("/"):
        return target, items
    try:
        url = urlsplit(target)
    except ValueError:  # "http://[::1/"
        raise _HTTPError(400, "malformed request target") from None
    if url.scheme.lower() not in _ABSOLUTE_SCHEMES or not target.lower().startswith(
        url.scheme.lower() + "://"
    ):
        raise _HTTPError(400, "request target must be a path or an absolute http:// URL")
    if not _HOST.fullmatch(url.netloc):  # also refuses userinfo ("user@host")
        raise _HTTPError(400, "invalid authority in the request target")
    items = [(n, v) for n, v in items if n.lower() != "host"] + [("Host", url.netloc)]
    return (url.path or "/") + ("?" + url.query if url.query else ""), items


# -- Sockets, connections and HTTP exchanges ---------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Slot:
    """Admission bookkeeping of one accepted socket, from accept until its thread has finished.

    Created by :meth:`WebSocketServer.verify_request` in the accepting thread; the fields change
    under the server's registry lock.
    """

    address: str | None  # what it counts against (None: exempt), see counted_address()
    accepted: float  # time.monotonic() at accept
    link: _Link | None = None  # set once its handler thread has registered it
    pending: bool = True  # the request has not been read yet: the eviction candidates
    authenticated: bool = False  # the request carried the credential (Application.authenticated)
    evicted: bool = False


class _Link:
    """The socket of one accepted connection, shared by its reader, its senders and the watchdog.

    Every write goes through :meth:`sendall` with :attr:`send_lock` held, and is stamped so the
    watchdog can shed a write that blocks for longer than ``send_timeout``. Any failed write
    marks the link dead and shuts the socket down, so a half-written frame is never followed by
    another frame (defect #2).
    """

    def __init__(self, server: WebSocketServer, sock: socket.socket, deadline: float) -> None:
        self.server = server
        self.sock = sock
        self.send_lock = threading.Lock()
        self._fd_lock = threading.Lock()  # orders shutdown() against close(): no fd-reuse race
        self._send_started: float | None = None
        self.tls: TlsChannel | None = None  # set by the handler after the TLS handshake
        self.deadline: float | None = deadline  # handshake or closing deadline (monotonic)
        self.writable = True
        self.timed_out = False
        self.fd_closed = False
        self.conn: Connection | None = None
        self.slot: _Slot | None = None  # set by WebSocketServer._add_link
        self.done = threading.Event()  # set when the handler thread has cleaned up
        self.owner = threading.current_thread()  # the handler thread (it creates the link)

    def sendall(self, *chunks: bytes | bytearray | memoryview) -> None:
        """Write ``chunks`` completely; the caller holds :attr:`send_lock`.

        Raises:
            ConnectionClosedError: the link is dead, or the write failed or timed out (the link
                is then dead).
        """
        if not self.writable:
            raise ConnectionClosedError("connection is closed")
        self._send_started = time.monotonic()
        try:
            if self.tls is not None:
                self.tls.sendall(*chunks)
            else:
                for chunk in chunks:
                    self.sock.sendall(chunk)
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
            if not self.fd_closed:
                try:
                    socket.socket.shutdown(self.sock, socket.SHUT_WR)
                except OSError:
                    pass

    def unsent_bytes(self) -> int | None:
        """See :meth:`Connection.unsent_bytes`."""
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
            if self.fd_closed:
                return
            try:
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            except OSError:
                pass


class Connection:
    """One open WebSocket connection.

    Created by the server after the 101 response; the application receives it in
    :meth:`Application.on_open` and may keep it until :meth:`Application.on_close`. The send
    methods, :meth:`close` and :meth:`abort` are thread-safe.
    """

    def __init__(self, link: _Link, request: Request, subprotocol: str | None, conn_id: int):
        self.id = conn_id
        self.request = request
        self.subprotocol = subprotocol
        self.remote_address = request.remote_address
        self.close_code: int | None = None  # from the peer's Close; 1005 if it had no code
        self.close_reason = ""
        self.sent_close_code: int | None = None  # the code of a Close we started (not an echo)
        self.session: object | None = None  # free slot for the application
        self._link = link
        self._state_lock = threading.Lock()
        self._close_started = False  # a Close was queued/sent by us or received from the peer
        self._close_frame: bytes | None = None  # queued Close, written by whoever holds send_lock
        self._opened = False  # on_open was called → on_close is owed
        self._last_recv = time.monotonic()
        self._ping_payload: bytes | None = None
        self._ping_sent_at: float | None = None
        server = link.server
        self._budget = (  # used by the reader thread only
            None if server.message_rate is None
            else RateLimiter(server.message_rate, server.message_burst)
        )
        self._client: dict[str, Any] = {
            "id": conn_id,
            "handler": self,
            "address": request.remote_address,
        }

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.remote_address} open={self.is_open}>"

    @property
    def is_open(self) -> bool:
        """True until a Close was sent or received, or the socket failed."""
        return not self._close_started and self._link.writable

    def unsent_bytes(self) -> int | None:
        """Bytes sent that the peer has not acknowledged yet, or None if unknown.

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

    def send_message(self, message: str | bytes | bytearray | memoryview) -> None:
        """websocket-server API: ``str`` goes out as TEXT, bytes-like as BINARY (defect #1)."""
        if isinstance(message, str):
            self.send_text(message)
        else:
            self.send_binary(message)

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
        self.sent_close_code = code
        lock = self._link.send_lock
        if not lock.acquire(blocking=False):
            # Someone is writing (a frame, a pong, a keepalive ping). A frame sender writes the
            # queued Close after its frame; for the others, a helper waits for the lock. Whoever
            # comes second finds nothing queued.
            threading.Thread(
                target=self._flush_close, name=f"camstream-close-{self.id}", daemon=True
            ).start()
            return
        try:
            if self._close_frame is None or not self._link.writable:
                return
            if _writable_now(self._link.sock):
                self._flush_close_locked()
                return
        finally:
            lock.release()
        # The socket buffer is full: write the Close from a helper so the caller does not block;
        # the watchdog bounds that write by send_timeout.
        threading.Thread(
            target=self._flush_close, name=f"camstream-close-{self.id}", daemon=True
        ).start()

    def abort(self) -> None:
        """Shut the socket down without a Close frame (the peer sees 1006). Never raises."""
        self._close_started = True
        self._link.abort()

    def _queue_close(self, payload: bytes) -> bool:
        """Queue our Close frame and arm the closing deadline; False if closing already began."""
        with self._state_lock:
            if self._close_started:
                return False
            self._close_started = True
            self._close_frame = frame_header(OP_CLOSE, len(payload)) + payload
        self._link.deadline = time.monotonic() + self._link.server.close_timeout
        return True

    def _flush_close(self) -> None:
        """Write the queued Close frame, waiting for the send lock (bounded)."""
        server = self._link.server
        if self._link.send_lock.acquire(timeout=server.send_timeout + server.close_timeout):
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

    def _keepalive_ping(self, now: float) -> None:
        """Watchdog thread: send a keepalive ping if that cannot block; else retry next tick."""
        link = self._link
        if not link.send_lock.acquire(blocking=False):
            return
        try:
            if self._close_started or not link.writable or not _writable_now(link.sock):
                return
            self._ping_payload, self._ping_sent_at = os.urandom(4), now
            link.sendall(frame_header(OP_PING, 4) + self._ping_payload)
        except ConnectionClosedError:
            pass
        finally:
            link.send_lock.release()


class HttpExchange:
    """A plain (non-upgrade) HTTP GET or HEAD handed to :meth:`Application.on_http`.

    Respond with :meth:`send_response`, or with :meth:`start_stream` followed by any number of
    :meth:`write` calls (multipart MJPEG). Every response carries ``Connection: close``; the
    transport closes the socket when ``on_http`` returns. Writes are bounded by ``send_timeout``.
    For a HEAD request (:attr:`head_only`) only the status line and headers go out: bodies and
    :meth:`write` data are dropped, so a route answers HEAD by doing what it does for GET (a
    streaming route should return right after :meth:`start_stream`).
    """

    def __init__(self, link: _Link, request: Request) -> None:
        self.request = request
        self.head_only = request.method == "HEAD"
        self._link = link
        self.started = False

    def send_response(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "text/plain; charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Send a complete response with ``Content-Length`` and ``Connection: close``.

        Raises:
            RuntimeError: a response was already started.
            ConnectionClosedError: the write failed or timed out.
        """
        head = {
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
            "Connection": "close",
        }
        head.update(headers or {})
        self._start(status, head)
        self.write(body)

    def start_stream(self, status: int, headers: Mapping[str, str]) -> None:
        """Send the status line and ``headers`` (plus ``Connection: close``), no Content-Length."""
        self._start(status, {**headers, "Connection": "close"})

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` completely.

        Raises:
            ConnectionClosedError: the client went away, or the write blocked > send_timeout.
        """
        if not self.started:
            raise RuntimeError("write() before send_response()/start_stream()")
        if data and not self.head_only:
            with self._link.send_lock:
                self._link.sendall(data)

    def unsent_bytes(self) -> int | None:
        """See :meth:`Connection.unsent_bytes`."""
        return self._link.unsent_bytes()

    def _start(self, status: int, headers: Mapping[str, str]) -> None:
        if self.started:
            raise RuntimeError("the response was already started")
        head = http_head(status, headers)
        self.started = True
        with self._link.send_lock:
            self._link.sendall(head)


# -- Application -------------------------------------------------------------------------------


class Application(Protocol):
    """What the server calls. Every callback runs in the connection's own handler thread."""

    def authorize(self, request: Request) -> None:
        """Called before the 101; raise :class:`HandshakeRejected` to refuse."""

    def on_open(self, conn: Connection) -> None:
        """Called after the 101 was sent, before any message is read."""

    def on_text(self, conn: Connection, text: str) -> None:
        """Called for each complete TEXT message."""

    def on_binary(self, conn: Connection, data: bytes) -> None:
        """Called for each complete BINARY message."""

    def on_close(self, conn: Connection) -> None:
        """Called once for every connection that got on_open, after it left the registry."""

    def on_http(self, exchange: HttpExchange) -> None:
        """Called for a GET that is not a WebSocket upgrade, and for a HEAD."""

    def authenticated(self, request: Request) -> bool:
        """Whether ``request`` carries the server's credential (e.g. a valid token).

        Called once the request head is read, before anything else. Only such connections may
        use the server's ``reserved_connections``. Optional: a missing method means False.
        """


class BaseApplication:
    """An :class:`Application` whose callbacks do nothing.

    ``on_http`` answers ``/`` with 426 Upgrade Required (``Sec-WebSocket-Version: 13``) and any
    other path with 404.
    """

    def authorize(self, request: Request) -> None:
        pass

    def on_open(self, conn: Connection) -> None:
        pass

    def on_text(self, conn: Connection, text: str) -> None:
        pass

    def on_binary(self, conn: Connection, data: bytes) -> None:
        pass

    def on_close(self, conn: Connection) -> None:
        pass

    def authenticated(self, request: Request) -> bool:
        return False

    def on_http(self, exchange: HttpExchange) -> None:
        if exchange.request.path == "/":
            exchange.send_response(
                426,
                b"This is a WebSocket endpoint.\n",
                headers={"Upgrade": "websocket", "Sec-WebSocket-Version": "13"},
            )
        else:
            exchange.send_response(404, b"Not Found\n")


# -- Handler -----------------------------------------------------------------------------------


class WebSocketHandler(websocket_server.WebSocketHandler):
    """Serves one accepted socket in its own thread: TLS, HTTP handshake, then frames.

    Replaces the base handler's TLS setup (#5), handshake (#8-#10), frame reader (#3, #4, #6, #7,
    #11, #18), send path (#1, #2) and termination (#12).
    """

    server: WebSocketServer
    request: socket.socket
    disable_nagle_algorithm = True  # StreamRequestHandler.setup() sets TCP_NODELAY (#20)

    def __init__(self, request: Any, client_address: Any, server: WebSocketServer) -> None:
        # Bypass WebSocketHandler.__init__: it calls ssl.wrap_socket and falls back to plaintext.
        self._send_lock = threading.Lock()  # base-class attribute, unused here
        self._link: _Link | None = None
        self.ws: Connection | None = None
        self.keep_alive = self.handshake_done = self.valid_client = False
        self._frag_opcode: int | None = None
        self._frag_chunks: list[bytes] = []
        self._frag_size = 0
        self._method = "GET"  # of the request being answered: no body in answers to HEAD
        socketserver.StreamRequestHandler.__init__(self, request, client_address, server)

    def setup(self) -> None:
        server = self.server
        self.request.settimeout(server.handshake_timeout)  # per operation, until the handshake
        # Registered first: the watchdog's handshake deadline covers the TLS handshake too.
        link = server._add_link(self.request)
        try:
            tls = None
            if server.ssl_context is not None:
                # TLS handshake in this thread; on failure the connection is dropped (the
                # exception goes to handle_error, logged at DEBUG): never plaintext.
                tls = TlsChannel(self.request, server.ssl_context, server.send_timeout)
                tls.handshake()
            socketserver.StreamRequestHandler.setup(self)
            if tls is not None:
                # From here on every byte goes through the channel (#15): rfile decrypts, and
                # the plaintext wfile is closed so nothing can write around TLS.
                self.rfile.close()
                self.wfile.close()
                self.rfile, link.tls = tls.makefile(), tls
        except BaseException:
            self.request.close()
            server._remove_link(link)
            raise
        self._link = link

    def handle(self) -> None:
        try:
            self.handshake()
            while self.keep_alive:
                self.read_next_message()
        except (_Lost, OSError) as exc:
            state = "open" if self.ws is not None and self.ws.is_open else "closing"
            logger.debug(
                "%s: connection lost (%s): %s", self._name, state, exc or type(exc).__name__
            )

    def finish(self) -> None:
        """Single cleanup (#12): shut down, close the fd, unregister, then ``on_close``."""
        link = self._link
        if link is None:
            self.request.close()
            return
        link.abort()
        # Wait until no sender is inside sendall (it fails fast after the shutdown) before the
        # fd is closed, so no thread ever writes to a recycled descriptor.
        got = link.send_lock.acquire(timeout=self.server.send_timeout + 1.0)
        try:
            with link._fd_lock:
                link.fd_closed = True
                try:
                    socketserver.StreamRequestHandler.finish(self)
                except (OSError, ValueError):
                    pass
                self.request.close()
        finally:
            if got:
                link.send_lock.release()
        self.server._remove_link(link)

    @property
    def _name(self) -> str:
        if self.ws is not None:
            return f"connection {self.ws.id}"
        return f"{self.client_address[0]}:{self.client_address[1]}"

    # -- HTTP handshake (#8, #9, #10) ----------------------------------------------------------

    def _readline(self, status: int, what: str) -> str:
        limit = self.server.max_request_line
        try:
            line = self.rfile.readline(limit + 1)
        except (OSError, ValueError) as exc:
            raise _Lost(f"during handshake: {exc!r}") from exc
        if not line.endswith(b"\n"):
            if len(line) > limit:
                raise _HTTPError(status, f"{what} too long")
            raise _Lost(
                "connection closed during the handshake" if line else "closed without a request"
            )
        return line.rstrip(b"\r\n").decode("latin-1")

    def _read_request(self) -> Request:
        line = self._readline(414, "request line")
        self.server._first_line_read(self._link)
        parts = line.split(" ")
        if len(parts) != 3 or not TOKEN.fullmatch(parts[0]) or not parts[2].startswith("HTTP/"):
            raise _HTTPError(400, "malformed request line")
        method, target, version = parts
        self._method = method
        items: list[tuple[str, str]] = []
        while True:
            line = self._readline(431, "header line")
            if not line:
                break
            if len(items) >= self.server.max_headers:
                raise _HTTPError(431, "too many header lines")
            name, sep, value = line.partition(":")
            if not sep or not TOKEN.fullmatch(name):
                raise _HTTPError(400, "malformed header line")
            items.append((name, value.strip(" \t")))
        if version != "HTTP/1.1":
            raise _HTTPError(505, "HTTP/1.1 required")
        if method not in _METHODS:
            raise _HTTPError(405, "only GET and HEAD are supported", {"Allow": "GET, HEAD"})
        target, items = _origin_form(target, items)
        path, _, query = target.partition("#")[0].partition("?")
        return Request(
            method=method,
            path=path,
            query={k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()},
            headers=Headers(items),
            remote_address=tuple(self.client_address[:2]),  # type: ignore[arg-type]
        )

    def _respond_error(self, status: int, message: str, headers: Mapping[str, str]) -> None:
        """Send an error response, then half-close and drain briefly so the client reads it."""
        body = (message + "\n").encode("utf-8", "replace")
        head = {
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Length": str(len(body)),
            "Connection": "close",
            **headers,
        }
        assert self._link is not None
        with self._link.send_lock:
            self._link.sendall(http_head(status, head) + (b"" if self._method == "HEAD" else body))
        # Lingering close: the unread rest of the request would make close() send an RST that
        # can destroy the response in the client's receive buffer.
        self._link.half_close()
        try:
            deadline = time.monotonic() + self.server.close_timeout
            for _ in range(64):
                self.request.settimeout(max(0.01, deadline - time.monotonic()))
                if not self.request.recv(4096) or time.monotonic() >= deadline:
                    break
        except (OSError, ValueError):
            pass

    def handshake(self) -> None:
        """Read the request; answer 101, an HTTP error, or hand a plain GET to ``on_http``."""
        server, link = self.server, self._link
        assert link is not None
        try:
            request = self._read_request()
            server._request_read(link, request)
            if request.method != "GET" or "websocket" not in request.headers.tokens("upgrade"):
                self._serve_http(request)
                return
            key, subprotocol = self._check_upgrade(request)
        except _HTTPError as err:
            logger.debug("%s: refused with %d: %s", self._name, err.status, err.message)
            self._respond_error(err.status, err.message, err.headers)
            return
        try:
            server.app.authorize(request)
        except HandshakeRejected as rej:
            _refusal_log.log(
                logger, logging.INFO, "%s: %s refused with %d: %s",
                self._name, request.path, rej.status, rej.message,
            )
            self._respond_error(
                rej.status, rej.message or http.HTTPStatus(rej.status).phrase, rej.headers
            )
            return
        except Exception:
            logger.exception("%s: authorize() raised", self._name)
            self._respond_error(500, "internal server error", {})
            return
        accept = accept_key(key)
        head = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": accept}
        if subprotocol is not None:
            head["Sec-WebSocket-Protocol"] = subprotocol
        with link.send_lock:
            link.sendall(http_head(101, head))
        # From here on reads block forever (the keepalive detects dead peers) and writes are
        # bounded by the watchdog: a socket timeout would break both (#13).
        self.request.settimeout(None)
        link.deadline = None
        self.handshake_done = self.valid_client = self.keep_alive = True
        self.ws = conn = server._open_connection(link, request, subprotocol)
        if server._deny_clients:
            deny = server._deny_clients
            conn.close(deny["status"], deny["reason"])
            return
        logger.debug("%s: open from %s, path %s", self._name, request.remote_address, request.path)
        conn._opened = True
        self._dispatch(server.app.on_open, conn)
        self._dispatch(server.new_client, conn._client, server)

    def _check_upgrade(self, request: Request) -> tuple[str, str | None]:
        headers = request.headers
        if "upgrade" not in headers.tokens("connection"):
            raise _HTTPError(400, "missing 'Connection: Upgrade'")
        if headers.get("sec-websocket-version", "").strip() != "13":
            raise _HTTPError(426, "unsupported WebSocket version", {"Sec-WebSocket-Version": "13"})
        key = headers.get("sec-websocket-key", "").strip()
        try:
            valid = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            valid = False
        if not valid:
            raise _HTTPError(400, "invalid Sec-WebSocket-Key")
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
        chosen = next((p for p in offered if p and p in self.server.subprotocols), None)
        return key, chosen

    def _serve_http(self, request: Request) -> None:
        link = self._link
        assert link is not None
        self.request.settimeout(None)  # writes are bounded by the watchdog
        link.deadline = None
        exchange = HttpExchange(link, request)
        try:
            self.server.app.on_http(exchange)
        except ConnectionClosedError as exc:
            logger.debug("%s: HTTP client went away: %s", self._name, exc)
            return
        except Exception:
            logger.exception("%s: on_http() raised", self._name)
        else:
            if exchange.started:
                return
            logger.error("%s: on_http() returned without a response", self._name)
        if not exchange.started:
            try:
                exchange.send_response(500, b"internal server error\n")
            except ConnectionClosedError:
                pass

    # -- Frames (#3, #4, #6, #7, #11, #18) -----------------------------------------------------

    def _read_exact(self, n: int) -> bytes:
        try:
            data = self.rfile.read(n)
        except (OSError, ValueError) as exc:
            raise _Lost(repr(exc)) from exc
        if len(data) < n:
            raise _Lost("EOF")
        return data

    def _read_frame(self) -> tuple[bool, int, bytes]:
        b1, b2 = self._read_exact(2)
        fin, opcode, length = bool(b1 & 0x80), b1 & 0x0F, b2 & 0x7F
        if b1 & 0x70:
            raise _Fail(1002, "reserved bits must be 0")
        if opcode not in DATA_OPCODES and opcode not in CONTROL_OPCODES:
            raise _Fail(1002, f"unknown opcode {opcode:#x}")
        if not b2 & 0x80:
            raise _Fail(1002, "client frames must be masked")
        if opcode in CONTROL_OPCODES and (not fin or length > 125):
            raise _Fail(1002, "control frames must be final and at most 125 bytes")
        if length == 126:
            (length,) = struct.unpack("!H", self._read_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read_exact(8))
            if length >> 63:
                raise _Fail(1002, "invalid frame length")
        if opcode in DATA_OPCODES and self._frag_size + length > self.server.max_message_size:
            # Checked before reading a single payload byte (#6).
            raise _Fail(1009, f"message exceeds {self.server.max_message_size} bytes")
        mask = self._read_exact(4)
        return fin, opcode, unmask(self._read_exact(length), mask)

    def read_next_message(self) -> None:
        """Read and handle one frame; clears ``keep_alive`` when the connection is done."""
        conn = self.ws
        assert conn is not None
        try:
            fin, opcode, payload = self._read_frame()
            conn._last_recv = time.monotonic()
            if opcode != OP_CLOSE and conn._budget is not None and not conn._budget.allow():
                # Every frame but Close costs the same: a ping flood costs a pong write per
                # frame, fragments and messages cost a parse and a callback.
                _refusal_log.log(logger, logging.INFO, "%s: closing, more than %g messages/s",
                                 self._name, conn._budget.rate)
                raise _Fail(1008, "too many messages")
            if opcode == OP_CLOSE:
                self._on_close_frame(conn, payload)
            elif opcode == OP_PING:
                if not conn._close_started:
                    with conn._link.send_lock:  # pong with the exact payload bytes (#4)
                        conn._link.sendall(frame_header(OP_PONG, len(payload)) + payload)
            elif opcode == OP_PONG:
                if payload == conn._ping_payload:
                    conn._ping_sent_at = conn._ping_payload = None
            else:
                self._on_data_frame(conn, fin, opcode, payload)
        except _Fail as exc:
            self._fail(conn, exc.code, exc.reason)
        except ConnectionClosedError as exc:
            raise _Lost(str(exc)) from exc

    def _on_data_frame(self, conn: Connection, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == OP_CONT:
            if self._frag_opcode is None:
                raise _Fail(1002, "continuation frame without a message to continue")
            opcode = self._frag_opcode
        elif self._frag_opcode is not None:
            raise _Fail(1002, "new message inside a fragmented message")
        if not fin:
            if len(self._frag_chunks) >= _MAX_FRAGMENTS:  # empty fragments cost memory too
                raise _Fail(1009, f"message in more than {_MAX_FRAGMENTS} fragments")
            self._frag_opcode = opcode
            self._frag_chunks.append(payload)
            self._frag_size += len(payload)
            return
        if self._frag_chunks:
            payload = b"".join((*self._frag_chunks, payload))
            self._frag_opcode, self._frag_chunks, self._frag_size = None, [], 0
        if conn._close_started:
            return  # data after our Close is discarded (RFC 6455 1.4)
        if opcode == OP_TEXT:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                raise _Fail(1007, "invalid UTF-8 in a text message") from None
            self._dispatch(self.server.app.on_text, conn, text)
            self._dispatch(self.server.message_received, conn._client, self.server, text)
        else:
            self._dispatch(self.server.app.on_binary, conn, payload)

    def _on_close_frame(self, conn: Connection, payload: bytes) -> None:
        if len(payload) == 1:
            raise _Fail(1002, "1-byte Close payload")
        code = 1005
        reason = ""
        if payload:
            (code,) = struct.unpack("!H", payload[:2])
            if not valid_close_code(code, sending=False):
                raise _Fail(1002, f"invalid close code {code}")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise _Fail(1002, "invalid UTF-8 in the close reason") from None
        conn.close_code, conn.close_reason = code, reason
        self.keep_alive = False
        # Echo the peer's code (an empty Close is echoed empty), unless this is the answer to
        # our own Close; then the server ends the TCP connection first (RFC 6455 7.1.1).
        initiated = conn._queue_close(payload[:2])
        if initiated:
            conn._flush_close()
        how = "closed by peer" if initiated else "peer answered our Close"
        logger.debug("%s: %s with %d %r", self._name, how, code, reason)

    def _fail(self, conn: Connection, code: int, reason: str) -> None:
        """Fail the connection: Close with ``code``, then discard input until EOF or deadline."""
        logger.debug("%s: protocol error, closing with %d: %s", self._name, code, reason)
        self.keep_alive = False
        if conn._queue_close(close_payload(code, reason)):
            conn.sent_close_code = code
            conn._flush_close()
        # Lingering close; the watchdog shuts the socket down at the closing deadline.
        deadline = conn._link.deadline or time.monotonic()
        try:
            while time.monotonic() < deadline and self.rfile.read1(65536):
                pass
        except (OSError, ValueError):
            pass

    def _dispatch(self, callback: Callable[..., object], *args: Any) -> None:
        """Run an application callback; an exception is logged and closes with 1011."""
        try:
            callback(*args)
        except Exception:
            name = getattr(callback, "__qualname__", repr(callback))
            logger.exception("%s: %s() raised", self._name, name)
            if self.ws is not None:
                self.ws.close(1011, "internal error")

    # -- websocket-server handler API ----------------------------------------------------------

    def send_message(self, message: str | bytes) -> None:
        """Send ``str`` as TEXT and bytes-like as BINARY (the base only sent text)."""
        self._require_ws().send_message(message)

    def send_text(self, message: str | bytes, opcode: int = OP_TEXT) -> None:
        conn = self._require_ws()
        if opcode == OP_PONG:
            self.send_pong(message)
        elif isinstance(message, str):
            conn.send_text(message)
        else:
            conn.send_binary(message)

    def send_pong(self, message: str | bytes) -> None:
        payload = message.encode("utf-8") if isinstance(message, str) else bytes(message)
        link = self._require_ws()._link
        with link.send_lock:
            link.sendall(frame_header(OP_PONG, len(payload)) + payload)

    def send_close(self, status: int = 1000, reason: str | bytes = b"") -> None:
        self._require_ws().close(status, reason)  # type: ignore[arg-type]

    def _require_ws(self) -> Connection:
        if self.ws is None:
            raise ConnectionClosedError("no WebSocket connection")
        return self.ws


# -- Server ------------------------------------------------------------------------------------


class WebSocketServer(websocket_server.WebsocketServer):
    """A threaded WebSocket server for :class:`Application` ``app``.

    Binds in ``__init__`` (port 0 picks a free port; ``"::"``/``"::1"`` listen on IPv6) and starts
    the watchdog thread. Run :meth:`serve_forever` in a thread of your own; stop with
    :meth:`shutdown`, :meth:`close_all`, :meth:`server_close`, in that order.

    Admission (see :meth:`verify_request`): ``max_connections`` sockets in all (each costs a
    thread), ``max_connections_per_address`` per :meth:`counted_address` (None: no limit), and
    the last ``reserved_connections`` of them only for requests the application calls
    :meth:`Application.authenticated`. ``first_line_timeout`` (default: ``handshake_timeout``)
    bounds the time from accept to the request line, ``handshake_timeout`` to the end of the
    request head (TLS handshake included).

    Limits on what one client may send: ``max_message_size`` bytes a message (1009 beyond),
    and, if ``message_rate`` is set, ``message_rate`` frames a second on average with bursts
    of ``message_burst`` (default twice the rate). Every frame but Close counts: text, binary
    and continuation frames as well as ping and pong, so a ping flood is closed with 1008
    exactly like a message flood.

    Raises:
        ServerError: the address is in use or cannot be bound.
        ConfigError: an argument is out of range.
    """

    # Rebinding over TIME_WAIT only; a live listener still fails. Not on Windows, where
    # SO_REUSEADDR would let another process bind a port that is in use.
    allow_reuse_address = os.name != "nt"
    # Handler threads block in recv() for the life of a connection. Daemon threads let the
    # process exit even if the host forgets to stop the server; close_all() is the orderly path.
    daemon_threads = True
    # socketserver would otherwise join every handler thread in server_close(), unbounded, so a
    # single stuck peer could hang shutdown. close_all(timeout=...) does a bounded wait instead.
    block_on_close = False

    def __init__(
        self,
        app: Application,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        ssl_context: ssl.SSLContext | None = None,
        # Limits
        max_message_size: int = 65536,  # bytes, client → server, total of all fragments
        max_request_line: int = 8192,  # bytes, also per header line
        max_headers: int = 100,
        # Timeouts (seconds)
        handshake_timeout: float = 10.0,
        send_timeout: float = 5.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float = 20.0,
        close_timeout: float = 1.0,
        subprotocols: Sequence[str] = (),
        backlog: int = 128,
        max_connections: int = 512,
        max_connections_per_address: int | None = None,
        reserved_connections: int = 0,
        first_line_timeout: float | None = None,
        message_rate: float | None = None,
        message_burst: float | None = None,
    ) -> None:
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise ConfigError("ssl_context must be an ssl.SSLContext (see make_ssl_context)")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"port must be 0-65535, not {port!r}")
        for name, value in (
            ("max_message_size", max_message_size),
            ("max_request_line", max_request_line),
            ("max_headers", max_headers),
            ("backlog", backlog),
            ("max_connections", max_connections),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")
        per_address = max_connections_per_address
        if per_address is not None and (not isinstance(per_address, int) or per_address < 1):
            raise ConfigError(
                f"max_connections_per_address must be a positive integer, not {per_address!r}"
            )
        if not isinstance(reserved_connections, int) or not (
            0 <= reserved_connections < max_connections
        ):
            raise ConfigError(
                f"reserved_connections must be 0 to max_connections - 1, not "
                f"{reserved_connections!r}"
            )
        if first_line_timeout is None:
            first_line_timeout = handshake_timeout
        for name, fvalue in (
            ("handshake_timeout", handshake_timeout),
            ("first_line_timeout", first_line_timeout),
            ("send_timeout", send_timeout),
            ("ping_timeout", ping_timeout),
            ("close_timeout", close_timeout),
            ("ping_interval", 1.0 if ping_interval is None else ping_interval),
        ):
            if not fvalue > 0:
                raise ConfigError(f"{name} must be > 0, not {fvalue!r}")
        self.app = app
        self.ssl_context = ssl_context
        self.max_message_size, self.max_request_line, self.max_headers = (
            max_message_size,
            max_request_line,
            max_headers,
        )
        self.handshake_timeout, self.send_timeout, self.close_timeout = (
            handshake_timeout,
            send_timeout,
            close_timeout,
        )
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.subprotocols = tuple(subprotocols)
        self.max_connections = max_connections
        self.max_connections_per_address = per_address
        self.reserved_connections = reserved_connections
        self.first_line_timeout = min(first_line_timeout, handshake_timeout)
        self._slots: dict[Any, _Slot] = {}  # accepted socket -> its admission record
        self._per_address: dict[str, int] = {}
        self._anonymous = 0  # accepted connections not (yet) known to be authenticated
        self._admission_counts = {"refused_full": 0, "refused_per_address": 0, "evicted": 0}
        if message_rate is not None and not message_rate > 0:
            raise ConfigError(f"message_rate must be > 0, not {message_rate!r}")
        self.message_rate = message_rate
        self.message_burst = 2 * (message_rate or 0) if message_burst is None else message_burst
        if message_rate is not None and not self.message_burst >= 1:
            raise ConfigError(f"message_burst must be at least 1, not {message_burst!r}")
        self._active = 0  # accepted sockets whose handler thread has not finished
        self.request_queue_size = backlog  # socketserver's default of 5 drops connect bursts (#16)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.host, self.key, self.cert = host, None, None  # base attributes; never TLS via key/cert
        self.thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards the registry, id_counter and serve state (#14)
        self._connections: dict[int, Connection] = {}
        self._links: set[_Link] = set()
        self.id_counter = 0
        self._deny_clients: Any = False
        self._serving = self._stop_requested = self._closed = False
        self._watchdog_stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        # Bypass WebsocketServer.__init__: it hard-codes its handler and calls logger.setLevel.
        try:
            socketserver.TCPServer.__init__(self, (host, port), WebSocketHandler)
        except OSError as exc:
            raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        # Lifecycle: the watchdog lives from here until server_close(), which stops and joins it.
        # Daemon, so a server that is never closed does not keep the process alive.
        self._watchdog = threading.Thread(
            target=self._watchdog_loop, name=f"camstream-ws-watchdog-{self.port}", daemon=True
        )
        self._watchdog.start()

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self.server_address[1])

    @property
    def clients(self) -> list[dict[str, Any]]:
        """websocket-server API: a snapshot of ``{'id', 'handler', 'address'}`` dicts.

        ``'handler'`` is the :class:`Connection`, which has the base ``send_message`` method.
        """
        return [conn._client for conn in self.connections()]

    def connections(self) -> list[Connection]:
        """Return a snapshot of the open connections (taken under the registry lock)."""
        with self._lock:
            return list(self._connections.values())

    # -- Lifecycle -----------------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept connections until :meth:`shutdown` (socketserver semantics).

        If :meth:`shutdown` was called before this started, return at once.
        """
        with self._lock:
            if self._stop_requested or self._closed:
                self._stop_requested = False
                return
            self._serving = True
        logger.debug(
            "listening on %s port %d%s", self.host, self.port, " (TLS)" if self.ssl_context else ""
        )
        try:
            super().serve_forever(poll_interval)
        finally:
            with self._lock:
                self._serving = False

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait for it to return; call from another thread.

        Unlike socketserver's, does not hang if ``serve_forever`` is not running.
        """
        with self._lock:
            serving = self._serving
            self._stop_requested = not serving
        if serving:
            super().shutdown()

    def close_all(
        self, code: int = 1001, reason: str = "server shutting down", timeout: float = 1.0
    ) -> None:
        """Close every WebSocket with ``code``/``reason``, abort HTTP exchanges and handshakes,
        then wait up to ``timeout`` seconds for their threads to finish; stragglers are aborted.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            links = list(self._links)
        for link in links:
            if link.conn is not None:
                link.conn.close(code, reason)
            else:
                link.abort()
        me = threading.current_thread()
        for link in links:
            if link.owner is me:  # stop() called from this link's own callback: cannot wait
                continue
            if not link.done.wait(max(0.0, deadline - time.monotonic())):
                link.abort()

    def server_close(self) -> None:
        """Close the listening socket, stop and join the watchdog. Idempotent.

        Open connections are not touched: call :meth:`close_all` first.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._watchdog_stop.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join()
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Socket and TLS failures of a single connection are routine: DEBUG, no traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, EOFError)):
            logger.debug("connection from %s dropped: %r", client_address, exc)
        else:
            logger.exception("unexpected error serving %s", client_address)

    # -- Admission -----------------------------------------------------------------------------

    def counted_address(self, client_address: Any) -> str | None:
        """The address a connection from ``client_address`` counts against, or None if exempt.

        The single place that decides it: the TCP peer's IP address; IPv6 peers by their /64
        network (one host usually has a whole /64), IPv4-mapped IPv6 as the IPv4 address.
        Peers the application calls trusted proxies (an optional ``is_trusted_proxy(address)
        -> bool`` method) are exempt: their connections carry many clients.
        """
        peer = str(client_address[0]) if isinstance(client_address, tuple) else ""
        is_trusted_proxy = getattr(self.app, "is_trusted_proxy", None)
        if peer and is_trusted_proxy is not None and is_trusted_proxy(peer):
            return None
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return str(client_address)
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:
                return str(address.ipv4_mapped)
            return str(ipaddress.IPv6Network((address, 64), strict=False))
        return str(address)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Accepting thread: admit a socket before it costs a thread, or refuse it.

        Each connection costs a thread from accept on, before any token or ``max_clients`` check
        can run. Rules, in order:

        * at most ``max_connections_per_address`` connections per :meth:`counted_address`;
        * at most ``max_connections`` in all, and at most ``max_connections -
          reserved_connections`` that have not shown the credential (so the last
          ``reserved_connections`` places are for :meth:`Application.authenticated` requests);
        * when either cap is reached, the connection that has waited longest without sending
          its whole request is shed to make room (a new client is admitted at the cost of the
          stalest half-open one); if there is none, the new socket is refused.
        """
        address = self.counted_address(client_address)
        victim: _Link | None = None
        with self._lock:
            per_address = self.max_connections_per_address
            if address is not None and per_address is not None and (
                self._per_address.get(address, 0) >= per_address
            ):
                self._admission_counts["refused_per_address"] += 1
                logger.debug("refusing %s: %d connections from %s", client_address, per_address,
                             address)
                return False
            full = self._active >= self.max_connections
            crowded = self._anonymous >= self.max_connections - self.reserved_connections
            if full or crowded:
                victim = self._stalest_pending_locked()
                if victim is None or self._active >= self.max_connections + _EVICTION_SLACK:
                    self._admission_counts["refused_full"] += 1
                    logger.debug("refusing %s: %d connections open", client_address, self._active)
                    return False
                assert victim.slot is not None
                victim.slot.evicted = True
                self._admission_counts["evicted"] += 1
            self._slots[request] = _Slot(address, time.monotonic())
            self._active += 1
            self._anonymous += 1
            if address is not None:
                self._per_address[address] = self._per_address.get(address, 0) + 1
        if victim is not None:
            logger.debug("shedding a connection still in its handshake to admit %s",
                         client_address)
            victim.abort()
        return True

    def admission_stats(self) -> dict[str, int]:
        """Counters of the admission rules: open connections, those without the credential,
        and how many sockets were refused (cap, per address) or shed (stalest handshake)."""
        with self._lock:
            return {
                "open": self._active,
                "anonymous": self._anonymous,
                **self._admission_counts,
            }

    def _stalest_pending_locked(self) -> _Link | None:
        """The registered connection that has waited longest for its request, if any."""
        stalest: _Link | None = None
        for slot in self._slots.values():
            if slot.pending and not slot.evicted and slot.link is not None and (
                stalest is None or slot.accepted < stalest.slot.accepted  # type: ignore[union-attr]
            ):
                stalest = slot.link
        return stalest

    def _first_line_read(self, link: _Link | None) -> None:
        """Handler thread: the request line is in; the rest of the handshake gets longer."""
        if link is not None and link.slot is not None and link.deadline is not None:
            link.deadline = link.slot.accepted + self.handshake_timeout

    def _request_read(self, link: _Link, request: Request) -> None:
        """Handler thread: the request head is in; it may now use the reserved places."""
        authenticated = bool(getattr(self.app, "authenticated", lambda _r: False)(request))
        with self._lock:
            slot = link.slot
            if slot is None:
                return
            slot.pending = False
            if authenticated and not slot.authenticated:
                slot.authenticated = True
                self._anonymous -= 1

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:  # the handler thread did not start: it will not count down
            self._connection_done(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connection_done(request)

    def _connection_done(self, request: Any) -> None:
        with self._lock:
            self._active -= 1
            slot = self._slots.pop(request, None)
            if slot is None:
                return
            if not slot.authenticated:
                self._anonymous -= 1
            if slot.address is not None:
                left = self._per_address.pop(slot.address, 1) - 1
                if left > 0:
                    self._per_address[slot.address] = left

    # -- Registry ------------------------------------------------------------------------------

    def _add_link(self, sock: socket.socket) -> _Link:
        """Handler thread: register the accepted (raw) socket; its first-line deadline runs."""
        with self._lock:
            slot = self._slots.get(sock)
            accepted = slot.accepted if slot is not None else time.monotonic()
            link = _Link(self, sock, accepted + self.first_line_timeout)
            link.slot = slot
            if slot is not None:
                slot.link = link
            self._links.add(link)
        return link

    def _open_connection(
        self, link: _Link, request: Request, subprotocol: str | None
    ) -> Connection:
        with self._lock:
            self.id_counter += 1
            conn = Connection(link, request, subprotocol, self.id_counter)
            link.conn = conn
            if not self._deny_clients:
                self._connections[conn.id] = conn
        return conn

    def _remove_link(self, link: _Link) -> None:
        """Handler thread, once: unregister, then ``on_close`` (only after ``on_open``)."""
        conn = link.conn
        with self._lock:
            self._links.discard(link)
            if conn is not None:
                self._connections.pop(conn.id, None)
        try:
            if conn is not None and conn._opened:
                logger.debug("connection %d: closed, code %s", conn.id, conn.close_code)
                for callback, args in (
                    (self.app.on_close, (conn,)),
                    (self.client_left, (conn._client, self)),
                ):
                    try:
                        callback(*args)
                    except Exception:
                        logger.exception("connection %d: on_close raised", conn.id)
        finally:
            link.done.set()

    # -- Watchdog and keepalive (#13) ----------------------------------------------------------

    def _watchdog_loop(self) -> None:
        tick = min(0.1, self.send_timeout / 4)
        while not self._watchdog_stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                links = list(self._links)
            for link in links:
                try:
                    self._watch(link, now)
                except Exception:  # the watchdog must survive anything
                    logger.exception("watchdog error")

    def _watch(self, link: _Link, now: float) -> None:
        started = link.send_started
        if started is not None and now - started > self.send_timeout:
            name = f"connection {link.conn.id}" if link.conn else "HTTP client"
            logger.info(
                "%s: send blocked for over %.1f s; dropping the client", name, self.send_timeout
            )
            link.timed_out = True
            link.abort()
            return
        if link.deadline is not None and now > link.deadline:
            link.abort()
            return
        conn = link.conn
        if conn is None or self.ping_interval is None or conn._close_started:
            return
        idle = now - conn._last_recv
        if idle > self.ping_interval + self.ping_timeout:
            logger.info("connection %d: no traffic for %.1f s; closing", conn.id, idle)
            conn.close(1011, "keepalive ping timeout")
        elif idle >= self.ping_interval and conn._ping_sent_at is None:
            conn._keepalive_ping(now)

    # -- websocket-server server API (#12, #14, #19) -------------------------------------------

    def _run_forever(self, threaded: bool) -> None:
        """Never ``sys.exit``; ``threaded=True`` runs :meth:`serve_forever` in ``self.thread``."""
        if threaded:
            self.thread = threading.Thread(
                target=self.serve_forever, name="camstream-ws-server", daemon=True
            )
            self.thread.start()
        else:
            self.thread = threading.current_thread()
            self.serve_forever()

    @staticmethod
    def _as_connection(client: Any) -> Connection:
        if isinstance(client, dict):
            client = client["handler"]
        if isinstance(client, WebSocketHandler):
            return client._require_ws()
        if not isinstance(client, Connection):
            raise TypeError(f"not a client: {client!r}")
        return client

    def handler_to_client(self, handler: Any) -> dict[str, Any] | None:
        try:
            return self._as_connection(handler)._client
        except (TypeError, ConnectionClosedError):
            return None

    def _unicast(self, receiver_client: Any, msg: str | bytes) -> None:
        self._as_connection(receiver_client).send_message(msg)

    def _multicast(self, msg: str | bytes) -> None:
        for conn in self.connections():
            try:
                conn.send_message(msg)
            except ConnectionClosedError:
                pass  # one dead client must not stop the broadcast

    def _terminate_client_handler(self, handler: Any) -> None:
        self._as_connection(handler).abort()

    def _terminate_client_handlers(self) -> None:
        with self._lock:
            links = list(self._links)
        for link in links:
            link.abort()

    def _disconnect_clients_gracefully(self, status: int = 1000, reason: str | bytes = b"") -> None:
        self.close_all(status, reason)  # type: ignore[arg-type]

    def _disconnect_clients_abruptly(self) -> None:
        self._terminate_client_handlers()

    def _shutdown_gracefully(self, status: int = 1000, reason: str | bytes = b"") -> None:
        self.shutdown()
        self.close_all(status, reason)  # type: ignore[arg-type]
        self.server_close()

    def _shutdown_abruptly(self) -> None:
        self.shutdown()
        self._terminate_client_handlers()
        self.server_close()


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
