"""One accepted socket, served in its own thread: TLS, the HTTP handshake, then frames.

:class:`WebSocketHandler` replaces websocket-server's TLS setup (#5), handshake (#8-#10), frame
reader (#3, #4, #6, #7, #11, #18), send path (#1, #2) and termination (#12). It reads; the
parsing is :mod:`camstream.ws.http` and :mod:`camstream.ws.frames`, the writing
:class:`~camstream.ws.connection.Connection` and :class:`~camstream.ws.link.Link`. It knows its
server only through :class:`HandlerHost`.
"""

from __future__ import annotations

import http
import io
import logging
import socket
import socketserver
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .. import logs
from ..errors import ConnectionClosedError
from ..ratelimit import LogBudget
from .application import Application
from .budget import TOO_MANY_MESSAGES
from .connection import Connection
from .exchange import HttpExchange
from .frames import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    MessageAssembler,
    ProtocolError,
    accept_key,
    parse_close,
    read_frame,
)
from .http import HandshakeRejected, HttpError, Request, RequestParser, check_upgrade, http_head
from .link import Link
from .tls import TlsChannel
from .upstream import BaseHandler

__all__ = ["HandlerHost", "WebSocketHandler"]

logger = logs.get_logger(__name__)
_refusal_log = LogBudget()  # handshake refusals and flood closes: hostile clients cause them


class _Lost(Exception):
    """The peer went away (EOF, reset, timeout, or our own shutdown)."""


class HandlerHost(Protocol):
    """What a :class:`WebSocketHandler` needs of its server (:class:`WebSocketServer`)."""

    app: Application
    ssl_context: ssl.SSLContext | None
    max_message_size: int
    max_request_line: int
    max_headers: int
    handshake_timeout: float
    send_timeout: float
    close_timeout: float
    subprotocols: tuple[str, ...]

    def add_link(self, sock: socket.socket) -> Link:
        """Register the accepted socket; its first-line deadline runs."""

    def first_line_read(self, link: Link) -> None:
        """The request line is in."""

    def request_read(self, link: Link, request: Request) -> None:
        """The request head is in."""

    def open_connection(self, link: Link, request: Request, subprotocol: str | None) -> Connection:
        """Create and register the connection after the 101."""

    def remove_link(self, link: Link) -> None:
        """Unregister, then ``on_close`` (only after ``on_open``)."""


class WebSocketHandler(BaseHandler):
    """Serves one accepted socket in its own thread (created by socketserver per connection)."""

    server: HandlerHost
    request: socket.socket
    rfile: io.BufferedIOBase  # socketserver's reader, or the TLS channel's (see setup)
    disable_nagle_algorithm = True  # StreamRequestHandler.setup() sets TCP_NODELAY (#20)

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        # Bypass WebSocketHandler.__init__: it calls ssl.wrap_socket and falls back to plaintext.
        self._link: Link | None = None
        self.ws: Connection | None = None
        self.keep_alive = False
        self._messages = MessageAssembler()
        self._method = "GET"  # of the request being answered: no body in answers to HEAD
        socketserver.StreamRequestHandler.__init__(self, request, client_address, server)

    def setup(self) -> None:
        server = self.server
        self.request.settimeout(server.handshake_timeout)  # per operation, until the handshake
        # Registered first: the watchdog's handshake deadline covers the TLS handshake too.
        link = server.add_link(self.request)
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
            server.remove_link(link)
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
            link.close_fd(self._close_files)
        finally:
            if got:
                link.send_lock.release()
        self.server.remove_link(link)

    def _close_files(self) -> None:
        try:
            socketserver.StreamRequestHandler.finish(self)
        except (OSError, ValueError):
            pass
        self.request.close()

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
                raise HttpError(status, f"{what} too long")
            raise _Lost(
                "connection closed during the handshake" if line else "closed without a request"
            )
        return str(line.rstrip(b"\r\n").decode("latin-1"))

    def _read_request(self, link: Link) -> Request:
        parser = RequestParser(self.server.max_headers)
        line = self._readline(414, "request line")
        self.server.first_line_read(link)
        try:
            parser.feed_request_line(line)
            while not parser.feed_header_line(self._readline(431, "header line")):
                pass
        finally:
            self._method = parser.method
        return parser.request(tuple(self.client_address[:2]))

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
        self._link.send(http_head(status, head) + (b"" if self._method == "HEAD" else body))
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
            request = self._read_request(link)
            server.request_read(link, request)
            if request.method != "GET" or "websocket" not in request.headers.tokens("upgrade"):
                self._serve_http(request)
                return
            key, subprotocol = check_upgrade(request, server.subprotocols)
        except HttpError as err:
            logger.debug("%s: refused with %d: %s", self._name, err.status,
                         logs.printable(err.message))
            self._respond_error(err.status, err.message, err.headers)
            return
        try:
            server.app.authorize(request)
        except HandshakeRejected as rej:
            _refusal_log.log(
                logger, logging.INFO, "%s: %s refused with %d: %s",
                self._name, logs.printable(request.path), rej.status, logs.printable(rej.message),
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
        link.send(http_head(101, head))
        # From here on reads block forever (the keepalive detects dead peers) and writes are
        # bounded by the watchdog: a socket timeout would break both (#13).
        self.request.settimeout(None)
        link.set_deadline(None)
        self.keep_alive = True
        self.ws = conn = server.open_connection(link, request, subprotocol)
        logger.debug("%s: open from %s, path %s", self._name, request.remote_address,
                     logs.printable(request.path))
        conn.mark_opened()
        self._dispatch(server.app.on_open, conn)

    def _serve_http(self, request: Request) -> None:
        link = self._link
        assert link is not None
        self.request.settimeout(None)  # writes are bounded by the watchdog
        link.set_deadline(None)
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
        return bytes(data)

    def read_next_message(self) -> None:
        """Read and handle one frame; clears ``keep_alive`` when the connection is done."""
        conn = self.ws
        assert conn is not None
        try:
            fin, opcode, payload = read_frame(
                self._read_exact, self.server.max_message_size, self._messages.buffered
            )
            refusal, wait = conn.frame_received(opcode, len(payload))
            if refusal is not None:
                limits = conn.limits
                rate = (f"{limits.message_rate:g} messages/s" if refusal == TOO_MANY_MESSAGES
                        else f"{limits.byte_rate:g} bytes/s")
                _refusal_log.log(logger, logging.INFO, "%s: closing with 1008, more than %s",
                                 self._name, rate)
                raise ProtocolError(1008, refusal)
            conn.wait(wait)  # the address's turn: its connections share one budget
            if opcode == OP_CLOSE:
                self._on_close_frame(conn, payload)
            elif opcode == OP_PING:
                conn.answer_ping(payload)
            elif opcode == OP_PONG:
                conn.pong_received(payload)
            else:
                message = self._messages.feed(fin, opcode, payload)
                if message is not None and not conn.closing:  # data after our Close: dropped
                    self._on_message(conn, *message)
        except ProtocolError as exc:
            self._fail(conn, exc.code, exc.reason)
        except ConnectionClosedError as exc:
            raise _Lost(str(exc)) from exc

    def _on_message(self, conn: Connection, opcode: int, payload: bytes) -> None:
        if opcode == OP_TEXT:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(1007, "invalid UTF-8 in a text message") from None
            self._dispatch(self.server.app.on_text, conn, text)
        else:
            self._dispatch(self.server.app.on_binary, conn, payload)

    def _on_close_frame(self, conn: Connection, payload: bytes) -> None:
        code, reason = parse_close(payload)
        self.keep_alive = False
        initiated = conn.close_received(code, reason)
        how = "closed by peer" if initiated else "peer answered our Close"
        logger.debug("%s: %s with %d %s", self._name, how, code, logs.printable(reason))

    def _fail(self, conn: Connection, code: int, reason: str) -> None:
        """Fail the connection: Close with ``code``, then discard input until EOF or deadline."""
        logger.debug("%s: protocol error, closing with %d: %s", self._name, code,
                     logs.printable(reason))
        self.keep_alive = False
        conn.fail(code, reason)
        # Lingering close; the watchdog shuts the socket down at the closing deadline.
        deadline = conn.link.deadline or time.monotonic()
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
