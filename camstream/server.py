"""Streamer: one camera, any number of WebSocket viewers, each on its own timer.

``Streamer().serve_forever()`` is the whole program; ``with Streamer(...) as s:`` embeds it in an
application (it serves in background threads until the block ends).
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from typing import Any, Iterable, Mapping

import numpy as np

from . import logs, protocol
from .app import AppMessages, OnMessage
from .callbacks import TransportCallbacks, how_it_closed
from .capture.annotate import AnnotateHook
from .capture.camera import CameraThread, Frame, Source, describe_source
from .capture.devices import CaptureFactory
from .capture.report import camera_report, camera_state_fields
from .delivery.encoder import EncodeCache
from .delivery.fanout import FanOut
from .delivery.mjpeg import MjpegStream
from .delivery.pacing import CounterRates
from .delivery.registry import Admission, ViewerRegistry
from .delivery.session import ClientSession, ClientSettings
from .greeting import Greeting, start_line
from .interfaces import interface_addresses, is_wildcard
from .options import FULL_REMEDY, check_streamer_options, no_limit
from .protocol import CloseCode
from .ratelimit import LogBudget
from .sigterm import Terminated, stop_on_sigterm
from .web.policy import AccessPolicy
from .web.proxy import parse_trusted_proxies
from .web.routes import HttpRoutes
from .ws import AddressRates, Connection, Request, WebSocketServer, make_ssl_context

__all__ = ["Streamer"]

logger = logs.get_logger(__name__)
_refusal_log = LogBudget()  # refused viewers: anyone can cause them, so they are rate-limited

GODOT_MAX_MESSAGE = 65535
"""Godot 4's default ``WebSocketPeer.inbound_buffer_size``: the largest message it accepts."""
SUBPROTOCOL = "camstream.v1"  # optional: clients that offer no subprotocol are welcome too


class Streamer:
    """Streams one frame source to every WebSocket client that connects.

    Args:
        source: what to stream (default auto: camera 0, else the built-in test pattern with a
            WARNING), a camera index (strict: no fallback) or device path, a video file or
            stream URL (an MJPEG one is passed through untouched), ``"test"`` for the test
            pattern, or ``"push"`` to hand frames in with :meth:`publish`.
        host: the address to listen on. The default, ``127.0.0.1``, admits this machine only;
            ``0.0.0.0`` admits the network (set a ``token`` then).
        port: the TCP port (default 8765); ``0`` picks a free one (see :attr:`port`).
        fps: the camera's frame rate (default 30), and the rate a client gets unless it asks
            for less.
        width, height: the capture size requested from the source (16-8192; default: the
            source's own; one side alone keeps the source's aspect ratio).
        quality: the default JPEG quality, 1-100 (default 80).
        max_bytes: the largest JPEG a WebSocket client gets unless it asks for another limit
            (``?max_bytes=``; ``0`` there means no limit). The default, 65535, is Godot 4's
            default ``WebSocketPeer`` limit, so a client that says nothing keeps streaming;
            frames over it are re-encoded at a lower quality, then a smaller size. ``None`` or
            ``0``: no limit. The HTTP endpoints (``/stream.mjpg``, ``/snapshot.jpg``) are not
            limited unless asked (``?max_bytes=``).
        loop: play files again from the start when they end (default True; else viewers get
            ``source_ended``).
        pixel_format, backend, camera_settings, capture_factory: how a camera is opened: see
            :class:`~camstream.capture.camera.CameraThread` (MJPEG by default, the platform's
            backend).
        token: if set, clients must present it (``?token=`` or ``Authorization: Bearer``);
            others are closed with 1008. Default None: no token.
        allowed_origins: browser origins admitted besides the server's own pages (e.g.
            ``["https://example.com"]``; ``["*"]`` admits every origin). The default, None,
            admits only same-origin pages (Origin matching the Host header) and clients that
            send no Origin (Godot, Python); pages from other origins are closed with 1008.
        max_clients: more simultaneous viewers than this are closed with 1013 (default None:
            no limit; ``0`` means the same).
        certfile, keyfile: serve ``wss://`` with this certificate (PEM). TLS never falls back
            to plaintext; a bad file fails in the constructor.
        send_timeout: seconds a single frame may take to send before the viewer is dropped
            (default 5).
        ping_interval, ping_timeout: keepalive for idle connections, in seconds (default 20
            and 20; ``ping_interval=None`` or ``0`` sends no pings).
        handshake_timeout: seconds from connect until the request head (and the TLS handshake)
            must be complete (default 5).
        first_line_timeout: seconds from connect until the request's first line must be in
            (default 2).
        max_message_size: the largest message a client may send, in bytes (default 4096: control
            messages need a few hundred; larger ones are closed with 1009).
        max_connections_per_address: open connections one remote client address may hold
            (IPv6: one /64; default 32; clients on this machine are not counted); ``None`` or
            ``0``: no limit. Clients behind one NAT share an address: raise it for them. Behind
            a reverse proxy list the proxy in ``trusted_proxies`` (then each client counts by
            its forwarded address). Beyond it, connections are answered 503.
        trusted_proxies: addresses or CIDR networks of reverse proxies (nginx) whose
            ``X-Forwarded-For/-Proto/-Host`` or ``Forwarded`` headers are believed: for logs,
            ``stats()``, per-address limits, the Origin rule and the URLs camstream serves.
            From any other peer those headers are ignored (default None: no proxy is trusted).
            See :mod:`camstream.web.proxy`.
        max_variants: distinct sizes/qualities/limits encoded at once besides the default one
            (default 4); a viewer asking for another gets the nearest one in use (its metadata
            says which).
        fast_fanout: send frames to idle viewers (WebSocket, ``wss://`` and MJPEG) from one
            fan-out thread without waking their own threads (default True; see
            :mod:`camstream.delivery.fanout`). False: every frame goes through the viewer's own
            thread.
        max_encodes_per_s: JPEG encodes a second for non-default variants and snapshots, all
            viewers together (default None: ``fps * (max_variants + 1)``); past it, frames are
            skipped.
        name: a name for this Streamer's log lines (``[front door] client 3 connected``),
            shown always. Default None: with several Streamers running in one process, each
            line carries the Streamer's port instead (``[:8766] ...``); with one, nothing.
        annotate: ``annotate(frame)`` -> the frame's data (a JSON value, or None), called in
            the camera thread for every frame of a camera, file or test source (push mode:
            ``publish(..., data=)``). Keep it fast: the camera reads no frame while it runs,
            so a hook slower than a frame period lowers the camera's rate. Its exceptions are
            caught, counted (``stats()["app"]["annotate"]``) and logged (rate-limited); the
            frame then goes without data. See :mod:`camstream.capture.annotate`.
        on_message: ``on_message(client, value)`` for each ``{"type": "app", "value": ...}`` a
            WebSocket client sends, in that client's reader thread; ``client`` is an
            :class:`~camstream.app.AppClient` (``id``, ``address``, ``send(value)``). Without
            it, app messages get an ``error``. If it raises, the client gets an ``error`` and
            the log the traceback; if it blocks, only that client's control messages wait. See
            :mod:`camstream.app`.
        max_data_bytes: the largest frame data or app value the application sends, as compact
            UTF-8 JSON (default 16384; at most 61440, so every message stays under the 65535
            bytes Godot accepts by default). Larger raises
            :class:`~camstream.errors.DataTooLargeError` where it is handed in.

    Raises:
        ConfigError: an argument is out of range.
        ServerError: bad TLS files.
    """

    def __init__(
        self,
        source: Source = "auto",
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        fps: float = 30.0,
        width: int | None = None,
        height: int | None = None,
        quality: int = 80,
        max_bytes: int | None = GODOT_MAX_MESSAGE,
        loop: bool = True,
        pixel_format: str = "auto",
        backend: str = "auto",
        camera_settings: Mapping[str, Any] | Iterable[str] | None = None,
        capture_factory: CaptureFactory | None = None,
        # Security
        token: str | None = None,
        allowed_origins: Iterable[str] | None = None,
        max_clients: int | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        # Timeouts (seconds) and limits
        send_timeout: float = 5.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float = 20.0,
        handshake_timeout: float = 5.0,
        first_line_timeout: float = 2.0,
        max_message_size: int = 4096,
        trusted_proxies: Iterable[str] | None = None,
        max_variants: int = 4,
        max_encodes_per_s: float | None = None,
        max_connections_per_address: int | None = 32,
        fast_fanout: bool = True,
        name: str | None = None,
        # The application's data (issue 20)
        annotate: AnnotateHook | None = None,
        on_message: OnMessage | None = None,
        max_data_bytes: int = protocol.DEFAULT_MAX_DATA_BYTES,
    ) -> None:
        check_streamer_options(
            quality=quality, fps=fps, max_clients=max_clients, port=port, token=token,
            max_bytes=max_bytes, max_variants=max_variants, max_encodes_per_s=max_encodes_per_s,
            send_timeout=send_timeout, ping_interval=ping_interval, ping_timeout=ping_timeout,
            handshake_timeout=handshake_timeout, first_line_timeout=first_line_timeout,
            max_message_size=max_message_size,
            max_connections_per_address=max_connections_per_address, host=host, name=name,
        )
        # 0 means "no limit" ("no pings") wherever None does, as on the command line.
        max_clients = no_limit(max_clients)
        max_connections_per_address = no_limit(max_connections_per_address)
        ping_interval = no_limit(ping_interval)
        self._camera = CameraThread(
            source, width=width, height=height, fps=fps, loop=loop, pixel_format=pixel_format,
            backend=backend, camera_settings=camera_settings, capture_factory=capture_factory,
            annotate=annotate, max_data_bytes=max_data_bytes,
        )
        self._host = host
        self._ssl_context = make_ssl_context(certfile, keyfile) if certfile else None
        self._policy = AccessPolicy(
            token=token, allowed_origins=allowed_origins, listen_host=host,
            trusted_proxies=parse_trusted_proxies(trusted_proxies),
            tls=self._ssl_context is not None,
        )
        self._max_bytes = no_limit(max_bytes)  # None: no limit
        self._send_timeout = send_timeout
        self._cache = EncodeCache(
            default_quality=quality,
            default_max_bytes=self._max_bytes,
            max_variants=max_variants,
            max_encodes_per_s=(
                fps * (max_variants + 1) if max_encodes_per_s is None else max_encodes_per_s
            ),
        )
        self._viewers: ViewerRegistry[ClientSession, MjpegStream] = ViewerRegistry(max_clients)
        self._app = AppMessages(
            on_message, max_data_bytes,
            lambda session: self._policy.client_of(session.connection.request).address,
        )
        self._rates = CounterRates()  # encodes and decodes per second
        # Log lines of this Streamer's threads carry its label when several run (camstream.logs).
        self._label = logs.Label(name or "", explicit=name is not None)
        with logs.bound(self._label):
            self._fanout = FanOut(self._camera, self._viewers.all) if fast_fanout else None
        self._stopped = threading.Event()
        self._http = HttpRoutes(
            camera=self._camera, cache=self._cache, policy=self._policy, viewers=self._viewers,
            stats=self.stats, websocket_url=self._url_for, send_timeout=send_timeout,
            serving=lambda: self.is_serving,
        )
        self._requested_port = port
        max_connections = 512 if max_clients is None else 2 * max_clients + 64
        self._transport_options: dict[str, Any] = {
            "send_timeout": send_timeout,
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "handshake_timeout": handshake_timeout,
            "first_line_timeout": first_line_timeout,
            "max_message_size": max_message_size,
            # Text messages and ping/pong frames share one budget per connection (1008 beyond).
            "message_rate": 20.0,
            "message_burst": 40.0,
            "byte_rate": 16384.0, "byte_burst": 65536.0,  # and bytes (frames whole, 64 at least)
            # All connections of one address share a budget; past it they wait, not closed.
            "address_rates": AddressRates(200.0, 1000.0, 131072.0, 524288.0),
            "lifted_by": {"max_connections": "max_clients, CLI --max-clients"},
            # Every connection costs a thread before any check runs: cap them well above the
            # viewers we admit (refused and closing connections need room too).
            "max_connections": max_connections,
            "max_connections_per_address": max_connections_per_address,
            # With a token, the last quarter of the connections is kept for clients that
            # present it: anonymous sockets cannot lock viewers out (SECURITY.md).
            "reserved_connections": max_connections // 4 if token is not None else 0,
        }
        self._server: WebSocketServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._started_at: float | None = None

    @property
    def camera(self) -> CameraThread:
        """The :class:`~camstream.capture.camera.CameraThread` this Streamer serves (read-only): its
        ``state``, ``width``/``height``/``fps``, ``controls`` and counters."""
        return self._camera

    # Lifecycle

    def start(self) -> Streamer:
        """Open the source, bind the port and serve in background threads; returns ``self``.

        Raises:
            SourceError: the source cannot be opened.
            ServerError: the port cannot be bound (in use, not permitted).
            RuntimeError: already started.
        """
        if self._server is not None or self._stopped.is_set():
            raise RuntimeError("a Streamer can be started only once")
        with logs.bound(self._label):
            return self._start()

    def _start(self) -> Streamer:
        self._camera.add_listener(self._on_camera_event)
        self._camera.add_frame_listener(self._on_frame)
        self._camera.start()
        if self._fanout is not None:
            self._fanout.start()
        try:
            self._server = WebSocketServer(
                TransportCallbacks(
                    self._policy, opened=self._open, closed=self._close,
                    http=self._http.handle,
                ),
                self._host, self._requested_port, ssl_context=self._ssl_context,
                subprotocols=(SUBPROTOCOL,),
                **self._transport_options,
            )
        except BaseException:
            if self._fanout is not None:
                self._fanout.stop()
            self._camera.stop()
            raise
        self._label.set(f":{self._server.port}")
        self._label.activate()
        self._warn_if_exposed()
        self._started_at = time.monotonic()
        # Daemon, like every camstream thread: a program that exits without stop() must not
        # hang on it (its viewers are then dropped without a Close). stop() joins it.
        self._serve_thread = threading.Thread(
            target=logs.thread_target(self._server.serve_forever), kwargs={"poll_interval": 0.1},
            name="camstream-server", daemon=True,
        )
        self._serve_thread.start()
        logger.info("serving %s on %s", describe_source(self._camera.source), ", ".join(self.urls))
        return self

    def serve_forever(self, *, quiet: bool = False) -> None:
        """Start (if needed) and serve until :meth:`stop`, Ctrl+C or SIGTERM; then clean up.

        In the main thread, SIGTERM (``kill``, service managers, ``docker stop``) stops as
        cleanly as Ctrl+C: viewers get 1001 and the call returns. The previous SIGTERM handler
        is restored before it returns.

        If the program has set up no logging (no handler on the ``camstream`` or the root
        logger), it writes the start line (source, size, rate, URLs) and camstream's warnings
        to stderr while it runs, as the ``camstream`` command does; ``quiet=True`` keeps it
        silent (:mod:`camstream.greeting`). :meth:`start` and ``with Streamer(...)`` are
        always silent.
        """
        with Greeting(quiet=quiet) as greeting:
            if self._server is None:
                self.start()
            self._serve_until_stopped(greeting)

    def _serve_until_stopped(self, greeting: Greeting) -> None:
        with stop_on_sigterm():
            try:
                in_main = threading.current_thread() is threading.main_thread()
                greeting.say(start_line(self, stop_hint=in_main))
                while not self._stopped.wait(0.5):
                    pass
            except KeyboardInterrupt:
                logger.info("interrupted; stopping")
            except Terminated:
                logger.info("SIGTERM received; stopping")
            finally:
                self.stop()

    def stop(self, timeout: float = 2.0) -> None:
        """Close every viewer with 1001, stop serving, release the camera. Idempotent.

        Safe from any thread, including a callback thread of this Streamer.
        """
        # No early return when a stop is already under way: a second stop() (a second Ctrl+C
        # that interrupted the first, __exit__ after stop()) runs the same idempotent steps, so
        # whichever finishes, everything is closed.
        self._stopped.set()
        if self._fanout is not None:
            self._fanout.stop(timeout)
        for stream in self._viewers.close():
            stream.stop()  # it ends in its HTTP handler thread; the transport joins that
        server = self._server
        if server is not None:
            server.shutdown()  # stop accepting; returns once serve_forever has left its loop
            server.close_all(CloseCode.GOING_AWAY, "server shutting down", timeout=timeout)
        for session in self._viewers.take_sessions():
            session.stop(timeout)
        if server is not None:
            server.server_close()
        self._camera.stop(timeout)
        thread = self._serve_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._label.deactivate()

    def __enter__(self) -> Streamer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port once started; before that, the port asked for (0 with ``port=0``).
        """
        if self._server is None:
            return self._requested_port
        return self._server.port

    @property
    def url(self) -> str:
        """The WebSocket URL a program on this machine connects to, e.g.
        ``ws://127.0.0.1:8765/``: the listening address, or loopback (``127.0.0.1``, ``[::1]``)
        when listening on every interface (``0.0.0.0``, ``::``), which always works from here.
        Other machines use one of :attr:`urls`.

        Raises:
            RuntimeError: ``port=0`` and not started yet: the port is chosen by :meth:`start`.
        """
        host = self._host
        if is_wildcard(host):
            host = "::1" if ":" in host else "127.0.0.1"
        return self._url_at(host)

    @property
    def urls(self) -> list[str]:
        """The WebSocket URLs clients reach this Streamer at (the start line lists them).

        Listening on one address: ``[url]``. Listening on every interface (``0.0.0.0``,
        ``::``): one URL per address of this machine's network interfaces, loopback and
        link-local left out (``ws://192.168.1.20:8765/``; ``::`` lists IPv4 addresses too when
        the socket takes both, as Linux's does by default); ``[url]`` if no interface has one.
        Looked up on each read (interfaces come and go), without contacting anything.

        Raises:
            RuntimeError: ``port=0`` and not started yet, as for :attr:`url`.
        """
        if not is_wildcard(self._host):
            return [self.url]
        ipv6 = ":" in self._host
        found = interface_addresses(ipv4=not ipv6 or self._dual_stack(), ipv6=ipv6)
        return [self._url_at(address) for address in found] or [self.url]

    @property
    def client_count(self) -> int:
        """WebSocket viewers connected now."""
        return self._viewers.session_count

    @property
    def is_serving(self) -> bool:
        """Whether the Streamer serves now: started and not stopped."""
        return self._server is not None and not self._stopped.is_set()

    def publish(self, image: np.ndarray, *, copy: bool = True, data: Any = None) -> Frame:
        """Hand a frame to every viewer (push mode: ``Streamer("push")``). Thread-safe.

        ``image`` is an 8-bit BGR, BGRA or grayscale array (see :meth:`CameraThread.publish`).
        ``data`` (a JSON value; None: none) goes with this frame, right before its JPEG, to
        every WebSocket viewer that asked for data (``?data=1``) and gets this frame; a viewer
        that skips the frame skips its data. It is encoded here, once.

        Raises:
            ConfigError: the Streamer's source is not ``"push"``, or not such an image (the
                message gives the dtype and shape it got).
            DataError: ``data`` is not JSON; ``DataTooLargeError`` (a ``DataError``, both
                ``ConfigError``): larger than ``max_data_bytes``. Nothing is published then.
        """
        return self._camera.publish(image, copy=copy, data=data)

    def publish_jpeg(self, jpeg: bytes, *, data: Any = None) -> Frame | None:
        """Hand a JPEG file to every viewer (push mode), untouched where a viewer takes it as is.

        Returns None (and counts it in ``stats()``) if ``jpeg`` is not one whole JPEG file.
        ``data``: as for :meth:`publish`.

        Raises:
            ConfigError: the Streamer's source is not ``"push"``.
            DataError: ``data`` is not JSON or too large (as for :meth:`publish`).
        """
        return self._camera.publish_jpeg(jpeg, data=data)

    def broadcast(self, value: Any) -> int:
        """Send ``{"type": "app", "value": value}`` to every WebSocket client in the
        conversation: those that asked for data (``?data=1``) and those that have sent an
        ``app`` message (others, such as the seed's minimal client, get nothing new).
        Thread-safe; never blocks (queued; a client with a full queue misses it).

        Returns:
            How many clients it was queued for.

        Raises:
            DataError: ``value`` is not JSON or larger than ``max_data_bytes``.
        """
        return self._app.broadcast(self._viewers.sessions(), value)

    def stats(self) -> dict[str, Any]:
        """Counters for monitoring: camera, encodes, and per-client sent/skipped frames."""
        sessions = self._viewers.sessions()
        cache = self._cache
        now = time.time()
        encodes_per_s, decodes_per_s = self._rates.per_s(
            time.monotonic(), (cache.encodes, self._camera.decodes)
        )
        return {
            "uptime_s": round(time.monotonic() - self._started_at, 3) if self._started_at else 0,
            "camera": camera_report(self._camera),
            "frames_captured": self._camera.frames_captured,
            "frames_dropped_corrupt": self._camera.frames_dropped_corrupt,
            "frames_encoded": cache.encodes,
            "encodes": cache.encodes,
            "decodes": self._camera.decodes,
            "encodes_per_s": encodes_per_s,
            "decodes_per_s": decodes_per_s,
            "encodes_refused": cache.encodes_refused,
            "live_variants": cache.live_variants,
            "variants": [
                {
                    "width": v.width, "height": v.height, "quality": v.quality,
                    "max_bytes": v.max_bytes, "encodes": n,
                }
                for v, n in list(cache.encodes_by_variant.items())
            ],
            "client_count": len(sessions),
            "clients": [
                s.info(self._policy.client_of(s.connection.request).address, now)
                for s in sessions
            ],
            "http": self._http.stats(),
            "app": {
                **self._app.report(),
                "annotate": (
                    None if self._camera.annotator is None else self._camera.annotator.report()
                ),
            },
            "connections": self._server.admission_stats() if self._server is not None else {},
        }

    # Transport callbacks (through TransportCallbacks; each runs in that connection's thread)

    def _open(self, conn: Connection) -> None:
        refusal = self._policy.refusal(conn.request)
        if refusal is not None:
            _refusal_log.log(logger, logging.WARNING, "refusing client %s from %s: %s",
                             conn.id, self._policy.describe(conn.request), refusal.log_text)
            conn.close(refusal.close_code, refusal.reason)
            return
        settings = ClientSettings(fps=self._camera.fps, max_bytes=self._max_bytes)
        session = ClientSession(
            conn, self._camera, self._cache, settings, stall_timeout=self._send_timeout,
            describe_camera=functools.partial(camera_state_fields, self._camera),
            on_app=self._app.handler,
        )
        session.apply_config(dict(conn.request.query), from_url=True)
        admission = self._viewers.add_session(conn.id, session)
        if admission is Admission.CLOSED:
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
            return
        if admission is Admission.FULL:
            _refusal_log.log(logger, logging.WARNING, "refusing client %s from %s: %s",
                             conn.id, self._policy.describe(conn.request), FULL_REMEDY)
            conn.close(CloseCode.TRY_AGAIN_LATER, "server full, try again later")
            return
        conn.session = session
        conn.log(logger, logging.INFO, "client %s connected from %s", conn.id,
                 self._policy.describe(conn.request))  # through its address's log budget
        session.start()

    def _close(self, conn: Connection) -> None:
        session = self._viewers.remove_session(conn.id)
        if session is not None:
            self._app.forget(session)
            session.stop()
            stats = session.stats
            conn.log(
                logger, logging.INFO, "client %s left (%s): %d frames sent, %d skipped",
                conn.id, how_it_closed(conn), stats.frames_sent, stats.frames_skipped,
            )

    # Internals

    def _url_at(self, host: str) -> str:
        if self._server is None and self._requested_port == 0:
            raise RuntimeError("with port=0 the port is chosen by start(): read url after it")
        scheme = "wss" if self._ssl_context is not None else "ws"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def _dual_stack(self) -> bool:
        """Whether the IPv6 socket takes IPv4 too (``IPV6_V6ONLY`` off; assumed before start)."""
        server = self._server
        if server is None:
            return True
        try:
            return not server.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        except (OSError, AttributeError):
            return False

    def _url_for(self, request: Request) -> str:
        """The WebSocket URL as the client of ``request`` reaches it (through a proxy or not)."""
        client = self._policy.client_of(request)
        if not client.host:
            return self.url
        return f"{'wss' if client.secure else 'ws'}://{client.host}/"

    def _on_frame(self, frame: Frame) -> None:
        self._rates.sample(time.monotonic(), (self._cache.encodes, self._camera.decodes))
        if self._fanout is None:
            for viewer in self._viewers.all():
                viewer.wake()
            return
        self._fanout.notify()

    def _on_camera_event(self, event: str, details: dict[str, Any]) -> None:
        message = protocol.event_message(event, details)
        for session in self._viewers.sessions():
            session.post(message)

    def _warn_if_exposed(self) -> None:
        if not self._policy.has_token and not self._policy.loopback:
            logger.warning(
                "listening on %s without a token: anyone who can reach this port can watch. "
                "Set token=... (CLI: --token or CAMSTREAM_TOKEN).", self._host,
            )
