"""Streamer: one camera or several on one port, any number of viewers, each on its own timer.

``Streamer().serve_forever()`` is the whole program; ``with Streamer(...) as s:`` embeds it in an
application (it serves in background threads until the block ends). ``Streamer(sources={...})``
serves several cameras, each under its name (:mod:`camstream.cameraset`).
"""

from __future__ import annotations

import dataclasses
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
from .cameraset import (
    DEFAULT_NAME,
    CameraConfig,
    CameraLabel,
    CameraSet,
    ServedCamera,
    check_camera_name,
    name_taken,
    resends_metadata,
    split_path,
    visible_state,
)
from .capture.annotate import AnnotateHook
from .capture.camera import CameraThread, Frame, Source, describe_source
from .capture.devices import CaptureFactory
from .capture.report import camera_state_fields
from .capture.sources import SourceKind, classify
from .delivery.mjpeg import MjpegStream
from .delivery.registry import Admission, ViewerRegistry
from .delivery.session import ClientSession, ClientSettings
from .errors import ConfigError, SourceError
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

_SUMMED_COUNTERS = (  # stats(): the top-level counters are these, summed over the cameras
    "frames_captured", "frames_dropped_corrupt", "frames_encoded", "encodes", "decodes",
    "encodes_per_s", "decodes_per_s", "encode_attempts", "encodes_refused",
)

GODOT_MAX_MESSAGE = protocol.GODOT_MAX_MESSAGE  # (kept here too: older code imports it)
SUBPROTOCOL = "camstream.v1"  # optional: clients that offer no subprotocol are welcome too


class Streamer:
    """Streams one frame source, or several, to every WebSocket client that connects.

    Args:
        source: what to stream (default auto: camera 0, else the built-in test pattern with a
            WARNING), a camera index (strict: no fallback) or device path, a video file or
            stream URL (an MJPEG one is passed through untouched), ``"test"`` for the test
            pattern, or ``"push"`` to hand frames in with :meth:`publish`.
        sources: several cameras instead of ``source``, by name: ``{"front": 0, "rear":
            "/dev/v4l/by-id/...", "bench": "http://host/stream.mjpg"}``. Each value is a source,
            a :class:`~camstream.cameraset.CameraConfig` or a dict of its fields (``{"source": 2,
            "width": 1280, "on_demand": 30}``); settings a camera leaves out are the
            Streamer's (``width``, ``fps``, ``quality``, ...). Camera ``NAME`` is served at
            ``ws://host:port/NAME``, ``/NAME/stream.mjpg``, ``/NAME/snapshot.jpg`` and
            ``/NAME/`` (viewer page); ``/cameras.json`` lists them; the unnamed paths serve the
            first. Names: 1-32 letters, digits, ``-`` or ``_``. Each camera has its own camera
            thread, encode cache (and encode budget, ``max_encodes_per_s`` each) and fan-out, so
            one camera lost, busy or slow never holds up another; ``max_clients`` counts the
            viewers of every camera together. See :meth:`add_camera` / :meth:`remove_camera`.
        on_demand: open each camera only while someone watches it: a grace period in seconds
            (the source is released that long after its last viewer leaves; 0: at once),
            ``True`` for 10 s, or None (the default: always open). Viewers that come while it opens
            get ``metadata`` with ``camera: "starting"`` at once and frames as soon as there are
            any. Push sources are never closed.
        host: the address to listen on. The default, ``127.0.0.1``, admits this machine only;
            ``0.0.0.0`` admits the network (set a ``token`` then).
        port: the TCP port (default 8765); ``0`` picks a free one (see :attr:`port`).
        fps: the camera's frame rate (default 30), and the rate a client gets unless it asks
            for less. This and the settings below up to ``capture_factory`` (and ``quality``)
            are every camera's unless its :class:`~camstream.cameraset.CameraConfig` says
            otherwise.
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
            viewers of one camera together (each camera has its own budget; default None:
            ``fps * (max_variants + 1)``); past it, frames are skipped.
        name: a name for this Streamer's log lines (``[front door] client 3 connected``),
            shown always. Default None: with several Streamers running in one process, each
            line carries the Streamer's port instead (``[:8766] ...``); with one, nothing.
            With ``sources``, every line about one camera names it too (``[front] ...``,
            ``[desk/front] ...``).
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
        sources: Mapping[str, Source | CameraConfig | Mapping[str, Any]] | None = None,
        on_demand: bool | float | None = None,
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
        self._defaults = CameraConfig(
            source, width=width, height=height, fps=fps, quality=quality, loop=loop,
            pixel_format=pixel_format, backend=backend, camera_settings=camera_settings,
            capture_factory=capture_factory, on_demand=on_demand, annotate=annotate,
        )
        # Cameras have names of their own (sources=, or add_camera() since): their log lines,
        # metadata and events name them. A Streamer of one source calls it "default", quietly.
        self._named = sources is not None
        if sources is not None and source != "auto":
            raise ConfigError("give source or sources, not both")
        if sources is not None and (not isinstance(sources, Mapping) or not sources):
            raise ConfigError("sources must be a dict of at least one camera: {name: source}")
        self._host = host
        self._ssl_context = make_ssl_context(certfile, keyfile) if certfile else None
        self._policy = AccessPolicy(
            token=token, allowed_origins=allowed_origins, listen_host=host,
            trusted_proxies=parse_trusted_proxies(trusted_proxies),
            tls=self._ssl_context is not None,
        )
        self._max_bytes = no_limit(max_bytes)  # None: no limit
        self._send_timeout = send_timeout
        # Every camera's encode cache and fan-out (each camera has its own):
        self._max_variants, self._max_encodes_per_s = max_variants, max_encodes_per_s
        self._fast_fanout = fast_fanout
        # More CameraThread arguments, every camera's:
        self._camera_options: dict[str, Any] = {"max_data_bytes": max_data_bytes}
        self._viewers: ViewerRegistry[ClientSession, MjpegStream] = ViewerRegistry(max_clients)
        self._app = AppMessages(
            on_message, max_data_bytes,
            lambda session: self._policy.client_of(session.connection.request).address,
        )
        # Log lines of this Streamer's threads carry its label when several run (camstream.logs).
        self._label = logs.Label(name or "", explicit=name is not None)
        self._stopped = threading.Event()
        self._cameras = CameraSet()
        self._cameras_lock = threading.Lock()  # add_camera / remove_camera / start / stop
        self._cameras_started = False  # start() started them: add_camera() starts its own
        self._cameras_opening: set[str] = set()  # names add_camera() is opening (lock held)
        for camera_name, value in (sources or {DEFAULT_NAME: source}).items():
            self._cameras.add(self._make_camera(camera_name, value))
        self._http = HttpRoutes(
            cameras=self._cameras, policy=self._policy, viewers=self._viewers,
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
        ``state``, ``width``/``height``/``fps``, ``controls`` and counters. With several
        cameras, the first (the one the unnamed paths serve); see :attr:`cameras`.

        Raises:
            RuntimeError: every camera was removed.
        """
        return self._camera_named(None).thread

    @property
    def cameras(self) -> dict[str, CameraThread]:
        """Every camera by name, in order (a copy; the first serves the unnamed paths). A
        Streamer of one unnamed source has one, named ``"default"``."""
        return {camera.name: camera.thread for camera in self._cameras.all()}

    def add_camera(
        self, name: str, source: Source | CameraConfig | Mapping[str, Any]
    ) -> CameraThread:
        """Add a camera, served at once under ``name`` if the Streamer runs (its source is
        opened here, in the calling thread, unless on demand). Any thread.

        ``source`` is what a value of ``sources`` is: a source, a
        :class:`~camstream.cameraset.CameraConfig` or a dict; settings it leaves out are the
        Streamer's. Returns the new camera's thread.

        Raises:
            ConfigError: a bad name or setting, a name in use, or the Streamer has stopped.
            SourceError: the source cannot be opened (nothing is added).
        """
        with self._cameras_lock:
            if self._stopped.is_set():
                raise ConfigError("add_camera() after stop()")
            camera = self._make_camera(name, source, named=True)
            taken = self._cameras.taken(name) or next(
                (n for n in self._cameras_opening if n.lower() == name.lower()), None
            )
            if taken is not None:
                raise name_taken(taken, name)
            if not self._cameras_started:  # start() opens it with the others
                self._cameras.add(camera)
                self._named = True  # several cameras now: every one is told by name
                return camera.thread
            self._cameras_opening.add(name)
        # The open runs outside the lock: stop(), remove_camera() and other add_camera()
        # calls do not wait for a slow source (an FFmpeg URL may take its timeout).
        try:
            self._start_camera(camera)
            with self._cameras_lock:
                if self._stopped.is_set():
                    raise ConfigError(f"the Streamer stopped while camera {name!r} opened")
                self._cameras.add(camera)
                self._named = True
        except BaseException:
            camera.stop()
            raise
        finally:
            with self._cameras_lock:
                self._cameras_opening.discard(name)
        with logs.bound(self._label):
            logger.info("camera %s added: %s", name, describe_source(camera.thread.source))
        return camera.thread

    def remove_camera(self, name: str, timeout: float = 2.0) -> None:
        """Stop serving camera ``name``: its WebSocket viewers are closed with 1001 (``camera
        removed``), its MJPEG streams end, its source is released and its threads joined.
        If it was the first, the unnamed paths serve the next one. Any thread but one of
        that camera's own.

        Raises:
            ConfigError: there is no camera of that name.
        """
        with self._cameras_lock:
            camera = self._cameras.remove(name)
        if camera is None:
            raise ConfigError(f"there is no camera named {logs.printable(name, 40)!r}")
        for stream in self._viewers.streams(name):
            stream.stop()
        for session in self._viewers.sessions(name):
            session.connection.close(CloseCode.GOING_AWAY, "camera removed")
        camera.stop(timeout)
        with logs.bound(self._label):
            logger.info("camera %s removed", name)

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
        started: list[ServedCamera] = []
        try:
            with self._cameras_lock:
                for camera in self._cameras.all():
                    self._start_camera(camera)
                    started.append(camera)
                self._cameras_started = True
        except BaseException:
            for camera in started:
                camera.stop()
            raise
        try:
            self._server = WebSocketServer(
                TransportCallbacks(
                    self._policy, opened=self._open, closed=self._close,
                    http=self._http.handle, websocket_refusal=self._websocket_refusal,
                ),
                self._host, self._requested_port, ssl_context=self._ssl_context,
                subprotocols=(SUBPROTOCOL,),
                **self._transport_options,
            )
        except BaseException:
            for camera in started:
                camera.stop()
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
        for camera in self._cameras.all():
            where = ", ".join(self.urls) if not self._named else self._url_at_camera(camera.name)
            logger.info("serving %s%s on %s", f"{camera.name}: " if self._named else "",
                        describe_source(camera.thread.source), where)
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

        Safe from any thread, including a callback thread of this Streamer. Each step waits
        up to ``timeout``; a connection thread still inside the application's own code (an
        ``on_message`` handler that blocks) is not interrupted: stop() returns after the
        wait, and that thread ends when the handler returns.
        """
        # No early return when a stop is already under way: a second stop() (a second Ctrl+C
        # that interrupted the first, __exit__ after stop()) runs the same idempotent steps, so
        # whichever finishes, everything is closed.
        self._stopped.set()
        with self._cameras_lock:
            cameras = self._cameras.all()
        for camera in cameras:
            if camera.fanout is not None:
                camera.fanout.stop(timeout)
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
        for camera in cameras:
            camera.stop(timeout)
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

    def publish(
        self, image: np.ndarray, *, copy: bool = True, data: Any = None,
        camera: str | None = None,
    ) -> Frame:
        """Hand a frame to every viewer (push mode: ``Streamer("push")``). Thread-safe.

        ``image`` is an 8-bit BGR, BGRA or grayscale array (see :meth:`CameraThread.publish`).
        ``data`` (a JSON value; None: none) goes with this frame, right before its JPEG, to
        every WebSocket viewer that asked for data (``?data=1``) and gets this frame; a viewer
        that skips the frame skips its data. It is encoded here, once. ``camera``: which
        camera's viewers (a push source of ``sources``); default the first.

        Raises:
            ConfigError: the camera's source is not ``"push"``, there is no such camera, or not
                such an image (the message gives the dtype and shape it got).
            DataError: ``data`` is not JSON; ``DataTooLargeError`` (a ``DataError``, both
                ``ConfigError``): larger than ``max_data_bytes``. Nothing is published then.
        """
        return self._push_camera(camera).publish(image, copy=copy, data=data)

    def publish_jpeg(
        self, jpeg: bytes, *, data: Any = None, camera: str | None = None
    ) -> Frame | None:
        """Hand a JPEG file to every viewer (push mode), untouched where a viewer takes it as is.
        ``camera`` as for :meth:`publish`.

        Returns None (and counts it in ``stats()``) if ``jpeg`` is not one whole JPEG file.
        ``data``: as for :meth:`publish`.

        Raises:
            ConfigError: the camera's source is not ``"push"``, or there is no such camera.
            DataError: ``data`` is not JSON or too large (as for :meth:`publish`).
        """
        return self._push_camera(camera).publish_jpeg(jpeg, data=data)

    def broadcast(self, value: Any) -> int:
        """Send ``{"type": "app", "value": value}`` to every WebSocket client in the
        conversation: those that asked for data (``?data=1``) and those that have sent an
        ``app`` message (others, such as the seed's minimal client, get nothing new), of
        every camera. Thread-safe; never blocks (queued; a client with a full queue misses it).

        Returns:
            How many clients it was queued for.

        Raises:
            DataError: ``value`` is not JSON or larger than ``max_data_bytes``.
        """
        return self._app.broadcast(self._viewers.sessions(), value)

    def stats(self) -> dict[str, Any]:
        """Counters for monitoring: cameras, encodes, and per-client sent/skipped frames.

        ``cameras`` has each camera's own counters by name (its ``camera`` report, frames,
        encodes, rates, variants, ``client_count``, ``mjpeg_active``, ``healthy``). At the top,
        ``camera`` and ``variants`` are the first camera's (the one the unnamed paths serve);
        the frame and encode counters and rates are totals over every camera (with one camera,
        its own); ``clients`` lists every WebSocket viewer, each with its ``camera``.
        """
        now_m, now = time.monotonic(), time.time()
        cameras = self._cameras.all()
        per_camera: dict[str, dict[str, Any]] = {}
        clients: list[dict[str, Any]] = []
        for camera in cameras:
            sessions = self._viewers.sessions(camera.name)
            per_camera[camera.name] = {
                **camera.stats(now_m),
                "client_count": len(sessions),
                "mjpeg_active": self._viewers.count(camera.name)[1],
            }
            clients.extend(
                {**s.info(self._policy.client_of(s.connection.request).address, now),
                 "camera": camera.name}
                for s in sessions
            )
        first = per_camera[cameras[0].name] if cameras else None
        totals = {
            key: sum(part[key] for part in per_camera.values())
            for key in _SUMMED_COUNTERS
        }
        return {
            "uptime_s": round(now_m - self._started_at, 3) if self._started_at else 0,
            "camera": first["camera"] if first is not None else None,
            **totals,
            "live_variants": sum(part["live_variants"] for part in per_camera.values()),
            "variants": first["variants"] if first is not None else [],
            "client_count": len(clients),
            "clients": clients,
            "cameras": per_camera,
            "http": self._http.stats(),
            "app": {
                **self._app.report(),
                "annotate": first["annotate"] if first is not None else None,  # the first's
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
        camera = self._cameras.get(split_path(conn.request.path)[0])
        if camera is None:  # removed since the handshake looked
            conn.close(CloseCode.GOING_AWAY, "camera removed")
            return
        if camera.label is not None:
            # This handler thread serves this connection alone, to its end: every later line
            # of it (its messages, its close, the transport's) names the camera.
            logs.adopt(camera.label)
        self._open_session(conn, camera)

    def _open_session(self, conn: Connection, camera: ServedCamera) -> None:
        thread = camera.thread
        settings = ClientSettings(fps=thread.fps, max_bytes=self._max_bytes)
        session = ClientSession(
            conn, thread, camera.cache, settings, stall_timeout=self._send_timeout,
            describe_camera=functools.partial(self._describe_camera, camera),
            on_app=self._app.handler,
            proxied=self._policy.client_of(conn.request).via_proxy,
        )
        session.apply_config(dict(conn.request.query), from_url=True)
        # Admitted, it holds a lease on the camera (an on-demand one opens now) before its
        # first metadata goes out, which then says "starting".
        admission = self._viewers.add_session(
            conn.id, session, camera=camera.name, acquire=thread.acquire
        )
        if admission is Admission.CLOSED:
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
            return
        if admission is Admission.FULL:
            _refusal_log.log(logger, logging.WARNING, "refusing client %s from %s: %s",
                             conn.id, self._policy.describe(conn.request), FULL_REMEDY)
            conn.close(CloseCode.TRY_AGAIN_LATER, "server full, try again later")
            return
        if self._cameras.get(camera.name) is not camera:  # removed while this one came in
            self._viewers.remove_session(conn.id)
            conn.close(CloseCode.GOING_AWAY, "camera removed")
            return
        conn.session = session
        conn.log(logger, logging.INFO, "client %s connected from %s", conn.id,
                 self._policy.describe(conn.request))  # through its address's log budget
        session.start()

    def _close(self, conn: Connection) -> None:
        camera = self._cameras.get(self._viewers.camera_of_session(conn.id) or "")
        with logs.bound(camera.label if camera is not None and camera.label else logs.current()):
            self._close_session(conn)

    def _close_session(self, conn: Connection) -> None:
        session = self._viewers.remove_session(conn.id)  # gives its camera lease back
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

    def _make_camera(self, name: str, value: object, *, named: bool | None = None
                     ) -> ServedCamera:
        """Camera ``name`` from a value of ``sources`` (not started); ``named``: it has a name
        of its own (default: as the Streamer's cameras do).

        Raises:
            ConfigError: a bad name or setting.
        """
        named = self._named if named is None else named
        if named:
            check_camera_name(name)
        try:
            own = CameraConfig.of(value, name)
            config = own.over(self._defaults)
            if named and own.annotate is None and classify(config.source)[0] is SourceKind.PUSH:
                # The Streamer's annotate is for the cameras it can annotate: not push ones (a
                # Streamer of one push source is told, as ever).
                config = dataclasses.replace(config, annotate=None)
            return ServedCamera(
                name, config, max_bytes=self._max_bytes,
                max_variants=self._max_variants, max_encodes_per_s=self._max_encodes_per_s,
                fast_fanout=self._fast_fanout,
                viewers=functools.partial(self._viewers.all, name),
                on_event=self._on_camera_event,
                label=CameraLabel(name, self._label) if named else None,
                camera_options=self._camera_options,
            )
        except ConfigError as exc:
            if not named or str(exc).startswith("camera "):
                raise
            raise ConfigError(f"camera {name!r}: {exc}") from None

    def _start_camera(self, camera: ServedCamera) -> None:
        """Start ``camera`` in the calling thread (under this Streamer's label).

        Raises:
            SourceError: its source cannot be opened (named: the message names the camera).
        """
        with logs.bound(self._label):
            try:
                camera.start()
            except SourceError as exc:
                if camera.label is None:  # the one unnamed camera: as before cameras had names
                    raise
                raise SourceError(exc.source, f"camera {camera.name!r}: {exc}") from exc

    def _camera_named(self, name: str | None) -> ServedCamera:
        camera = self._cameras.get(name)
        if camera is None:
            raise (RuntimeError("this Streamer has no camera left") if name is None
                   else ConfigError(f"there is no camera named {logs.printable(name, 40)!r}"))
        return camera

    def _push_camera(self, name: str | None) -> CameraThread:
        try:
            return self._camera_named(name).thread
        except RuntimeError as exc:
            raise ConfigError(str(exc)) from None

    def _describe_camera(self, camera: ServedCamera) -> dict[str, Any]:
        """The camera fields of a viewer's metadata (``camera``: as viewers are told it)."""
        fields = camera_state_fields(camera.thread)
        fields["camera"] = visible_state(camera.thread)
        if self._named:
            fields["camera_name"] = camera.name
        return fields

    def _websocket_refusal(self, path: str) -> str | None:
        """Why a WebSocket upgrade to ``path`` is answered 404, or None: it names a camera."""
        name, rest = split_path(path)
        if rest not in ("/", "/ws"):
            return "no WebSocket endpoint there: connect to / or /NAME (see /cameras.json)"
        if self._cameras.get(name) is None:
            return "no such camera (see /cameras.json)" if name else "no camera"
        return None

    def _url_at_camera(self, name: str) -> str:
        return f"{self.url}{name}"

    def _on_camera_event(self, camera: ServedCamera, event: str, details: dict[str, Any]) -> None:
        if self._named:
            details = {**details, "camera_name": camera.name}
        message = protocol.event_message(event, details)
        resend = resends_metadata(event)
        for session in self._viewers.sessions(camera.name):
            session.post(message)
            if resend:
                session.update()  # fresh metadata: its "camera" field is "streaming" now

    def _warn_if_exposed(self) -> None:
        if not self._policy.has_token and not self._policy.loopback:
            logger.warning(
                "listening on %s without a token: anyone who can reach this port can watch. "
                "Set token=... (CLI: --token or CAMSTREAM_TOKEN).", self._host,
            )
