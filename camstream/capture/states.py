"""A camera's states, and what each change of state tells listeners and the log.

:class:`CameraState` is where a :class:`~camstream.capture.camera.CameraThread` is in its life
(its ``value`` is the ``camera`` field of every ``metadata`` message); :func:`announce` words a
change for the log and names the listener event it sends (:data:`CameraListener`). No thread of
its own: the camera calls it in the thread that changed the state.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from .. import logs

__all__ = ["CameraListener", "CameraState", "announce"]

logger = logs.get_logger(__name__)


class CameraState(str, enum.Enum):
    """Where a camera is in its life; ``value`` is the metadata's ``camera`` field.

    Always open: NEW, STREAMING (LOST and back), STOPPED. On demand: NEW, IDLE, then each time
    viewers come, STARTING, STREAMING (LOST and back; LOST too while an open fails and viewers
    wait), and IDLE again once the source is released; STOPPED.
    """

    NEW = "new"
    IDLE = "idle"  # on demand: nobody watches and the source is closed (opened at acquire())
    STARTING = "starting"  # on demand: being opened for a viewer; streaming from its first frame
    STREAMING = "streaming"
    LOST = "lost"  # the source stopped delivering (or would not open): retried with backoff
    ENDED = "ended"  # a file that does not loop reached its end
    FAILED = "failed"  # the camera thread crashed (a bug): see CameraThread.failure_reason
    STOPPED = "stopped"


CameraListener = Callable[[str, dict[str, Any]], None]
"""Called from the camera thread with ``(event, details)``; ``details`` has the ``source``
(described) and, where there is one, a ``reason`` (words for people, not for parsing):

* ``camera_lost`` (with a reason): the source stopped delivering, an on-demand open failed
  while viewers wait (the reason is the error), or the camera thread crashed (state FAILED);
* ``camera_restored``: frames again after ``camera_lost``;
* ``source_ended``: a file without loop reached its end.

On demand only (an always-open camera never sends these):

* ``camera_starting`` (reason ``"first viewer"``): the source is being opened (STARTING);
* ``camera_started``: its first frame is there (STREAMING);
* ``camera_idle`` (reason such as ``"no viewer for 10 s"``): the source was released (IDLE)."""


def announce(
    previous: CameraState, state: CameraState, reason: str | None, description: str
) -> tuple[str | None, str | None]:
    """Log the change from ``previous`` to ``state`` of the source ``description``; return the
    listener event it sends (None: none) and its reason (None: none)."""
    if state is CameraState.LOST:
        if previous is CameraState.STARTING:
            logger.warning("cannot open %s (%s); retrying while viewers wait", description, reason)
        else:
            logger.warning("%s stopped delivering frames; reopening", description)
        return "camera_lost", reason or "the source stopped delivering frames"
    if state is CameraState.FAILED:
        logger.error("%s: the camera thread failed (%s); no more frames", description, reason)
        return "camera_lost", reason
    if state is CameraState.ENDED:
        logger.info("%s ended (no loop): no more frames", description)
        return "source_ended", reason
    if state is CameraState.STREAMING and previous is CameraState.LOST:
        logger.info("%s is back", description)
        return "camera_restored", reason
    if state is CameraState.STREAMING and previous is CameraState.STARTING:
        return "camera_started", reason
    if state is CameraState.STARTING:
        logger.debug("opening %s: %s", description, reason)
        return "camera_starting", reason
    if state is CameraState.IDLE and previous is not CameraState.NEW:
        logger.info("released %s: %s", description, reason)
        return "camera_idle", reason
    return None, None
