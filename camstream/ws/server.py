"""The server: the accept loop, admission, the registry of links and connections.

:class:`WebSocketServer` keeps websocket-server's ``socketserver`` plumbing (one daemon handler
thread per accepted socket, :class:`~camstream.ws.handler.WebSocketHandler`) and replaces its
constructor, lifecycle and bookkeeping. Admission (the accepting thread, before a socket costs a
thread): a cap on connections in all, per client address, and on those that have not shown the
application's credential; when full, the connection that has waited longest for its request is
shed (see :meth:`WebSocketServer.verify_request`).
"""

from __future__ import annotations

import os
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from .. import logs
from ..errors import ConfigError, ServerError
from .admission import Slot, counted_form
from .application import Application
from .connection import Connection
from .handler import WebSocketHandler
from .http import HttpError, Request
from .limits import Limits
from .link import Link
from .upstream import BaseServer
from .watchdog import Watchdog

__all__ = ["WebSocketServer"]

logger = logs.get_logger(__name__)

_EVICTION_SLACK = 16  # shed connections may overlap new ones by this many until they are gone


class WebSocketServer(BaseServer):  # type: ignore[misc]
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
        self._log_label = logs.current()  # handler threads log with it (camstream.logs)
        self._slots: dict[Any, Slot] = {}  # accepted socket -> its admission record
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
        self.limits = Limits(
            send_timeout=send_timeout,
            close_timeout=close_timeout,
            message_rate=self.message_rate,
            message_burst=self.message_burst,
        )
        self._lock = threading.Lock()  # guards the registry, id_counter and serve state (#14)
        self._connections: dict[int, Connection] = {}
        self._links: dict[Link, Connection | None] = {}  # registered links, their connections
        self.id_counter = 0
        self._serving = self._stop_requested = self._closed = False
        self._watchdog: Watchdog | None = None  # server_close() may run before it exists
        # Bypass WebsocketServer.__init__: it hard-codes its handler and calls logger.setLevel.
        try:
            socketserver.TCPServer.__init__(self, (host, port), WebSocketHandler)
        except OSError as exc:
            raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        # Lifecycle: the watchdog lives from here until server_close(), which stops and joins it.
        self._watchdog = Watchdog(
            self._link_snapshot,
            send_timeout=send_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            name=f"camstream-ws-watchdog-{self.port}",
        )
        self._watchdog.start()

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self.server_address[1])

    @property
    def watchdog(self) -> Watchdog:
        """The watchdog (running from ``__init__`` until :meth:`server_close`)."""
        assert self._watchdog is not None  # set by __init__
        return self._watchdog

    def connections(self) -> list[Connection]:
        """Return a snapshot of the open connections (taken under the registry lock)."""
        with self._lock:
            return list(self._connections.values())

    def link_count(self) -> int:
        """The number of sockets whose handler thread has registered them and not yet
        finished (handshakes, HTTP exchanges and WebSocket connections)."""
        with self._lock:
            return len(self._links)

    def _link_snapshot(self) -> list[tuple[Link, Connection | None]]:
        with self._lock:
            return list(self._links.items())

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
        links = self._link_snapshot()
        for link, conn in links:
            if conn is not None:
                conn.close(code, reason)
            else:
                link.abort()
        me = threading.current_thread()
        for link, _ in links:
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
        if self._watchdog is not None:
            self._watchdog.stop()
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

        The single place that decides it at accept time: the TCP peer's IP address (see
        :func:`counted_form`). Peers the application calls trusted proxies (an optional
        ``is_trusted_proxy(address) -> bool`` method) are exempt here: their connections carry
        many clients, each counted by its own address once the request is read (see
        :meth:`request_read`).
        """
        peer = str(client_address[0]) if isinstance(client_address, tuple) else ""
        is_trusted_proxy = getattr(self.app, "is_trusted_proxy", None)
        if peer and is_trusted_proxy is not None and is_trusted_proxy(peer):
            return None
        return counted_form(peer) if peer else str(client_address)

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
        victim: Slot | None = None
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
                victim.evicted = True
                self._admission_counts["evicted"] += 1
            self._slots[request] = Slot(address, time.monotonic())
            self._active += 1
            self._anonymous += 1
            if address is not None:
                self._per_address[address] = self._per_address.get(address, 0) + 1
        if victim is not None:
            logger.debug("shedding a connection still in its handshake to admit %s",
                         client_address)
            assert victim.link is not None
            victim.link.abort()
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

    def _stalest_pending_locked(self) -> Slot | None:
        """The registered connection that has waited longest for its request, if any."""
        stalest: Slot | None = None
        for slot in self._slots.values():
            if slot.pending and not slot.evicted and slot.link is not None and (
                stalest is None or slot.accepted < stalest.accepted
            ):
                stalest = slot
        return stalest

    def first_line_read(self, link: Link) -> None:
        """Handler thread: the request line is in; the rest of the handshake gets longer."""
        with self._lock:
            slot = self._slots.get(link.sock)
        if slot is not None and link.deadline is not None:
            link.deadline = slot.accepted + self.handshake_timeout

    def request_read(self, link: Link, request: Request) -> None:
        """Handler thread: the request head is in; it may now use the reserved places.

        A connection from a trusted proxy (exempt at accept time) now counts against the
        address of the client it carries, if the application names it (an optional
        ``client_address(request) -> str | None`` method, e.g. from ``X-Forwarded-For``).

        Raises:
            HttpError: 503, that client already holds ``max_connections_per_address``.
        """
        authenticated = bool(getattr(self.app, "authenticated", lambda _r: False)(request))
        client_address = getattr(self.app, "client_address", None)
        with self._lock:
            slot = self._slots.get(link.sock)
            exempt = slot is not None and slot.address is None
        carried = client_address(request) if exempt and client_address is not None else None
        carried = counted_form(carried) if carried else None
        with self._lock:
            if slot is None or self._slots.get(link.sock) is not slot:
                return
            slot.pending = False
            if authenticated and not slot.authenticated:
                slot.authenticated = True
                self._anonymous -= 1
            per_address = self.max_connections_per_address
            if carried is not None and per_address is not None:
                if self._per_address.get(carried, 0) >= per_address:
                    self._admission_counts["refused_per_address"] += 1
                    raise HttpError(
                        503, "too many connections from this client", {"Retry-After": "5"}
                    )
                slot.address = carried
                self._per_address[carried] = self._per_address.get(carried, 0) + 1

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:  # the handler thread did not start: it will not count down
            self._connection_done(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            with logs.bound(self._log_label):  # the label of whoever made this server
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

    def add_link(self, sock: socket.socket) -> Link:
        """Handler thread: register the accepted (raw) socket; its first-line deadline runs."""
        with self._lock:
            slot = self._slots.get(sock)
            accepted = slot.accepted if slot is not None else time.monotonic()
            link = Link(sock, accepted + self.first_line_timeout)
            if slot is not None:
                slot.link = link
            self._links[link] = None
        return link

    def open_connection(self, link: Link, request: Request, subprotocol: str | None) -> Connection:
        """Handler thread: the 101 was sent; create and register the connection."""
        with self._lock:
            self.id_counter += 1
            conn = Connection(link, request, subprotocol, self.id_counter, self.limits)
            self._links[link] = conn
            self._connections[conn.id] = conn
        return conn

    def remove_link(self, link: Link) -> None:
        """Handler thread, once: unregister, then ``on_close`` (only after ``on_open``)."""
        with self._lock:
            conn = self._links.pop(link, None)
            if conn is not None:
                self._connections.pop(conn.id, None)
        try:
            if conn is not None and conn.opened:
                logger.debug("connection %d: closed, code %s", conn.id, conn.close_code)
                try:
                    self.app.on_close(conn)
                except Exception:
                    logger.exception("connection %d: on_close raised", conn.id)
        finally:
            link.done.set()
