"""What ``serve_forever()`` shows a program that set up no logging: the URL and the warnings.

camstream never configures logging: its package logger has a ``NullHandler``, so a program that
set up none sees nothing at all, not even where to connect or the ``no camera, streaming the test
pattern`` warning. For ``Streamer().serve_forever()`` (a whole program in one line) that is a
silent first run, so while :meth:`~camstream.server.Streamer.serve_forever` runs, and only if
neither the ``camstream`` logger nor the root logger has a handler of its own, a
:class:`Greeting`:

- writes one start line to ``sys.stderr``, the line the ``camstream`` command prints
  (:func:`start_line`);
- shows camstream's WARNING and ERROR records on ``sys.stderr``, in the command's format.

``serve_forever(quiet=True)`` shows nothing; ``start()`` and ``with Streamer(...)`` (a program
with a life of its own) never show anything.

Why a handler and not writes to ``sys.stderr``: the warnings are log records from other
threads and modules (the camera thread's ``camera lost``, an exposed port), so only a handler
sees them, and none is written twice. It is added to the ``camstream`` logger only (the
application's loggers and the root logger are not touched, ``logging.basicConfig`` is never
called), for the duration of ``serve_forever()``, and removed when it returns. If the
application sets up logging while it runs, the handler stands aside (it checks on every record).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING, Protocol

from .version import __version__

if TYPE_CHECKING:
    from .capture.camera import CameraThread


class _Started(Protocol):
    """What the start line reads of a ``camstream.server.Streamer`` (which imports this
    module: no import back)."""

    @property
    def camera(self) -> CameraThread: ...

    @property
    def urls(self) -> list[str]: ...

    @property
    def cameras(self) -> dict[str, CameraThread]: ...

__all__ = ["Greeting", "logging_configured", "start_line"]

_PACKAGE_LOGGER = "camstream"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # the camstream command's
_MAX_URLS = 6  # a start line lists at most this many addresses


def logging_configured() -> bool:
    """Whether the application set up logging: a handler (other than a ``NullHandler``) on
    the ``camstream`` logger or on the root logger."""
    loggers = (logging.getLogger(_PACKAGE_LOGGER), logging.getLogger())
    return any(
        not isinstance(handler, logging.NullHandler)
        for logger in loggers for handler in logger.handlers if handler is not _current
    )


def start_line(streamer: _Started, *, stop_hint: bool = True) -> str:
    """``camstream 0.1.0: streaming test pattern 640x480 at 30 fps on ws://...`` for a
    started ``streamer``: its source, size, rate and every URL it is reached at (:attr:`urls`).
    """
    from .capture.camera import describe_source

    cameras = streamer.cameras
    urls = streamer.urls
    shown = ", ".join(urls[:_MAX_URLS])
    if len(urls) > _MAX_URLS:
        shown += f" and {len(urls) - _MAX_URLS} more"
    hint = " (Ctrl+C to stop)" if stop_hint else ""

    def what(camera: CameraThread) -> str:
        demand = ", on demand" if camera.on_demand is not None else ""
        return (f"{describe_source(camera.source)} {camera.width}x{camera.height} at "
                f"{camera.fps:g} fps{demand}")

    if list(cameras) == ["default"]:  # one unnamed source
        return f"camstream {__version__}: streaming {what(streamer.camera)} on {shown}{hint}"
    listed = "; ".join(f"{name}: {what(camera)}" for name, camera in cameras.items())
    return (f"camstream {__version__}: streaming {len(cameras)} camera"
            f"{'s' if len(cameras) != 1 else ''} on {shown}NAME ({listed}){hint}")


class _StandAside(logging.Filter):
    """Drops every record once the application has set up logging of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not logging_configured()


_current: logging.Handler | None = None  # the greeting's handler, while one is installed
_lock = threading.Lock()


class Greeting:
    """The greeting of one ``serve_forever()`` call (see the module docstring).

    Use as a context manager around the whole call, start included (the camera's warnings
    come while it opens). Does nothing if the application set up logging, or with ``quiet``.
    Several ``serve_forever()`` calls at once (two Streamers in two threads) share one handler,
    so no record is shown twice; each says its own start line. Thread-safe.
    """

    def __init__(self, *, quiet: bool = False) -> None:
        self._wanted = not quiet
        self._handler: logging.Handler | None = None  # installed by this greeting

    @property
    def active(self) -> bool:
        """Whether this greeting shows anything."""
        return self._wanted

    def __enter__(self) -> Greeting:
        global _current
        self._wanted = self._wanted and not logging_configured()
        if not self._wanted:
            return self
        with _lock:
            if _current is not None:
                return self
            handler = logging.StreamHandler(sys.stderr)
            handler.setLevel(logging.WARNING)
            handler.setFormatter(logging.Formatter(_FORMAT))
            handler.addFilter(_StandAside())
            _current = self._handler = handler
            logging.getLogger(_PACKAGE_LOGGER).addHandler(handler)
        return self

    def say(self, line: str) -> None:
        """Write ``line`` to stderr, if this greeting is active and logging still unset."""
        if not self._wanted or logging_configured():
            return
        with _lock:
            try:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            except (AttributeError, OSError, ValueError):  # no stderr, or closed
                pass

    def __exit__(self, *exc_info: object) -> None:
        global _current
        with _lock:
            handler, self._handler = self._handler, None
            if handler is None:
                return
            logging.getLogger(_PACKAGE_LOGGER).removeHandler(handler)
            _current = None
