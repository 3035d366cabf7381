"""Streamer: one camera, any number of WebSocket viewers, each on its own timer.

``Streamer().serve_forever()`` is the whole program; ``with Streamer(...) as s:`` embeds it in an
application (it serves in background threads until the block ends).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import signal
import threading
import time
import urllib.parse
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from . import protocol
from .camera import CameraThread, Frame, Source, describe_source
from .devices import CaptureFactory
from .encoder import EncodeCache
from .errors import ConfigError
from .pacing import CounterRates
from .protocol import CloseCode
from .proxy import ClientView, is_trusted, parse_trusted_proxies, resolve
from .ratelimit import LogBudget
from .session import ClientSession, ClientSettings
from .webroutes import HttpRoutes
from .ws import (
    BaseApplication,
    Connection,
    HandshakeRejected,
    HttpExchange,
    Request,
    WebSocketServer,
    make_ssl_context,
)

__all__ = ["Streamer"]

logger = logging.getLogger(__name__)
_refusal_log = LogBudget()  # refused viewers: anyone can cause them, so they are rate-limited

_WEBSOCKET_PATHS = frozenset({"/", "/ws"})
GODOT_MAX_MESSAGE = 65535
"""Godot 4's default ``WebSocketPeer.inbound_buffer_size``: the largest message it accepts."""
SUBPROTOCOL = "camstream.v1"  # optional: clients that offer no subprotocol are welcome too


class Streamer(BaseApplication):
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
            :class:`~camstream.camera.CameraThread` (MJPEG by default, the platform's backend).
        token: if set, clients must present it (``?token=`` or ``Authorization: Bearer``);
            others are closed with 1008. Default None: no token.
        allowed_origins: browser origins admitted besides the server's own pages (e.g.
            ``["https://example.com"]``; ``["*"]`` admits every origin). The default, None,
            admits only same-origin pages (Origin matching the Host header) and clients that
            send no Origin (Godot, Python); pages from other origins are closed with 1008.
        max_clients: more simultaneous viewers than this are closed with 1013 (default None:
            no limit).
        certfile, keyfile: serve ``wss://`` with this certificate (PEM). TLS never falls back
            to plaintext; a bad file fails in the constructor.
        send_timeout: seconds a single frame may take to send before the viewer is dropped
            (default 5).
        ping_interval, ping_timeout: keepalive for idle connections, in seconds (default 20
            and 20; ``ping_interval=None`` sends no pings).
        handshake_timeout: seconds from connect until the request head (and the TLS handshake)
            must be complete (default 5).
        first_line_timeout: seconds from connect until the request's first line must be in
            (default 2).
        max_message_size: the largest message a client may send, in bytes (default 65536;
            larger ones are closed with 1009).
        max_connections_per_address: open connections one client address may hold (IPv6: one
            /64; default 32); ``None``: no limit. Behind a reverse proxy every client has the
            proxy's address: list it in ``trusted_proxies`` (exempt) or raise this.
        trusted_proxies: addresses or CIDR networks of reverse proxies (nginx) whose
            ``X-Forwarded-For/-Proto/-Host`` or ``Forwarded`` headers are believed: for logs,
            ``stats()``, per-address limits, the Origin rule and the URLs camstream serves.
            From any other peer those headers are ignored (default None: no proxy is trusted).
            See :mod:`camstream.proxy`.
        max_variants: distinct sizes/qualities/limits encoded at once besides the default one
            (default 4); a viewer asking for another gets the nearest one in use (its metadata
            says which).
        max_encodes_per_s: JPEG encodes a second for non-default variants and snapshots, all
            viewers together (default None: ``fps * (max_variants + 1)``); past it, frames are
            skipped.

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
        max_message_size: int = 65536,
        trusted_proxies: Iterable[str] | None = None,
        max_variants: int = 4,
        max_encodes_per_s: float | None = None,
        max_connections_per_address: int | None = 32,
    ) -> None:
        if not 1 <= quality <= 100:
            raise ConfigError(f"quality must be 1-100, not {quality}")
        if not 0 < fps <= protocol.MAX_FPS:
            raise ConfigError(f"fps must be above 0 and at most {protocol.MAX_FPS:g}, not {fps}")
        if max_clients is not None and max_clients < 1:
            raise ConfigError(f"max_clients must be at least 1, not {max_clients}")
        if not 0 <= port <= 65535:
            raise ConfigError(f"port must be 0-65535, not {port}")
        if token is not None and not token:
            raise ConfigError("token must not be empty")
        if max_bytes is not None and not (
            max_bytes == 0 or protocol.MIN_MAX_BYTES <= max_bytes <= 2**31 - 1
        ):
            raise ConfigError(
                f"max_bytes must be 0 (no limit) or {protocol.MIN_MAX_BYTES}-{2**31 - 1}, "
                f"not {max_bytes}"
            )
        if not 0 <= max_variants <= 64:
            raise ConfigError(f"max_variants must be 0-64, not {max_variants}")
        if max_encodes_per_s is not None and not 1 <= max_encodes_per_s <= 100_000:
            raise ConfigError(f"max_encodes_per_s must be 1-100000, not {max_encodes_per_s}")
        self.trusted_proxies = parse_trusted_proxies(trusted_proxies)
        self.camera = CameraThread(
            source, width=width, height=height, fps=fps, loop=loop, pixel_format=pixel_format,
            backend=backend, camera_settings=camera_settings, capture_factory=capture_factory,
        )
        self.host = host
        self.quality = quality
        self.max_bytes = max_bytes or None  # None: no limit
        self.token = token
        self.allowed_origins = (
            None if allowed_origins is None else {o.rstrip("/").lower() for o in allowed_origins}
        )
        self.max_clients = max_clients
        self.send_timeout = send_timeout
        self.cache = EncodeCache(
            default_quality=quality,
            default_max_bytes=self.max_bytes,
            max_variants=max_variants,
            max_encodes_per_s=(
                fps * (max_variants + 1) if max_encodes_per_s is None else max_encodes_per_s
            ),
        )
        self._rates = CounterRates()  # encodes and decodes per second
        self._http = HttpRoutes(self)
        self._ssl_context = make_ssl_context(certfile, keyfile) if certfile else None
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
        self._sessions: dict[int, ClientSession] = {}
        self._sessions_lock = threading.Lock()  # guards _sessions and _other_viewers
        self._other_viewers = 0  # viewers that are not WebSocket sessions (MJPEG streams)
        self._stopped = threading.Event()
        self._started_at: float | None = None

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
        self.camera.add_listener(self._on_camera_event)
        self.camera.add_frame_listener(self._on_frame)
        self.camera.start()
        try:
            self._server = WebSocketServer(
                self, self.host, self._requested_port, ssl_context=self._ssl_context,
                subprotocols=(SUBPROTOCOL,),
                **self._transport_options,
            )
        except BaseException:
            self.camera.stop()
            raise
        self._warn_if_exposed()
        self._started_at = time.monotonic()
        # Daemon, like every camstream thread: a program that exits without stop() must not
        # hang on it (its viewers are then dropped without a Close). stop() joins it.
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
            name="camstream-server", daemon=True,
        )
        self._serve_thread.start()
        logger.info("serving %s on %s", describe_source(self.camera.source), self.url)
        return self

    def serve_forever(self) -> None:
        """Start (if needed) and serve until :meth:`stop`, Ctrl+C or SIGTERM; then clean up.

        In the main thread, SIGTERM (``kill``, service managers, ``docker stop``) stops as
        cleanly as Ctrl+C: viewers get 1001 and the call returns. The previous SIGTERM handler
        is restored before it returns.
        """
        if self._server is None:
            self.start()
        with _stop_on_sigterm():
            try:
                while not self._stopped.wait(0.5):
                    pass
            except KeyboardInterrupt:
                logger.info("interrupted; stopping")
            except _Terminated:
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
        server = self._server
        if server is not None:
            server.shutdown()  # stop accepting; returns once serve_forever has left its loop
            server.close_all(CloseCode.GOING_AWAY, "server shutting down", timeout=timeout)
        for session in self._take_sessions():
            session.stop(timeout)
        if server is not None:
            server.server_close()
        self.camera.stop(timeout)
        thread = self._serve_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

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
        """The WebSocket URL clients connect to, e.g. ``ws://127.0.0.1:8765/``.

        Raises:
            RuntimeError: ``port=0`` and not started yet: the port is chosen by :meth:`start`.
        """
        if self._server is None and self._requested_port == 0:
            raise RuntimeError("with port=0 the port is chosen by start(): read url after it")
        scheme = "wss" if self._ssl_context is not None else "ws"
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}/"

    def reserve_viewer(self) -> bool:
        """Take a ``max_clients`` place for a viewer that is not a WebSocket (an MJPEG stream).

        Returns False when the server is full. Give the place back with :meth:`release_viewer`.
        """
        with self._sessions_lock:
            if self.max_clients is not None and (
                len(self._sessions) + self._other_viewers >= self.max_clients
            ):
                return False
            self._other_viewers += 1
            return True

    def release_viewer(self) -> None:
        """Give back a place taken with :meth:`reserve_viewer`."""
        with self._sessions_lock:
            self._other_viewers -= 1

    @property
    def client_count(self) -> int:
        """WebSocket viewers connected now."""
        with self._sessions_lock:
            return len(self._sessions)

    @property
    def is_serving(self) -> bool:
        return self._server is not None and not self._stopped.is_set()

    def publish(self, image: np.ndarray, *, copy: bool = True) -> Frame:
        """Hand a frame to every viewer (push mode: ``Streamer("push")``). Thread-safe.

        ``image`` is an 8-bit BGR, BGRA or grayscale array (see :meth:`CameraThread.publish`).

        Raises:
            ConfigError: the Streamer's source is not ``"push"``, or not such an image (the
                message gives the dtype and shape it got).
        """
        return self.camera.publish(image, copy=copy)

    def publish_jpeg(self, data: bytes) -> Frame | None:
        """Hand a JPEG file to every viewer (push mode), untouched where a viewer takes it as is.

        Returns None (and counts it in ``stats()``) if ``data`` is not one whole JPEG file.

        Raises:
            ConfigError: the Streamer's source is not ``"push"``.
        """
        return self.camera.publish_jpeg(data)

    def stats(self) -> dict[str, Any]:
        """Counters for monitoring: camera, encodes, and per-client sent/skipped frames."""
        with self._sessions_lock:
            sessions = list(self._sessions.values())
        cache = self.cache
        now = time.time()
        encodes_per_s, decodes_per_s = self._rates.per_s(
            time.monotonic(), (cache.encodes, self.camera.decodes)
        )
        return {
            "uptime_s": round(time.monotonic() - self._started_at, 3) if self._started_at else 0,
            "camera": self._camera_info(),
            "frames_captured": self.camera.frames_captured,
            "frames_dropped_corrupt": self.camera.frames_dropped_corrupt,
            "frames_encoded": cache.encodes,
            "encodes": cache.encodes,
            "decodes": self.camera.decodes,
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
            "clients": [self._client_info(s, now) for s in sessions],
            "http": self._http.stats(),
            "connections": self._server.admission_stats() if self._server is not None else {},
        }

    # Transport callbacks (each runs in that connection's reader thread)

    def authorize(self, request: Request) -> None:
        if request.path not in _WEBSOCKET_PATHS:
            raise HandshakeRejected(404, f"no WebSocket endpoint at {request.path}")

    def on_open(self, conn: Connection) -> None:
        refusal = self.access_refusal(conn.request)
        if refusal is not None:
            code, reason = refusal
            _refusal_log.log(logger, logging.INFO, "refusing client %s from %s: %s",
                             conn.id, self._describe(conn.request), reason)
            conn.close(code, reason)
            return
        settings = ClientSettings(fps=self.camera.fps, max_bytes=self.max_bytes)
        session = ClientSession(
            conn, self.camera, self.cache, settings, describe_camera=self._camera_state_fields,
            stall_timeout=self.send_timeout,
        )
        session.apply_config(dict(conn.request.query), from_url=True)
        with self._sessions_lock:
            if self._stopped.is_set():
                conn.close(CloseCode.GOING_AWAY, "server shutting down")
                return
            if self.max_clients is not None and (
                len(self._sessions) + self._other_viewers >= self.max_clients
            ):
                conn.close(CloseCode.TRY_AGAIN_LATER, "server full, try again later")
                return
            self._sessions[conn.id] = session
        conn.session = session
        logger.info("client %s connected from %s", conn.id, self._describe(conn.request))
        session.start()

    def on_text(self, conn: Connection, text: str) -> None:
        session = conn.session
        if isinstance(session, ClientSession):
            session.handle_text(text)

    def on_binary(self, conn: Connection, data: bytes) -> None:
        conn.close(CloseCode.UNSUPPORTED_DATA, "binary messages are not accepted")

    def on_close(self, conn: Connection) -> None:
        with self._sessions_lock:
            session = self._sessions.pop(conn.id, None)
        if session is not None:
            session.stop()
            stats = session.stats
            logger.info(
                "client %s left (%s): %d frames sent, %d skipped",
                conn.id, _how_it_closed(conn), stats.frames_sent, stats.frames_skipped,
            )

    def on_http(self, exchange: HttpExchange) -> None:
        self._http.handle(exchange)

    # Internals

    def client_of(self, request: Request) -> ClientView:
        """The client behind ``request``: its address, scheme and host (see camstream.proxy).

        The one place that decides which address a connection is, for logs, ``stats()`` and
        per-address limits: the TCP peer, or the forwarded client if the peer is a trusted
        proxy.
        """
        return resolve(
            request.remote_address[0], request.headers, self.trusted_proxies,
            tls=self._ssl_context is not None,
        )

    def is_trusted_proxy(self, address: str) -> bool:
        """Whether a TCP peer is a trusted proxy: exempt from per-address limits at accept
        time, its connections counted by their forwarded address once the headers are read."""
        return is_trusted(address, self.trusted_proxies)

    def client_address(self, request: Request) -> str | None:
        """Transport callback: the address a connection from a trusted proxy counts against
        (the client it carries, from ``X-Forwarded-For`` / ``Forwarded``)."""
        return self.client_of(request).address

    def url_for(self, request: Request) -> str:
        """The WebSocket URL as the client of ``request`` reaches it (through a proxy or not)."""
        client = self.client_of(request)
        if not client.host:
            return self.url
        return f"{'wss' if client.secure else 'ws'}://{client.host}/"

    def _describe(self, request: Request) -> str:
        """The client's address for logs; ``"<client> via <proxy>"`` through a trusted proxy."""
        client = self.client_of(request)
        if client.via_proxy:
            return f"{client.address} via {request.remote_address[0]}"
        return client.address

    def access_refusal(self, request: Request) -> tuple[int, str] | None:
        """Why this request may not watch, as (WebSocket close code, reason), or None.

        The token and Origin rules, shared by WebSocket viewers and the HTTP endpoints.
        The DNS-rebinding Host rule looks at the ``Host`` header as received (a trusted proxy
        sends its upstream's name, e.g. ``localhost``); the same-origin test compares the page's
        origin with the host the client asked for (``X-Forwarded-Host`` through a proxy).
        """
        token_problem = self._token_problem(request)
        if token_problem is not None:
            return CloseCode.POLICY_VIOLATION, token_problem
        host = request.headers.get("host", "").strip().lower()
        if host and self._loopback and not _is_loopback_name(host):
            # A browser sent here through a name that is not this machine's: DNS rebinding.
            return CloseCode.POLICY_VIOLATION, "host not allowed"
        origin = request.origin
        if origin is not None:
            if not self._origin_allowed(
                origin.rstrip("/").lower(), self.client_of(request).host
            ):
                return CloseCode.POLICY_VIOLATION, "origin not allowed"
        elif self._embedded_elsewhere(request):
            return CloseCode.POLICY_VIOLATION, "cross-site request not allowed"
        return None

    def _embedded_elsewhere(self, request: Request) -> bool:
        """A browser fetch made by a page of another site (or another port of this host),
        such as ``<img src=".../stream.mjpg">``, which carries no Origin header.

        Browsers say where a request comes from in ``Sec-Fetch-Site``; ``same-site`` is
        refused too, because a page on another port is another origin. Pages of other origins
        may embed frames only if the server allows some (``allowed_origins``): their requests
        carry no Origin, so which one is asking cannot be told apart.
        """
        site = request.headers.get("sec-fetch-site", "").strip().lower()
        return site in ("cross-site", "same-site") and not self.allowed_origins

    def authenticated(self, request: Request) -> bool:
        """Transport callback: the request carries the valid token (it may use the places
        reserved for viewers with the token). Always False without a token."""
        return self.token is not None and self._token_problem(request) is None

    def _token_problem(self, request: Request) -> str | None:
        """``"token required"`` / ``"invalid token"``, or None if the token rule is met."""
        if self.token is None:
            return None
        offered = request.query.get("token")
        authorization = request.headers.get("authorization", "")
        if offered is None and authorization[:7].lower() == "bearer ":
            offered = authorization[7:].strip()
        if offered is None:
            return "token required"
        if not hmac.compare_digest(offered.encode(), self.token.encode()):
            return "invalid token"
        return None

    def _origin_allowed(self, origin: str, host: str) -> bool:
        """Same-origin pages always; other pages only if listed (``"*"``: any page)."""
        if urllib.parse.urlsplit(origin).netloc == host:
            return True
        allowed = self.allowed_origins
        return allowed is not None and ("*" in allowed or origin in allowed)

    def _take_sessions(self) -> list[ClientSession]:
        with self._sessions_lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        return sessions

    def _on_frame(self, frame: Frame) -> None:
        self._rates.sample(time.monotonic(), (self.cache.encodes, self.camera.decodes))
        with self._sessions_lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.wake()

    def _on_camera_event(self, event: str, details: dict[str, Any]) -> None:
        message = {"type": event, "timestamp": protocol.iso_utc(), **details}
        with self._sessions_lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.post(message)

    def _camera_state_fields(self) -> dict[str, Any]:
        camera = self.camera
        return {
            "source_width": camera.width,
            "source_height": camera.height,
            "source_format": camera.pixel_format,
            "source_fps": camera.fps,
            "camera": camera.state.value,
        }

    def _camera_info(self) -> dict[str, Any]:
        camera = self.camera
        return {
            "source": describe_source(camera.source),
            "state": camera.state.value,
            "width": camera.width,
            "height": camera.height,
            "fps": camera.fps,
            "format": camera.pixel_format,
            "backend": camera.backend,
            "jpeg_passthrough": camera.jpeg_passthrough,
            "frames_dropped_corrupt": camera.frames_dropped_corrupt,
            "controls": [
                {"name": c.name, "requested": c.requested, "actual": c.actual,
                 "granted": c.granted}
                for c in camera.controls
            ],
            "failure_reason": camera.failure_reason,
        }

    def _client_info(self, session: ClientSession, now: float) -> dict[str, Any]:
        settings, stats = session.settings, session.stats
        return {
            "id": session.connection.id,
            "address": self.client_of(session.connection.request).address,
            "fps": settings.fps,
            "width": settings.width,
            "height": settings.height,
            "quality": settings.quality,
            "max_bytes": settings.max_bytes,
            "paused": session.paused,
            "frames_sent": stats.frames_sent,
            "frames_skipped": stats.frames_skipped,
            "bytes_sent": stats.bytes_sent,
            "errors": stats.errors,
            "connected_s": round(now - stats.connected_at, 3),
        }

    @property
    def _loopback(self) -> bool:
        """Whether the server listens on a loopback address only."""
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    def _warn_if_exposed(self) -> None:
        if self.token is None and not self._loopback:
            logger.warning(
                "listening on %s without a token: anyone who can reach this port can watch. "
                "Set token=... (CLI: --token or CAMSTREAM_TOKEN).", self.host,
            )




def _how_it_closed(conn: Connection) -> str:
    """The close as the client saw it: the code we sent if we closed first, else its own."""
    if conn.sent_close_code is not None:
        return f"server closed with code {conn.sent_close_code}"
    if conn.close_code is not None:
        return f"client closed with code {conn.close_code}"
    return "connection lost, code 1006"


class _Terminated(BaseException):
    """SIGTERM arrived while :meth:`Streamer.serve_forever` ran in the main thread."""


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """In the main thread: the first SIGTERM raises :class:`_Terminated` (later ones during the
    stop are ignored); the previous handler is restored on exit. Elsewhere: does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: object) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _is_loopback_name(host: str) -> bool:
    """Whether a Host header value names this machine: ``localhost``, ``127.x.y.z``, ``[::1]``."""
    if host.startswith("["):
        name = host[1:].split("]", 1)[0]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
