"""Streamer: one camera, any number of WebSocket viewers, each on its own timer.

``Streamer().serve_forever()`` is the whole program; ``with Streamer(...) as s:`` embeds it in an
application (it serves in background threads until the block ends).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
import time
import urllib.parse
from typing import Any, Iterable

import numpy as np

from . import protocol
from .camera import CameraThread, Frame, Source, describe_source
from .encoder import EncodeCache
from .errors import ConfigError
from .protocol import CloseCode
from .ratelimit import LogBudget
from .session import ClientSession, ClientSettings
from .transport import (
    BaseApplication,
    Connection,
    HandshakeRejected,
    HttpExchange,
    Request,
    WebSocketServer,
    make_ssl_context,
)
from .webroutes import HttpRoutes

__all__ = ["Streamer"]

logger = logging.getLogger(__name__)
_refusal_log = LogBudget()  # refused viewers: anyone can cause them, so they are rate-limited

_WEBSOCKET_PATHS = frozenset({"/", "/ws"})
SUBPROTOCOL = "camstream.v1"  # optional: clients that offer no subprotocol are welcome too


class Streamer(BaseApplication):
    """Streams one frame source to every WebSocket client that connects.

    Args:
        source: a camera index, a video file or stream URL, ``"test"`` for the built-in test
            pattern, or ``"push"`` to hand frames in with :meth:`publish`.
        host: the address to listen on. The default, ``127.0.0.1``, admits this machine only;
            ``0.0.0.0`` admits the network (set a ``token`` then).
        port: the TCP port; ``0`` picks a free one (see :attr:`port`).
        fps: the camera's frame rate, and the rate a client gets unless it asks for less.
        width, height: the capture size requested from the source.
        quality: the default JPEG quality, 1-100.
        loop: play files again from the start when they end.
        token: if set, clients must present it (``?token=`` or ``Authorization: Bearer``);
            others are closed with 1008.
        allowed_origins: browser origins admitted (e.g. ``["https://example.com"]``); pages from
            other origins are closed with 1008. Clients that send no Origin (Godot, Python) are
            admitted. ``None`` admits every origin.
        max_clients: more simultaneous viewers than this are closed with 1013.
        certfile, keyfile: serve ``wss://`` with this certificate (PEM). TLS never falls back
            to plaintext; a bad file fails in the constructor.
        send_timeout: seconds a single frame may take to send before the viewer is dropped.
        handshake_timeout: seconds from connect until the request head (and the TLS handshake)
            must be complete; ``first_line_timeout``: until its first line must be in.
        max_connections_per_address: open connections one client address may hold (IPv6: one
            /64); ``None``: no limit. Behind a reverse proxy every client has the proxy's
            address: raise it or exempt the proxy.
        ping_interval, ping_timeout: keepalive for idle connections, in seconds.
        max_message_size: the largest message a client may send, in bytes (else 1009).

    Raises:
        ConfigError: an argument is out of range.
        ServerError: bad TLS files.
    """

    def __init__(
        self,
        source: Source = 0,
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        fps: float = 30.0,
        width: int | None = None,
        height: int | None = None,
        quality: int = 80,
        loop: bool = True,
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
        self.camera = CameraThread(source, width=width, height=height, fps=fps, loop=loop)
        self.host = host
        self.quality = quality
        self.token = token
        self.allowed_origins = (
            None if allowed_origins is None else {o.rstrip("/").lower() for o in allowed_origins}
        )
        self.max_clients = max_clients
        self.send_timeout = send_timeout
        self.cache = EncodeCache()
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
        """Start (if needed) and serve until :meth:`stop` or Ctrl+C; then clean up and return."""
        if self._server is None:
            self.start()
        try:
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            logger.info("interrupted; stopping")
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
        """The bound TCP port (useful with ``port=0``)."""
        if self._server is None:
            return self._requested_port
        return self._server.port

    @property
    def url(self) -> str:
        """The WebSocket URL clients connect to, e.g. ``ws://127.0.0.1:8765/``."""
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

        Raises:
            ConfigError: the Streamer's source is not ``"push"``, or not an 8-bit image.
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
        return {
            "uptime_s": round(time.monotonic() - self._started_at, 3) if self._started_at else 0,
            "camera": self._camera_info(),
            "frames_captured": self.camera.frames_captured,
            "frames_encoded": cache.encodes,
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
                             conn.id, conn.remote_address[0], reason)
            conn.close(code, reason)
            return
        settings = ClientSettings(fps=self.camera.fps, quality=self.quality)
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
        logger.info("client %s connected from %s", conn.id, conn.remote_address[0])
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
                "client %s left (code %s): %d frames sent, %d skipped",
                conn.id, conn.close_code, stats.frames_sent, stats.frames_skipped,
            )

    def on_http(self, exchange: HttpExchange) -> None:
        self._http.handle(exchange)

    # Internals

    def access_refusal(self, request: Request) -> tuple[int, str] | None:
        """Why this request may not watch, as (WebSocket close code, reason), or None.

        The token and Origin rules, shared by WebSocket viewers and the HTTP endpoints.
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
            if not self._origin_allowed(origin.rstrip("/").lower(), host):
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
        }

    @staticmethod
    def _client_info(session: ClientSession, now: float) -> dict[str, Any]:
        settings, stats = session.settings, session.stats
        return {
            "id": session.connection.id,
            "address": session.connection.remote_address[0],
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
