"""The ``annotate`` hook: the application's data for each frame the camera thread reads.

``Streamer(annotate=fn)`` (``CameraThread(annotate=fn)``) calls ``fn(frame)`` in the camera
thread for every frame of a camera, file, stream or test-pattern source, before the frame is
published; what it returns (a JSON value; None: no data) travels with that frame to every
viewer that asked for data. Push sources do not use it: ``publish(image, data=...)`` does.

The hook runs between two reads of the source, so it must stay fast: a hook that takes longer
than a frame period lowers the camera's rate to what it allows (frames are read, and so
published, one after the other; a camera's own buffer then hands out older frames). Its time
is measured (:attr:`Annotator.mean_ms`). A hook that raises, or returns what is not JSON or is
too large, costs that frame its data only: the failure is counted, logged (rate-limited, with
the traceback) and the frame goes out without data; the camera goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from .. import logs, protocol
from ..ratelimit import LogBudget
from .frame import Frame

__all__ = ["AnnotateHook", "Annotator"]

logger = logs.get_logger(__name__)

AnnotateHook = Callable[[Frame], Any]
"""``annotate(frame)``: the frame's data (a JSON value), or None for none."""


class Annotator:
    """Calls an :data:`AnnotateHook` for each frame and keeps its counters.

    Called by the camera thread only; the counters are read from any thread (each is one
    number, replaced whole).
    """

    def __init__(self, hook: AnnotateHook, max_data_bytes: int) -> None:
        self._hook = hook
        self._limit = max_data_bytes
        self._log = LogBudget(rate=0.2, burst=3.0)  # a hook failing every frame: a few lines
        self._lock = threading.Lock()
        self.calls = 0
        self.failures = 0
        self.seconds = 0.0  # spent in the hook, in all
        self.last_error: str | None = None

    def __call__(self, frame: Frame) -> str | None:
        """The data of ``frame`` as JSON text, or None (no data, or the hook failed)."""
        started = time.monotonic()
        try:
            value = self._hook(frame)
            return None if value is None else protocol.encode_value(
                value, self._limit, "annotate()'s data"
            )
        except Exception as exc:
            with self._lock:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            self._log.log(logger, logging.ERROR,
                          "annotate() failed on frame %d (the frame goes without data): %s",
                          frame.seq, logs.printable(exc), exc_info=True)
            return None
        finally:
            elapsed = time.monotonic() - started
            with self._lock:
                self.calls += 1
                self.seconds += elapsed

    @property
    def mean_ms(self) -> float | None:
        """The hook's mean time per frame, in ms (None before the first call)."""
        with self._lock:
            return None if not self.calls else round(self.seconds * 1000 / self.calls, 3)

    def report(self) -> dict[str, Any]:
        """The counters for ``stats()``."""
        return {
            "calls": self.calls, "failures": self.failures, "mean_ms": self.mean_ms,
            "last_error": self.last_error,
        }
