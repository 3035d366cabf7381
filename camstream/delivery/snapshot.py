"""One snapshot: the newest frame as one JPEG, for ``/snapshot.jpg`` and the ``snapshot`` message.

The first-frame wait and the encode live here once; each channel says the outcome in its own
words (an HTTP status and body, a WebSocket ``snapshot`` or ``error`` message).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable

from ..capture.camera import CameraThread
from ..capture.frame import Frame
from ..capture.states import CameraState
from .encoder import EncodeBudgetExceeded, EncodeCache, EncodedFrame, Variant

__all__ = [
    "FIRST_FRAME_WAIT_S", "OPENING_WAIT_S", "SnapshotFailure", "first_frame", "take_snapshot",
]

FIRST_FRAME_WAIT_S = 2.0
"""How long a snapshot asked for before the camera's first frame waits for it, in seconds."""
OPENING_WAIT_S = 15.0
"""How long it waits at most while an on-demand camera is being opened (``starting``): a
snapshot is one of the viewers that opens it, and a UVC camera or a stream URL may take a few
seconds to give its first frame."""

_POLL_S = 0.1  # the wait looks at ``serving()`` this often


class SnapshotFailure(enum.Enum):
    """Why no snapshot could be taken."""

    NO_FRAME = "no frame yet"  # the camera delivered none within FIRST_FRAME_WAIT_S
    NO_PLACE = "no place"  # every place for a snapshot encode stayed taken
    BUDGET = "encode budget spent"  # the server's encode budget of this second is spent
    UNDECODABLE = "frame cannot be decoded"  # the source's JPEG is damaged


def first_frame(
    camera: CameraThread,
    timeout: float = FIRST_FRAME_WAIT_S,
    serving: Callable[[], bool] | None = None,
) -> Frame | None:
    """The newest frame; before the camera's first one, wait up to ``timeout`` s for it, and
    while the camera is being opened (on demand: ``starting``) up to :data:`OPENING_WAIT_S`.

    Returns None if none came in time, the camera stopped, or ``serving()`` turned False (looked
    at every 0.1 s, so a stopping server does not hold the caller for the whole wait). Any
    thread; blocks.
    """
    frame = camera.latest()
    if frame is not None or timeout <= 0:
        return frame
    began = time.monotonic()
    while serving is None or serving():
        now = time.monotonic()
        opening = camera.state is CameraState.STARTING
        left = began + (max(timeout, OPENING_WAIT_S) if opening else timeout) - now
        if left <= 0:
            return None
        frame = camera.wait_for_frame(0, min(left, _POLL_S))
        if frame is not None:
            return frame
    return None


def take_snapshot(
    camera: CameraThread,
    cache: EncodeCache,
    variant: Variant,
    serving: Callable[[], bool] | None = None,
    places: threading.Semaphore | None = None,
    place_wait: float = 0.0,
) -> EncodedFrame | SnapshotFailure:
    """The newest frame as ``variant``, waiting for a first frame as :func:`first_frame` does.

    A JPEG the shared cache has already (a viewer of the same variant, or the source's own)
    is taken as it is; else it is encoded (counted by the encode budget), with one of
    ``places`` held if given (waiting up to ``place_wait`` s for one), so that callers can
    bound how many snapshot encodes run at once. Any thread; blocks for the waits and the
    encode.
    """
    frame = first_frame(camera, serving=serving)
    if frame is None:
        return SnapshotFailure.NO_FRAME
    try:
        encoded = cache.made(frame, variant)
        if encoded is not None:
            return encoded
        if places is None:
            return cache.get(frame, variant)
        if not places.acquire(timeout=place_wait):
            return SnapshotFailure.NO_PLACE
        try:
            return cache.get(frame, variant)
        finally:
            places.release()
    except EncodeBudgetExceeded:
        return SnapshotFailure.BUDGET
    except ValueError:  # the source's JPEG cannot be decoded
        return SnapshotFailure.UNDECODABLE
