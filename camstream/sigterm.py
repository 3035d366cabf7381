"""SIGTERM as a clean stop for :meth:`camstream.server.Streamer.serve_forever`."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["Terminated", "stop_on_sigterm"]


class Terminated(BaseException):
    """SIGTERM arrived while :meth:`Streamer.serve_forever` ran in the main thread."""


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """In the main thread: the first SIGTERM raises :class:`Terminated` (later ones during the
    stop are ignored); the previous handler is restored on exit. Elsewhere: does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: object) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
