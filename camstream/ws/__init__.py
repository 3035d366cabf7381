"""WebSocket transport: repaired subclasses of PyPI ``websocket-server`` 0.6.4.

camstream's design builds on websocket-server's ``WebsocketServer`` / ``WebSocketHandler``. That
package cannot send binary frames, writes with ``send()`` instead of ``sendall()``, parses only
half of RFC 6455, hijacks logging at import time and falls back to plaintext when TLS fails (see
``docs/websocket-server-fixes.md``, defects #1-#20). This package keeps its ``socketserver``
plumbing and its thread-per-connection model, and replaces everything else. Only
:mod:`~camstream.ws.upstream` imports websocket-server.

Modules, one concern each:

* :mod:`~camstream.ws.frames` - RFC 6455 framing and fragment assembly, no I/O.
* :mod:`~camstream.ws.http` - request parsing, upgrade checks and response heads, no I/O.
* :mod:`~camstream.ws.tls` - TLS on memory BIOs (:class:`TlsChannel`), :func:`make_ssl_context`.
* :mod:`~camstream.ws.upstream` - the websocket-server import and its logging repair.
* :mod:`~camstream.ws.tcpinfo` - Linux ``TCP_INFO`` of a socket (round-trip time, delivery rate).
* :mod:`~camstream.ws.limits` - :class:`Limits`, what a connection is given instead of the server.
* :mod:`~camstream.ws.budget` - what clients may send: per connection (1008 beyond) and per
  address (shared; readers wait their turn).
* :mod:`~camstream.ws.link` - one socket: whole writes under one lock, stamped for the watchdog;
  the bytes a non-blocking write left (written first by the next writer); abort and half-close.
* :mod:`~camstream.ws.admission` - which sockets may cost a thread; refusals answered 503.
* :mod:`~camstream.ws.connection` - :class:`Connection`: sending, closing, keepalive state.
* :mod:`~camstream.ws.exchange` - :class:`HttpExchange`: a plain HTTP request's response.
* :mod:`~camstream.ws.application` - the :class:`Application` callbacks and a do-nothing base.
* :mod:`~camstream.ws.handler` - one socket's thread: TLS and HTTP handshakes, frame reader.
* :mod:`~camstream.ws.watchdog` - send, handshake and closing deadlines; keepalive pings.
* :mod:`~camstream.ws.server` - :class:`WebSocketServer`: accept loop, admission, registry.

Threads (who starts each, who ends and joins it):

* The *serve loop*: :meth:`WebSocketServer.serve_forever`, run by the caller in a thread of its
  own; it accepts connections. :meth:`WebSocketServer.shutdown` (another thread) stops it and
  waits for it to return.
* One daemon *handler thread* per accepted socket, started by the serve loop
  (``socketserver.ThreadingMixIn``) once :meth:`WebSocketServer.verify_request` admits it. It
  runs the TLS handshake, the HTTP handshake and then the frame reader; every
  :class:`Application` callback for that connection runs in it. It ends when the connection
  does; :meth:`WebSocketServer.close_all` closes every connection and waits (bounded) for these
  threads, aborting stragglers. They are daemons and not joined by ``server_close()``
  (``block_on_close = False``), so one stuck peer cannot hang shutdown.
* Short daemon *close threads* (``camstream-close-<id>``), started by :meth:`Connection.close`
  when the send lock is busy or the socket buffer is full, so the caller never blocks: each
  writes the queued Close frame within ``send_timeout + close_timeout`` (or aborts the link)
  and ends. Nobody joins them; the handler thread's cleanup waits for the send lock they hold.
* One daemon *watchdog* thread per server (:class:`~camstream.ws.watchdog.Watchdog`), started by
  ``WebSocketServer.__init__``, stopped and joined by :meth:`WebSocketServer.server_close`. It
  sheds sockets whose write is blocked for longer than ``send_timeout``, enforces handshake and
  closing deadlines, and sends keepalive pings.
* Any number of *application threads* call :meth:`Connection.send_binary` and friends; frames
  are written whole with ``sendall`` under a per-connection lock.

Admission (the accepting thread, before a socket costs a thread): a cap on connections in all,
per client address (loopback clients not counted), and on those that have not shown the
application's credential; when full, the connection that has waited longest for its request is
shed. A refused socket is answered 503 with ``Retry-After`` and a reason by a handler thread of
its own, within a small budget of such answers (past it, it is closed at once). The request's
first line must arrive within ``first_line_timeout`` of the accept, its whole head within
``handshake_timeout``.

Contract with the application: :class:`Application` lists every method the server calls. The
deadlines the watchdog enforces are set through :meth:`Link.set_deadline` at the phase changes
only (accept, request line, open, Close queued); close codes are the connection's
(:meth:`Connection.close_received`, :meth:`Connection.close`, :meth:`Connection.fail`).

TLS (defect #15): with ``ssl_context``, a connection's TLS runs in a :class:`TlsChannel`
(``ssl.MemoryBIO`` + ``SSLObject``) above the plain socket, never in an ``SSLSocket``: an ``SSL``
object driven by a reader in ``SSL_read`` and a sender in ``SSL_write`` at once corrupts the
stream when a TLS 1.3 peer sends a KeyUpdate. The handler thread runs the TLS handshake (within
the handshake deadline), ``rfile`` decrypts through the channel and :meth:`Link.sendall` encrypts
through it; :attr:`Link.sock` stays the plain socket (shutdown, ``SIOCOUTQ``, the watchdog).

No import cycles: each module imports only modules listed before it in the list above (and
``camstream.errors`` / ``camstream.ratelimit``); ``tests/test_transport.py`` checks it.
"""

from __future__ import annotations

from .application import Application, BaseApplication
from .budget import AddressRates
from .connection import Connection
from .exchange import HttpExchange
from .handler import WebSocketHandler
from .http import HandshakeRejected, Headers, Request
from .limits import Limits
from .link import Link
from .server import WebSocketServer
from .tls import TlsChannel, make_ssl_context

__all__ = [
    "AddressRates",
    "Application",
    "BaseApplication",
    "Connection",
    "HandshakeRejected",
    "Headers",
    "HttpExchange",
    "Limits",
    "Link",
    "Request",
    "TlsChannel",
    "WebSocketHandler",
    "WebSocketServer",
    "make_ssl_context",
]
