"""The server's watchdog thread: send deadlines, handshake and closing deadlines, keepalive (#13).

One :class:`Watchdog` per server, started by the server's ``__init__`` and stopped and joined by
``server_close()``. Every tick it looks at each registered link: a write blocked for longer than
``send_timeout`` sheds the connection; a passed handshake or closing deadline shuts the socket
down; an idle connection gets a keepalive ping, and one silent for ``ping_interval +
ping_timeout`` is closed with 1011.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .. import logs
from .connection import Connection
from .link import Link

__all__ = ["Watchdog"]

logger = logs.get_logger(__name__)


class Watchdog:
    """Polices the links ``links()`` returns, as ``(link, connection or None)`` pairs.

    Args:
        links: A snapshot of the registered links and their connections (taken under the
            server's lock, never held while the watchdog works).
        send_timeout: Seconds a write may block.
        ping_interval: Idle seconds before a keepalive ping (None: no keepalive).
        ping_timeout: Seconds more without traffic before the connection is closed.
        name: The thread's name.
    """

    def __init__(
        self,
        links: Callable[[], list[tuple[Link, Connection | None]]],
        *,
        send_timeout: float,
        ping_interval: float | None,
        ping_timeout: float,
        name: str,
    ) -> None:
        self._links = links
        self.send_timeout = send_timeout
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self._stop = threading.Event()
        # Daemon, so a server that is never closed does not keep the process alive.
        self._thread = threading.Thread(
            target=logs.thread_target(self._run), name=name, daemon=True
        )

    def start(self) -> None:
        """Start the thread (once)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and join it (unless called from it). Idempotent."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def is_alive(self) -> bool:
        """Whether the thread is running."""
        return self._thread.is_alive()

    def _run(self) -> None:
        tick = min(0.1, self.send_timeout / 4)
        while not self._stop.wait(tick):
            now = time.monotonic()
            for link, conn in self._links():
                try:
                    self._watch(link, conn, now)
                except Exception:  # the watchdog must survive anything
                    logger.exception("watchdog error")

    def _watch(self, link: Link, conn: Connection | None, now: float) -> None:
        started = link.send_started
        if started is not None and now - started > self.send_timeout:
            name = f"connection {conn.id}" if conn else "HTTP client"
            logger.info(
                "%s: send blocked for over %.1f s; dropping the client", name, self.send_timeout
            )
            link.timed_out = True
            link.abort()
            return
        if link.deadline is not None and now > link.deadline:
            link.abort()
            return
        if conn is None or self.ping_interval is None or conn.closing:
            return
        idle = now - conn.last_received
        if idle > self.ping_interval + self.ping_timeout:
            logger.info("connection %d: no traffic for %.1f s; closing", conn.id, idle)
            conn.close(1011, "keepalive ping timeout")
        elif idle >= self.ping_interval and not conn.ping_outstanding:
            conn.keepalive_ping(now)
