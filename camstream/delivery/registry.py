"""Who is watching which camera: WebSocket sessions and MJPEG places under one ``max_clients``.

One :class:`ViewerRegistry` per Streamer. WebSocket sessions are kept by connection id (the
camera wakes them on each frame and sends them its events), MJPEG streams by stream id (the
camera wakes them too), each under the name of the camera it watches (a Streamer with one
camera files them all under one name). Both kinds and every camera count against the same
``max_clients``, checked and changed under one lock, so two viewers arriving at once can never
both take the last place; once the registry is closed (the server stops), no one else gets in.

Every admitted viewer may hold its camera's lease
(:meth:`~camstream.capture.camera.CameraThread.acquire`, given as ``acquire``): taken only once
the viewer is admitted (a refused viewer never opens an on-demand camera) and released when the
viewer leaves the registry, whichever way it leaves.
"""

from __future__ import annotations

import enum
import threading
from typing import Callable, Generic, Protocol, TypeVar

__all__ = ["Admission", "Lease", "Viewer", "ViewerRegistry"]


class Viewer(Protocol):
    """What the registry's owner does with every viewer."""

    def wake(self) -> None:
        """A new camera frame is there."""


class Lease(Protocol):
    """A viewer's claim on its camera's frames (``CameraThread.acquire()``)."""

    def release(self) -> None:
        """Give the claim back (idempotent)."""


S = TypeVar("S", bound=Viewer)  # WebSocket sessions
M = TypeVar("M", bound=Viewer)  # MJPEG streams


class Admission(enum.Enum):
    """The answer to a viewer asking in."""

    ADMITTED = "admitted"
    FULL = "full"  # max_clients viewers already
    CLOSED = "closed"  # the server is stopping


class ViewerRegistry(Generic[S, M]):
    """The viewers of one server, by camera. Thread-safe.

    Args:
        max_clients: viewers admitted at once (WebSocket and MJPEG together, every camera
            together); None: no limit.
    """

    def __init__(self, max_clients: int | None = None) -> None:
        self._max_clients = max_clients
        self._lock = threading.Lock()  # guards everything below
        self._sessions: dict[int, tuple[str, S, Lease | None]] = {}
        self._streams: dict[int, tuple[str, M, Lease | None]] = {}
        # camera -> (sessions, streams) by key: what one camera's fan-out walks for every frame
        self._by_camera: dict[str, tuple[dict[int, S], dict[int, M]]] = {}
        self._closed = False

    def add_session(
        self, key: int, session: S, *, camera: str = "",
        acquire: Callable[[], Lease] | None = None,
    ) -> Admission:
        """Admit a WebSocket session of ``camera`` under ``key`` (its connection id), if there
        is room; once admitted, take its camera lease with ``acquire()`` (if given)."""
        with self._lock:
            if self._closed:
                return Admission.CLOSED
            if self._full():
                return Admission.FULL
            lease = acquire() if acquire is not None else None
            self._sessions[key] = (camera, session, lease)
            self._group(camera)[0][key] = session
            return Admission.ADMITTED

    def remove_session(self, key: int) -> S | None:
        """Take a session out and release its lease; returns it, or None if it was not (or no
        longer) there."""
        with self._lock:
            entry = self._sessions.pop(key, None)
            if entry is None:
                return None
            self._ungroup(entry[0], key, sessions=True)
        _release(entry[2])
        return entry[1]

    def add_stream(
        self, key: int, stream: M, *, camera: str = "",
        acquire: Callable[[], Lease] | None = None,
    ) -> Admission:
        """Admit an MJPEG stream of ``camera`` under ``key`` (its stream id), if there is room;
        once admitted, take its camera lease with ``acquire()`` (if given)."""
        with self._lock:
            if self._closed:
                return Admission.CLOSED
            if self._full():
                return Admission.FULL
            lease = acquire() if acquire is not None else None
            self._streams[key] = (camera, stream, lease)
            self._group(camera)[1][key] = stream
            return Admission.ADMITTED

    def remove_stream(self, key: int) -> M | None:
        """Take a stream out and release its lease; returns it, or None if it was not there."""
        with self._lock:
            entry = self._streams.pop(key, None)
            if entry is None:
                return None
            self._ungroup(entry[0], key, sessions=False)
        _release(entry[2])
        return entry[1]

    def sessions(self, camera: str | None = None) -> list[S]:
        """The WebSocket sessions now, of ``camera`` or of every camera (a copy)."""
        with self._lock:
            if camera is None:
                return [entry[1] for entry in self._sessions.values()]
            group = self._by_camera.get(camera)
            return list(group[0].values()) if group is not None else []

    def streams(self, camera: str | None = None) -> list[M]:
        """The MJPEG streams now, of ``camera`` or of every camera (a copy)."""
        with self._lock:
            if camera is None:
                return [entry[1] for entry in self._streams.values()]
            group = self._by_camera.get(camera)
            return list(group[1].values()) if group is not None else []

    def all(self, camera: str | None = None) -> list[S | M]:
        """Every viewer now, of ``camera`` or of every camera, sessions first (a copy)."""
        with self._lock:
            if camera is None:
                return [
                    *(entry[1] for entry in self._sessions.values()),
                    *(entry[1] for entry in self._streams.values()),
                ]
            group = self._by_camera.get(camera)
            if group is None:
                return []
            return [*group[0].values(), *group[1].values()]

    def camera_of_session(self, key: int) -> str | None:
        """The camera the session ``key`` watches, or None if it is not here."""
        with self._lock:
            entry = self._sessions.get(key)
            return entry[0] if entry is not None else None

    @property
    def session_count(self) -> int:
        """WebSocket sessions now, every camera together."""
        with self._lock:
            return len(self._sessions)

    def count(self, camera: str) -> tuple[int, int]:
        """``(sessions, streams)`` of ``camera`` now."""
        with self._lock:
            group = self._by_camera.get(camera)
            return (len(group[0]), len(group[1])) if group is not None else (0, 0)

    def close(self) -> list[M]:
        """Admit no one from now on (the server is stopping); returns the MJPEG streams, to be
        stopped (each leaves the registry itself when its loop has ended)."""
        with self._lock:
            self._closed = True
            return [entry[1] for entry in self._streams.values()]

    def take_sessions(self) -> list[S]:
        """Take every session out (releasing their leases); returns them (to be stopped)."""
        with self._lock:
            entries = list(self._sessions.values())
            self._sessions.clear()
            for sessions, _ in self._by_camera.values():
                sessions.clear()
        for entry in entries:
            _release(entry[2])
        return [entry[1] for entry in entries]

    def _group(self, camera: str) -> tuple[dict[int, S], dict[int, M]]:
        group = self._by_camera.get(camera)
        if group is None:
            group = self._by_camera[camera] = ({}, {})
        return group

    def _ungroup(self, camera: str, key: int, *, sessions: bool) -> None:
        group = self._by_camera.get(camera)
        if group is None:
            return
        (group[0] if sessions else group[1]).pop(key, None)
        if not group[0] and not group[1]:
            del self._by_camera[camera]

    def _full(self) -> bool:
        limit = self._max_clients
        return limit is not None and len(self._sessions) + len(self._streams) >= limit


def _release(lease: Lease | None) -> None:
    if lease is not None:
        lease.release()
