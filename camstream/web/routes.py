"""HTTP endpoints on the WebSocket port: a browser viewer, a snapshot, MJPEG and stats.

Every plain HTTP GET that is not a WebSocket upgrade lands in :meth:`HttpRoutes.handle`, in that
connection's own handler thread (one thread per connection, see ``transport``):

========================  ==========================================================================
``/``                     the viewer page (``static/viewer.html``): one self-contained HTML file
                          that connects to the WebSocket on the same host and port
``/snapshot.jpg``         the newest frame as one JPEG (``quality``, ``width``, ``height``,
                          ``max_bytes``); 503 if no frame arrives within two seconds, or when
                          the server will not encode it now (below)
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
headers GET would get; for ``/stream.mjpg`` the multipart headers, then the response ends);
OPTIONS on the frame endpoints is a CORS preflight (:mod:`.headers`); the transport answers
other methods with 405.

**Snapshots are bounded work.** A snapshot that needs an encode (a size or quality of its own;
with ``max_bytes`` a search of several) waits for the one snapshot place, at most
``_SNAPSHOT_WAIT_S``; the encode counts against the encode budget. Past either, 503 with
``Retry-After: 1`` and why, logged rate-limited. A JPEG already made (the default variant while
anyone watches, the source's own) needs no place. The response is written after the place is
given back, so a slow reader holds none.

Access rules: ``/snapshot.jpg``, ``/stream.mjpg`` and ``/stats.json`` follow the WebSocket rules
(:class:`~camstream.web.policy.AccessPolicy`): a missing or wrong token is answered with 401 and
``WWW-
Authenticate: Bearer``, a foreign ``Origin`` or ``Host`` with 403, and so is a request a browser
marks as made by a page of another site (``Sec-Fetch-Site: cross-site`` or ``same-site``, as for
an ``<img>`` on another page, which sends no Origin) unless the Streamer allows other origins.
Their responses carry ``Cross-Origin-Resource-Policy: same-origin`` (``cross-origin`` when other
origins are allowed), so browsers that send no ``Sec-Fetch-Site`` still keep frames from other
pages, and CORS headers for pages of allowed origins (:mod:`.headers`).

**The viewer page is served to everyone**: it is the same static file for every caller and holds no
frame, no setting and no secret. It reads the token from its own URL (``/?token=X``) and hands it to
the WebSocket, which enforces the rules, so a visitor without the right token gets a page that says
why it was refused (close code 1008, ``token required`` / ``invalid token``) instead of a bare 401.
The page is sent with a Content-Security-Policy under which it loads nothing from elsewhere and no
other site may frame it, and with ``Referrer-Policy: no-referrer`` so the token in its URL is never
passed on.

Every MJPEG stream (:class:`~camstream.delivery.mjpeg.MjpegStream`) runs the loop of a WebSocket
viewer
(:class:`~camstream.delivery.viewer.ViewerLoop`): it takes its JPEGs from the shared
:class:`~camstream.delivery.encoder.EncodeCache` (viewers of the same variant share one encode,
whatever
the protocol), always sends the newest frame and never one it already sent, is paced by its own
clock, skips frames while what it sent is still unacknowledged, and queues nothing itself: a
reader that stops reading is dropped after ``send_timeout``. Streams end as soon as the
Streamer stops. MJPEG streams count against ``max_clients`` together with the WebSocket viewers
(:class:`~camstream.delivery.registry.ViewerRegistry`).
"""

from __future__ import annotations

import functools
import importlib.resources
import itertools
import json
import logging
import threading
import time
from typing import Any, Callable, Mapping

from .. import logs, protocol
from ..capture.camera import CameraThread
from ..delivery.encoder import EncodeCache, Variant
from ..delivery.mjpeg import BOUNDARY, MjpegStream
from ..delivery.registry import Admission, ViewerRegistry
from ..delivery.snapshot import SnapshotFailure, take_snapshot
from ..options import FULL_REMEDY
from ..ratelimit import LogBudget
from ..ws import HttpExchange, Request
from . import headers
from .policy import AccessPolicy, Refusal

__all__ = ["HttpRoutes"]

logger = logs.get_logger(__name__)
_refusal_log = LogBudget()  # refused requests: anyone can cause them, so they are rate-limited
_busy_log = LogBudget()  # snapshots refused for load: likewise

_SNAPSHOT_WORKERS = 1  # snapshots encoded at once, all clients together
_SNAPSHOT_WAIT_S = 0.5  # how long a snapshot request waits for a place before its 503

_SNAPSHOT_FAILURES = {  # the 503 bodies of /snapshot.jpg (load refusals: _refuse_snapshot)
    SnapshotFailure.NO_FRAME: b"no frame yet: the camera has not delivered one\n",
    SnapshotFailure.UNDECODABLE: b"the latest frame cannot be decoded\n",
}
_QUERY_FIELDS = frozenset({"fps", "quality", "width", "height", "max_bytes", "adapt"})
_HEALTHY_FRAME_AGE_S = 2.0  # /healthz: 200 while the newest frame is younger (or 3 periods)



@functools.cache
def _static_file(name: str) -> bytes:
    """The bytes of ``camstream/web/static/<name>`` (read once, then kept).

    Raises:
        OSError: the file is not installed (a broken package).
    """
    return importlib.resources.files(__package__).joinpath("static").joinpath(name).read_bytes()


class _BadQuery(ValueError):
    """A query parameter could not be used; the message is the 400 response body."""


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
        viewers: ViewerRegistry[Any, MjpegStream],
        stats: Callable[[], dict[str, Any]],
        websocket_url: Callable[[Request], str],
        serving: Callable[[], bool],
        send_timeout: float,
    ) -> None:
        self._camera, self._cache, self._policy, self._viewers = camera, cache, policy, viewers
        self._server_stats, self._websocket_url = stats, websocket_url
        self._serving, self._send_timeout = serving, send_timeout
        self._routes: dict[str, Callable[[HttpExchange, dict[str, str]], None]] = {
            "/snapshot.jpg": self._snapshot,
            "/stream.mjpg": self._stream,
            "/stats.json": self._stats_json,
        }
        self._page_headers = headers.page_headers(policy)
        self._snapshot_places = threading.BoundedSemaphore(_SNAPSHOT_WORKERS)
        self._lock = threading.Lock()  # guards everything below
        self._stream_ids = itertools.count(1)
        self._counters = {
            "requests": 0,
            "pages": 0,
            "snapshots": 0,
            "snapshots_refused_busy": 0,
            "snapshots_refused_budget": 0,
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
        if request.method == "OPTIONS":
            self._options(exchange)
            return
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
        response_headers = headers.frame_headers(self._policy, request)
        if self._refuse(exchange, response_headers):
            return
        try:
            route(exchange, response_headers)
        except _BadQuery as exc:
            exchange.send_response(400, f"{exc}\n".encode(), headers=response_headers)

    def stats(self) -> dict[str, Any]:
        """Counters of the HTTP endpoints, for ``Streamer.stats()["http"]``.

        ``mjpeg_active`` is the number of open MJPEG streams, ``mjpeg_streams`` one entry per
        open stream; ``mjpeg_frames_sent`` / ``_skipped`` / ``mjpeg_bytes_sent`` cover every
        stream since the start, open or ended.
        """
        now = time.time()
        streams = self._viewers.streams()
        with self._lock:
            result: dict[str, Any] = dict(self._counters)
            totals = dict(self._ended)
        for stream in streams:
            stats = stream.stats
            totals["frames_sent"] += stats.frames_sent
            totals["frames_skipped"] += stats.frames_skipped
            totals["bytes_sent"] += stats.bytes_sent
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
        exchange.send_response(
            200, body, "text/html; charset=utf-8", headers=self._page_headers
        )

    def _options(self, exchange: HttpExchange) -> None:
        """``OPTIONS``: a CORS preflight on a frame endpoint (see :mod:`.headers`)."""
        request = exchange.request
        if request.path not in headers.CORS_PATHS:
            exchange.send_response(405, b"OPTIONS is answered on the frame endpoints only\n",
                                   headers={"Allow": "GET, HEAD"})
            return
        status, body, response_headers = headers.preflight(self._policy, request)
        if status == 403:
            self._count("refused")
            _refusal_log.log(
                logger, logging.WARNING, "CORS preflight for %s from %s refused: %s",
                request.path, self._policy.describe(request),
                Refusal.for_origin(request.origin or "").log_text,
            )
        exchange.send_response(status, body, headers=response_headers)

    def _snapshot(self, exchange: HttpExchange, frame_headers: dict[str, str]) -> None:
        variant, _ = self._parse_query(exchange.request.query)
        # Snapshot work is bounded: at most _SNAPSHOT_WORKERS encodes at once (a JPEG that is
        # made already, or the source's own, needs no place), each counted by the encode budget.
        # The response is sent after the place is given back: a slow reader holds no place.
        encoded = take_snapshot(
            self._camera, self._cache, variant, serving=self._serving,
            places=self._snapshot_places, place_wait=_SNAPSHOT_WAIT_S,
        )
        if encoded is SnapshotFailure.NO_PLACE:
            self._refuse_snapshot(exchange, frame_headers, "busy")
            return
        if encoded is SnapshotFailure.BUDGET:
            self._refuse_snapshot(exchange, frame_headers, "budget")
            return
        if isinstance(encoded, SnapshotFailure):
            exchange.send_response(
                503, _SNAPSHOT_FAILURES[encoded], headers={"Retry-After": "1", **frame_headers}
            )
            return
        self._count("snapshots")
        exchange.send_response(200, encoded.data, "image/jpeg", headers=frame_headers)

    def _refuse_snapshot(
        self, exchange: HttpExchange, frame_headers: dict[str, str], why: str
    ) -> None:
        """503 for a snapshot the server will not make now (``busy``: every place taken;
        ``budget``: the encode budget of this second is spent), logged rate-limited."""
        self._count(f"snapshots_refused_{why}")
        if why == "busy":
            body = b"server busy: too many snapshots at once, try again\n"
            remedy = (f"{_SNAPSHOT_WORKERS} snapshots are being made and more wait: clients "
                      "should ask less often, or read /stream.mjpg for a stream of frames")
        else:
            body = b"server busy: the encode budget of this second is spent, try again\n"
            remedy = (f"the encode budget ({self._cache.max_encodes_per_s:g} a second for "
                      "other sizes, qualities and snapshots) is spent: ask for the default "
                      "size and quality (no encode of its own), or raise max_encodes_per_s")
        _busy_log.log(
            logger, logging.WARNING, "snapshot for %s refused (503): %s",
            self._policy.describe(exchange.request), remedy,
        )
        exchange.send_response(503, body, headers={"Retry-After": "1", **frame_headers})

    def _healthz(self, exchange: HttpExchange) -> None:
        """200 ``ok`` while frames flow, else 503 ``no frames``; no token: it reveals one bit."""
        frame = self._camera.latest()
        limit = max(_HEALTHY_FRAME_AGE_S, 3.0 / self._camera.fps)
        response_headers = headers.frame_headers(self._policy, exchange.request)
        if frame is not None and time.monotonic() - frame.captured_monotonic <= limit:
            exchange.send_response(200, b"ok\n", headers=response_headers)
        else:
            exchange.send_response(
                503, b"no frames\n", headers={"Retry-After": "1", **response_headers}
            )

    def _stats_json(self, exchange: HttpExchange, frame_headers: dict[str, str]) -> None:
        body = json.dumps(self._server_stats(), indent=1).encode()
        exchange.send_response(200, body, "application/json", headers=frame_headers)

    def _stream(self, exchange: HttpExchange, frame_headers: dict[str, str]) -> None:
        variant, fps = self._parse_query(exchange.request.query)
        head = {
            "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            "X-Accel-Buffering": "no",  # tell nginx not to buffer the stream
            **frame_headers,
        }
        if exchange.head_only:  # the headers a GET would get; no viewer place is taken
            exchange.start_stream(200, head)
            return
        address = self._policy.client_of(exchange.request).address
        with self._lock:
            stream_id = next(self._stream_ids)
        stream = MjpegStream(
            stream_id, exchange, self._camera, self._cache, address=address, variant=variant,
            fps=fps, stall_timeout=self._send_timeout,
            adapt=protocol.adapt_of(exchange.request.query, from_url=True),
        )
        try:
            admission = self._viewers.add_stream(stream_id, stream)
            if admission is Admission.CLOSED:
                exchange.send_response(503, b"server shutting down\n", headers=frame_headers)
                return
            if admission is Admission.FULL:
                self._count("mjpeg_full")
                _refusal_log.log(logger, logging.WARNING, "MJPEG client from %s refused: %s",
                                 self._policy.describe(exchange.request), FULL_REMEDY)
                exchange.send_response(
                    503,
                    b"server full, try again later\n",
                    headers={"Retry-After": "5", **frame_headers},
                )
                return
            self._count("mjpeg_opened")
            logger.info("MJPEG stream %d opened by %s", stream_id, address)
            try:
                exchange.start_stream(200, head)
                stream.run()
            finally:
                self._viewers.remove_stream(stream_id)
                stats = stream.stats
                with self._lock:
                    for key in self._ended:
                        self._ended[key] += getattr(stats, key)
                logger.info(
                    "MJPEG stream %d closed: %d frames sent, %d skipped",
                    stream_id, stats.frames_sent, stats.frames_skipped,
                )
        finally:
            stream.release()

    # Helpers

    def _refuse(self, exchange: HttpExchange, frame_headers: dict[str, str]) -> bool:
        """Answer 401 / 403 if the token or Origin rules refuse this request; True if so."""
        refusal = self._policy.refusal(exchange.request)
        if refusal is None:
            return False
        self._count("refused")
        _refusal_log.log(
            logger, logging.WARNING, "HTTP %s from %s refused: %s",
            exchange.request.path, self._policy.describe(exchange.request), refusal.log_text,
        )
        challenge = (
            {"WWW-Authenticate": 'Bearer realm="camstream"'} if refusal.unauthenticated else {}
        )
        exchange.send_response(
            refusal.http_status, f"{refusal.reason}\n".encode(),
            headers={**frame_headers, **challenge},
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

    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1

