"""The server: the accept loop, admission, the registry of links and connections.

:class:`WebSocketServer` keeps websocket-server's ``socketserver`` plumbing (one daemon handler
thread per accepted socket, :class:`~camstream.ws.handler.WebSocketHandler`) and replaces its
constructor, lifecycle and bookkeeping. Admission (the accepting thread, before a socket costs a
thread) is :class:`~camstream.ws.admission.Admission`: a cap on connections in all, per client
address, and on those that have not shown the application's credential; a refused socket is
answered 503 (within a small budget).
"""

from __future__ import annotations

import os
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .. import logs
from ..checks import check_int, check_port, check_seconds
from ..errors import ConfigError, ServerError
from ..ratelimit import KeyedLogBudget
from .admission import Admission
from .application import Application
from .budget import AddressBudgets, AddressRates, frame_cost
from .connection import Connection
from .handler import WebSocketHandler
from .http import Request
from .limits import Limits
from .link import Link
from .upstream import BaseServer
from .watchdog import Watchdog

__all__ = ["WebSocketServer"]

logger = logs.get_logger(__name__)


class WebSocketServer(BaseServer):
    """A threaded WebSocket server for :class:`Application` ``app``.

    Binds in ``__init__`` (port 0 picks a free port; ``"::"``/``"::1"`` listen on IPv6) and starts
    the watchdog thread. Run :meth:`serve_forever` in a thread of your own; stop with
    :meth:`shutdown`, :meth:`close_all`, :meth:`server_close`, in that order.

    Admission (see :class:`~camstream.ws.admission.Admission`): ``max_connections`` sockets in
    all (each costs a thread); ``max_connections_per_address`` per client address (None: no
    limit), which holds for remote clients only: loopback clients are this machine and are not
    counted (unless ``exempt_loopback`` is False), so any number of local viewers fits within
    the caps in all. Remote clients behind one NAT (a classroom, an office) or one proxy share an
    address and so share this limit: raise it for them, or list the proxy as trusted. The last
    ``reserved_connections`` places are only for requests the application calls
    :meth:`Application.authenticated`. A refused socket is answered 503 with ``Retry-After``
    and a reason (within a small budget of answers; past it, closed), and logged at WARNING
    (rate-limited) with what lifts the limit (``lifted_by`` names the application's options for
    ``max_connections`` / ``max_connections_per_address``).
    ``first_line_timeout`` (default: ``handshake_timeout``) bounds the time from accept to the
    request line, ``handshake_timeout`` to the end of the request head (TLS handshake included).

    Limits on what one client may send: ``max_message_size`` bytes a message (1009 beyond);
    if ``message_rate`` is set, ``message_rate`` messages a second on average with bursts of
    ``message_burst`` (default twice the rate), where a message costs one however many
    fragments it comes in (at most 1024) and each ping and pong costs one on its own; if
    ``byte_rate`` is set, ``byte_rate`` bytes a second with bursts of ``byte_burst`` (default
    four times the rate, and at least one largest message), each frame counted whole and at
    least 64 bytes. Past either, the connection is closed with 1008. ``address_rates`` (None:
    none) is a budget of messages and bytes that all connections of one client address share
    (loopback included); past it, their readers wait their turn (TCP backpressure) instead of
    being closed, so many connections cost no more than a few.

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
        byte_rate: float | None = None,
        byte_burst: float | None = None,
        address_rates: AddressRates | None = None,
        exempt_loopback: bool = True,
        lifted_by: Mapping[str, str] | None = None,
    ) -> None:
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise ConfigError("ssl_context must be an ssl.SSLContext (see make_ssl_context)")
        check_port(port)
        for name, value in (
            ("max_message_size", max_message_size),
            ("max_request_line", max_request_line),
            ("max_headers", max_headers),
            ("backlog", backlog),
            ("max_connections", max_connections),
        ):
            check_int(name, value, 1, None, "a positive integer")
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
            check_seconds(name, fvalue)
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
        self.admission = Admission(
            max_connections=max_connections, max_connections_per_address=per_address,
            reserved_connections=reserved_connections,
            is_trusted_proxy=app.is_trusted_proxy, exempt_loopback=exempt_loopback,
            lifted_by=lifted_by,
        )
        if message_rate is not None and not message_rate > 0:
            raise ConfigError(f"message_rate must be > 0, not {message_rate!r}")
        self.message_rate = message_rate
        self.message_burst = 2 * (message_rate or 0) if message_burst is None else message_burst
        if message_rate is not None and not self.message_burst >= 1:
            raise ConfigError(f"message_burst must be at least 1, not {message_burst!r}")
        if byte_rate is not None and not byte_rate > 0:
            raise ConfigError(f"byte_rate must be > 0, not {byte_rate!r}")
        # A burst holds at least one largest message, else such a message could never pass.
        byte_burst = max(4 * (byte_rate or 0) if byte_burst is None else byte_burst,
                         frame_cost(max_message_size))
        self._address_budgets = AddressBudgets(address_rates or AddressRates())
        self._client_log = KeyedLogBudget()  # per-connection log lines of one address
        self.request_queue_size = backlog  # socketserver's default of 5 drops connect bursts (#16)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.host, self.key, self.cert = host, None, None  # base attributes; never TLS via key/cert
        self.limits = Limits(
            send_timeout=send_timeout,
            close_timeout=close_timeout,
            message_rate=self.message_rate,
            message_burst=self.message_burst,
            byte_rate=byte_rate,
            byte_burst=byte_burst,
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

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Accepting thread: admit a socket before it costs a thread, or refuse it (see
        :meth:`Admission.admit`; a refused socket admitted here only gets its 503 answer)."""
        serve, victim = self.admission.admit(request, client_address)
        if victim is not None:
            victim.abort()
        return serve

    def admission_stats(self) -> dict[str, int]:
        """Counters of the admission rules: open connections, those without the credential,
        sockets refused (cap, per address; how many were answered 503) or shed (stalest
        handshake)."""
        return self.admission.stats()

    def first_line_read(self, link: Link) -> None:
        """Handler thread: the request line is in; the rest of the handshake gets longer."""
        slot = self.admission.slot(link.sock)
        if slot is not None and link.deadline is not None:
            link.set_deadline(slot.accepted + self.handshake_timeout)

    def request_read(self, link: Link, request: Request) -> None:
        """Handler thread: the request head is in; it may now use the reserved places.

        A connection from a trusted proxy (exempt at accept time) now counts against the
        address of the client it carries, as :meth:`Application.client_address` names it.

        Raises:
            HttpError: 503, the socket was refused at accept, or the client a trusted proxy
                carries already holds ``max_connections_per_address``.
        """
        app = self.app
        self.admission.request_read(
            link.sock, lambda: app.authenticated(request), lambda: app.client_address(request)
        )

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
        self.admission.done(request)

    # -- Registry ------------------------------------------------------------------------------

    def add_link(self, sock: socket.socket) -> Link:
        """Handler thread: register the accepted (raw) socket; its first-line deadline runs."""
        link = Link(sock, time.monotonic() + self.first_line_timeout)
        link.set_deadline(self.admission.attach(sock, link) + self.first_line_timeout)
        with self._lock:
            self._links[link] = None
        return link

    def open_connection(self, link: Link, request: Request, subprotocol: str | None) -> Connection:
        """Handler thread: the 101 was sent; create and register the connection."""
        slot = self.admission.slot(link.sock)
        address = slot.client if slot is not None else str(request.remote_address[0])
        budget = self._address_budgets.acquire(address)
        with self._lock:
            self.id_counter += 1
            conn = Connection(
                link, request, subprotocol, self.id_counter, self.limits, address=address,
                address_budget=budget, client_log=self._client_log,
            )
            self._links[link] = conn
            self._connections[conn.id] = conn
        return conn

    def remove_link(self, link: Link) -> None:
        """Handler thread, once: unregister, then ``on_close`` (only after ``on_open``)."""
        with self._lock:
            conn = self._links.pop(link, None)
            if conn is not None:
                self._connections.pop(conn.id, None)
        if conn is not None:
            self._address_budgets.release(conn.address)
        try:
            if conn is not None and conn.opened:
                logger.debug("connection %d: closed, code %s", conn.id, conn.close_code)
                try:
                    self.app.on_close(conn)
                except Exception:
                    logger.exception("connection %d: on_close raised", conn.id)
        finally:
            link.done.set()
