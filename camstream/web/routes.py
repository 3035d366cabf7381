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
``/cameras.json``         the cameras: name, state, size, rate, viewers and paths of each
``/healthz``              200 ``ok`` while every camera is healthy (frames flow: one within 2 s or
                          3 frame periods; or, on demand, idle or opening), else 503 ``no
                          frames`` (naming the cameras, when there are several); needs no token
                          and reveals nothing else
``/ws``                   426 Upgrade Required: that path is for WebSocket clients only
``/NAME/``, ``/NAME``     camera ``NAME``'s viewer page; under ``/NAME/`` also ``stream.mjpg``,
                          ``snapshot.jpg``, ``healthz`` (that camera alone) and ``ws``
anything else             404
========================  ==========================================================================

The unnamed paths serve the first camera (``camstream.cameraset``); each request is served by
its camera's encode cache, snapshot place and encode budget, and logged with its label.

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
from ..cameraset import CameraSet, ServedCamera, split_path
from ..delivery.encoder import Variant
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

_SNAPSHOT_WAIT_S = 0.5  # how long a snapshot request waits for a place before its 503

_SNAPSHOT_FAILURES = {  # the 503 bodies of /snapshot.jpg (load refusals: _refuse_snapshot)
    SnapshotFailure.NO_FRAME: b"no frame yet: the camera has not delivered one\n",
    SnapshotFailure.UNDECODABLE: b"the latest frame cannot be decoded\n",
}
_QUERY_FIELDS = frozenset({"fps", "quality", "width", "height", "max_bytes", "adapt"})
_NOT_FOUND = (
    b"not found: try / (viewer), /snapshot.jpg, /stream.mjpg, /stats.json or /cameras.json\n"
)



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
        cameras: the cameras (each with its frames, encode cache and snapshot place).
        policy: who may watch (token, Origin, Host rules; which client a request is).
        viewers: the registry where each MJPEG stream takes a ``max_clients`` place (and its
            camera's lease).
        stats: the server's counters for ``/stats.json``.
        websocket_url: the WebSocket URL as the client of a request reaches it (for ``/ws``).
        serving: whether the server still serves (streams end soon after it turns False).
        send_timeout: seconds a stream may be behind before it is dropped.
    """

    def __init__(
        self,
        *,
        cameras: CameraSet,
        policy: AccessPolicy,
        viewers: ViewerRegistry[Any, MjpegStream],
        stats: Callable[[], dict[str, Any]],
        websocket_url: Callable[[Request], str],
        serving: Callable[[], bool],
        send_timeout: float,
    ) -> None:
        self._cameras, self._policy, self._viewers = cameras, policy, viewers
        self._server_stats, self._websocket_url = stats, websocket_url
        self._serving, self._send_timeout = serving, send_timeout
        self._routes: dict[str, Callable[[HttpExchange, dict[str, str], ServedCamera], None]] = {
            "/snapshot.jpg": self._snapshot,
            "/stream.mjpg": self._stream,
        }
        self._server_routes: dict[str, Callable[[HttpExchange, dict[str, str]], None]] = {
            "/stats.json": self._stats_json,
            "/cameras.json": self._cameras_json,
        }
        self._page_headers = headers.page_headers(policy)
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
        if request.method == "OPTIONS":
            self._options(exchange)
            return
        name, path = split_path(request.path)
        if name is None and path == "/healthz":
            self._healthz(exchange, self._cameras.all())
            return
        server_route = self._server_routes.get(path) if name is None else None
        if server_route is not None:
            self._guarded(exchange, server_route)
            return
        camera = self._cameras.get(name)
        if camera is None:
            self._count("not_found")
            exchange.send_response(404, (
                _NOT_FOUND if name is None and self._cameras.default is not None
                else b"no such camera: /cameras.json lists them\n"
            ))
            return
        if camera.label is not None:
            # Every answer closes its connection: the rest of this handler thread's lines
            # (the transport's too) are about this camera.
            logs.adopt(camera.label)
        self._camera_route(exchange, camera, name, path)

    def _camera_route(
        self, exchange: HttpExchange, camera: ServedCamera, name: str | None, path: str
    ) -> None:
        """Answer a request for one camera (``name``: as the path named it, None: unnamed)."""
        if path == "/":
            self._count("pages")
            self._page(exchange)
            return
        if path == "/healthz":  # /NAME/healthz (the unnamed one is every camera's)
            self._healthz(exchange, [camera])
            return
        if path == "/ws":
            url = self._websocket_url(exchange.request) + (name or "")
            exchange.send_response(
                426, f"connect a WebSocket client to {url}\n".encode(),
                headers={"Upgrade": "websocket", "Sec-WebSocket-Version": "13"},
            )
            return
        route = self._routes.get(path)
        if route is None:
            self._count("not_found")
            exchange.send_response(404, _NOT_FOUND)
            return
        self._guarded(exchange, functools.partial(_call_with, route, camera))

    def _guarded(
        self, exchange: HttpExchange, route: Callable[[HttpExchange, dict[str, str]], None]
    ) -> None:
        """Run ``route`` if the access rules admit the request (401 / 403 if not); a bad query
        is answered 400."""
        response_headers = headers.frame_headers(self._policy, exchange.request)
        if self._refuse(exchange, response_headers):
            return
        try:
            route(exchange, response_headers)
        except _BadQuery as exc:
            exchange.send_response(400, f"{exc}\n".encode(), headers=response_headers)

    def stats(self) -> dict[str, Any]:
        """Counters of the HTTP endpoints, for ``Streamer.stats()["http"]``.

        ``mjpeg_active`` is the number of open MJPEG streams, ``mjpeg_streams`` one entry per
        open stream (with its ``camera``); ``mjpeg_frames_sent`` / ``_skipped`` /
        ``mjpeg_bytes_sent`` cover every stream since the start, open or ended.
        """
        now = time.time()
        named = [
            (camera.name, stream)
            for camera in self._cameras.all() for stream in self._viewers.streams(camera.name)
        ]
        streams = [stream for _, stream in named]
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
            mjpeg_streams=[{**stream.info(now), "camera": name} for name, stream in named],
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
        if split_path(request.path)[1] not in headers.CORS_PATHS:
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

    def _snapshot(
        self, exchange: HttpExchange, frame_headers: dict[str, str], camera: ServedCamera
    ) -> None:
        variant, _ = self._parse_query(exchange.request.query, camera)
        # Snapshot work is bounded: one encode at a time per camera (a JPEG that is made
        # already, or the source's own, needs no place), each counted by the camera's encode
        # budget. The response is sent after the place is given back: a slow reader holds no
        # place. The lease opens an on-demand camera for the snapshot (kept for its grace).
        with camera.thread.acquire():
            encoded = take_snapshot(
                camera.thread, camera.cache, variant, serving=self._serving,
                places=camera.snapshot_places, place_wait=_SNAPSHOT_WAIT_S,
            )
        if encoded is SnapshotFailure.NO_PLACE:
            self._refuse_snapshot(exchange, frame_headers, "busy", camera)
            return
        if encoded is SnapshotFailure.BUDGET:
            self._refuse_snapshot(exchange, frame_headers, "budget", camera)
            return
        if isinstance(encoded, SnapshotFailure):
            exchange.send_response(
                503, _SNAPSHOT_FAILURES[encoded], headers={"Retry-After": "1", **frame_headers}
            )
            return
        self._count("snapshots")
        exchange.send_response(200, encoded.data, "image/jpeg", headers=frame_headers)

    def _refuse_snapshot(
        self, exchange: HttpExchange, frame_headers: dict[str, str], why: str,
        camera: ServedCamera,
    ) -> None:
        """503 for a snapshot the server will not make now (``busy``: every place taken;
        ``budget``: the encode budget of this second is spent), logged rate-limited."""
        self._count(f"snapshots_refused_{why}")
        if why == "busy":
            body = b"server busy: too many snapshots at once, try again\n"
            remedy = ("a snapshot of this camera is being made and more wait: clients "
                      "should ask less often, or read /stream.mjpg for a stream of frames")
        else:
            body = b"server busy: the encode budget of this second is spent, try again\n"
            remedy = (f"the encode budget ({camera.cache.max_encodes_per_s:g} a second for "
                      "other sizes, qualities and snapshots) is spent: ask for the default "
                      "size and quality (no encode of its own), or raise max_encodes_per_s")
        _busy_log.log(
            logger, logging.WARNING, "snapshot for %s refused (503): %s",
            self._policy.describe(exchange.request), remedy,
        )
        exchange.send_response(503, body, headers={"Retry-After": "1", **frame_headers})

    def _healthz(self, exchange: HttpExchange, cameras: list[ServedCamera]) -> None:
        """200 ``ok`` while every one of ``cameras`` is healthy (see
        :meth:`ServedCamera.problem`), else 503 ``no frames`` (with several cameras, naming the
        unhealthy ones); no token: it reveals one bit a camera (names are in the URLs anyway)."""
        now = time.monotonic()
        sick = [camera.name for camera in cameras if camera.problem(now) is not None]
        response_headers = headers.frame_headers(self._policy, exchange.request)
        if cameras and not sick:
            exchange.send_response(200, b"ok\n", headers=response_headers)
            return
        if len(cameras) > 1:
            body = f"no frames from {', '.join(sick)}\n".encode()
        else:
            body = b"no frames\n" if cameras else b"no camera\n"
        exchange.send_response(503, body, headers={"Retry-After": "1", **response_headers})

    def _stats_json(self, exchange: HttpExchange, frame_headers: dict[str, str]) -> None:
        body = json.dumps(self._server_stats(), indent=1).encode()
        exchange.send_response(200, body, "application/json", headers=frame_headers)

    def _cameras_json(self, exchange: HttpExchange, frame_headers: dict[str, str]) -> None:
        """``/cameras.json``: every camera in order (the first serves the unnamed paths)."""
        cameras = self._cameras.all()
        listed = [
            camera.describe(self._viewers.count(camera.name), default=i == 0)
            for i, camera in enumerate(cameras)
        ]
        body = json.dumps(
            {"default": cameras[0].name if cameras else None, "cameras": listed}, indent=1
        ).encode()
        exchange.send_response(200, body, "application/json", headers=frame_headers)

    def _stream(
        self, exchange: HttpExchange, frame_headers: dict[str, str], camera: ServedCamera
    ) -> None:
        variant, fps = self._parse_query(exchange.request.query, camera)
        head = {
            "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            "X-Accel-Buffering": "no",  # tell nginx not to buffer the stream
            **frame_headers,
        }
        if exchange.head_only:  # the headers a GET would get; no viewer place is taken
            exchange.start_stream(200, head)
            return
        client = self._policy.client_of(exchange.request)
        address = client.address
        with self._lock:
            stream_id = next(self._stream_ids)
        stream = MjpegStream(
            stream_id, exchange, camera.thread, camera.cache, address=address, variant=variant,
            fps=fps, stall_timeout=self._send_timeout,
            adapt=protocol.adapt_of(exchange.request.query, from_url=True),
            proxied=client.via_proxy,
        )
        try:
            admission = self._viewers.add_stream(
                stream_id, stream, camera=camera.name, acquire=camera.thread.acquire
            )
            if admission is Admission.CLOSED:
                exchange.send_response(503, b"server shutting down\n", headers=frame_headers)
                return
            if self._cameras.get(camera.name) is not camera:  # removed meanwhile
                self._viewers.remove_stream(stream_id)
                exchange.send_response(404, b"no such camera: /cameras.json lists them\n",
                                       headers=frame_headers)
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

    def _parse_query(
        self, query: Mapping[str, str], camera: ServedCamera
    ) -> tuple[Variant, float]:
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
        camera_fps = camera.thread.fps
        return variant, min(settings.get("fps", camera_fps), camera_fps)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1



def _call_with(
    route: Callable[[HttpExchange, dict[str, str], ServedCamera], None], camera: ServedCamera,
    exchange: HttpExchange, frame_headers: dict[str, str],
) -> None:
    route(exchange, frame_headers, camera)
