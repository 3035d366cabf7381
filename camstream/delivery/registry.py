"""Who is watching: WebSocket sessions and MJPEG places under one ``max_clients`` count.

One :class:`ViewerRegistry` per Streamer. WebSocket sessions are kept by connection id (the
camera wakes them on each frame and sends them its events), MJPEG streams by stream id (the
camera wakes them too). Both kinds count against the same ``max_clients``, checked and changed
under one lock, so two viewers arriving at once can never both take the last place; once the
registry is closed (the server stops), no one else gets in.
"""

from __future__ import annotations

import enum
import threading
from typing import Generic, Protocol, TypeVar

__all__ = ["Admission", "Viewer", "ViewerRegistry"]


class Viewer(Protocol):
    """What the registry's owner does with every viewer."""

    def wake(self) -> None:
        """A new camera frame is there."""


S = TypeVar("S", bound=Viewer)  # WebSocket sessions
M = TypeVar("M", bound=Viewer)  # MJPEG streams


class Admission(enum.Enum):
    """The answer to a viewer asking in."""

    ADMITTED = "admitted"
    FULL = "full"  # max_clients viewers already
    CLOSED = "closed"  # the server is stopping


class ViewerRegistry(Generic[S, M]):
    """The viewers of one server. Thread-safe.

    Args:
        max_clients: viewers admitted at once (WebSocket and MJPEG together); None: no limit.
    """

    def __init__(self, max_clients: int | None = None) -> None:
        self._max_clients = max_clients
        self._lock = threading.Lock()  # guards everything below
        self._sessions: dict[int, S] = {}
        self._streams: dict[int, M] = {}
        self._closed = False

    def add_session(self, key: int, session: S) -> Admission:
        """Admit a WebSocket session under ``key`` (its connection id), if there is room."""
        with self._lock:
            if self._closed:
                return Admission.CLOSED
            if self._full():
                return Admission.FULL
            self._sessions[key] = session
            return Admission.ADMITTED

    def remove_session(self, key: int) -> S | None:
        """Take a session out; returns it, or None if it was not (or no longer) there."""
        with self._lock:
            return self._sessions.pop(key, None)

    def add_stream(self, key: int, stream: M) -> Admission:
        """Admit an MJPEG stream under ``key`` (its stream id), if there is room."""
        with self._lock:
            if self._closed:
                return Admission.CLOSED
            if self._full():
                return Admission.FULL
            self._streams[key] = stream
            return Admission.ADMITTED

    def remove_stream(self, key: int) -> M | None:
        """Take a stream out; returns it, or None if it was not there."""
        with self._lock:
            return self._streams.pop(key, None)

    def sessions(self) -> list[S]:
        """The WebSocket sessions now (a copy)."""
        with self._lock:
            return list(self._sessions.values())

    def streams(self) -> list[M]:
        """The MJPEG streams now (a copy)."""
        with self._lock:
            return list(self._streams.values())

    def all(self) -> list[S | M]:
        """Every viewer now, sessions first (a copy)."""
        with self._lock:
            return [*self._sessions.values(), *self._streams.values()]

    @property
    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close(self) -> list[M]:
        """Admit no one from now on (the server is stopping); returns the MJPEG streams, to be
        stopped (each leaves the registry itself when its loop has ended)."""
        with self._lock:
            self._closed = True
            return list(self._streams.values())

    def take_sessions(self) -> list[S]:
        """Take every session out; returns them (to be stopped)."""
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        return sessions

    def _full(self) -> bool:
        limit = self._max_clients
        return limit is not None and len(self._sessions) + len(self._streams) >= limit
