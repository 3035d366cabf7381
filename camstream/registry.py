"""Who is watching: WebSocket sessions and MJPEG places under one ``max_clients`` count.

One :class:`ViewerRegistry` per Streamer. WebSocket viewers are kept by connection id (the
camera wakes them on each frame and sends them its events); an MJPEG stream takes a place
(:meth:`ViewerRegistry.reserve`) for as long as it runs. Both kinds count against the same
``max_clients``, checked and changed under one lock, so two viewers arriving at once can never
both take the last place.
"""

from __future__ import annotations

import enum
import threading
from typing import Generic, TypeVar

__all__ = ["Admission", "ViewerRegistry"]

S = TypeVar("S")


class Admission(enum.Enum):
    """The answer to a viewer asking in."""

    ADMITTED = "admitted"
    FULL = "full"  # max_clients viewers already
    CLOSED = "closed"  # the server is stopping


class ViewerRegistry(Generic[S]):
    """The viewers of one server. Thread-safe.

    Args:
        max_clients: viewers admitted at once (WebSocket and MJPEG together); None: no limit.
    """

    def __init__(self, max_clients: int | None = None) -> None:
        self._max_clients = max_clients
        self._lock = threading.Lock()  # guards everything below
        self._sessions: dict[int, S] = {}
        self._places = 0  # viewers that are not WebSocket sessions (MJPEG streams)
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

    def reserve(self) -> bool:
        """Take a place for a viewer that is not a WebSocket session (an MJPEG stream).

        Returns False when the server is full. Give it back with :meth:`release`.
        """
        with self._lock:
            if self._full():
                return False
            self._places += 1
            return True

    def release(self) -> None:
        """Give back a place taken with :meth:`reserve`."""
        with self._lock:
            self._places -= 1

    def sessions(self) -> list[S]:
        """The WebSocket sessions now (a copy)."""
        with self._lock:
            return list(self._sessions.values())

    @property
    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close(self) -> None:
        """Admit no one from now on (the server is stopping)."""
        with self._lock:
            self._closed = True

    def take_sessions(self) -> list[S]:
        """Take every session out; returns them (to be stopped)."""
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        return sessions

    def _full(self) -> bool:
        limit = self._max_clients
        return limit is not None and len(self._sessions) + self._places >= limit
