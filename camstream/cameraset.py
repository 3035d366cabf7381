"""Several cameras on one port: each camera's settings, its parts, and the paths it is served at.

A :class:`~camstream.server.Streamer` serves one or more cameras, each under a name
(``Streamer(sources={"front": 0, "rear": 2})``; a Streamer of one unnamed source calls it
:data:`DEFAULT_NAME`). Each camera is a :class:`ServedCamera`: its own
:class:`~camstream.capture.camera.CameraThread`, its own encode cache (and with it its own encode
budget and snapshot place), its own fan-out thread and its own log label, so a camera that is
lost, busy or slow never holds up another. What the cameras share is the port, the access
policy and the ``max_clients`` count (``delivery.registry``).

Paths (:func:`split_path`): ``/NAME`` (WebSocket), ``/NAME/`` (viewer page), ``/NAME/ws``,
``/NAME/stream.mjpg``, ``/NAME/snapshot.jpg``, ``/NAME/healthz``; the unnamed paths (``/``,
``/ws``, ``/stream.mjpg``, ``/snapshot.jpg``) serve the first camera. Names are
``[A-Za-z0-9_-]{1,32}`` and not one of the server's own path words (:data:`RESERVED_NAMES`).

:class:`CameraConfig` is one camera's source and settings; fields left None take the
Streamer's. :class:`CameraSet` keeps the cameras in order (cameras can be added and removed
while the Streamer runs). No thread of its own: a :class:`ServedCamera` starts and joins its
camera and fan-out threads.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import logs
from .capture.annotate import AnnotateHook
from .capture.camera import CameraState, CameraThread, Frame, Source, describe_source
from .capture.devices import CaptureFactory
from .capture.report import camera_report
from .delivery.encoder import EncodeCache
from .delivery.fanout import FanOut, FastViewer
from .delivery.ratewindow import CounterRates
from .errors import ConfigError

__all__ = [
    "CAMERA_NAME", "DEFAULT_NAME", "RESERVED_NAMES", "CameraConfig", "CameraSet", "ServedCamera",
    "check_camera_name", "name_taken", "split_path",
]

CAMERA_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
"""What a camera name may be (it is a path segment and a log label)."""
RESERVED_NAMES = frozenset({
    "ws", "stream.mjpg", "snapshot.jpg", "stats.json", "healthz", "cameras.json",
})
"""The server's own path words: no camera may take one as its name (case-insensitive)."""
DEFAULT_NAME = "default"
"""The name of a Streamer's one camera when it was given a single unnamed source."""

_SNAPSHOT_WORKERS = 1  # snapshot encodes at once, per camera
_HEALTHY_FRAME_AGE_S = 2.0  # a camera is healthy while its newest frame is younger (or 3 periods)
_EVENTS_TO_RESEND_METADATA = frozenset({"camera_started"})
_NOT_DELIVERING = frozenset({
    CameraState.LOST, CameraState.ENDED, CameraState.FAILED, CameraState.STOPPED,
})


def check_camera_name(name: object) -> str:
    """``name`` if it may name a camera (see :data:`CAMERA_NAME`, :data:`RESERVED_NAMES`).

    Raises:
        ConfigError: it may not (the message says why).
    """
    if not isinstance(name, str) or not CAMERA_NAME.fullmatch(name):
        raise ConfigError(
            f"camera name {logs.printable(name, 40)!r}: use 1 to 32 letters, digits, '-' or "
            "'_' (it is a URL path segment: ws://host:8765/NAME)"
        )
    if name.lower() in RESERVED_NAMES:
        raise ConfigError(
            f"camera name {name!r} is one of the server's own paths "
            f"({', '.join(sorted(RESERVED_NAMES))}): choose another"
        )
    return name


def name_taken(taken: str, name: str) -> ConfigError:
    """The error for a new camera ``name`` that clashes with the camera ``taken``."""
    return ConfigError(
        f"there is a camera named {taken!r} already"
        + ("" if taken == name else " (names may not differ only in case)")
    )


def split_path(path: str) -> tuple[str | None, str]:
    """Which camera a request path names, and the path within it.

    ``"/front/stream.mjpg"`` -> ``("front", "/stream.mjpg")``; ``"/front"`` and ``"/front/"``
    -> ``("front", "/")``; the server's own paths (``/``, ``/ws``, ``/stream.mjpg``,
    ``/healthz``, ...) -> ``(None, path)``. The name is not checked here.
    """
    _, _, rest = path.partition("/")
    first, slash, inner = rest.partition("/")
    if not first or first in RESERVED_NAMES:
        return None, path
    return first, "/" + inner if slash else "/"


@dataclass(frozen=True)
class CameraConfig:
    """One camera's source and settings, for ``Streamer(sources={"rear": CameraConfig(...)})``.

    Every field but ``source`` may be left None: the camera then takes the Streamer's value
    (its ``width``, ``fps``, ``quality``, ``on_demand``, ...). A plain dict with the same keys
    works as well (``{"source": 2, "width": 1280}``); so does a bare source (``2``).

    Args:
        source: what to stream (see :class:`~camstream.server.Streamer`).
        width, height, fps: the capture size and rate asked of the source.
        quality: the default JPEG quality of this camera's encodes.
        loop: play a file again from the start at its end.
        pixel_format, backend, camera_settings, capture_factory: how the camera is opened
            (see :class:`~camstream.capture.camera.CameraThread`).
        on_demand: open the source only while someone watches: a grace period in seconds,
            ``True`` (10 s) or ``False`` (always open).
        annotate: this camera's frame-data hook (see ``Streamer(annotate=...)``; the
            Streamer's applies to every camera that is not a push source).
    """

    source: Source
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    quality: int | None = None
    loop: bool | None = None
    pixel_format: str | None = None
    backend: str | None = None
    camera_settings: Mapping[str, Any] | Iterable[str] | None = None
    capture_factory: CaptureFactory | None = None
    on_demand: bool | float | None = None
    annotate: AnnotateHook | None = None

    @classmethod
    def of(cls, value: object, name: str) -> CameraConfig:
        """``value`` (a source, a :class:`CameraConfig` or a dict of its fields) as a config.

        Raises:
            ConfigError: a dict with an unknown key or no ``source``, or another type.
        """
        if isinstance(value, CameraConfig):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(str(key) for key in value if key not in known)
            if unknown or "source" not in value:
                problem = (f"unknown setting {', '.join(unknown)}" if unknown
                           else "no 'source'")
                raise ConfigError(
                    f"camera {name!r}: {problem} (settings: {', '.join(sorted(known))})"
                )
            return cls(**value)
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            return cls(value)
        raise ConfigError(
            f"camera {name!r}: give a source (a camera index, path or URL), a CameraConfig or "
            f"a dict, not {type(value).__name__}"
        )

    def over(self, defaults: CameraConfig) -> CameraConfig:
        """These settings, with the ones left None taken from ``defaults``."""
        changes = {
            f.name: getattr(defaults, f.name)
            for f in dataclasses.fields(self) if getattr(self, f.name) is None
        }
        return dataclasses.replace(self, **changes)


class CameraLabel(logs.Label):
    """A camera's log label: its name, after the Streamer's label when that one is shown
    (``[front]``, ``[desk/front]``). Always shown."""

    def __init__(self, name: str, streamer: logs.Label) -> None:
        self._name = name
        self._streamer = streamer
        super().__init__(name, explicit=True)

    @property
    def text(self) -> str:
        streamer = self._streamer
        return f"{streamer.text}/{self._name}" if streamer.shown else self._name

    @text.setter
    def text(self, value: str) -> None:
        self._name = value


class ServedCamera:
    """One camera of a Streamer and the parts that serve it alone.

    Made by the Streamer; :meth:`start` starts the camera (opening the source in the calling
    thread unless on demand) and its fan-out thread, :meth:`stop` stops and joins both
    (idempotent). The frame listener runs in the camera thread; everything else is safe from
    any thread.

    Args:
        name: the camera's name (its paths, its log label, ``stats()["cameras"]``).
        config: its source and settings, complete (every default filled in by the Streamer).
        max_bytes, max_variants, max_encodes_per_s: this camera's encode cache (the budget is
            this camera's own; None: ``fps * (max_variants + 1)``).
        fast_fanout: serve this camera's idle viewers from one fan-out thread.
        viewers: this camera's viewers now (WebSocket and MJPEG), for every frame.
        on_event: ``on_event(camera, event, details)`` on each camera event (camera thread).
        label: the label of this camera's log lines (None: the caller's, for a Streamer of
            one unnamed camera).
        camera_options: more arguments of its :class:`CameraThread` (the Streamer's options
            that every camera shares).
    """

    def __init__(
        self,
        name: str,
        config: CameraConfig,
        *,
        max_bytes: int | None,
        max_variants: int,
        max_encodes_per_s: float | None,
        fast_fanout: bool,
        viewers: Callable[[], Sequence[FastViewer]],
        on_event: Callable[[ServedCamera, str, dict[str, Any]], None],
        label: logs.Label | None,
        camera_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.label = label
        if config.quality is not None and (
            isinstance(config.quality, bool) or not isinstance(config.quality, int)
            or not 1 <= config.quality <= 100
        ):
            raise ConfigError(f"quality must be 1-100, not {config.quality!r}")
        fps = 30.0 if config.fps is None else config.fps
        self.thread = CameraThread(
            config.source, width=config.width, height=config.height, fps=fps,
            loop=True if config.loop is None else config.loop,
            pixel_format=config.pixel_format or "auto", backend=config.backend or "auto",
            camera_settings=config.camera_settings, capture_factory=config.capture_factory,
            on_demand=config.on_demand, annotate=config.annotate, **(camera_options or {}),
        )
        self.cache = EncodeCache(
            default_quality=80 if config.quality is None else config.quality,
            default_max_bytes=max_bytes,
            max_variants=max_variants,
            max_encodes_per_s=(
                fps * (max_variants + 1) if max_encodes_per_s is None else max_encodes_per_s
            ),
        )
        self.snapshot_places = threading.BoundedSemaphore(_SNAPSHOT_WORKERS)
        self.rates = CounterRates()  # encodes and decodes per second
        self._viewers = viewers
        self._on_event = on_event
        with logs.bound(label or logs.current()):
            self.fanout = FanOut(self.thread, viewers) if fast_fanout else None
        self.thread.add_listener(self._event)
        self.thread.add_frame_listener(self._frame)

    def __repr__(self) -> str:
        return f"<ServedCamera {self.name}>"

    # Lifecycle

    def start(self) -> ServedCamera:
        """Start the camera (opening the source here unless on demand) and the fan-out.

        Raises:
            SourceError: the source cannot be opened (nothing is left running).
        """
        with logs.bound(self.label or logs.current()):
            self.thread.start()
            if self.fanout is not None:
                self.fanout.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the fan-out and the camera, joining both. Idempotent; any thread."""
        if self.fanout is not None:
            self.fanout.stop(timeout)
        self.thread.stop(timeout)

    # What the endpoints and stats() read

    def problem(self, now: float | None = None) -> str | None:
        """Why this camera is not healthy now, or None if it is: it delivers frames (one
        within 2 s or 3 frame periods, and it is not known lost), or it is on demand and idle
        (nobody watches) or being opened."""
        camera = self.thread
        state = camera.state
        if camera.on_demand is not None and state in (CameraState.IDLE, CameraState.STARTING):
            return None
        if state in _NOT_DELIVERING:
            return "no frames"
        frame = camera.latest()
        limit = max(_HEALTHY_FRAME_AGE_S, 3.0 / camera.fps)
        now = time.monotonic() if now is None else now
        if frame is not None and now - frame.captured_monotonic <= limit:
            return None
        return "no frames"

    def describe(self, viewers: tuple[int, int], *, default: bool) -> dict[str, Any]:
        """This camera in ``/cameras.json``: name, paths, state and what it streams.

        Args:
            viewers: ``(WebSocket, MJPEG)`` viewers now.
            default: whether it serves the unnamed paths too.
        """
        camera = self.thread
        return {
            "name": self.name,
            "default": default,
            "state": visible_state(camera),
            "source": describe_source(camera.source),
            "source_kind": camera.source_kind,
            "width": camera.width,
            "height": camera.height,
            "fps": camera.fps,
            "on_demand": camera.on_demand,
            "viewers": viewers[0] + viewers[1],
            "paths": {
                "ws": f"/{self.name}",
                "page": f"/{self.name}/",
                "mjpeg": f"/{self.name}/stream.mjpg",
                "snapshot": f"/{self.name}/snapshot.jpg",
                "healthz": f"/{self.name}/healthz",
            },
        }

    def stats(self, now: float) -> dict[str, Any]:
        """This camera's counters for ``Streamer.stats()["cameras"][name]`` (``now``:
        ``time.monotonic()``)."""
        camera, cache = self.thread, self.cache
        encodes_per_s, decodes_per_s = self.rates.per_s(now, (cache.encodes, camera.decodes))
        return {
            "camera": camera_report(camera),
            "frames_captured": camera.frames_captured,
            "frames_dropped_corrupt": camera.frames_dropped_corrupt,
            "frames_encoded": cache.encodes,
            "encodes": cache.encodes,
            "decodes": camera.decodes,
            "encodes_per_s": encodes_per_s,
            "decodes_per_s": decodes_per_s,
            "encode_attempts": cache.encode_attempts,
            "encodes_refused": cache.encodes_refused,
            "max_encodes_per_s": cache.max_encodes_per_s,
            "live_variants": cache.live_variants,
            "variants": [
                {
                    "width": v.width, "height": v.height, "quality": v.quality,
                    "max_bytes": v.max_bytes, "encodes": n,
                }
                for v, n in list(cache.encodes_by_variant.items())
            ],
            "healthy": self.problem() is None,
            "annotate": camera.annotator.report() if camera.annotator is not None else None,
        }

    # Camera listeners (camera thread, or the thread that publishes)

    def _frame(self, frame: Frame) -> None:
        self.rates.sample(time.monotonic(), (self.cache.encodes, self.thread.decodes))
        if self.fanout is None:
            for viewer in self._viewers():
                viewer.wake()
            return
        self.fanout.notify()

    def _event(self, event: str, details: dict[str, Any]) -> None:
        self._on_event(self, event, details)


def visible_state(camera: CameraThread) -> str:
    """The camera's state as viewers are told it: ``starting`` from the moment a viewer
    holds a lease on an idle on-demand camera (before its thread has even woken up)."""
    state = camera.state
    if state is CameraState.IDLE and camera.demand > 0:
        return CameraState.STARTING.value
    return str(state.value)


def resends_metadata(event: str) -> bool:
    """Whether viewers get fresh metadata after ``event`` (its ``camera`` field changed in a
    way a client waits for: the first frame of an on-demand camera)."""
    return event in _EVENTS_TO_RESEND_METADATA


class CameraSet:
    """The cameras of one Streamer, in order; the first serves the unnamed paths.

    Thread-safe (cameras come and go while requests look them up).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cameras: dict[str, ServedCamera] = {}

    def add(self, camera: ServedCamera) -> None:
        """Add ``camera`` last.

        Raises:
            ConfigError: a camera of that name (in any case) is there already.
        """
        with self._lock:
            taken = self._taken(camera.name)
            if taken is not None:
                raise name_taken(taken, camera.name)
            self._cameras[camera.name] = camera

    def remove(self, name: str) -> ServedCamera | None:
        """Take the camera ``name`` out; returns it, or None if there is none."""
        with self._lock:
            return self._cameras.pop(name, None)

    def taken(self, name: str) -> str | None:
        """The camera's name that ``name`` would clash with (the same in any case), or None."""
        with self._lock:
            return self._taken(name)

    def _taken(self, name: str) -> str | None:
        folded = name.lower()
        return next((n for n in self._cameras if n.lower() == folded), None)

    def get(self, name: str | None) -> ServedCamera | None:
        """The camera ``name``; ``None`` asks for the default one (the first)."""
        with self._lock:
            if name is None:
                return next(iter(self._cameras.values()), None)
            return self._cameras.get(name)

    @property
    def default(self) -> ServedCamera | None:
        """The first camera (it serves the unnamed paths), or None if there is none."""
        return self.get(None)

    def all(self) -> list[ServedCamera]:
        """Every camera, in order (a copy)."""
        with self._lock:
            return list(self._cameras.values())

    def names(self) -> list[str]:
        with self._lock:
            return list(self._cameras)

    def __len__(self) -> int:
        with self._lock:
            return len(self._cameras)
