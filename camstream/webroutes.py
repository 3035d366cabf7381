"""HTTP endpoints on the WebSocket port: a browser viewer, a snapshot, MJPEG and stats.

Every plain HTTP GET that is not a WebSocket upgrade lands in :meth:`HttpRoutes.handle`, in that
connection's own handler thread (one thread per connection, see ``transport``):

========================  ==========================================================================
``/``                     the viewer page (``static/viewer.html``): one self-contained HTML file
                          that connects to the WebSocket on the same host and port
``/snapshot.jpg``         the newest frame as one JPEG (``quality``, ``width``, ``height``,
                          ``max_bytes``); 503 if no frame arrives within two seconds
``/stream.mjpg``          ``multipart/x-mixed-replace`` MJPEG for ``<img>``, VLC, OBS, Home
                          Assistant and ``cv2.VideoCapture`` (``fps`` as well as the above);
                          each part has ``Content-Type``, ``Content-Length`` and ``X-Timestamp``
                          (capture time, Unix seconds)
``/stats.json``           ``Streamer.stats()`` as JSON
``/healthz``              200 ``ok`` while frames flow (one within 2 s or 3 frame periods), else
                          503 ``no frames``; needs no token and reveals nothing else
``/ws``                   426 Upgrade Required: that path is for WebSocket clients only
anything else             404
========================  ==========================================================================

Query parameters mean what they mean for WebSocket viewers (``PROTOCOL.md``); unknown ones are
ignored, a bad value is answered with 400 and the reason. GET and HEAD are served (HEAD gets the
headers GET would get; for ``/stream.mjpg`` the multipart headers, then the response ends); the
transport answers other methods with 405.

Access rules: ``/snapshot.jpg``, ``/stream.mjpg`` and ``/stats.json`` follow the WebSocket rules
(:class:`~camstream.policy.AccessPolicy`): a missing or wrong token is answered with 401 and ``WWW-
Authenticate: Bearer``, a foreign ``Origin`` or ``Host`` with 403, and so is a request a browser
marks as made by a page of another site (``Sec-Fetch-Site: cross-site`` or ``same-site``, as for
an ``<img>`` on another page, which sends no Origin) unless the Streamer allows other origins.
Their responses carry ``Cross-Origin-Resource-Policy: same-origin`` (``cross-origin`` when other
origins are allowed), so browsers that send no ``Sec-Fetch-Site`` still keep frames from other
pages. **The viewer page is served to
everyone**: it is the same static file for every caller and holds no frame, no setting and no
secret. It reads the token from its own URL (``/?token=X``) and hands it to the WebSocket, which
enforces the rules, so a visitor without the right token gets a page that says why it was refused
(close code 1008, ``token required`` / ``invalid token``) instead of a bare 401. The page is sent
with a Content-Security-Policy under which it loads nothing from elsewhere, and with ``Referrer-
Policy: no-referrer`` so the token in its URL is never passed on.

Every MJPEG stream follows the rules of a WebSocket viewer (``session.py``): it takes its JPEGs
from the Streamer's shared :class:`~camstream.encoder.EncodeCache` (viewers of the same variant
share one encode, whatever the protocol), always sends the newest frame and never one it already
sent, is paced by its own clock (:class:`~camstream.pacing.Pacer`), skips frames while what it
sent is still unacknowledged, and queues nothing itself: a reader that stops reading is dropped
after ``send_timeout``. Streams end within :data:`_POLL_S` seconds of ``Streamer.stop()``.
MJPEG streams count against ``max_clients`` together with the WebSocket viewers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.resources
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from . import protocol
from .camera import CameraThread
from .encoder import EncodeBudgetExceeded, EncodeCache, Variant
from .frame import Frame
from .pacing import BEHIND_POLL_S, Pacer
from .policy import AccessPolicy
from .ratelimit import LogBudget
from .registry import ViewerRegistry
from .transport import HttpExchange, Request

__all__ = ["HttpRoutes"]

logger = logging.getLogger(__name__)
_refusal_log = LogBudget()  # refused requests: anyone can cause them, so they are rate-limited

_POLL_S = 0.1  # waiting loops look at Streamer.is_serving this often
_FIRST_FRAME_WAIT_S = 2.0  # how long /snapshot.jpg waits for a first frame before a 503
_QUERY_FIELDS = frozenset({"fps", "quality", "width", "height", "max_bytes"})
_HEALTHY_FRAME_AGE_S = 2.0  # /healthz: 200 while the newest frame is younger (or 3 periods)
_BOUNDARY = "camstream-frame"  # the MJPEG part boundary; parts carry Content-Length too

_NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate", "Pragma": "no-cache"}
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The page is one file with inline script and style; it may talk to its own server only
    # (ws:/wss: are listed because older browsers do not count them as 'self').
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src data: blob:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'"
    ),
}


@functools.cache
def _static_file(name: str) -> bytes:
    """The bytes of ``camstream/static/<name>`` (read once, then kept).

    Raises:
        OSError: the file is not installed (a broken package).
    """
    return importlib.resources.files(__package__).joinpath("static", name).read_bytes()


@dataclass
class _StreamStats:
    """Counters of one MJPEG stream, as reported in ``stats()["http"]["mjpeg_streams"]``."""

    id: int
    address: str
    fps: float
    variant: Variant
    frames_sent: int = 0
    frames_skipped: int = 0
    bytes_sent: int = 0
    connected_at: float = dataclasses.field(default_factory=time.time)

    def info(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": self.address,
            "fps": self.fps,
            "width": self.variant.width,
            "height": self.variant.height,
            "quality": self.variant.quality,
            "max_bytes": self.variant.max_bytes,
            "frames_sent": self.frames_sent,
            "frames_skipped": self.frames_skipped,
            "bytes_sent": self.bytes_sent,
            "connected_s": round(now - self.connected_at, 3),
        }


class _BadQuery(ValueError):
    """A query parameter could not be used; the message is the 400 response body."""


class _Full(Exception):
    """No room for another viewer under ``max_clients``."""


class HttpRoutes:
    """Answers plain HTTP GETs that are not WebSocket upgrades (see the module docstring).

    Created by the :class:`~camstream.server.Streamer`, which hands it what the endpoints
    need. :meth:`handle` runs in each connection's own handler thread, any number at a time;
    :meth:`stats` is safe from any thread.

    Args:
        camera, cache: the frames and the shared encode cache.
        policy: who may watch (token, Origin, Host rules; which client a request is).
        viewers: the registry where each MJPEG stream takes a ``max_clients`` place.
        stats: the server's counters for ``/stats.json``.
        websocket_url: the WebSocket URL as the client of a request reaches it (for ``/ws``).
        serving: whether the server still serves (streams end soon after it turns False).
        send_timeout: seconds a stream may be behind before it is dropped.
    """

    def __init__(
        self,
        *,
        camera: CameraThread,
        cache: EncodeCache,
        policy: AccessPolicy,
        viewers: ViewerRegistry[Any],
        stats: Callable[[], dict[str, Any]],
        websocket_url: Callable[[Request], str],
        serving: Callable[[], bool],
        send_timeout: float,
    ) -> None:
        self._camera, self._cache, self._policy, self._viewers = camera, cache, policy, viewers
        self._server_stats, self._websocket_url = stats, websocket_url
        self._serving, self._send_timeout = serving, send_timeout
        self._routes: dict[str, Callable[[HttpExchange], None]] = {
            "/snapshot.jpg": self._snapshot,
            "/stream.mjpg": self._stream,
            "/stats.json": self._stats_json,
        }
        self._lock = threading.Lock()  # guards everything below
        self._streams: dict[int, _StreamStats] = {}
        self._stream_ids = itertools.count(1)
        self._counters = {
            "requests": 0,
            "pages": 0,
            "snapshots": 0,
            "refused": 0,
            "not_found": 0,
            "mjpeg_opened": 0,
            "mjpeg_full": 0,
        }
        # Frames and bytes of MJPEG streams that have ended (live ones are summed on demand).
        self._ended = {"frames_sent": 0, "frames_skipped": 0, "bytes_sent": 0}

    # Interface used by the Streamer

    def handle(self, exchange: HttpExchange) -> None:
        """Answer one request (runs in that connection's handler thread).

        Returns when the response is complete: at once for everything but ``/stream.mjpg``,
        whose loop returns when the client goes away or the Streamer stops.

        Raises:
            ConnectionClosedError: the client went away (the transport expects this).
        """
        request = exchange.request
        self._count("requests")
        path = request.path
        if path == "/":
            self._count("pages")
            self._page(exchange)
            return
        if path == "/healthz":
            self._healthz(exchange)
            return
        if path == "/ws":
            exchange.send_response(
                426,
                f"connect a WebSocket client to {self._websocket_url(request)}\n".encode(),
                headers={"Upgrade": "websocket", "Sec-WebSocket-Version": "13"},
            )
            return
        route = self._routes.get(path)
        if route is None:
            self._count("not_found")
            exchange.send_response(
                404, b"not found: try / (viewer), /snapshot.jpg, /stream.mjpg or /stats.json\n"
            )
            return
        if self._refuse(exchange):
            return
        try:
            route(exchange)
        except _BadQuery as exc:
            exchange.send_response(400, f"{exc}\n".encode())

    def stats(self) -> dict[str, Any]:
        """Counters of the HTTP endpoints, for ``Streamer.stats()["http"]``.

        ``mjpeg_active`` is the number of open MJPEG streams, ``mjpeg_streams`` one entry per
        open stream; ``mjpeg_frames_sent`` / ``_skipped`` / ``mjpeg_bytes_sent`` cover every
        stream since the start, open or ended.
        """
        now = time.time()
        with self._lock:
            streams = list(self._streams.values())
            result: dict[str, Any] = dict(self._counters)
            totals = dict(self._ended)
        for stream in streams:
            totals["frames_sent"] += stream.frames_sent
            totals["frames_skipped"] += stream.frames_skipped
            totals["bytes_sent"] += stream.bytes_sent
        result.update(
            mjpeg_active=len(streams),
            mjpeg_frames_sent=totals["frames_sent"],
            mjpeg_frames_skipped=totals["frames_skipped"],
            mjpeg_bytes_sent=totals["bytes_sent"],
            mjpeg_streams=[s.info(now) for s in streams],
        )
        return result

    # Endpoints

    def _page(self, exchange: HttpExchange) -> None:
        try:
            body = _static_file("viewer.html")
        except OSError:
            logger.error("viewer.html is missing from the camstream package", exc_info=True)
            exchange.send_response(500, b"viewer page not installed\n")
            return
        exchange.send_response(200, body, "text/html; charset=utf-8", headers=_PAGE_HEADERS)

    @functools.cached_property
    def _frame_headers(self) -> dict[str, str]:
        """Headers of the frame endpoints: never cached, and readable by other origins only if
        the Streamer allows some (``Cross-Origin-Resource-Policy``, honoured by browsers for
        ``<img>`` and ``fetch(no-cors)``, which carry no Origin header)."""
        corp = "cross-origin" if self._policy.other_origins_allowed else "same-origin"
        return {**_NO_STORE, "Cross-Origin-Resource-Policy": corp}

    def _snapshot(self, exchange: HttpExchange) -> None:
        variant, _ = self._parse_query(exchange.request.query)
        frame = self._camera.latest() or self._wait_for_frame(0, _FIRST_FRAME_WAIT_S)
        if frame is None:
            exchange.send_response(
                503,
                b"no frame yet: the camera has not delivered one\n",
                headers={"Retry-After": "1", **self._frame_headers},
            )
            return
        try:
            encoded = self._cache.get(frame, variant)
        except EncodeBudgetExceeded:
            exchange.send_response(
                503, b"server busy, try again\n",
                headers={"Retry-After": "1", **self._frame_headers},
            )
            return
        self._count("snapshots")
        exchange.send_response(200, encoded.data, "image/jpeg", headers=self._frame_headers)

    def _healthz(self, exchange: HttpExchange) -> None:
        """200 ``ok`` while frames flow, else 503 ``no frames``; no token: it reveals one bit."""
        frame = self._camera.latest()
        limit = max(_HEALTHY_FRAME_AGE_S, 3.0 / self._camera.fps)
        if frame is not None and time.monotonic() - frame.captured_monotonic <= limit:
            exchange.send_response(200, b"ok\n", headers=_NO_STORE)
        else:
            exchange.send_response(503, b"no frames\n", headers={"Retry-After": "1", **_NO_STORE})

    def _stats_json(self, exchange: HttpExchange) -> None:
        body = json.dumps(self._server_stats(), indent=1).encode()
        exchange.send_response(200, body, "application/json", headers=self._frame_headers)

    def _stream(self, exchange: HttpExchange) -> None:
        variant, fps = self._parse_query(exchange.request.query)
        head = {
            "Content-Type": f"multipart/x-mixed-replace; boundary={_BOUNDARY}",
            "X-Accel-Buffering": "no",  # tell nginx not to buffer the stream
            **self._frame_headers,
        }
        if exchange.head_only:  # the headers a GET would get; no viewer place is taken
            exchange.start_stream(200, head)
            return
        try:
            with self._admitted(exchange.request, variant, fps) as stream:
                exchange.start_stream(200, head)
                self._send_frames(exchange, stream)
        except _Full:
            self._count("mjpeg_full")
            logger.info(
                "MJPEG client from %s refused: server full",
                self._policy.client_of(exchange.request).address,
            )
            exchange.send_response(
                503,
                b"server full, try again later\n",
                headers={"Retry-After": "5", **self._frame_headers},
            )

    def _send_frames(self, exchange: HttpExchange, stream: _StreamStats) -> None:
        """The MJPEG loop: the newest frame, never one already sent, at the stream's rate.

        Returns when the Streamer stops; raises ConnectionClosedError when the client leaves
        or its writes block for longer than ``send_timeout``.
        """
        camera, cache = self._camera, self._cache
        pacer = Pacer(self._send_timeout)
        seen = 0  # the newest frame looked at, sent or not
        while self._serving():
            wait = pacer.wait_s(time.monotonic(), camera.fps)
            if wait > 0 and not self._sleep(wait):
                return
            frame = camera.wait_for_frame(seen, _POLL_S)
            if frame is None:
                continue
            seen = frame.seq
            if not pacer.wants(frame.seq, frame.captured_monotonic, camera.fps):
                continue
            if pacer.behind(exchange.unsent_bytes(), time.monotonic()):
                if pacer.stalled(time.monotonic()):
                    logger.info("MJPEG stream %d dropped: it stopped reading", stream.id)
                    return
                if not self._sleep(BEHIND_POLL_S):
                    return
                continue
            now = time.monotonic()
            try:
                encoded = cache.get(frame, stream.variant)
            except EncodeBudgetExceeded:
                continue  # the server's encode budget is spent: skip to a later frame
            exchange.write(_part(encoded.data, encoded.captured_at))
            stream.frames_skipped += pacer.sent(
                frame.seq, len(encoded.data), now, stream.fps, camera.fps
            )
            stream.frames_sent += 1
            stream.bytes_sent += len(encoded.data)

    # Helpers

    def _refuse(self, exchange: HttpExchange) -> bool:
        """Answer 401 / 403 if the token or Origin rules refuse this request; True if so."""
        refusal = self._policy.refusal(exchange.request)
        if refusal is None:
            return False
        self._count("refused")
        _refusal_log.log(
            logger, logging.INFO, "HTTP %s from %s refused: %s",
            exchange.request.path, self._policy.client_of(exchange.request).address,
            refusal.reason,
        )
        challenge = (
            {"WWW-Authenticate": 'Bearer realm="camstream"'} if refusal.unauthenticated else None
        )
        exchange.send_response(
            refusal.http_status, f"{refusal.reason}\n".encode(), headers=challenge
        )
        return True

    def _parse_query(self, query: Mapping[str, str]) -> tuple[Variant, float]:
        """The variant and rate a snapshot or stream request asks for.

        Raises:
            _BadQuery: a known parameter has a bad value.
        """
        wanted = {k: v for k, v in query.items() if k in _QUERY_FIELDS}
        settings, problems = protocol.parse_config(wanted, from_url=True)
        if problems:
            raise _BadQuery("; ".join(problems))
        variant = Variant(
            width=settings.get("width"),
            height=settings.get("height"),
            quality=settings.get("quality"),  # None: the source's JPEG as it is, or the default
            max_bytes=settings.get("max_bytes"),
        )
        camera_fps = self._camera.fps
        return variant, min(settings.get("fps", camera_fps), camera_fps)

    @contextlib.contextmanager
    def _admitted(self, request: Request, variant: Variant, fps: float) -> Iterator[_StreamStats]:
        """Register an MJPEG stream for the duration of the block.

        Raises:
            _Full: WebSocket viewers plus MJPEG streams already reach ``max_clients``.
        """
        if not self._viewers.reserve():
            raise _Full
        variant = self._cache.assign(variant)  # the variant cap may give another
        with self._lock:
            address = self._policy.client_of(request).address
            stream = _StreamStats(next(self._stream_ids), address, fps, variant)
            self._streams[stream.id] = stream
            self._counters["mjpeg_opened"] += 1
        logger.info("MJPEG stream %d opened by %s", stream.id, stream.address)
        try:
            yield stream
        finally:
            self._viewers.release()
            self._cache.release(variant)
            with self._lock:
                self._streams.pop(stream.id, None)
                for key in self._ended:
                    self._ended[key] += getattr(stream, key)
            logger.info(
                "MJPEG stream %d closed: %d frames sent, %d skipped",
                stream.id,
                stream.frames_sent,
                stream.frames_skipped,
            )

    def _wait_for_frame(self, after_seq: int, timeout: float) -> Frame | None:
        """A frame newer than ``after_seq``, waiting up to ``timeout`` s while serving."""
        deadline = time.monotonic() + timeout
        while self._serving() and (left := deadline - time.monotonic()) > 0:
            frame = self._camera.wait_for_frame(after_seq, min(left, _POLL_S))
            if frame is not None:
                return frame
        return None

    def _sleep(self, seconds: float) -> bool:
        """Sleep while serving; returns False if the Streamer stopped meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not self._serving():
                return False
            time.sleep(min(left, _POLL_S))
        return self._serving()

    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1


def _part(jpeg: bytes, captured_at: float) -> bytes:
    """One multipart part: boundary line, part headers, the JPEG, CRLF.

    ``X-Timestamp`` is the capture time in Unix seconds, as mjpg-streamer sends it; readers
    that do not know it ignore it.
    """
    head = (
        f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
        f"X-Timestamp: {captured_at:.6f}\r\n\r\n"
    ).encode("ascii")
    return head + jpeg + b"\r\n"
